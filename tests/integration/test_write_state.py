"""The write side's own state on real NATS and PostgreSQL: an installation whose log predates
the write-side tables gets them filled from the log once, and then decides retractions and
re-sent ids from them (never from a read model)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import pytest
from tieline.plumbing.config import Settings
from tieline.plumbing.db import connect, make_pool
from tieline.services import write_backfill, write_state
from tieline.services.service_app import INTERACTION_TYPES, PEOPLE_TYPES, start_write_side
from tieline.services.write_backfill import backfill, backfill_people, sweep_digests

from tests.integration.conftest import Log, make_event


async def test_a_log_older_than_the_write_tables_is_backfilled_once(
    settings: Settings, log: Log
) -> None:
    ws = "backfill"
    for pid in ("ada", "grace"):
        await log.publish(make_event(ws, type="person.added", person_id=pid, display_name=pid))
    met: dict[str, Any] = {"participants": ["ada", "grace"], "depth": "conversation"}
    kept = make_event(ws, type="relationship.met", **met)
    gone = make_event(ws, type="relationship.met", **met)
    for event in (kept, gone):
        await log.publish(event)
    retracted = make_event(ws, type="event.retracted", retracted_event_id=str(gone.event_id))
    await log.publish(retracted)

    pool = make_pool(settings)
    nc, side = await start_write_side(settings, "interactions", INTERACTION_TYPES, pool)
    try:
        out = await side.record_many(
            ws,
            [
                {"type": "event.retracted", "retracted_event_id": str(kept.event_id)},
                {"type": "event.retracted", "retracted_event_id": str(gone.event_id)},
                {"type": "event.retracted", "retracted_event_id": str(retracted.event_id)},
                {**met, "type": "relationship.met", "event_id": str(kept.event_id)},
            ],
            "tester",
        )
        assert [o.status for o in out] == [201, 409, 422, 200], [o.as_dict() for o in out]
        # Learnt from the log, the old id has no body digest: a re-send is a duplicate.
        assert out[3].seq == 3 and out[3].duplicate
        async with pool.connection() as conn:
            again = await backfill(conn, side.js, settings.stream_name, side.registry)
            taken = await conn.execute("SELECT count(*) AS n FROM write_events")
            row = await taken.fetchone()
        assert again == 0  # done once, not on every start
        assert row is not None and row["n"] == 6  # 5 from the log + the new retraction
        async with pool.connection() as conn:  # whom each names, learnt from the log too
            names = await _people_by_event(conn, ws)
        assert (
            names[str(gone.event_id)] == ["ada", "grace"] and names[str(retracted.event_id)] == []
        )
        # A retraction of an event learnt from the log names its people.
        assert (out[0].status, names[str(out[0].event_id)]) == (201, ["ada", "grace"])
    finally:
        await nc.close()
        await pool.close()


async def test_concurrent_commands_share_statements_and_keep_their_own_answers(
    settings: Settings,
) -> None:
    """Commands in flight together (which the write side runs through shared statements,
    plumbing/coalesce.py; tests/unit/test_coalesce.py checks the sharing itself) each still
    get exactly their own answer: an id sent by several at once is published once, a reused
    id with another body is a 409, and every published id has its sequence recorded."""
    ws = "coalesce"
    pool = make_pool(settings)
    pnc, people_side = await start_write_side(settings, "people", PEOPLE_TYPES, pool)
    nc, side = await start_write_side(settings, "interactions", INTERACTION_TYPES, pool)
    try:
        added = await people_side.record_many(
            ws, [{"type": "person.added", "person_id": p, "display_name": p} for p in "abcd"], "t"
        )
        assert [o.status for o in added] == [201] * 4
        met: dict[str, Any] = {"type": "relationship.met", "depth": "conversation"}
        shared, reused = str(uuid4()), str(uuid4())
        commands = [[{**met, "participants": ["a", "b"]}] for _ in range(20)]
        commands += [[{**met, "participants": ["a", "c"], "event_id": shared}]] * 8
        commands += [
            [{**met, "participants": ["a", pid], "event_id": reused}] for pid in ("b", "c", "d")
        ]
        answers = await asyncio.gather(*(side.record_many(ws, c, "t") for c in commands))
        codes = [a[0].status for a in answers]
        assert codes[:20] == [201] * 20
        assert sorted(codes[20:28]) == [200] * 7 + [201]
        assert len({a[0].seq for a in answers[20:28]}) == 1
        assert sorted(codes[28:]) == [201, 409, 409]
        seqs = [a[0].seq for a in answers if a[0].status == 201]
        assert len(set(seqs)) == len(seqs) == 22
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n, count(seq) AS recorded FROM write_events "
                "WHERE workspace_id = %s",
                (ws,),
            )
            row = await cur.fetchone()
        assert row is not None and row["n"] == row["recorded"] == 4 + 22
    finally:
        await nc.close()
        await pnc.close()
        await pool.close()


async def test_whom_each_event_names_is_kept_and_filled_from_the_log_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each taken id records whom its event names (migration 0008), so an erasure clears the
    digests of that person's events and only theirs. Rows taken before the migration get
    their people from the log once, at start; a row whose event is no longer on the log
    stays unknown, and the next erasure in its workspace clears its digest too."""
    ws = "people-of-events"
    monkeypatch.setattr(write_backfill, "BACKFILL_BATCH", 2)  # several pages
    pool = make_pool(settings)
    pnc, _, nc, side = await _both_sides(settings, pool, ws, "abc")
    try:
        met: dict[str, Any] = {"type": "relationship.met", "depth": "conversation"}
        lines = [{**met, "participants": pair} for pair in (["a", "b"], ["b", "c"], ["a", "c"])]
        out = await side.record_many(ws, lines, "t")
        assert {o.status for o in out} == {201}
        ab, bc, ac = (o.event_id for o in out)

        async with pool.connection() as conn:
            names = await _people_by_event(conn, ws)
            assert (names[ab], names[bc], names[ac]) == (["a", "b"], ["b", "c"], ["a", "c"])
            # As before the migration: nothing known; the a-c event gone from the log.
            await conn.execute(
                "UPDATE write_events SET people = NULL WHERE workspace_id = %s", (ws,)
            )
            await conn.execute(
                "UPDATE write_events SET seq = 1000000 WHERE workspace_id = %s AND event_id = %s",
                (ws, ac),
            )
            await conn.execute("DELETE FROM write_backfill WHERE stream LIKE 'people:%%'")
            filled = await backfill_people(conn, side.js, settings.stream_name, side.registry)
            again = await backfill_people(conn, side.js, settings.stream_name, side.registry)
            names = await _people_by_event(conn, ws)
        assert (filled, again) == (5, 0)  # three person.added and two meetings; once
        assert (names[ab], names[bc], names[ac]) == (["a", "b"], ["b", "c"], None)

        assert await side.state.forget_digests(ws, ["a"]) == 3  # a's add, a-b, a-c (unknown)
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT event_id::text AS e FROM write_events "
                "WHERE workspace_id = %s AND digest IS NOT NULL",
                (ws,),
            )
            kept = {r["e"] for r in await cur.fetchall()}
        assert bc in kept and ab not in kept and ac not in kept and len(kept) == 3

        # b's key destroyed with no clear after it (a crash between the two, or an older
        # release's erasure): the sweep at every start clears b's digests.
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE person_keys SET key = NULL WHERE workspace_id = %s AND person_id = 'b'",
                (ws,),
            )
            assert await sweep_digests(conn) == 2  # b's add, b-c
            assert await sweep_digests(conn) == 0
    finally:
        await nc.close()
        await pnc.close()
        await pool.close()


