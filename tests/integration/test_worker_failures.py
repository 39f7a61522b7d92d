"""A batch that fails although each of its events applies on its own (real NATS JetStream and
PostgreSQL; the failure is injected at the store's ``apply``, the worker is the real one).

Before, the worker tried each event alone, found none failing, and retried the whole batch
for ever: nothing after it was ever applied. Now it applies the batch one item per
transaction, so the events go in, and an event that then fails on its own (after the ones
before it committed) is parked after ``max_attempts`` like any failing event."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from psycopg import AsyncConnection
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.projections.items import Decoded, Item
from tieline.projections.store import BatchResult
from tieline.projections.worker import Worker

from tests.integration.conftest import Log, make_event


async def _history(log: Log) -> list[int]:
    """Two people, then five meetings; returns the meetings' sequences."""
    for pid in ("a", "b"):
        await log.publish(make_event("wf", type="person.added", person_id=pid, display_name=pid))
    met = {"type": "relationship.met", "participants": ["a", "b"], "depth": "conversation"}
    return [await log.publish(make_event("wf", **met)) for _ in range(5)]


async def _run(worker: Worker, last: int) -> None:
    async with asyncio.timeout(60):
        while worker.stats.last_seq < last:
            await worker.run_once()


async def _outcome(worker: Worker, last: int) -> tuple[int, list[str]]:
    """Run ``worker`` to ``last``; the pair's meetings and, per dead letter in stream order,
    ``seq:reason:detail``."""
    await _run(worker, last)
    assert worker.generation is not None
    conn = await db.connect(worker.settings, rm_schema=worker.generation.schema_name)
    try:
        row = await (await conn.execute("SELECT meetings FROM strength_v1")).fetchone()
        cur = await conn.execute(
            "SELECT stream_seq::text || ':' || reason || ':' || detail FROM dead_letters "
            "ORDER BY stream_seq"
        )
        assert row is not None
        return int(row[0]), [r[0] for r in await cur.fetchall()]
    finally:
        await conn.close()


async def _patched_outcome(
    worker: Worker, last: int, apply: Any, trial: Any
) -> tuple[int, list[str]]:
    """:func:`_outcome` with the store's ``apply`` and ``trial`` replaced; closes ``worker``."""
    worker.store.apply = apply  # type: ignore[method-assign]
    worker.store.trial = trial  # type: ignore[method-assign]
    try:
        return await _outcome(worker, last)
    finally:
        await worker.close()


@pytest.mark.parametrize("state_based", [False, True], ids=["in_one_batch", "after_commit"])
async def test_a_batch_failing_only_in_combination_is_applied_one_event_at_a_time(
    settings: Settings, log: Log, state_based: bool
) -> None:
    seqs = await _history(log)
    x, y = seqs[1], seqs[3]
    settings = settings.model_copy(update={"max_attempts": 2})
    worker = Worker(settings)
    await worker.start()
    assert worker.generation is not None
    real = worker.store.apply

    async def apply(conn: AsyncConnection[Any], items: Sequence[Item]) -> BatchResult:
        here = {i.seq for i in items if isinstance(i, Decoded)}  # (a parked one applies)
        # in_one_batch: x and y fail together in one transaction, each passes alone.
        # after_commit: y fails once x is committed (its trial, before that, passes).
        if {x, y} <= here or (
            state_based and y in here and await worker.store.checkpoint(conn) >= x
        ):
            raise RuntimeError("fails only in combination")
        return await real(conn, items)

    worker.store.apply = apply  # type: ignore[method-assign]
    try:
        meetings, parked = await _outcome(worker, seqs[-1])
        checkpoint = await worker.store.checkpoint(worker._conn())
    finally:
        await worker.close()
    assert checkpoint == seqs[-1]
    if state_based:  # y fails on its own once x is in: parked, everything else applied
        assert (meetings, [p.split(":")[:2] for p in parked]) == (4, [[str(y), "apply_failed"]])
    else:
        assert (meetings, parked) == (5, [])


