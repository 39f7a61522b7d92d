"""Rebuild into a new generation while the live one serves, switch atomically, verify row by
row, bounded as-of replays, and a read-model version bump rebuilding on start."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.projections import generations, replay
from tieline.projections.schema import ensure_schema
from tieline.projections.worker import Worker

from tests.integration.conftest import Log, make_event


async def _history(log: Log, ws: str = "r1") -> int:
    """A small history: people, meetings at known dates, a retraction and one poison pill."""
    base = datetime(2024, 1, 1, tzinfo=UTC)
    for pid in ("a", "b", "c"):
        await log.publish(make_event(ws, type="person.added", person_id=pid, display_name=pid))
    last = 0
    oops = None
    for i in range(30):
        e = make_event(
            ws,
            type="relationship.met",
            participants=["a", "b" if i % 2 else "c"],
            depth="conversation",
            occurred_at=(base + timedelta(days=i)).isoformat(),
        )
        last = await log.publish(e)
        if i == 10:
            oops = e
    assert oops is not None
    await log.publish_raw(f"{log.settings.subject_prefix}.ev.{ws}.relationship.met", b"{bad")
    last = await log.publish(
        make_event(ws, type="event.retracted", retracted_event_id=str(oops.event_id))
    )
    return last


async def _live_worker(settings: Settings, until_seq: int) -> Worker:
    worker = Worker(settings)
    await worker.start()
    async with asyncio.timeout(30):
        while worker.stats.last_seq < until_seq:
            await worker.run_once()
    return worker


async def _rebuilt_equal_and_remade(
    settings: Settings, last: int, schema: str, table: str, waiting: str
) -> None:
    """A rebuild from the log equals the live generation ``schema`` row by row (``tieline
    verify``), and a generation from before the waiting ``table`` gets it on start, made from
    its archive: the query ``waiting`` answers as before."""
    before = await _scalar(settings, schema, waiting)
    seen, diffs = await replay.verify(settings)
    assert seen == last and all(d.clean for d in diffs), [d.samples for d in diffs]
    conn = await db.connect(settings)
    try:
        await conn.execute(f"DROP TABLE {schema}.{table}")
        await ensure_schema(conn, schema)
    finally:
        await conn.close()
    assert before is not None and await _scalar(settings, schema, waiting) == before


async def _scalar(settings: Settings, schema: str, query: str) -> Any:
    conn = await db.connect(settings, rm_schema=schema)
    try:
        cur = await conn.execute(query)
        row = await cur.fetchone()
        return row[0] if row else None
    finally:
        await conn.close()


async def test_rebuild_switches_live_atomically_and_equals_the_old_generation(
    settings: Settings, log: Log
) -> None:
    last = await _history(log)
    live = await _live_worker(settings, last)
    old = live.generation
    assert old is not None and old.status == "live"
    result, rebuilt = await replay.replay(settings, status="building")
    await rebuilt.close()
    assert result.switched and result.last_seq == last and result.applied == 34
    conn = await db.connect(settings)
    try:
        now_live = await generations.live(conn, settings.database_schema)
        assert now_live is not None and now_live.gen == result.generation.gen
        diffs = await replay.compare(conn, old.schema_name, result.generation.schema_name)
    finally:
        await conn.close()
    assert [d.table for d in diffs if not d.clean] == [], [d.samples for d in diffs]
    assert {d.table: d.live_rows for d in diffs}["strength_v1"] == 2
    # The old live worker notices its generation retired and stops by itself.
    live._last_gen_check = 0.0
    await live._check_generation()
    assert live._stopping.is_set()
    await live.close()


async def test_verify_is_clean_and_then_finds_a_tampered_row(settings: Settings, log: Log) -> None:
    last = await _history(log, "r2")
    live = await _live_worker(settings, last)
    await live.close()
    seen, diffs = await replay.verify(settings)
    assert seen == last and all(d.clean for d in diffs), [d.samples for d in diffs]
    assert live.generation is not None
    conn = await db.connect(settings, rm_schema=live.generation.schema_name)
    try:
        await conn.execute("UPDATE strength_v1 SET meetings = meetings + 1 WHERE person_b = 'c'")
    finally:
        await conn.close()
    _, diffs = await replay.verify(settings)
    bad = {d.table: d for d in diffs if not d.clean}
    assert list(bad) == ["strength_v1"]
    assert bad["strength_v1"].only_live == 1 and bad["strength_v1"].only_replay == 1
    # Scratch generations are dropped afterwards.
    conn = await db.connect(settings)
    try:
        cur = await conn.execute("SELECT count(*) FROM generations WHERE status = 'scratch'")
        row = await cur.fetchone()
        assert row is not None and row[0] == 0
    finally:
        await conn.close()


async def test_as_of_snapshot_holds_only_events_up_to_the_date(
    settings: Settings, log: Log
) -> None:
    await _history(log, "r3")
    until = datetime(2024, 1, 10, 12, tzinfo=UTC)  # days 0..9 -> 10 meetings
    result, worker = await replay.replay(
        settings, status="scratch", until=until, schema_name=f"{settings.database_schema}_asof"
    )
    await worker.close()
    total = await _scalar(
        settings, result.generation.schema_name, "SELECT sum(meetings) FROM strength_v1"
    )
    assert total == 10
    latest = await _scalar(
        settings, result.generation.schema_name, "SELECT max(occurred_at) FROM pair_events_v1"
    )
    assert latest <= until


async def test_read_model_version_bump_rebuilds_on_start_and_switches(
    settings: Settings, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = await _history(log, "r4")
    first = await _live_worker(settings, last)
    await first.close()
    import tieline.projections.worker as worker_module

    bumped_version = worker_module.READ_MODEL_VERSION + 1
    monkeypatch.setattr(worker_module, "READ_MODEL_VERSION", bumped_version)
    bumped = Worker(settings)
    await bumped.start()
    try:
        assert bumped.generation is not None and bumped.generation.status == "building"
        assert bumped.generation.version == bumped_version
        async with asyncio.timeout(30):
            while bumped.generation.status != "live":
                await bumped.run_once()
                bumped._last_gen_check = 0.0
                await bumped._check_generation()
    finally:
        await bumped.close()
    conn = await db.connect(settings)
    try:
        now_live = await generations.live(conn, settings.database_schema)
    finally:
        await conn.close()
    assert now_live is not None and now_live.version == bumped_version


async def test_a_rebuild_retired_while_its_worker_checks_is_not_switched_live(
    settings: Settings, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker reads its generation's row, then asks whether it has caught up (a round
    trip to JetStream); an operator retiring the rebuild meanwhile must win. The switch
    re-reads the row under its lock (before, it made the retired generation live)."""
    last = await _history(log, "r7")
    first = await _live_worker(settings, last)
    old = first.generation
    await first.close()
    import tieline.projections.worker as worker_module

    monkeypatch.setattr(worker_module, "READ_MODEL_VERSION", worker_module.READ_MODEL_VERSION + 1)
    bumped = Worker(settings)
    await bumped.start()
    schema = settings.database_schema
    try:
        gen = bumped.generation
        assert gen is not None and gen.status == "building" and old is not None
        async with asyncio.timeout(30):
            while bumped.stats.last_seq < last:
                await bumped.run_once()
        caught_up = bumped.caught_up

        async def retired_meanwhile() -> bool:
            conn = await db.connect(settings)
            try:
                await conn.execute(
                    f"UPDATE {schema}.generations SET status = 'retired' WHERE gen = %s",
                    (gen.gen,),
                )
            finally:
                await conn.close()
            return await caught_up()

        monkeypatch.setattr(bumped, "caught_up", retired_meanwhile)
        bumped._last_gen_check = 0.0
        await bumped._check_generation()
        assert bumped.generation.status == "building"
        bumped._last_gen_check = 0.0
        await bumped._check_generation()  # now it sees the row: retired, so it stops
        assert bumped._stopping.is_set()
    finally:
        await bumped.close()
    conn = await db.connect(settings)
    try:
        now_live = await generations.live(conn, schema)
    finally:
        await conn.close()
    assert now_live is not None and now_live.gen == old.gen