async def _people_by_event(conn: Any, ws: str) -> dict[str, list[str] | None]:
    cur = await conn.execute(
        "SELECT event_id::text AS e, people FROM write_events WHERE workspace_id = %s", (ws,)
    )
    return {r["e"]: r["people"] for r in await cur.fetchall()}


async def test_an_erasure_sees_the_lines_in_flight_that_name_its_people(
    settings: Settings,
) -> None:
    """``WriteState.in_flight``, which an erasure waits on before publishing: lines of other
    commands taken before the erased person's key was destroyed and not yet recorded; not
    the erasure's own lines, not erasures, not lines taken after the destroy (they read the
    key after it and are refused), not rows taken longer ago than the bound (a failed
    publish) unless taken again (``retake``: a re-send)."""
    ws = "in-flight"
    pool = make_pool(settings)
    nc, side = await start_write_side(settings, "interactions", INTERACTION_TYPES, pool)
    try:
        meet = {"type": "relationship.met", "depth": "brief_chat"}
        met = make_event(ws, participants=["a", "b"], **meet)
        other = make_event(ws, participants=["c", "d"], **meet)
        late = make_event(ws, participants=["a", "d"], **meet)
        erasure = make_event(ws, type="person.forgotten", person_id="a")
        await side.keystore.keys(ws, ["a", "b", "c", "d"], create=True)
        await side.state.take([(met, "d1"), (other, "d2"), (erasure, "d3")])
        assert await side.state.in_flight(ws, ["a"], [], 20) == 0  # no key destroyed yet
        for p in ("a", "c"):
            await side.keystore.destroy(ws, p)
        await side.state.take([(late, "d4")])
        async with pool.connection() as conn:  # taken well after the destroy
            await _taken_at(conn, ws, late.event_id, "now() + interval '5 seconds'")
        assert await side.state.in_flight(ws, ["a"], [], 20) == 1  # the meeting only
        assert await side.state.in_flight(ws, ["a", "x"], [], 20) == 1
        assert await side.state.in_flight(ws, ["a"], [met.event_id], 20) == 0  # its own
        assert await side.state.in_flight(ws, ["b"], [], 20) == 0  # b's key is not destroyed
        await side.state.recorded([(met, 7)])
        assert await side.state.in_flight(ws, ["a"], [], 20) == 0  # on the log
        async with pool.connection() as conn:
            await _taken_at(conn, ws, other.event_id, "now() - interval '1 minute'")
        assert await side.state.in_flight(ws, ["c"], [], 20) == 0  # failed long ago
        assert await side.state.in_flight(ws, ["c"], [], 120) == 1
        await side.state.release(ws, [other.event_id])
        # A re-send (twice in one command): back, the caller's own now, and taken now, so an
        # erasure of d after it waits for it.
        assert await side.state.retake([(other, "d2"), (other, "d2")]) == {other.event_id}
        assert await side.state.retake([(other, "d2")]) == set()  # there: taken again
        await side.keystore.destroy(ws, "d")
        assert await side.state.in_flight(ws, ["d"], [], 20) == 1
    finally:
        await nc.close()
        await pool.close()


