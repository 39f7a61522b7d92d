"""Ingest: what a client can write into tieline, next to what JetStream takes from a plain
Python client on the same nats-server in the same run.

For each durability mode (``sync``: ``sync_interval: always``, fsync before every PubAck, the
default; ``lazy``: ``StackConfig(sync_always=False)``, the OS flushes when it likes) a whole
stack starts as ``tieline up`` runs it (embedded NATS with per-process users, PostgreSQL, api,
people, interactions, worker; the worker projects while we write, as in production). Then:

raw limits (nats-py, as the NATS admin user, into a stream configured like tieline's, with
``Nats-Msg-Id`` on every message and events encoded as tieline publishes them):
  * publish awaited one at a time;
  * ``publish_async`` with 4000 in flight (the reference for every ratio);
  * the same from 2 and 4 processes (does more publishers beat per-message fsync?).

tieline, over HTTP with aiohttp from this process, events spread over existing people:
  * single-event ``POST /events`` with 64 concurrent clients;
  * ``POST /events/batch`` JSON Lines, 500 events per request, 4 concurrent;
  * single events at a steady 500 events/s (latency from the scheduled send time; issue 15's
    p99 target is for that rate).

    python -m bench ingest                 # full
    python -m bench ingest --quick         # ~1 min
    python -m bench ingest --modes lazy --profile   # py-spy the api and interactions processes
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

from bench.common import (
    RESULTS_DIR,
    CpuMeter,
    Row,
    cli_main,
    collapsed_self_top,
    collapsed_top,
    finish_run,
    make_token,
    nats_connect,
    other_activity,
    postgres,
    postgres_pid,
    quiet_logging,
    running_stack,
    start_py_spy,
    stop_py_spy,
    temp_root,
)
from bench.events import LogEncoder, client_events
from bench.httpload import client, closed_loop, open_loop
from bench.issue15 import ingest_targets
from bench.natsraw import (
    ensure_raw_stream,
    publish_from_processes,
    publish_many_in_flight,
    publish_one_at_a_time,
)

WS = "bench"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modes", default="sync,lazy", help="comma list of sync,lazy")
    p.add_argument("--people", type=int, default=2_000)
    p.add_argument("--raw-one", type=int, default=3_000, help="raw one-at-a-time messages")
    p.add_argument("--raw-async", type=int, default=60_000, help="raw publish_async messages")
    p.add_argument("--procs", default="2,4", help="publisher process counts to try")
    p.add_argument("--single", type=int, default=12_000, help="single-event HTTP requests")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--batch", type=int, default=60_000, help="events sent through /events/batch")
    p.add_argument("--batch-lines", type=int, default=500)
    p.add_argument("--batch-concurrency", type=int, default=4)
    p.add_argument("--steady-rate", type=float, default=500.0)
    p.add_argument("--steady-seconds", type=float, default=20.0)
    p.add_argument(
        "--scale-out",
        type=int,
        default=1,
        help="extra interactions processes for a second batch pass (0: skip)",
    )
    p.add_argument(
        "--whatif-workers",
        type=int,
        default=64,
        help="then replace the interactions process by one whose FastStream "
        "subscriber has max_workers=N (bench/whatif.py) and repeat the single-"
        "event phases (0: skip)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the api and interactions processes during the HTTP phases",
    )
    p.add_argument("--quick", action="store_true")


def _quick(a: argparse.Namespace) -> None:
    a.people = min(a.people, 500)
    a.whatif_workers = a.whatif_workers and 64
    a.raw_one, a.raw_async, a.procs = 800, 15_000, "2"
    a.single, a.batch, a.steady_seconds, a.scale_out = 2_500, 10_000, 5.0, 0


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Phase:
    """CPU of every process of the stack (and of this client) during one phase."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.meter = CpuMeter({**pids, "bench client": os.getpid()}, solo={"bench client"})

    def __enter__(self) -> Phase:
        self.meter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = self.meter.stop()


async def _raw_phases(
    rs: Any, enc: LogEncoder, events: Any, a: argparse.Namespace, pids: dict[str, int | None]
) -> dict[str, Any]:
    nc = await nats_connect(rs.admin, "bench-raw")
    try:
        js = nc.jetstream(publish_async_max_pending=4000)
        stream = f"RAW_{uuid.uuid4().hex[:8]}"
        await ensure_raw_stream(js, stream, [f"{enc.prefix}.>"])
        one = [enc.encode(o) for o in itertools.islice(events, a.raw_one)]
        many = [enc.encode(o) for o in itertools.islice(events, a.raw_async)]
        out: dict[str, Any] = {"stream": stream}
        with Phase(pids) as ph:
            out["one"] = await publish_one_at_a_time(js, stream, one)
        out["one_cpu"] = ph.cpu
        with Phase(pids) as ph:
            out["async"] = await publish_many_in_flight(js, stream, many)
        out["async_cpu"] = ph.cpu
        out["payloads"] = [m[1] for m in many[:2000]]
        return out
    finally:
        await nc.close()