async def test_what_if_replays_into_scratch_and_reports_tier_moves_without_touching_live(
    settings: Settings, log: Log
) -> None:
    from tieline.projections.strength_model import PARAMS, Params

    last = await _history(log, "r5")
    live = await _live_worker(settings, last)
    await live.close()
    assert live.generation is not None
    before = await _scalar(
        settings,
        live.generation.schema_name,
        "SELECT string_agg(score::text || tier, ',' ORDER BY person_b) FROM strength_v1",
    )
    halved = Params.from_dict(
        {
            "version": "what-if-halved",
            "fast_half_life_days": PARAMS.fast_half_life_days / 10,
            "slow_half_life_days": PARAMS.slow_half_life_days / 10,
        }
    )
    result = await replay.what_if(settings, halved)
    assert result.pairs == 2
    assert result.mean_abs_delta > 0
    assert sum(sum(row.values()) for row in result.tier_moves.values()) == 2
    after = await _scalar(
        settings,
        live.generation.schema_name,
        "SELECT string_agg(score::text || tier, ',' ORDER BY person_b) FROM strength_v1",
    )
    assert after == before


async def test_an_event_that_arrives_after_its_retraction_arrives_retracted(
    settings: Settings, log: Log
) -> None:
    """A meeting is dead-lettered (say, a schema version the worker did not know yet), the
    user retracts it meanwhile, and `tieline dlq replay` brings it back later: the log then
    holds the retraction before the event. The live worker used to apply the event as if
    never retracted (the retraction found nothing and was dropped); a rebuild ignored such a
    retraction too. Both now retract it when it arrives, and agree; a retraction whose event
    never comes stays waiting in both."""
    ws = "r6"
    for pid in ("a", "b"):
        await log.publish(make_event(ws, type="person.added", person_id=pid, display_name=pid))
    await log.publish(
        make_event(ws, type="relationship.met", participants=["a", "b"], depth="conversation")
    )
    late = make_event(ws, type="relationship.met", participants=["a", "b"], depth="conversation")
    never = make_event(ws, type="relationship.met", participants=["a", "b"], depth="brief_chat")
    twice = make_event(ws, type="relationship.met", participants=["a", "b"], depth="brief_chat")
    first = {}
    for target in (late, never, twice):
        first[target.event_id] = make_event(
            ws, type="event.retracted", retracted_event_id=str(target.event_id)
        )
        retracted_at = await log.publish(first[target.event_id])
    await (await _live_worker(settings, retracted_at)).close()  # the retractions committed
    # Then the replayed dead letters come, in one later batch (the next worker finds them
    # all waiting); one with a second retraction in that batch: the first one still wins, as
    # in a rebuild.
    await log.publish(twice)
    await log.publish(
        make_event(ws, type="event.retracted", retracted_event_id=str(twice.event_id))
    )
    last = await log.publish(late)
    live = await _live_worker(settings, last)
    assert live.stats.batches == 1, "the three came in one batch"
    await live.close()
    assert live.generation is not None
    schema = live.generation.schema_name
    meetings = f"SELECT meetings FROM strength_v1 WHERE workspace_id = '{ws}'"
    assert await _scalar(settings, schema, meetings) == 1
    for target in (late, twice):
        by = f"SELECT retracted_by FROM events WHERE event_id = '{target.event_id}'"
        assert await _scalar(settings, schema, by) == first[target.event_id].event_id
    waiting = (
        f"SELECT target_event_id::text FROM pending_retractions_v1 WHERE workspace_id = '{ws}'"
    )
    assert await _scalar(settings, schema, waiting) == str(never.event_id)
    await _rebuilt_equal_and_remade(settings, last, schema, "pending_retractions_v1", waiting)