async def _taken_at(conn: Any, ws: str, event_id: Any, when: str) -> None:
    await conn.execute(
        f"UPDATE write_events SET taken_at = {when} WHERE workspace_id = %s AND event_id = %s",
        (ws, event_id),
    )


async def test_a_retraction_of_a_row_that_does_not_know_its_people_reads_them_on_the_log(
    settings: Settings,
) -> None:
    """A row without people (taken by a release before migration 0008 during a rolling
    upgrade, after the one-time backfill): a retraction of its event learns whom it names
    from the log, so its reason goes under their keys."""
    ws = "people-from-log"
    pool = make_pool(settings)
    pnc, _, nc, side = await _both_sides(settings, pool, ws, "bc")
    try:
        met = {"type": "relationship.met", "depth": "conversation", "participants": ["b", "c"]}
        [out] = await side.record_many(ws, [met], "t")
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE write_events SET people = NULL WHERE workspace_id = %s AND event_id = %s",
                (ws, out.event_id),
            )
        undo = {"type": "event.retracted", "retracted_event_id": out.event_id, "reason": "x"}
        [done] = await side.record_many(ws, [undo], "t")
        assert done.status == 201 and done.seq is not None
        msg = await side.js.get_msg(settings.stream_name, seq=done.seq)
        assert side.registry.decode(msg.data or b"").people() == ("b", "c")
    finally:
        await nc.close()
        await pnc.close()
        await pool.close()


async def _both_sides(settings: Settings, pool: Any, ws: str, people: str) -> tuple[Any, ...]:
    """The people and interactions write sides on ``pool``, with ``people`` (one letter
    each) added: (people's NATS client, people side, interactions' client, its side)."""
    pnc, people_side = await start_write_side(settings, "people", PEOPLE_TYPES, pool)
    nc, side = await start_write_side(settings, "interactions", INTERACTION_TYPES, pool)
    added = [{"type": "person.added", "person_id": p, "display_name": p} for p in people]
    assert {o.status for o in await people_side.record_many(ws, added, "t")} == {201}
    return pnc, people_side, nc, side


