"""``python -m bench {all|ingest|projection|rebuild|freshness|queries|peer|scaling|sse|
webhook_claim} [--quick]``
(and ``python -m bench report``: the results as Markdown tables)

Each benchmark starts its own servers (embedded NATS and PostgreSQL on free ports in a
temporary directory, or ``TIELINE_BENCH_NATS_URL`` / ``TIELINE_BENCH_DATABASE_URL``), measures
the raw limit in the same run, prints a table and writes ``bench/results/<name>.json``.
``all`` runs them one after another (never concurrently: they would measure each other) and
prints every target's verdict at the end; arguments after the name go to that benchmark.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

NAMES = (
    "ingest",
    "projection",
    "rebuild",
    "freshness",
    "queries",
    "peer",
    "scaling",
    "sse",
    "webhook_claim",
)
#: What ``all`` runs: every benchmark with its defaults, except projection (also 1 and 2
#: partitioned worker processes, unpinned and pinned to 1 and 2 cores, events over 8
#: workspaces: issue 15's scaling figures) and rebuild (also the worker-built generation
#: compared row by row with the bulk one, as ``tieline verify`` does, and a timed what-if);
#: freshness a second time with the writes arriving in small batches (the same events/s), and
#: sse a second time with every client receiving every event (at a tenth of the rate).
EXTRA = {
    "projection": ["--workers", "1,2", "--pin-cores", "1,2", "--workspaces", "8"],
    "rebuild": ["--incremental", "--what-if"],
}
RUNS = (
    [(n, EXTRA.get(n, [])) for n in NAMES[:4]]
    + [("freshness", ["--via", "batch"])]
    + [(n, EXTRA.get(n, [])) for n in NAMES[4:]]
    + [("sse", ["--filter", "workspace", "--rate", "20"])]
)


def _parser(name: str) -> argparse.ArgumentParser:
    mod = importlib.import_module(f"bench.{name}")
    p = argparse.ArgumentParser(
        prog=f"python -m bench {name}",
        description=mod.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mod.add_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in ("all", "report", *NAMES):
        print(__doc__)
        return 0 if args and args[0] in ("-h", "--help") else 2
    name, rest = args[0], args[1:]
    if name == "report":
        from bench.report import main as report

        return report(rest)
    if name != "all":
        mod = importlib.import_module(f"bench.{name}")
        mod.run(_parser(name).parse_args(rest))
        return 0
    quick = "--quick" in rest
    skip = set()
    for a in rest:
        if a.startswith("--skip="):
            skip |= set(a.split("=", 1)[1].split(","))
    verdicts: list[tuple[str, object]] = []
    failed = []
    t0 = time.time()
    for n, extra in RUNS:
        if n in skip:
            continue
        argv_n = [*extra, *(["--quick"] if quick else [])]
        print(f"\n===== bench {n} {' '.join(argv_n)} =====", flush=True)
        try:
            mod = importlib.import_module(f"bench.{n}")
            out = mod.run(_parser(n).parse_args(argv_n))
            verdicts += [(n, t) for t in out.get("targets", [])]
        except Exception:
            traceback.print_exc()
            failed.append(n)
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"all targets ({time.time() - t0:.0f} s{', quick sizes' if quick else ''})")
    for col in ("bench", "target", "verdict", "measured"):
        t.add_column(col, overflow="fold")
    for n, tg in verdicts:
        v = (
            ("[green]met[/]" if tg.met else "[red]missed[/]")
            if tg.met is not None
            else "[yellow]not measured[/]"
        )
        t.add_row(n, escape(tg.name), v, escape(tg.measured))
    Console(width=160).print(t)
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