async def test_a_database_outage_while_the_events_are_tried_alone_is_waited_out(
    settings: Settings, log: Log
) -> None:
    """The batch fails (injected, once), and the worker's PostgreSQL session dies (for real:
    its backend terminated) just before it tries each event alone. The trial's connection
    error used to escape the worker (a crash, the batch left for a restart); now it is an
    outage like any other: reconnect, and the very same batch again."""
    seqs = await _history(log)
    worker = Worker(settings)
    await worker.start()
    assert worker.generation is not None and worker.pg is not None
    real, failed = worker.store.apply, []

    async def apply(conn: AsyncConnection[Any], items: Sequence[Item]) -> BatchResult:
        if not failed and len(items) > 1:
            failed.append(conn.info.backend_pid)
            admin = await db.connect(settings)
            try:  # the two-argument form returns once the backend has ended
                await admin.execute("SELECT pg_terminate_backend(%s, 10000)", (failed[0],))
            finally:
                await admin.close()
            raise RuntimeError("this batch fails once")
        return await real(conn, items)

    worker.store.apply = apply  # type: ignore[method-assign]
    try:
        meetings, parked = await _outcome(worker, seqs[-1])
        assert failed and worker.pg is not None and worker.pg.info.backend_pid != failed[0]
        assert worker.stats.attempts == {}  # an outage, no event's failure
    finally:
        await worker.close()
    assert (meetings, parked) == (5, [])


async def test_an_event_whose_trial_times_out_is_parked_not_waited_on(
    settings: Settings, log: Log
) -> None:
    """A query error that leaves the connection alive (here a real statement timeout, while
    one event is tried alone) is that event's failure: counted, and parked after
    ``max_attempts``. It was taken for a database outage and retried for ever."""
    seqs = await _history(log)
    y = seqs[2]
    settings = settings.model_copy(update={"max_attempts": 2})
    worker = Worker(settings)
    await worker.start()
    assert worker.generation is not None
    real_apply, real_trial = worker.store.apply, worker.store.trial

    async def apply(conn: AsyncConnection[Any], items: Sequence[Item]) -> BatchResult:
        if y in {i.seq for i in items if isinstance(i, Decoded)} and len(items) > 1:
            raise RuntimeError("this batch fails while y is in it")
        return await real_apply(conn, items)

    async def trial(conn: AsyncConnection[Any], it: Decoded) -> None:
        if it.seq == y:
            async with conn.transaction():
                await conn.execute("SET LOCAL statement_timeout = 50")
                await conn.execute("SELECT pg_sleep(5)")
        await real_trial(conn, it)

    meetings, parked = await _patched_outcome(worker, seqs[-1], apply, trial)
    assert meetings == 4 and len(parked) == 1
    assert parked[0].startswith(f"{y}:apply_failed:QueryCanceled"), parked


async def test_an_outage_after_a_dead_letter_is_published_does_not_publish_it_again(
    settings: Settings, log: Log
) -> None:
    """An event that keeps failing is published to the dead-letter stream before the
    transaction that records it commits. An outage in between (here the next event's trial,
    its backend terminated) used to publish it again once the database was back, which the
    stream deduplicates only within its window (2 minutes by default; here 1 s, and the
    outage outlasts it): two dead letters for one event."""
    settings = settings.model_copy(update={"max_attempts": 1, "duplicate_window_s": 1.0})
    seqs = await _history(log)
    y, z = seqs[1], seqs[2]
    worker = Worker(settings)
    await worker.start()
    assert worker.generation is not None
    real_apply, real_trial, cut = worker.store.apply, worker.store.trial, []

    async def apply(conn: AsyncConnection[Any], items: Sequence[Item]) -> BatchResult:
        if y in {i.seq for i in items if isinstance(i, Decoded)}:  # (parked, it applies)
            raise RuntimeError("y never applies")
        return await real_apply(conn, items)

    async def trial(conn: AsyncConnection[Any], it: Decoded) -> None:
        if it.seq == y:
            raise RuntimeError("y never applies")
        if it.seq == z and not cut:  # y's dead letter is out, its row not yet committed
            cut.append(conn.info.backend_pid)
            admin = await db.connect(settings)
            try:
                await admin.execute("SELECT pg_terminate_backend(%s, 10000)", (cut[0],))
            finally:
                await admin.close()
            await asyncio.sleep(1.5)  # past the stream's dedupe window
        await real_trial(conn, it)

    meetings, parked = await _patched_outcome(worker, seqs[-1], apply, trial)
    info = await log.js.stream_info(f"{settings.stream_name}_DLQ")
    assert cut and meetings == 4
    assert [p.split(":")[:2] for p in parked] == [[str(y), "apply_failed"]]
    assert info.state.messages == 1, "one event, one dead letter"
