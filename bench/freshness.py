"""Freshness: how long after a write is acknowledged its effect can be read.

A whole stack (``tieline up``'s processes) takes single events over HTTP at a steady rate
(default 1k events/s for 60 s, open loop). For each acknowledged write (its stream ``seq``):

* commit visibility: the projection commits a batch with ``pg_notify('tieline_checkpoint',
  last_seq)``; a listener thread records when each checkpoint arrives, so the time from the
  write's acknowledgement to the first checkpoint >= its seq is measured for every write;
* through the query API: every ``--probe-every``-th acknowledged write is read back with
  ``GET /relationships/{a}/{b}?min_seq=<seq>``; the time from its acknowledgement to that
  answer is what a client doing read-your-writes sees (it includes one GET round trip, so the
  same GET without ``min_seq`` is sampled as well for reference).

Raw reference in the same run, on the same servers: a plain publisher at the same rate, a
nats-py pull fetch(500) loop committing each batch (rows + a checkpoint) to PostgreSQL, and
the time from each PubAck to the commit that contains it.

    python -m bench freshness                       # 1k/s for 60 s, lazy fsync
    python -m bench freshness --mode sync
    python -m bench freshness --quick               # 300/s for 10 s
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import threading
import time
import uuid
from typing import Any

from bench.common import (
    CpuMeter,
    Row,
    cli_main,
    finish_run,
    judge,
    make_token,
    nats_connect,
    other_activity,
    postgres,
    postgres_pid,
    quiet_logging,
    running_stack,
    summarize,
    temp_root,
)
from bench.events import client_events
from bench.httpload import client, open_loop

WS = "bench"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=1000.0, help="events/s")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--mode", choices=("sync", "lazy"), default="lazy")
    p.add_argument("--people", type=int, default=2_000)
    p.add_argument(
        "--probe-every",
        type=int,
        default=10,
        help="read back every n-th acknowledged write through the API",
    )
    p.add_argument(
        "--via",
        choices=("single", "batch"),
        default="single",
        help="write path: single-event POST /events, or POST /events/batch with "
        "--batch-lines events per request (same events/s)",
    )
    p.add_argument("--batch-lines", type=int, default=10)
    p.add_argument("--quick", action="store_true")


def pair_of(obj: dict[str, Any]) -> tuple[str, str] | None:
    """The first pair of people an event object (client form) is about."""
    t = obj.get("type")
    if t == "relationship.met":
        ps = obj.get("participants") or []
        return (ps[0], ps[1]) if len(ps) >= 2 else None
    keys = {
        "relationship.followed_up": ("from_person", "to_person"),
        "relationship.helped": ("helper", "helped"),
        "relationship.closeness_rated": ("rater", "ratee"),
        "relationship.introduced": ("person_a", "person_b"),
    }.get(str(t))
    return (obj[keys[0]], obj[keys[1]]) if keys else None


def visibility_delays(
    acks: list[tuple[float, int]], checkpoints: list[tuple[float, int]]
) -> tuple[list[float], int]:
    """For each (ack time, seq): time until the first checkpoint (time, last_seq) with
    last_seq >= seq arriving at or after... any time (a checkpoint may even precede the ack:
    then the delay is 0). Returns (delays, writes never seen)."""
    cps = sorted(checkpoints)
    # Running maximum of last_seq over time, so "first time the checkpoint reached seq" is a
    # binary search.
    times, maxes = [], []
    best = -1
    for t, s in cps:
        if s > best:
            best = s
            times.append(t)
            maxes.append(s)
    out, missing = [], 0
    for t_ack, seq in acks:
        i = bisect.bisect_left(maxes, seq)
        if i == len(maxes):
            missing += 1
            continue
        out.append(max(times[i] - t_ack, 0.0))
    return out, missing


class CheckpointListener:
    """LISTEN tieline_checkpoint in a thread of its own; records (perf_counter, last_seq)."""

    def __init__(self, database_url: str, channel: str = "tieline_checkpoint") -> None:
        self.database_url, self.channel = database_url, channel
        self.events: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(f"LISTEN {self.channel}")
            self._ready.set()
            while not self._stop.is_set():
                for n in conn.notifies(timeout=0.2):
                    with_time = (time.perf_counter(), int(n.payload.split()[-1]))
                    self.events.append(with_time)

    def __enter__(self) -> CheckpointListener:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def raw_pipeline(
    settings: Any, database_url: str, per_s: float, seconds: float
) -> dict[str, Any]:
    """Publisher at ``per_s`` -> pull fetch(500) loop -> one PostgreSQL transaction per batch
    (rows + checkpoint). Freshness = PubAck -> commit containing the message."""
    import psycopg
    from nats.js import api as js_api

    from bench.natsraw import ensure_raw_stream

    nc = await nats_connect(settings, "bench-raw-fresh")
    js = nc.jetstream()
    tag = uuid.uuid4().hex[:8]
    stream, subject = f"RAWF_{tag}", f"rawf{tag}.x"
    await ensure_raw_stream(js, stream, [f"rawf{tag}.>"])
    sub = await js.pull_subscribe(
        subject,
        durable="rawf",
        stream=stream,
        config=js_api.ConsumerConfig(ack_policy=js_api.AckPolicy.ALL, max_ack_pending=2000),
    )
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    await conn.execute(f"CREATE TABLE rawf_{tag} (seq bigint PRIMARY KEY, data bytea)")
    await conn.execute(f"CREATE TABLE rawf_cp_{tag} (id int PRIMARY KEY, last_seq bigint)")
    await conn.execute(f"INSERT INTO rawf_cp_{tag} VALUES (1, 0)")
    acks: list[tuple[float, int]] = []
    commits: list[tuple[float, int]] = []
    stop = asyncio.Event()
    total = int(per_s * seconds)
    payload = b"x" * 400

    async def consume() -> None:
        while not stop.is_set() or (commits and commits[-1][1] < (acks[-1][1] if acks else 0)):
            try:
                msgs = await sub.fetch(500, timeout=0.5)
            except Exception:
                if stop.is_set() and len(commits) and acks and commits[-1][1] >= acks[-1][1]:
                    return
                continue
            rows = [(m.metadata.sequence.stream, m.data) for m in msgs]
            async with conn.transaction():
                async with conn.cursor() as cur:
                    await cur.executemany(f"INSERT INTO rawf_{tag} VALUES (%s, %s)", rows)
                await conn.execute(
                    f"UPDATE rawf_cp_{tag} SET last_seq = %s WHERE id = 1", (rows[-1][0],)
                )
            commits.append((time.perf_counter(), rows[-1][0]))
            await msgs[-1].ack()

    async def publish(i: int) -> None:
        ack = await js.publish(
            subject, payload, headers={"Nats-Msg-Id": f"{tag}-{i}"}, stream=stream
        )
        acks.append((time.perf_counter(), int(ack.seq)))

    consumer = asyncio.create_task(consume())
    t0 = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = t0 + i / per_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(publish(i)))
    await asyncio.gather(*tasks)
    stop.set()
    try:
        await asyncio.wait_for(consumer, 30)
    except TimeoutError:
        consumer.cancel()
    await conn.execute(f"DROP TABLE rawf_{tag}, rawf_cp_{tag}")
    await conn.close()
    await nc.close()
    delays, missing = visibility_delays(acks, commits)
    return {"summary": summarize(delays), "missing": missing, "writes": len(acks)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.rate, args.seconds, args.people = (
            min(args.rate, 300.0),
            min(args.seconds, 10.0),
            min(args.people, 500),
        )
    quiet_logging()
    started = time.time()
    before = other_activity()
    with temp_root() as root, postgres(root) as db_url:
        with running_stack(root / "stack", db_url, sync_always=args.mode == "sync") as rs:
            token = make_token(rs.settings, WS, "write")
            evs = client_events(
                args.people, args.people + int(args.rate * args.seconds) + 10, seed=5
            )
            people = [next(evs) for _ in range(args.people)]
            objs = list(itertools.islice(evs, int(args.rate * args.seconds)))
            lines = [json.dumps(o, separators=(",", ":")).encode() for o in objs]
            per_body = args.batch_lines if args.via == "batch" else 1
            bodies = [b"\n".join(lines[i : i + per_body]) for i in range(0, len(lines), per_body)]
            pairs = [pair_of(o) for o in objs]

            async def setup() -> None:
                async with client(rs.api_url, token, 4) as http:
                    for i in range(0, len(people), 500):
                        body = b"\n".join(json.dumps(p).encode() for p in people[i : i + 500])
                        r = await http.post(
                            f"/v1/workspaces/{WS}/events/batch",
                            content=body,
                            headers={"content-type": "application/x-ndjson"},
                        )
                        r.raise_for_status()

            asyncio.run(setup())
            time.sleep(2.0)  # let the worker project the people
            pids = rs.pids()
            pids["postgres"] = pids.get("postgres") or postgres_pid(db_url)
            meter = CpuMeter(pids)
            probes: list[float] = []
            plain: list[float] = []
            probe_errors: dict[str, int] = {}

            async def load() -> Any:
                async with (
                    client(rs.api_url, token, 256, timeout=10) as http,
                    client(rs.api_url, token, 64, timeout=10) as reader,
                ):
                    pending: list[asyncio.Task[None]] = []
                    n_acks = 0

                    async def probe(t_ack: float, seq: int, i: int, with_min_seq: bool) -> None:
                        pair = pairs[i]
                        if pair is None:
                            return
                        q = f"?min_seq={seq}" if with_min_seq else ""
                        try:
                            r = await reader.get(
                                f"/v1/workspaces/{WS}/relationships/{pair[0]}/{pair[1]}{q}"
                            )
                        except Exception as exc:
                            probe_errors[type(exc).__name__] = (
                                probe_errors.get(type(exc).__name__, 0) + 1
                            )
                            return
                        if r.status_code != 200:
                            probe_errors[str(r.status_code)] = (
                                probe_errors.get(str(r.status_code), 0) + 1
                            )
                            return
                        (probes if with_min_seq else plain).append(time.perf_counter() - t_ack)

                    def on_ack(t_ack: float, seq: int, i: int) -> None:
                        nonlocal n_acks
                        n_acks += 1
                        if n_acks % args.probe_every == 0:
                            pending.append(asyncio.create_task(probe(t_ack, seq, i, True)))
                        elif n_acks % args.probe_every == args.probe_every // 2 and i >= 20:
                            # The same GET, for a pair written long ago: the read alone.
                            pending.append(
                                asyncio.create_task(probe(time.perf_counter(), 0, i // 2, False))
                            )

                    if per_body > 1:
                        res = await open_loop(
                            http,
                            f"/v1/workspaces/{WS}/events/batch",
                            bodies,
                            per_s=args.rate,
                            on_ack=on_ack,
                            lines_per_body=per_body,
                            content_type="application/x-ndjson",
                        )
                    else:
                        res = await open_loop(
                            http,
                            f"/v1/workspaces/{WS}/events",
                            bodies,
                            per_s=args.rate,
                            on_ack=on_ack,
                        )
                    await asyncio.gather(*pending)
                    return res

            print(
                f"[freshness] {args.rate:g} events/s for {args.seconds:g}s over HTTP "
                f"({rs.mode}, {args.via}) ...",
                flush=True,
            )
            with CheckpointListener(db_url) as listener:
                meter.start()
                res = asyncio.run(load())
                cpu = meter.stop()
                time.sleep(2.0)
            acks = [(t, s) for t, s, _ in res.acks]
            delays, missing = visibility_delays(acks, listener.events)
            print("[freshness] raw pipeline reference ...", flush=True)
            raw = asyncio.run(raw_pipeline(rs.admin, db_url, args.rate, args.seconds))
            mode = rs.mode
    label = mode if args.via == "single" else f"{mode}, batches of {args.batch_lines}"
    commit = summarize(delays)
    api = summarize(probes)
    read = summarize(plain)
    rows = [
        Row(
            f"[{label}] freshness to commit p50",
            commit["p50_ms"],
            "ms",
            "raw pipeline p50",
            raw["summary"]["p50_ms"],
            note=f"{commit['n']} writes; never seen: {missing}",
        ),
        Row(
            f"[{label}] freshness to commit p99",
            commit["p99_ms"],
            "ms",
            "raw pipeline p99",
            raw["summary"]["p99_ms"],
            note=f"max {commit['max_ms']:.0f} ms (raw max {raw['summary']['max_ms']:.0f} ms)",
        ),
        Row(
            f"[{label}] freshness via API ?min_seq p50",
            api["p50_ms"],
            "ms",
            "raw pipeline p50",
            raw["summary"]["p50_ms"],
            note=f"{api['n']} probes; errors {probe_errors or 0}",
        ),
        Row(
            f"[{label}] freshness via API ?min_seq p99",
            api["p99_ms"],
            "ms",
            "raw pipeline p99",
            raw["summary"]["p99_ms"],
            note=f"max {api['max_ms']:.0f} ms",
        ),
        Row(
            f"[{label}] the same GET without min_seq p99",
            read["p99_ms"],
            "ms",
            note=f"p50 {read['p50_ms']:.1f} ms ({read['n']} samples): the read alone",
        ),
        Row(
            f"[{label}] write rate achieved",
            res.events_per_s,
            "events/s",
            note=f"asked {args.rate:g}/s; write p50 {summarize(res.latencies)['p50_ms']:.1f} ms "
            f"p99 {summarize(res.latencies)['p99_ms']:.1f} ms; errors {res.errors or 0}"
            + ("; SATURATED (stopped sending)" if res.saturated else ""),
            extra={"cpu_s": cpu},
        ),
    ]
    saturated = res.saturated or res.events_per_s < 0.95 * args.rate
    why = (
        "the stack could not sustain the rate (see the write-rate row): the backlog is the delay"
        if saturated
        else "projection batches commit with fsync; see CPU split"
    )
    targets = [
        judge(
            f"[{label}] freshness p99 < 25 ms at {args.rate:g} events/s",
            api["p99_ms"] if api["n"] else commit["p99_ms"],
            25,
            at_least=False,
            measured=f"API p99 {api['p99_ms']:.1f} ms, commit p99 "
            f"{commit['p99_ms']:.1f} ms at {res.events_per_s:,.0f}/s",
            reason_if_missed=why,
        )
    ]
    extra = {
        "commit": commit,
        "api": api,
        "read_alone": read,
        "raw": raw,
        "write": res.summary(),
        "cpu_s": cpu,
        "probe_errors": probe_errors,
    }
    name = "freshness" if args.via == "single" else "freshness-batch"
    return finish_run(
        name,
        f"{name}: write acknowledged -> visible",
        args,
        rows,
        targets,
        extra=extra,
        started=started,
        before=before,
    )


def main(argv: list[str] | None = None) -> None:
    cli_main("freshness", __doc__, add_args, run, argv)


if __name__ == "__main__":
    main()
