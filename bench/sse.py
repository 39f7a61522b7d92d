"""Live updates: many concurrent SSE clients, delivery delay from write acknowledgement.

A whole stack (``tieline up``'s processes) runs on this machine. ``--clients`` SSE clients
(aiohttp, spread over ``--client-procs`` processes) hold ``GET /v1/workspaces/{ws}/stream``
open with ``kinds=event.recorded``, while single ``relationship.met`` events are written over
HTTP at ``--rate`` events/s (open loop). For every delivery of a sampled event the client
notes when it arrived; the delay is that time minus the moment the write's HTTP answer (its
acknowledgement, with the stream ``seq``) came back. The clock is CLOCK_MONOTONIC, shared by
all processes on the machine. Deliveries that never arrive, cut-offs (``overflow``) and
dropped connections are counted; the API's resident memory (VmRSS idle, with the clients
connected, and its peak VmHWM) and CPU are reported.

Filters (``--filter``):

* ``person`` (default): each client watches one person (``?person=``); people are shared
  evenly by the clients and every event names two people, so each event goes to about
  ``2 * clients / people`` clients (a front end showing one person's relationships);
* ``workspace``: every client receives every event (a dashboard of the whole workspace): the
  fan-out is ``clients`` deliveries per event.

    python -m bench sse                          # 1,000 clients, 200 events/s for 30 s
    python -m bench sse --filter workspace --rate 20
    python -m bench sse --quick                  # 200 clients, 10 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CpuMeter,
    Row,
    cli_main,
    finish_run,
    judge,
    make_token,
    other_activity,
    postgres,
    postgres_pid,
    quiet_logging,
    running_stack,
    summarize,
    temp_root,
)
from bench.freshness import CheckpointListener, visibility_delays
from bench.httpload import client, open_loop

WS = "bench"
_SEQ = re.compile(rb'"seq":(\d+)')


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--rate", type=float, default=200.0, help="events/s written")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--people", type=int, default=200)
    p.add_argument("--filter", choices=("person", "workspace"), default="person")
    p.add_argument(
        "--sample-every",
        type=int,
        default=0,
        help="record every n-th seq (0: all, or 10 for the workspace filter)",
    )
    p.add_argument("--quick", action="store_true")


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


# -- the client processes ----------------------------------------------------------------------


def parse_deliveries(buf: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Complete SSE messages in ``buf`` as (event, data) and the unfinished rest."""
    out = []
    *done, rest = buf.split(b"\n\n")
    for msg in done:
        event, data = b"message", b""
        for line in msg.split(b"\n"):
            if line.startswith(b"event: "):
                event = line[7:]
            elif line.startswith(b"data: "):
                data = line[6:]
        if data:
            out.append((event.decode(), data))
    return out, rest


