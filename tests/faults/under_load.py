"""Run fault tests again and again beside CPU-bound processes, and count the results.

A fault test that passes only on an idle machine is not passing. This runs the given pytest
node ids ``--runs`` times in a row, each run a fresh pytest process, while ``--burners``
processes spin on a core each; it prints every scenario summary line it sees and ends with
``under_load runs=N passed=P failed=F``, exiting non-zero on any failure.

    python -m tests.faults.under_load --runs 50 \
        tests/faults/test_broker_restart.py::test_broker_restarts_during_http_ingest_keep_every_ack_exactly_once
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BURN = "while True: pass"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults.under_load", description=__doc__)
    p.add_argument("tests", nargs="+", help="pytest node ids")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--burners", type=int, default=1, help="CPU-bound processes beside it")
    p.add_argument("--keep-going", action="store_true", help="do not stop at the first failure")
    a = p.parse_args(argv)
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(a.burners)]
    passed = failed = 0
    try:
        for run in range(1, a.runs + 1):
            t0 = time.monotonic()
            # Its own temp root: a concurrent pytest session elsewhere on the machine resets
            # the shared /tmp/pytest-of-<user> to mode 0700, which locks out the embedded
            # PostgreSQL's unprivileged user mid-run.
            base = Path(tempfile.mkdtemp(prefix=f"tieline-under-load-{run}-"))
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-s",
                    "-p",
                    "no:cacheprovider",
                    f"--basetemp={base / 'pytest'}",
                    *a.tests,
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            shutil.rmtree(base, ignore_errors=True)
            lines = [x for x in done.stdout.splitlines() if x.startswith("scenario=")]
            ok = done.returncode == 0
            passed, failed = passed + ok, failed + (not ok)
            for line in dict.fromkeys(lines):  # each summary once
                print(f"run {run}: {line}", flush=True)
            print(
                f"run {run}: {'passed' if ok else 'FAILED'} in {time.monotonic() - t0:.0f} s",
                flush=True,
            )
            if not ok:
                print(done.stdout[-4000:], done.stderr[-2000:], sep="\n", flush=True)
                if not a.keep_going:
                    break
    finally:
        for b in burners:
            b.kill()
            b.wait()
    print(
        f"under_load runs={passed + failed} passed={passed} failed={failed} burners={a.burners}",
        flush=True,
    )
    return 0 if failed == 0 and passed == a.runs else 1


if __name__ == "__main__":
    sys.exit(main())
