"""Partitioned projection workers on real JetStream and PostgreSQL: each applies its own
workspaces' events with its own checkpoint row; the generation has reached the smallest of
them; a batch applied again changes nothing; another worker count builds a new generation; a
replay builds one they take over as it is."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import pytest
from psycopg import AsyncConnection
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.projections import generations, replay
from tieline.projections.partitions import checkpoint_row, owns_subject, partition_of
from tieline.projections.queries.common import checkpoint
from tieline.projections.queries.live import changes_after
from tieline.projections.worker import Worker

from tests.integration.conftest import Log, first_generation, make_event, scalar


def test_partition_of_is_stable_and_covers_every_partition() -> None:
    # CRC-32, not Python's per-process salted hash(): the same owner in every process.
    assert partition_of("acme", 4) == zlib.crc32(b"acme") % 4
    assert partition_of("anything", 1) == 0 and partition_of(None, 3) == 0
    owners = {partition_of(f"ws-{i}", 3) for i in range(50)}
    assert owners == {0, 1, 2}
    subject = "tl.ev.acme.relationship.met"
    mine = [p for p in range(4) if owns_subject("tl", subject, p, 4)]
    assert mine == [partition_of("acme", 4)]
    assert checkpoint_row("c-g1", 0, 1) == "c-g1" and checkpoint_row("c-g1", 1, 2) == "c-g1/p1"


def spaces(n: int, per: int = 2) -> list[str]:
    found: dict[int, list[str]] = {p: [] for p in range(n)}
    i = 0
    while any(len(v) < per for v in found.values()):
        ws = f"pw{i}"
        if len(found[partition_of(ws, n)]) < per:
            found[partition_of(ws, n)].append(ws)
        i += 1
    return [w for p in range(n) for w in found[p]]


async def drain(workers: list[Worker], until_seq: int) -> None:
    async with asyncio.timeout(30):
        while any(w.stats.last_seq < until_seq for w in workers):
            for w in workers:
                if w.stats.last_seq < until_seq:
                    await w.run_once()


def partition_settings(settings: Settings, n: int, i: int) -> Settings:
    return settings.model_copy(update={"projection_workers": n, "projection_partition": i})


async def test_two_partitions_apply_each_event_once_with_their_own_checkpoints(
    settings: Settings, log: Log
) -> None:
    s0, s1 = partition_settings(settings, 2, 0), partition_settings(settings, 2, 1)
    workspaces = spaces(2)
    last = 0
    for ws in workspaces:
        await log.publish(make_event(ws, type="person.added", person_id="a", display_name="A"))
        for _ in range(3):
            last = await log.publish(
                make_event(
                    ws,
                    type="relationship.met",
                    participants=["a", "b", "c", "d", "e"],
                    depth="conversation",
                )
            )
    w0, w1 = Worker(s0), Worker(s1)
    await w0.start()
    await w1.start()
    try:
        assert w0.generation is not None and w0.generation.partitions == 2
        assert w1.generation == w0.generation
        consumer = w0.generation.consumer
        # Only partition 0 runs: the generation has reached what partition 1 has (0).
        await drain([w0], last)
        conn = await db.connect(settings, rm_schema=w0.generation.schema_name)
        try:
            assert await checkpoint(conn, consumer) == 0
            owned0 = {w for w in workspaces if partition_of(w, 2) == 0}
            in_archive = await scalar(conn, "SELECT array_agg(DISTINCT workspace_id) FROM events")
            assert set(in_archive) == owned0
            # The change log: partition 0's rows exist, but none is final while partition 1
            # may still write rows before them.
            assert await changes_after(conn, (0, -1), None, 1000)
            assert await changes_after(conn, (0, -1), None, 1000, consumer) == []
            await drain([w1], last)
            assert await checkpoint(conn, consumer) == last
            final = await changes_after(conn, (0, -1), None, 1000, consumer)
            assert {r[2] for r in final} == set(workspaces)  # (seq, sub, workspace_id, ...)
            assert final == await changes_after(conn, (0, -1), None, 1000)
            rows = await (
                await conn.execute("SELECT projection, last_seq FROM checkpoints ORDER BY 1")
            ).fetchall()
            assert [tuple(r) for r in rows] == [(f"{consumer}/p0", last), (f"{consumer}/p1", last)]
            # Each five-person meeting: 10 pairs, applied once, by its workspace's owner.
            counts = await (
                await conn.execute(
                    "SELECT workspace_id, count(*), sum(event_count) FROM strength_v1 GROUP BY 1"
                )
            ).fetchall()
            assert sorted(tuple(r) for r in counts) == [(w, 10, 30) for w in sorted(workspaces)]
            assert await scalar(conn, "SELECT count(*) FROM events") == 4 * len(workspaces)
        finally:
            await conn.close()
    finally:
        await w0.close()
        await w1.close()


async def test_applying_a_partition_batch_again_changes_nothing(
    settings: Settings, log: Log
) -> None:
    s1 = partition_settings(settings, 2, 1)
    ws = spaces(2, per=1)[1]
    last = 0
    for _ in range(4):
        last = await log.publish(
            make_event(ws, type="relationship.met", participants=["x", "y"], depth="conversation")
        )
    worker = Worker(s1)
    await worker.start()
    try:
        assert worker._sub is not None
        msgs = await worker._sub.fetch(10, timeout=5)
        items = [worker._classify(m) for m in msgs]
        first = await worker.store.apply(worker._conn(), items)
        again = await worker.store.apply(worker._conn(), items)
        assert first.applied == 4 and first.last_seq == last
        assert again.applied == 0 and again.redelivered == 4
        count = await scalar(worker._conn(), "SELECT sum(event_count) FROM strength_v1")
        assert count == 4
    finally:
        await worker.close()


async def test_another_worker_count_builds_a_new_generation_and_switches(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    ws = spaces(2, per=1)
    last = 0
    for w in ws:
        last = await log.publish(
            make_event(w, type="relationship.met", participants=["p", "q"], depth="conversation")
        )
    one = Worker(settings)
    await one.start()
    try:
        await drain([one], last)
    finally:
        await one.close()
    assert one.generation is not None and one.generation.partitions == 1
    two = [Worker(partition_settings(settings, 2, i)) for i in range(2)]
    for w in two:
        await w.start()
    try:
        gen = two[0].generation
        assert gen is not None and gen.status == "building" and gen.partitions == 2
        assert two[1].generation == gen and gen.gen == 2
        await drain(two, last)
        for w in two:
            w._last_gen_check = 0.0
            await w._check_generation()
        conn = await db.connect(settings)
        try:
            live = await generations.live(conn, settings.database_schema)
            old = await generations.get(conn, settings.database_schema, 1)
        finally:
            await conn.close()
        assert live is not None and live.gen == 2 and live.partitions == 2
        assert old is not None and old.status == "retired"
        assert all(w.generation is not None and w.generation.status == "live" for w in two)
    finally:
        for w in two:
            await w.close()
    schema = first_generation(settings)[0]
    assert await scalar(pg, f"SELECT count(*) FROM {schema}.events") == len(ws)


@pytest.mark.parametrize("bulk", [True, False])
async def test_a_replay_is_taken_over_by_partitioned_workers_without_another_rebuild(
    settings: Settings, log: Log, bulk: bool
) -> None:
    """``tieline replay`` with N = 2 workers configured builds a generation the two
    partitioned workers take over as it is: no second rebuild, each from its own checkpoint
    row at the replay's, and the same rows as the generation it replaced."""
    s = [partition_settings(settings, 2, i) for i in range(2)]

    async def meetings(count: int) -> int:
        last = 0
        for w in spaces(2):
            for _ in range(count):
                event = make_event(
                    w, type="relationship.met", participants=["p", "q"], depth="conversation"
                )
                last = await log.publish(event)
        return last

    last = await meetings(2)
    live = [Worker(x) for x in s]
    for w in live:
        await w.start()
    try:
        await drain(live, last)
    finally:
        for w in live:
            await w.close()
    old = live[0].generation
    assert old is not None and old.partitions == 2
    result, rebuilt = await replay.replay(s[0], status="building", bulk=bulk)
    await rebuilt.close()
    gen = result.generation
    assert result.switched and result.last_seq == last and gen.partitions == 2
    later = await meetings(1)
    two = [Worker(x) for x in s]
    for w in two:
        await w.start()
    try:
        assert [w.generation for w in two] == [gen, gen]  # no new building generation
        await drain(two, later)
    finally:
        for w in two:
            await w.close()
    conn = await db.connect(settings)
    try:
        found = await generations.get(conn, settings.database_schema, gen.gen)
        assert found is not None and found.partitions == 2 and found.status == "live"
        cur = await conn.execute(
            f"SELECT projection, last_seq FROM {gen.schema_name}.checkpoints ORDER BY 1"
        )
        rows = await cur.fetchall()
        assert rows == [(f"{gen.consumer}/p0", later), (f"{gen.consumer}/p1", later)]
        cur = await conn.execute(f"SELECT count(*) FROM {settings.database_schema}.generations")
        assert await cur.fetchone() == (2,)  # the first and the replay, nothing built since
        assert await checkpoint(conn, gen.consumer, gen.schema_name) == later
        count = await scalar(conn, f"SELECT sum(event_count) FROM {gen.schema_name}.strength_v1")
        assert count == 3 * len(spaces(2))
    finally:
        await conn.close()
