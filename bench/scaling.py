"""How costs grow: the observed exponent k of cost ~ size**k per cost, fitted on a log-log
least-squares line over three sizes, with anything worse than expected flagged.

* events (10k -> 100k -> 1M by default, over a fixed 5k people, so the history per pair grows
  as it does in a real network): rebuild wall time, raw JetStream read, raw COPY (expected
  linear, k = 1) and the rebuild's peak RSS (expected flat, k = 0);
* people (1k -> 10k -> 100k, ten ties each): loading the network, and the unloaded latency
  (1 client) of pair strength, top-50 ties and warm paths over HTTP (expected flat).

    python -m bench scaling                         # full (the 1M rebuild dominates)
    python -m bench scaling --quick                 # 2k/6k/18k events, 500/1.5k/4.5k people
"""

from __future__ import annotations

import argparse
import asyncio
import time
from types import SimpleNamespace
from typing import Any

from bench.common import (
    Row,
    Target,
    cli_main,
    finish_run,
    growth_exponent,
    make_token,
    other_activity,
    postgres,
    quiet_logging,
    rate,
    running_stack,
    temp_root,
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", default="10000,100000,1000000")
    p.add_argument("--people", default="1000,10000,100000")
    p.add_argument(
        "--events-people",
        type=int,
        default=5_000,
        help="people in the event sweep, fixed, so events per pair grow with N as "
        "they do when a network's history grows",
    )
    p.add_argument("--ties-per-person", type=int, default=10)
    p.add_argument("--seconds", type=float, default=4.0, help="per endpoint and size")
    p.add_argument("--skip-events", action="store_true")
    p.add_argument("--skip-people", action="store_true")
    p.add_argument("--quick", action="store_true")


def verdict(k: float, expected: float) -> str:
    """'ok', or how it is worse than expected (noise slack 0.15 for linear, 0.25 for flat)."""
    if expected >= 1.0:
        return "ok" if k <= expected + 0.15 else "WORSE THAN LINEAR"
    return "ok" if k <= expected + 0.25 else "GROWS (expected flat)"


def fit_rows(
    name: str, sizes: list[float], costs: list[float], unit: str, expected: float, size_name: str
) -> tuple[Row, Target]:
    try:
        k = growth_exponent(sizes, costs)
    except ValueError:
        k = float("nan")
    v = verdict(k, expected) if k == k else "not measured"
    pts = ", ".join(f"{int(s):,}: {c:.3g}" for s, c in zip(sizes, costs, strict=True))
    row = Row(
        f"{name} vs {size_name}",
        k,
        "exponent k",
        "expected k",
        expected,
        note=f"{v}; {unit} at {pts}",
    )
    tgt = Target(
        f"{name} grows no worse than n^{expected:g}",
        None if k != k else v == "ok",
        f"k = {k:.2f}",
        "" if v == "ok" else v,
    )
    return row, tgt


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench import queries as qb
    from bench.rebuild import measure

    if args.quick:
        args.events, args.people, args.seconds = "2000,6000,18000", "500,1500,4500", 1.5
        args.events_people = min(args.events_people, 500)
    ev_sizes = [int(x) for x in args.events.split(",")]
    pp_sizes = [int(x) for x in args.people.split(",")]
    quiet_logging()
    started = time.time()
    before = other_activity()
    events: list[dict[str, Any]] = []
    people: list[dict[str, Any]] = []
    with temp_root() as root, postgres(root) as db_url:
        if not args.skip_events:
            for n in ev_sizes:
                print(f"[scaling] rebuild of {n} events ...", flush=True)
                m = measure(root, db_url, n, min(args.events_people, n), label=f"-{n}")
                events.append(
                    {
                        "n": m["events"],
                        "replay_s": m["replay"]["seconds"],
                        "rss_mib": m["replay"]["maxrss_mib"],
                        "read_s": m["read_pull_noack"][1],
                        "copy_s": m["copy"][1],
                        "replay_per_s": rate(m["replay"]["applied"], m["replay"]["seconds"]),
                    }
                )
        if not args.skip_people:
            with running_stack(root / "stack", db_url) as rs:
                print("[scaling] projecting template ties ...", flush=True)
                last = asyncio.run(qb._publish_templates(rs.admin, 800, 12_000))
                schema, _ = asyncio.run(qb._wait_projected(rs.settings, last))
                for p in pp_sizes:
                    ws = f"s{p}"
                    net = asyncio.run(
                        qb.load_network(db_url, schema, p, p * args.ties_per_person, ws=ws)
                    )
                    token = make_token(rs.settings, ws, "read")
                    ns = SimpleNamespace(
                        concurrency=1, seconds=args.seconds, profile=False, api_pid=None
                    )
                    res = asyncio.run(
                        qb.run_endpoints(
                            rs.api_url,
                            token,
                            db_url,
                            schema,
                            rs.settings.database_schema,
                            net,
                            ns,
                            ws=ws,
                            only=("pair strength", "top-50 ties", "warm paths"),
                        )
                    )
                    people.append(
                        {
                            "people": p,
                            "ties": net["ties"],
                            "load_s": net["load_s"],
                            "max_degree": max(net["degree"].values()),
                            **{
                                f"{k} p50_ms": v["http"]["p50_ms"]
                                for k, v in res.items()
                                if "http" in v
                            },
                            **{
                                f"{k} sql p50_ms": v["sql"]["p50_ms"]
                                for k, v in res.items()
                                if "sql" in v
                            },
                        }
                    )
    rows: list[Row] = []
    targets: list[Target] = []
    if events:
        n = [e["n"] for e in events]
        for key, label, unit, exp in (
            ("replay_s", "rebuild wall time", "s", 1.0),
            ("read_s", "raw JetStream read", "s", 1.0),
            ("copy_s", "raw COPY", "s", 1.0),
            ("rss_mib", "rebuild peak RSS", "MiB", 0.0),
        ):
            r, t = fit_rows(label, n, [e[key] for e in events], unit, exp, "events")
            rows.append(r)
            targets.append(t)
    if people:
        sizes = [p["people"] for p in people]
        r, t = fit_rows(
            "network load (COPY)", sizes, [p["load_s"] for p in people], "s", 1.0, "people"
        )
        rows.append(r)
        targets.append(t)
        for key in [k for k in people[0] if k.endswith("p50_ms")]:
            r, t = fit_rows(
                key.replace(" p50_ms", " p50 latency"),
                sizes,
                [p.get(key, float("nan")) for p in people],
                "ms",
                0.0,
                "people",
            )
            rows.append(r)
            targets.append(t)
    return finish_run(
        "scaling",
        "scaling: observed growth exponents",
        args,
        rows,
        targets,
        extra={"events": events, "people": people},
        started=started,
        before=before,
    )


def main(argv: list[str] | None = None) -> None:
    cli_main("scaling", __doc__, add_args, run, argv)


if __name__ == "__main__":
    main()