def _extra_interactions(rs: Any, n: int) -> list[subprocess.Popen[bytes]]:
    """Start ``n`` more interactions processes (they join the same NATS queue group)."""
    procs = []
    for _ in range(n):
        logs = rs.stack.config.data_dir / "logs"
        log = (logs / f"interactions-extra-{len(procs)}.log").open("ab")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tieline.services.runtime.run", "interactions"],
                env=rs.stack.child_env("interactions"),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()
    time.sleep(4.0)
    return procs


def measure_mode(rs: Any, a: argparse.Namespace, mode: str) -> dict[str, Any]:
    token = make_token(rs.settings, WS, "write")
    n_needed = (
        a.raw_one
        + a.raw_async
        + 2 * a.single
        + a.batch * (2 if a.scale_out else 1)
        + 2 * int(a.steady_rate * a.steady_seconds)
        + 10
    )
    evs = client_events(a.people, a.people + n_needed, seed=11)
    people = [next(evs) for _ in range(a.people)]
    interactions = iter(evs)
    url = rs.api_url
    out: dict[str, Any] = {"mode": mode}
    profiles = RESULTS_DIR / "profiles"
    pids = rs.pids()
    if not pids.get("postgres"):
        pids["postgres"] = postgres_pid(rs.settings.database_url)

    async def setup() -> None:
        async with client(url, token, 8) as http:
            for i in range(0, len(people), 500):
                body = b"\n".join(_dumps(p) for p in people[i : i + 500])
                r = await http.post(
                    f"/v1/workspaces/{WS}/events/batch",
                    content=body,
                    headers={"content-type": "application/x-ndjson"},
                )
                r.raise_for_status()
                if r.json()["rejected"]:
                    raise RuntimeError(f"people rejected: {r.text[:500]}")

    asyncio.run(setup())
    print(f"[ingest:{mode}] raw JetStream publishes ...", flush=True)
    raw_enc = LogEncoder(WS, f"raw{uuid.uuid4().hex[:6]}")
    raw = asyncio.run(_raw_phases(rs, raw_enc, interactions, a, pids))
    out["raw_one"], out["raw_async"] = raw["one"].summary(), raw["async"].summary()
    out["raw_one_cpu"], out["raw_async_cpu"] = raw["one_cpu"], raw["async_cpu"]
    out["raw_procs"] = {}
    for k in [int(x) for x in a.procs.split(",") if x.strip()]:
        res = publish_from_processes(
            rs.admin, raw["stream"], f"{raw_enc.prefix}.mp{k}", raw["payloads"], a.raw_async, k
        )
        out["raw_procs"][k] = res.summary()

    def spy(name: str, seconds: float) -> list[Any]:
        if not a.profile:
            return []
        return [
            (
                role,
                start_py_spy(
                    pids[role], seconds + 5, profiles / f"ingest-{mode}-{name}-{role}.txt"
                ),
            )
            for role in ("api", "interactions")
            if pids.get(role)
        ]

    def unspy(spies: list[Any], name: str) -> None:
        for role, proc in spies:
            stop_py_spy(proc)
            path = profiles / f"ingest-{mode}-{name}-{role}.txt"
            out.setdefault("profiles", {})[f"{name}:{role}"] = {
                "file": str(path),
                "top_inclusive": collapsed_top(path, 30),
                "top_self": collapsed_self_top(path, 15),
            }

    print(f"[ingest:{mode}] single-event HTTP, {a.concurrency} concurrent ...", flush=True)
    single_bodies = [_dumps(o) for o in itertools.islice(interactions, a.single)]
    spies = spy("single", 600)
    with Phase(pids) as ph:
        single = asyncio.run(
            _closed(
                url,
                token,
                f"/v1/workspaces/{WS}/events",
                single_bodies,
                a.concurrency,
                "application/json",
            )
        )
    unspy(spies, "single")
    out["single"], out["single_cpu"] = single.summary(), ph.cpu

    print(
        f"[ingest:{mode}] batch HTTP, {a.batch_lines}/request, {a.batch_concurrency} "
        "concurrent ...",
        flush=True,
    )

    def batch_bodies() -> list[bytes]:
        lines = [_dumps(o) for o in itertools.islice(interactions, a.batch)]
        return [
            b"\n".join(lines[i : i + a.batch_lines]) for i in range(0, len(lines), a.batch_lines)
        ]

    bodies = batch_bodies()
    spies = spy("batch", 600)
    with Phase(pids) as ph:
        batch = asyncio.run(
            _closed(
                url,
                token,
                f"/v1/workspaces/{WS}/events/batch",
                bodies,
                a.batch_concurrency,
                "application/x-ndjson",
                batch=True,
            )
        )
    unspy(spies, "batch")
    out["batch"], out["batch_cpu"] = batch.summary(), ph.cpu

    if a.scale_out:
        print(
            f"[ingest:{mode}] batch HTTP with {a.scale_out} extra interactions process(es) ...",
            flush=True,
        )
        extra = _extra_interactions(rs, a.scale_out)
        try:
            bodies = batch_bodies()
            with Phase(pids) as ph:
                b2 = asyncio.run(
                    _closed(
                        url,
                        token,
                        f"/v1/workspaces/{WS}/events/batch",
                        bodies,
                        a.batch_concurrency,
                        "application/x-ndjson",
                        batch=True,
                    )
                )
            out["batch_scaled"], out["batch_scaled_cpu"] = b2.summary(), ph.cpu
        finally:
            for p in extra:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)

    print(
        f"[ingest:{mode}] steady {a.steady_rate:g} events/s for {a.steady_seconds:g}s ...",
        flush=True,
    )
    steady_bodies = [
        _dumps(o) for o in itertools.islice(interactions, int(a.steady_rate * a.steady_seconds))
    ]
    with Phase(pids) as ph:
        steady = asyncio.run(
            _open(url, token, f"/v1/workspaces/{WS}/events", steady_bodies, a.steady_rate)
        )
    out["steady"], out["steady_cpu"] = steady.summary(), ph.cpu

    if a.whatif_workers:
        print(
            f"[ingest:{mode}] what-if: interactions with max_workers={a.whatif_workers} ...",
            flush=True,
        )
        rs.stack.kill_role("interactions", signal.SIGTERM)
        log = (rs.stack.config.data_dir / "logs" / "interactions-whatif.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.whatif",
                "--max-workers",
                str(a.whatif_workers),
                "interactions",
            ],
            env=rs.stack.child_env("interactions"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        time.sleep(5.0)
        wpids = {**pids, "interactions": proc.pid}
        try:
            bodies = [_dumps(o) for o in itertools.islice(interactions, a.single)]
            with Phase(wpids) as ph:
                w1 = asyncio.run(
                    _closed(
                        url,
                        token,
                        f"/v1/workspaces/{WS}/events",
                        bodies,
                        a.concurrency,
                        "application/json",
                    )
                )
            out["whatif_single"], out["whatif_single_cpu"] = w1.summary(), ph.cpu
            bodies = [
                _dumps(o)
                for o in itertools.islice(interactions, int(a.steady_rate * a.steady_seconds))
            ]
            with Phase(wpids) as ph:
                w2 = asyncio.run(
                    _open(url, token, f"/v1/workspaces/{WS}/events", bodies, a.steady_rate)
                )
            out["whatif_steady"], out["whatif_steady_cpu"] = w2.summary(), ph.cpu
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return out


async def _closed(
    url: str,
    token: str,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    ctype: str,
    batch: bool = False,
) -> Any:
    def count(r: Any) -> int:
        return int(r.json()["accepted"]) if batch else 1

    async with client(url, token, concurrency) as http:
        return await closed_loop(
            http, path, bodies, concurrency=concurrency, content_type=ctype, events_per_body=count
        )


async def _open(url: str, token: str, path: str, bodies: list[bytes], per_s: float) -> Any:
    async with client(url, token, 256, timeout=10.0) as http:
        return await open_loop(http, path, bodies, per_s=per_s)


def rows_for(m: dict[str, Any]) -> list[Row]:
    mode = m["mode"]
    ref = m["raw_async"]["events_per_s"]
    refname = f"raw publish_async 4000 in flight ({mode})"
    rows = [
        Row(
            f"[{mode}] tieline batch HTTP (500/request)",
            m["batch"]["events_per_s"],
            "events/s",
            refname,
            ref,
            note=f"p50 {m['batch']['p50_ms']:.0f} ms p99 {m['batch']['p99_ms']:.0f}"
            f" ms per request; errors {m['batch']['errors'] or 0}",
            extra={"cpu_s": m["batch_cpu"]},
        ),
        Row(
            f"[{mode}] tieline single-event HTTP (64 concurrent)",
            m["single"]["events_per_s"],
            "events/s",
            refname,
            ref,
            note=f"p50 {m['single']['p50_ms']:.1f} ms p99 {m['single']['p99_ms']:.1f} ms; "
            f"errors {m['single']['errors'] or 0}; "
            f"client CPU {m['single']['client_cpu_s']:.0f}s",
            extra={"cpu_s": m["single_cpu"]},
        ),
        Row(
            f"[{mode}] tieline single-event p99 at {m['steady']['events_per_s']:.0f}/s steady",
            m["steady"]["p99_ms"],
            "ms",
            "raw one-at-a-time publish p99",
            m["raw_one"]["p99_ms"],
            note=f"p50 {m['steady']['p50_ms']:.1f} ms, max {m['steady']['max_ms']:.0f} ms; "
            f"errors {m['steady']['errors'] or 0}"
            + (
                "; SATURATED: could not sustain the rate, stopped sending"
                if m["steady"]["saturated"]
                else ""
            ),
            extra={"cpu_s": m["steady_cpu"]},
        ),
        Row(
            f"[{mode}] raw publish_async, 4000 in flight",
            ref,
            "events/s",
            note=f"p50 {m['raw_async']['p50_ms']:.1f} ms p99 {m['raw_async']['p99_ms']:.1f} ms "
            "(queueing at saturation)",
            extra={"cpu_s": m["raw_async_cpu"]},
        ),
        Row(
            f"[{mode}] raw publish one at a time",
            m["raw_one"]["events_per_s"],
            "events/s",
            refname,
            ref,
            note=f"p50 {m['raw_one']['p50_ms']:.2f} ms p99 {m['raw_one']['p99_ms']:.2f} ms",
        ),
    ]
    for k, r in m["raw_procs"].items():
        rows.append(
            Row(
                f"[{mode}] raw publish_async from {k} processes",
                r["events_per_s"],
                "events/s",
                refname,
                ref,
                note="several publishers vs fsync cost",
            )
        )
    if "whatif_single" in m:
        w, ws = m["whatif_single"], m["whatif_steady"]
        rows.append(
            Row(
                f"[{mode}] what-if: single-event HTTP, interactions max_workers=N",
                w["events_per_s"],
                "events/s",
                refname,
                ref,
                note=f"p50 {w['p50_ms']:.1f} ms p99 {w['p99_ms']:.1f} ms; errors "
                f"{w['errors'] or 0} (product unchanged; bench/whatif.py)",
                extra={"cpu_s": m["whatif_single_cpu"]},
            )
        )
        rows.append(
            Row(
                f"[{mode}] what-if: single-event p99 at {ws['events_per_s']:.0f}/s steady",
                ws["p99_ms"],
                "ms",
                "raw one-at-a-time publish p99",
                m["raw_one"]["p99_ms"],
                note=f"p50 {ws['p50_ms']:.1f} ms; errors {ws['errors'] or 0}"
                + ("; SATURATED" if ws["saturated"] else ""),
                extra={"cpu_s": m["whatif_steady_cpu"]},
            )
        )
    if "batch_scaled" in m:
        rows.append(
            Row(
                f"[{mode}] tieline batch HTTP, +1 interactions process",
                m["batch_scaled"]["events_per_s"],
                "events/s",
                refname,
                ref,
                extra={"cpu_s": m["batch_scaled_cpu"]},
            )
        )
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        _quick(args)
    quiet_logging()
    started = time.time()
    before = other_activity()
    results: dict[str, dict[str, Any]] = {}
    with temp_root() as root, postgres(root) as db_url:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            print(f"[ingest:{mode}] starting the stack ...", flush=True)
            with running_stack(root / f"stack-{mode}", db_url, sync_always=mode == "sync") as rs:
                results[mode] = measure_mode(rs, args, mode)
    rows = [r for m in results.values() for r in rows_for(m)]
    targets = ingest_targets(results, args.steady_rate)
    return finish_run(
        "ingest",
        "ingest",
        args,
        rows,
        targets,
        extra=results,
        started=started,
        before=before,
    )


def main(argv: list[str] | None = None) -> None:
    cli_main("ingest", __doc__, add_args, run, argv)


if __name__ == "__main__":
    main()
