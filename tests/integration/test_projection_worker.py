"""The projection worker on real JetStream and PostgreSQL: checkpoint with the data, ack after
commit, redelivery and re-sends change nothing, poison goes to the dead-letter subject."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection
from tieline.plumbing.config import Settings
from tieline.projections.store import Decoded
from tieline.projections.worker import Worker

from tests.integration.conftest import Log, first_generation, make_event, scalar


def met(ws: str, a: str, b: str, depth: str = "conversation") -> Any:
    return make_event(ws, type="relationship.met", participants=[a, b], depth=depth)


async def drain(worker: Worker, until_seq: int) -> None:
    async with asyncio.timeout(20):
        while worker.stats.last_seq < until_seq:
            await worker.run_once()


async def strength_row(pg: AsyncConnection[Any], ws: str) -> tuple[Any, ...] | None:
    cur = await pg.execute(
        "SELECT event_count, meetings, score FROM strength_v1 WHERE workspace_id = %s", (ws,)
    )
    return await cur.fetchone()


async def test_worker_applies_events_and_commits_checkpoint_with_them(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    ws = "w1"
    await log.publish(make_event(ws, type="person.added", person_id="a", display_name="A"))
    last = 0
    for _ in range(3):
        last = await log.publish(met(ws, "a", "b"))
    worker = Worker(settings)
    await worker.start()
    try:
        await drain(worker, last)
    finally:
        await worker.close()
    assert (
        await scalar(
            pg,
            "SELECT last_seq FROM checkpoints WHERE projection = %s",
            first_generation(settings)[1],
        )
        == last
    )
    assert await scalar(pg, "SELECT count(*) FROM events") == 4
    row = await strength_row(pg, ws)
    assert row is not None and row[0] == 3 and row[1] == 3
    assert await scalar(pg, "SELECT display_name FROM people_v1 WHERE person_id = 'a'") == "A"


async def test_restarted_worker_resumes_from_its_checkpoint_without_double_counting(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    ws = "w2"
    first = [await log.publish(met(ws, "a", "b")) for _ in range(5)]
    worker = Worker(settings)
    await worker.start()
    await drain(worker, first[-1])
    await worker.close()
    second = [await log.publish(met(ws, "a", "b")) for _ in range(4)]
    again = Worker(settings)
    await again.start()
    try:
        assert again.stats.last_seq == first[-1]
        await drain(again, second[-1])
        assert again.stats.applied == 4
    finally:
        await again.close()
    row = await strength_row(pg, ws)
    assert row is not None and row[0] == 9


async def test_redelivered_batch_after_commit_without_ack_is_a_no_op(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    """Simulates a crash between commit and ack: the same messages arrive again."""
    settings = settings.model_copy(update={"ack_wait_s": 1.0})
    ws = "w3"
    seqs = [await log.publish(met(ws, "a", "b")) for _ in range(3)]
    worker = Worker(settings)
    await worker.start()
    try:
        assert worker._sub is not None
        msgs = await worker._sub.fetch(10, timeout=5)
        items = [worker._classify(m) for m in msgs]
        first = await worker.store.apply(worker._conn(), items)  # committed, never acked
        assert first.applied == 3
        before = await strength_row(pg, ws)
        again = await worker.store.apply(worker._conn(), items)  # the redelivery
        assert again.applied == 0 and again.redelivered == 3
        assert await strength_row(pg, ws) == before
    finally:
        await worker.close()
    # A fresh worker resumes right after the committed checkpoint: nothing is applied twice,
    # and the unacknowledged batch is not waited for (its effects are already committed).
    fresh = Worker(settings)
    await fresh.start()
    try:
        assert fresh.stats.last_seq == seqs[-1]
        assert await fresh.run_once() is None
    finally:
        await fresh.close()
    assert await strength_row(pg, ws) == before


async def test_worker_killed_between_fetch_and_commit_loses_nothing(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    """The batch a worker fetched but never committed is applied by the next worker, even
    though later messages were committed and acknowledged first (AckPolicy.ALL)."""
    ws = "w3b"
    seqs = [await log.publish(met(ws, "a", "b")) for _ in range(30)]
    first = Worker(settings.model_copy(update={"batch_size": 10}))
    await first.start()
    assert await first.run_once() is not None  # 1..10 committed and acked
    assert first._sub is not None
    await first._sub.fetch(10, timeout=5)  # 11..20 fetched, then the worker "dies"
    await first.close()
    second = Worker(settings)
    await second.start()
    try:
        await drain(second, seqs[-1])
    finally:
        await second.close()
    row = await strength_row(pg, ws)
    assert row is not None and row[0] == 30


async def test_event_resent_beyond_the_dedupe_window_is_counted_once(log: Log) -> None:
    settings = log.settings
    ws = "w4"
    event = met(ws, "a", "b")
    s1 = await log.publish(event)
    s2 = await log.publish(event, msg_id=f"{event.event_id}-later")  # JetStream won't dedupe
    assert s2 > s1
    worker = Worker(settings)
    await worker.start()
    try:
        await drain(worker, s2)
        assert worker.stats.duplicate_ids == 1
        assert worker.pg is not None
        row = await strength_row(worker.pg, ws)
        assert row is not None and row[0] == 1
    finally:
        await worker.close()


async def test_poison_messages_are_dead_lettered_with_reason_and_later_events_flow(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    ws = "w5"
    p = settings.subject_prefix
    good = met(ws, "a", "b")
    other_ws = met("someone-else", "a", "b")
    from tieline.events_schema.registry import REGISTRY

    future = REGISTRY.encode(met(ws, "a", "b")).replace(
        b'"schema_version":1', b'"schema_version":99'
    )
    poison = [
        (f"{p}.ev.{ws}.relationship.met", b"{not json"),
        (f"{p}.ev.{ws}.relationship.met", b'{"type": "relationship.stalked"}'),
        (f"{p}.ev.{ws}.relationship.met", future),
        (f"{p}.ev.{ws}.relationship.met", b'{"type": "relationship.met"}'),
        (f"{p}.ev.{ws}.relationship.met", REGISTRY.encode(other_ws)),
        (f"{p}.ev.{ws}.relationship.met", b"x" * (settings.max_event_bytes + 1)),
    ]
    for subject, data in poison:
        await log.publish_raw(subject, data)
    last = await log.publish(good)
    worker = Worker(settings)
    await worker.start()
    try:
        await drain(worker, last)
        assert worker.stats.dead_lettered == len(poison)
    finally:
        await worker.close()
    cur = await pg.execute("SELECT reason FROM dead_letters ORDER BY stream_seq")
    reasons = [r[0] for r in await cur.fetchall()]
    assert reasons == [
        "invalid_json",
        "unknown_type",
        "unsupported_schema_version",
        "invalid_event",
        "workspace_mismatch",
        "too_large",
    ]
    row = await strength_row(pg, ws)
    assert row is not None and row[0] == 1  # the good event after the poison was applied
    info = await log.js.stream_info(f"{settings.stream_name}_DLQ")
    assert info.state.messages == len(poison)
    first = await log.js.get_msg(f"{settings.stream_name}_DLQ", seq=1)
    assert first.data == b"{not json"
    assert first.headers is not None and first.headers["Tieline-Reason"] == "invalid_json"


async def test_store_applies_a_batch_atomically_with_the_checkpoint(
    settings: Settings, log: Log, pg: AsyncConnection[Any]
) -> None:
    """If anything in the batch fails, neither the read models nor the checkpoint move."""
    worker = Worker(settings)
    await worker.start()
    try:
        good = Decoded(1, f"{settings.subject_prefix}.ev.w6.relationship.met", met("w6", "a", "b"))
        bad = Decoded(2, "x", met("w6", "a", "c"))
        await pg.execute("ALTER TABLE strength_v1 ADD CONSTRAINT no_c CHECK (person_b <> 'c')")
        with pytest.raises(psycopg.errors.CheckViolation):
            await worker.store.apply(worker._conn(), [good, bad])
        assert await scalar(pg, "SELECT count(*) FROM strength_v1") == 0
        assert await scalar(pg, "SELECT coalesce(max(last_seq), 0) FROM checkpoints") == 0
    finally:
        await worker.close()


async def test_each_commit_notifies_its_generation_schema_and_checkpoint(
    settings: Settings, log: Log
) -> None:
    """What the API's read-your-writes waiters follow: "<read-model schema> <last_seq>"."""
    ws = "wn"
    await log.publish(make_event(ws, type="person.added", person_id="a", display_name="A"))
    last = await log.publish(met(ws, "a", "b"))
    listener = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
    await listener.execute("LISTEN tieline_checkpoint")
    worker = Worker(settings)
    await worker.start()
    try:
        await drain(worker, last)
        assert worker.generation is not None
        expected = f"{worker.generation.schema_name} {last}"
        payloads: list[str] = []
        async with asyncio.timeout(10):
            async for n in listener.notifies():
                payloads.append(n.payload)
                if n.payload == expected:
                    break
        assert payloads[-1] == expected
    finally:
        await worker.close()
        await listener.close()