async def _client_proc(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    url, token, queries = spec["url"], spec["token"], spec["queries"]
    sample = max(int(spec["sample_every"]), 1)
    records: list[tuple[int, int, float]] = []  # (client index, seq, arrival)
    counts = {"messages": 0, "overflow": 0, "reset": 0, "ended": 0, "errors": 0}
    connected = asyncio.Semaphore(0)
    session = aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {token}"},
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
    )
    gate = asyncio.Semaphore(50)  # connects at a time

    async def one(i: int, query: str) -> None:
        try:
            async with gate:
                resp = await session.get(f"{url}/v1/workspaces/{WS}/stream?{query}")
            async with resp:
                if resp.status != 200:
                    counts["errors"] += 1
                    connected.release()
                    return
                connected.release()
                buf = b""
                async for chunk in resp.content.iter_any():
                    now = time.perf_counter()
                    msgs, buf = parse_deliveries(buf + chunk)
                    for event, data in msgs:
                        if event == "event.recorded":
                            counts["messages"] += 1
                            m = _SEQ.search(data)
                            if m is not None and int(m.group(1)) % sample == 0:
                                records.append((i, int(m.group(1)), now))
                        elif event in ("overflow", "reset"):
                            counts[event] += 1
                counts["ended"] += 1
        except Exception:
            counts["errors"] += 1
            connected.release()

    tasks = [asyncio.create_task(one(i, q)) for i, q in queries]
    for _ in tasks:
        await connected.acquire()
    print(f"READY {len(tasks)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await session.close()
    return {"records": records, "counts": counts}


def client_main() -> None:
    """``python -m bench.sse --client SPEC.json OUT.json``: one client process."""
    spec = json.loads(Path(sys.argv[2]).read_text())
    result = asyncio.run(_client_proc(spec))
    Path(sys.argv[3]).write_text(json.dumps(result))
    print("DONE", flush=True)


# -- the run -----------------------------------------------------------------------------------


def plan(args: argparse.Namespace, people: list[str]) -> list[tuple[int, str]]:
    """(client index, query) of every client."""
    if args.filter == "workspace":
        return [(i, "kinds=event.recorded") for i in range(args.clients)]
    return [
        (i, f"kinds=event.recorded&person={people[i % len(people)]}") for i in range(args.clients)
    ]


def met_bodies(
    people: list[str], n: int, seed: int = 11
) -> tuple[list[bytes], list[tuple[str, str]]]:
    rng = random.Random(seed)
    bodies, pairs = [], []
    for _ in range(n):
        a, b = rng.sample(people, 2)
        pairs.append((a, b))
        obj = {"type": "relationship.met", "participants": [a, b], "depth": "brief_chat"}
        bodies.append(json.dumps(obj, separators=(",", ":")).encode())
    return bodies, pairs


def start_clients(
    root: Path, args: argparse.Namespace, url: str, token: str, queries: list[tuple[int, str]]
) -> list[tuple[subprocess.Popen[str], Path]]:
    procs = []
    k = max(args.client_procs, 1)
    for n in range(k):
        spec = root / f"sse-client-{n}.json"
        out = root / f"sse-client-{n}.out.json"
        spec.write_text(
            json.dumps(
                {
                    "url": url,
                    "token": token,
                    "queries": queries[n::k],
                    "sample_every": args.sample_every,
                }
            )
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sse", "--client", str(spec), str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        procs.append((proc, out))
    for proc, _ in procs:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("READY"):
            raise RuntimeError(f"an SSE client process did not connect: {line!r}")
    return procs


def stop_clients(procs: list[tuple[subprocess.Popen[str], Path]]) -> list[dict[str, Any]]:
    results = []
    for proc, _ in procs:
        assert proc.stdin is not None
        proc.stdin.write("STOP\n")
        proc.stdin.flush()
    for proc, out in procs:
        proc.wait(timeout=120)
        results.append(json.loads(out.read_text()))
    return results


def delays_of(
    results: list[dict[str, Any]],
    acks: dict[int, float],
    watchers: dict[int, int],
    sample: int,
) -> tuple[list[float], int, int]:
    """(delays of every recorded delivery, deliveries expected of the sampled seqs, missing)."""
    delays = []
    got = 0
    for r in results:
        for _, seq, t in r["records"]:
            if seq in acks:
                delays.append(max(t - acks[seq], 0.0))
                got += 1
    expected = sum(n for seq, n in watchers.items() if seq % sample == 0 and seq in acks)
    return delays, expected, max(expected - got, 0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.clients, args.seconds = min(args.clients, 200), min(args.seconds, 10.0)
    if not args.sample_every:
        args.sample_every = 10 if args.filter == "workspace" else 1
    quiet_logging()
    started = time.time()
    before = other_activity()
    people = [f"p{i:04d}" for i in range(args.people)]
    with temp_root() as root, postgres(root) as db_url:
        with running_stack(root / "stack", db_url, sync_always=False) as rs:
            token = make_token(rs.settings, WS, "write")
            _add_people(rs.api_url, token, people)
            api_pid = rs.stack.children["api"].pid
            idle = rss_kib(api_pid)
            queries = plan(args, people)
            print(f"[sse] connecting {args.clients} clients ({args.filter}) ...", flush=True)
            t_connect = time.perf_counter()
            procs = start_clients(root, args, rs.api_url, token, queries)
            connect_s = time.perf_counter() - t_connect
            connected = rss_kib(api_pid)
            pids = rs.pids()
            pids["postgres"] = pids.get("postgres") or postgres_pid(db_url)
            for n, (proc, _) in enumerate(procs):
                pids[f"clients-{n}"] = proc.pid
            meter = CpuMeter(pids)
            bodies, pairs = met_bodies(people, int(args.rate * args.seconds))
            print(f"[sse] {args.rate:g} events/s for {args.seconds:g}s ...", flush=True)
            with CheckpointListener(db_url) as listener:
                meter.start()
                res = asyncio.run(_write(rs.api_url, token, bodies, args.rate))
                time.sleep(3.0)  # the last deliveries
                cpu = meter.stop()
            loaded = rss_kib(api_pid)
            results = stop_clients(procs)
    watch = {p: sum(1 for _, q in queries if q.endswith(f"person={p}")) for p in people}
    acks = {seq: t for t, seq, _ in res.acks}
    watchers = {}
    for t, seq, i in res.acks:
        del t
        a, b = pairs[i]
        watchers[seq] = args.clients if args.filter == "workspace" else watch[a] + watch[b]
    delays, expected, missing = delays_of(results, acks, watchers, args.sample_every)
    # Same-run reference: when the projection's commit of each write was announced (NOTIFY),
    # the earliest an SSE message about it could leave the API.
    commit = summarize(visibility_delays([(t, q) for t, q, _ in res.acks], listener.events)[0])
    counts = {k: sum(r["counts"][k] for r in results) for k in results[0]["counts"]}
    s = summarize(delays)
    fanout = sum(watchers.values()) / max(len(watchers), 1)
    label = f"{args.clients} clients, {args.filter} filter"
    rows = [
        Row(
            f"[{label}] delivery delay p50",
            s["p50_ms"],
            "ms",
            "projection commit p50",
            commit["p50_ms"],
            note=f"{s['n']} deliveries timed",
        ),
        Row(
            f"[{label}] delivery delay p99",
            s["p99_ms"],
            "ms",
            "projection commit p99",
            commit["p99_ms"],
            note=f"max {s['max_ms']:.0f} ms; missing {missing} of {expected} expected",
        ),
        Row(
            f"[{label}] write rate achieved",
            res.events_per_s,
            "events/s",
            note=f"asked {args.rate:g}/s; fan-out {fanout:.1f} deliveries per event "
            f"({fanout * res.events_per_s:,.0f}/s); write errors {res.errors or 0}"
            + ("; SATURATED" if res.saturated else ""),
        ),
        Row(
            f"[{label}] API RSS idle / connected / after load",
            connected["VmRSS"] / 1024,
            "MiB",
            note=f"idle {idle['VmRSS'] / 1024:.0f} MiB, after load {loaded['VmRSS'] / 1024:.0f} "
            f"MiB, peak {loaded['VmHWM'] / 1024:.0f} MiB; "
            f"{(connected['VmRSS'] - idle['VmRSS']) / max(args.clients, 1):.1f} KiB per client",
        ),
        Row(
            f"[{label}] connect all clients",
            connect_s,
            "s",
            note=f"cut off {counts['overflow']}, resets {counts['reset']}, streams ended "
            f"{counts['ended']}, errors {counts['errors']}",
            extra={"cpu_s": cpu},
        ),
    ]
    targets = [
        judge(
            f"[{label}] delivery p99 < 100 ms at {args.rate:g} events/s",
            s["p99_ms"] if missing == 0 else float("inf"),
            100,
            at_least=False,
            measured=f"p99 {s['p99_ms']:.1f} ms, missing {missing}, at {res.events_per_s:,.0f}/s "
            f"to {args.clients} clients; API CPU {cpu.get('api', 0) / max(cpu['wall'], 1e-9):.0%}; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
            reason_if_missed="see the CPU split: one API process writes every delivery",
        )
    ]
    extra = {
        "delay": s,
        "commit": commit,
        "load_average": os.getloadavg(),
        "write": res.summary(),
        "cpu_s": cpu,
        "rss_kib": {"idle": idle, "connected": connected, "after": loaded},
        "counts": counts,
        "expected": expected,
        "missing": missing,
        "fanout": fanout,
    }
    name = "sse" if args.filter == "person" else "sse-workspace"
    return finish_run(
        name,
        f"{name}: write acknowledged -> SSE delivery",
        args,
        rows,
        targets,
        extra=extra,
        started=started,
        before=before,
    )


def _add_people(url: str, token: str, people: list[str]) -> None:
    async def go() -> None:
        async with client(url, token, 4) as http:
            body = b"\n".join(
                json.dumps({"type": "person.added", "person_id": p, "display_name": p}).encode()
                for p in people
            )
            r = await http.post(
                f"/v1/workspaces/{WS}/events/batch",
                content=body,
                headers={"content-type": "application/x-ndjson"},
            )
            assert r.status_code == 200, r.status_code

    asyncio.run(go())
    time.sleep(2.0)  # projected before the meetings name them


async def _write(url: str, token: str, bodies: list[bytes], per_s: float) -> Any:
    async with client(url, token, 256, timeout=10) as http:
        return await open_loop(http, f"/v1/workspaces/{WS}/events", bodies, per_s=per_s)


def main(argv: list[str] | None = None) -> None:
    cli_main("sse", __doc__, add_args, run, argv)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main()
    else:
        main()