async def test_an_add_that_arrives_after_its_person_was_forgotten_arrives_forgotten(
    settings: Settings, log: Log
) -> None:
    """A ``person.added`` is dead-lettered, the person is forgotten meanwhile, and `tieline
    dlq replay` brings the add back later: the log then holds the forget before the add. A
    rebuild from a log that still holds the first add has the person forgotten. The live
    worker dropped the forget (no row to purge) and the late add made the person again, not
    forgotten, with the fields the add carried, and not merged although its merge came
    first; an update made while an add waited was lost. Now a forget or an update with no
    row waits for its add, and an add finds its merge, in the live store and in a rebuild
    alike; a forget whose add never comes stays waiting."""
    ws = "r7"
    for pid in ("a", "b"):
        await log.publish(make_event(ws, type="person.added", person_id=pid, display_name=pid))
    # The late person was also merged into a before the erasure (a survivor and the people
    # merged into it are erased together; the survivor's forget is left out here).
    await log.publish(make_event(ws, type="person.merged", person_id="late", survivor="a"))
    for pid in ("late", "never"):
        forgot = await log.publish(make_event(ws, type="person.forgotten", person_id=pid))
    # Another dead-lettered add: its person changed title meanwhile (not forgotten).
    now = datetime.now(UTC)
    kept: dict[str, Any] = {"type": "person.updated", "person_id": "kept"}
    days_ago = {d: (now - timedelta(days=d)).isoformat() for d in (0, 2, 3)}
    await log.publish(make_event(ws, **kept, title="CTO", occurred_at=days_ago[0]))
    forgot = await log.publish(make_event(ws, **kept, title="intern", occurred_at=days_ago[3]))
    await (await _live_worker(settings, forgot)).close()  # the forgets committed
    added = {"person_id": "kept", "display_name": "K", "title": "dev", "occurred_at": days_ago[2]}
    await log.publish(make_event(ws, type="person.added", **added))
    await log.publish(make_event(ws, type="person.added", person_id="late", display_name="L"))
    last = await log.publish(
        make_event(ws, type="person.updated", person_id="late", email="late@example.com")
    )
    live = await _live_worker(settings, last)
    await live.close()
    assert live.generation is not None
    schema = live.generation.schema_name
    row = (
        "SELECT forgotten, display_name, email, merged_into FROM people_v1 "
        f"WHERE workspace_id = '{ws}' AND person_id = 'late'"
    )
    conn = await db.connect(settings, rm_schema=schema)
    try:
        cur = await conn.execute(row)
        assert await cur.fetchall() == [(True, None, None, "a")]
        cur = await conn.execute(
            "SELECT title FROM people_v1 WHERE workspace_id = %s AND person_id = 'kept'", (ws,)
        )
        # The add was made two days ago: the change of today holds, the one from three days
        # ago (older than the add's own title) does not, whatever order they came in.
        assert await cur.fetchall() == [("CTO",)]
    finally:
        await conn.close()
    waiting = f"SELECT person_id FROM pending_people_v1 WHERE workspace_id = '{ws}'"
    assert await _scalar(settings, schema, waiting) == "never"
    await _rebuilt_equal_and_remade(settings, last, schema, "pending_people_v1", waiting)