async def test_an_erasure_clearing_digests_locks_rows_in_key_order(settings: Settings) -> None:
    """Every multi-row writer of ``write_events`` locks its rows in key order (take, retake,
    recording sequences), so none deadlocks with another. Clearing an erased person's digests
    did not: it locked them in the table's physical order, and when that differed from key
    order it deadlocked with a writer holding a smaller key and waiting for a larger one.
    PostgreSQL broke the cycle by failing one of them, the erasure command after its key
    was destroyed, or the other command's recording."""
    ws = f"lock-order-{uuid4()}"
    pool = make_pool(settings, min_size=2)
    pnc, people_side = await start_write_side(settings, "people", PEOPLE_TYPES, pool)
    nc, side = await start_write_side(settings, "interactions", INTERACTION_TYPES, pool)
    try:
        await people_side.record_many(
            ws, [{"type": "person.added", "person_id": p, "display_name": p} for p in "ab"], "t"
        )
        met: dict[str, Any] = {
            "type": "relationship.met",
            "participants": ["a", "b"],
            "depth": "conversation",
        }
        small, large = (
            "00000000-0000-4000-8000-000000000001",
            "ffffffff-ffff-4fff-bfff-ffffffffffff",
        )
        for event_id in (large, small):  # the larger key first in the table
            out = await side.record_many(ws, [{**met, "event_id": event_id}], "t")
            assert out[0].status == 201
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT event_id::text AS e FROM write_events WHERE workspace_id = %s "
                "AND type = 'relationship.met' ORDER BY ctid",
                (ws,),
            )
            assert [r["e"] for r in await cur.fetchall()] == [large, small]  # the premise
        other = await connect(settings, autocommit=False)
        try:
            lock = (
                "UPDATE write_events SET taken_at = taken_at "
                "WHERE workspace_id = %s AND event_id = %s"
            )
            await other.execute("SET lock_timeout = '10s'")
            await other.execute(lock, (ws, small))  # a key-ordered writer, between its rows
            clearing = asyncio.create_task(side.state.forget_digests(ws, ["a"]))
            await asyncio.sleep(0.5)  # waits for the small key: it must not hold the large
            await other.execute(lock, (ws, large))
            await other.commit()
            assert await asyncio.wait_for(clearing, 10) == 3  # a's add and both meetings
        finally:
            await other.close()
    finally:
        await nc.close()
        await pnc.close()
        await pool.close()


async def test_merges_waiting_for_an_erasure_leave_it_the_pool(settings: Settings) -> None:
    """An erasure holds its people's merge locks and, under them, needs more connections of
    the write side's pool (keys, digests). Merges of those people waited for the locks inside
    PostgreSQL, each holding a connection: enough of them took the whole pool, and the
    erasure waited for a connection until the pool's timeout failed it. A waiter now gives
    its connection back between tries."""
    ws = f"pool-{uuid4()}"
    pool = make_pool(settings, min_size=1, max_size=3)
    pnc, side = await start_write_side(settings, "people", PEOPLE_TYPES, pool)
    try:
        added = [{"type": "person.added", "person_id": p, "display_name": p} for p in "abcde"]
        assert [o.status for o in await side.record_many(ws, added, "t")] == [201] * 5
        merges = [
            side.build(ws, {"type": "person.merged", "person_id": "a", "survivor": s}, "t")
            for s in "bcde"
        ]
        await side.state.take([(m, "digest") for m in merges])  # as a command does first
        async with side.state.merge_locked(ws, ["a"]):  # an erasure of a, deciding
            claims = [asyncio.create_task(side.state.claim_merge(m)) for m in merges]  # type: ignore[arg-type]
            await asyncio.sleep(0.5)  # the merges wait for a's lock
            async with pool.connection(timeout=3) as conn:  # what the erasure needs next
                await conn.execute("SELECT 1")
            assert not any(c.done() for c in claims)
        done = await asyncio.wait_for(asyncio.gather(*claims, return_exceptions=True), 10)
        assert sorted(type(d).__name__ for d in done) == ["Rejected"] * 3 + ["bool"]
        assert [d for d in done if isinstance(d, bool)] == [True]  # one merge of a claimed
    finally:
        await pnc.close()
        await pool.close()


async def test_holding_no_locks_is_a_plain_transaction(settings: Settings) -> None:
    """``bool_and`` over no keys is NULL: taken as "not held", it retried forever."""
    pool = make_pool(settings)
    await pool.open()
    try:
        async with asyncio.timeout(5), write_state._holding(pool, []) as conn:
            await conn.execute("SELECT 1")
    finally:
        await pool.close()
