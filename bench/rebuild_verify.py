"""Issue 5's acceptance run: rebuild the read models from a stream of N generated events into a
new generation *while the live one keeps serving*, switch, and check the rebuilt tables equal
the live ones row by row (what ``tieline verify`` does).

    python -m bench.rebuild_verify --events 1000000

Prints: live projection time, rebuild events/s, reads served from the live generation during
the rebuild (and their worst latency), and the row-by-row comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any

from tieline.plumbing import db
from tieline.projections import generations, replay
from tieline.projections.worker import Worker

from bench.common import RESULTS_DIR, postgres, temp_root, unique_settings
from bench.events import LogEncoder, client_events
from bench.natsraw import fill_stream
from bench.rebuild import RestartableNats


async def _drain(worker: Worker, last: int) -> float:
    t = time.perf_counter()
    while worker.stats.last_seq < last:
        await worker.run_once()
    return time.perf_counter() - t


async def _serve_reads(settings: Any, schema: str, stop: asyncio.Event) -> tuple[int, float]:
    """Keep reading the live generation (a top-ties query) until ``stop``; count and worst ms."""
    n, worst = 0, 0.0
    conn = await db.connect(settings, rm_schema=schema)
    try:
        while not stop.is_set():
            t = time.perf_counter()
            cur = await conn.execute(
                "SELECT person_b, score FROM strength_v1 WHERE "
                "workspace_id = 'bench' ORDER BY score DESC LIMIT 50"
            )
            await cur.fetchall()
            worst = max(worst, (time.perf_counter() - t) * 1000)
            n += 1
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    return n, worst


async def run(events: int, people: int, settings: Any) -> dict[str, Any]:
    live = Worker(settings)
    await live.start()
    assert live.js is not None
    last = int((await live.js.stream_info(settings.stream_name)).state.last_seq)
    live_s = await _drain(live, last)
    await live.close()
    assert live.generation is not None
    old = live.generation
    stop = asyncio.Event()
    reader = asyncio.create_task(_serve_reads(settings, old.schema_name, stop))
    t = time.perf_counter()
    result, worker = await replay.replay(settings, status="building")
    rebuild_s = time.perf_counter() - t
    await worker.close()
    stop.set()
    reads, worst_ms = await reader
    conn = await db.connect(settings)
    try:
        now_live = await generations.live(conn, settings.database_schema)
        diffs = await replay.compare(conn, old.schema_name, result.generation.schema_name)
    finally:
        await conn.close()
    return {
        "events": events,
        "people": people,
        "stream_last_seq": last,
        "live_projection_s": round(live_s, 1),
        "live_projection_events_per_s": round(last / live_s),
        "rebuild_s": round(rebuild_s, 1),
        "rebuild_events_per_s": round(result.applied / rebuild_s),
        "switched_live": now_live is not None and now_live.gen == result.generation.gen,
        "reads_served_during_rebuild": reads,
        "worst_read_ms": round(worst_ms, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "tables": {
            d.table: {
                "live": d.live_rows,
                "rebuilt": d.replay_rows,
                "only_live": d.only_live,
                "only_rebuilt": d.only_replay,
            }
            for d in diffs
        },
        "verify_clean": all(d.clean for d in diffs),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--people", type=int, default=20_000)
    args = p.parse_args(argv)
    with temp_root() as root, postgres(root) as db_url:
        nats = RestartableNats(root / "nats")
        try:
            url = nats.start(sync_always=False)
            settings = unique_settings(url, db_url, batch_size=2000, fetch_timeout_s=0.5)
            enc = LogEncoder("bench", settings.subject_prefix)
            print(f"publishing {args.events} events ...", flush=True)
            fill = asyncio.run(
                fill_stream(
                    settings, (enc.encode(o) for o in client_events(args.people, args.events))
                )
            )
            print(f"  {fill.count} published; projecting live, then rebuilding ...", flush=True)
            out = asyncio.run(run(fill.count, args.people, settings))
        finally:
            nats.stop()
    print(json.dumps(out, indent=2))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "rebuild_verify.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