@pytest.mark.parametrize("bulk", [True, False], ids=["in_the_bulk_load", "in_the_worker"])
async def test_a_scratch_replay_that_fails_leaves_nothing_behind(
    settings: Settings, log: Log, bulk: bool
) -> None:
    """A replay that fails part way (here its progress report raises, during the bulk load or
    while its worker holds the generation's lock) used to leave its scratch generation's
    tables and row, and its worker's connections and lock."""
    await _history(log, "r9")
    schema, state = f"{settings.database_schema}_failed", settings.database_schema

    def report(done: int, goal: int, count: int, elapsed: float) -> None:
        raise RuntimeError("the caller gave up")

    with pytest.raises(RuntimeError, match="gave up"):
        await replay.replay(
            settings, status="scratch", schema_name=schema, progress=report, bulk=bulk
        )
    assert not await _scalar(
        settings, state, f"SELECT count(*) FROM {state}.generations WHERE schema_name = '{schema}'"
    )
    assert not await _scalar(
        settings,
        state,
        f"SELECT count(*) FROM information_schema.schemata WHERE schema_name = '{schema}'",
    )
    held = await _scalar(  # a generation's projection lock, held while its worker's session lives
        settings,
        state,
        "SELECT count(*) FROM pg_locks, generate_series(1, 9) AS g WHERE locktype = 'advisory' "
        "AND granted AND objsubid = 1 AND database = (SELECT oid FROM pg_database WHERE "
        "datname = current_database()) AND objid::bigint = hashtext("
        f"'tieline-worker:{state}:{settings.consumer_name}-g' || g)::bigint & 4294967295",
    )
    assert held == 0
