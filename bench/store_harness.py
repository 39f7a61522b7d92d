"""The projection store alone: ``ProjectionStore.apply`` over pre-decoded events, no NATS.

The worker's cost per event without the consumer around it, for before/after comparisons of
changes to ``projections/store.py`` and the strength model: N simulated events are encoded as
the write side publishes them and decoded once (the decode is timed separately), then applied
to a fresh read-model schema in batches of ``--batch`` events, one transaction each, exactly as
the worker does. Prints events/s (wall) and the Python CPU per event; PostgreSQL's share is the
difference. It is a developer's tool: no same-run raw reference, so it is not one of the
benchmarks behind the issue's targets (``python -m bench``); compare runs of it with each other.

    python -m bench.store_harness                     # 20k events, 1k people, batches of 2000
    python -m bench.store_harness --batch 2 --events 2000 --people 200   # the small-batch path
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from bench.common import postgres, quiet_logging, temp_root
from bench.events import log_messages


async def measure(database_url: str, events: int, people: int, batch: int) -> dict[str, float]:
    import psycopg
    from tieline.events_schema.registry import REGISTRY
    from tieline.plumbing.config import Settings
    from tieline.projections.classify import classify
    from tieline.projections.schema import ensure_schema
    from tieline.projections.store import ProjectionStore

    settings = Settings(database_url=database_url)
    msgs = list(log_messages(people, events, "ws-harness", settings.subject_prefix))
    c0 = time.process_time()
    items = [
        classify(REGISTRY, settings, i + 1, subject, raw)
        for i, (subject, raw, _) in enumerate(msgs)
    ]
    decode_us = 1e6 * (time.process_time() - c0) / len(items)
    schema = f"harness_{uuid.uuid4().hex[:8]}"
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"SET search_path = {schema}")
        await ensure_schema(conn, schema)
        store = ProjectionStore(REGISTRY)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(items), batch):
            await store.apply(conn, items[i : i + batch])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()
    return {
        "events_per_s": len(items) / wall,
        "python_cpu_us_per_event": 1e6 * cpu / len(items),
        "decode_us_per_event": decode_us,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.store_harness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--people", type=int, default=1_000)
    p.add_argument("--batch", type=int, default=2_000)
    p.add_argument("--repeat", type=int, default=2)
    a = p.parse_args(argv)
    quiet_logging()
    with temp_root() as root, postgres(root) as db_url:
        for _ in range(a.repeat):
            r = asyncio.run(measure(db_url, a.events, a.people, a.batch))
            print(
                f"apply: {r['events_per_s']:,.0f} events/s (wall), Python CPU "
                f"{r['python_cpu_us_per_event']:.1f} us/event; decode "
                f"{r['decode_us_per_event']:.1f} us/event "
                f"({a.events} events, {a.people} people, batches of {a.batch})",
                flush=True,
            )


if __name__ == "__main__":
    main()
