"""A person's fields: the last change by event time wins, field by field, whatever order the
log delivers the updates in (real NATS JetStream and PostgreSQL; live worker and bulk
rebuild)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tieline.plumbing import db
from tieline.plumbing.config import Settings

from tests.integration.conftest import Log, assert_rebuild_equals, live_worker, make_event

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _at(days: int) -> str:
    return (T0 + timedelta(days=days)).isoformat()


async def _history(log: Log) -> int:
    """ada added on day 0; her title changed on day 10; then, late on the log, a change from
    day 5 (title and phone: a device that was offline, or a dead letter replayed) and one from
    day 20 (email). grace is forgotten; an update of hers replayed after that sets nothing."""
    up, add = "person.updated", "person.added"
    events = [
        make_event("pu", type=add, person_id="ada", display_name="Ada", occurred_at=_at(0)),
        make_event("pu", type=add, person_id="grace", display_name="G", occurred_at=_at(0)),
        make_event("pu", type=up, person_id="ada", title="CTO", occurred_at=_at(10)),
        make_event("pu", type="person.forgotten", person_id="grace", occurred_at=_at(11)),
        make_event("pu", type=up, person_id="ada", title="intern", phone="+1", occurred_at=_at(5)),
        make_event("pu", type=up, person_id="ada", email="ada@example.org", occurred_at=_at(20)),
        make_event("pu", type=up, person_id="grace", title="back", occurred_at=_at(12)),
    ]
    last = await log.publish_all(events)
    return last


async def _people(settings: Settings, schema: str) -> list[tuple[Any, ...]]:
    conn = await db.connect(settings, rm_schema=schema)
    try:
        cur = await conn.execute(
            "SELECT person_id, title, phone, email, updated_at FROM people_v1 ORDER BY 1"
        )
        return list(await cur.fetchall())
    finally:
        await conn.close()


async def test_an_older_update_arriving_late_does_not_undo_a_newer_one(
    settings: Settings, log: Log
) -> None:
    last = await _history(log)
    async with live_worker(settings, last) as live:
        rows = await _people(settings, live)
        # Fields are stored as the write side sent them (here: plain text, no key store).
        assert [r[:4] for r in rows] == [
            ("ada", "CTO", "+1", "ada@example.org"),  # day 10's title; day 5's phone
            ("grace", None, None, None),
        ]
        assert rows[0][4] == T0 + timedelta(days=20)
        rebuilt = await assert_rebuild_equals(settings, live)
        assert await _people(settings, rebuilt) == rows


async def test_people_events_before_the_persons_add_do_the_same_live_and_in_a_rebuild(
    settings: Settings, log: Log
) -> None:
    """In one batch: an update of ada before her add, a forget of bob before his add (a dead
    letter replayed late can reorder them). Both wait for the add, in the live store as in
    the rebuild: ada's update, newer than her add, sets her title when the add comes (before,
    it found no row and was lost: a person replayed from the dead letters lacked every change
    made while the add waited); bob arrives forgotten, as a rebuild of a log holding his add
    first has him (tests/integration/test_replay.py; before, he came back not forgotten).
    A later change of ada's title is retracted: her fields are folded again from the archive,
    and the change made before her add still holds (the fold once dropped it)."""
    up, add = "person.updated", "person.added"
    later = make_event("po", type=up, person_id="ada", title="Y", occurred_at=_at(6))
    events = [
        make_event("po", type=up, person_id="ada", title="X", occurred_at=_at(5)),
        make_event("po", type=add, person_id="ada", display_name="A", occurred_at=_at(0)),
        make_event("po", type="person.forgotten", person_id="bob", occurred_at=_at(1)),
        make_event("po", type=add, person_id="bob", display_name="B", occurred_at=_at(0)),
        later,
        make_event("po", type="event.retracted", retracted_event_id=str(later.event_id)),
    ]  # fmt: skip
    last = await log.publish_all(events)
    async with live_worker(settings, last) as live:
        rows = await _people(settings, live)
        assert [r[:2] for r in rows] == [("ada", "X"), ("bob", None)]
        conn = await db.connect(settings, rm_schema=live)
        try:
            cur = await conn.execute("SELECT person_id FROM people_v1 WHERE forgotten")
            assert await cur.fetchall() == [("bob",)]
        finally:
            await conn.close()
        await assert_rebuild_equals(settings, live)


async def test_a_retracted_update_is_undone_and_the_values_it_replaced_come_back(
    settings: Settings, log: Log
) -> None:
    """ada's title changes on days 10 and 20 (day 20 also sets her phone); a change from day 5
    (phone) comes late. Retracting day 20's change brings back day 10's title and day 5's
    phone. A change from day 30 (email) is retracted before it reaches the log (a dead letter
    replayed later): it is undone as it arrives. grace's update retracted after her forget
    brings back nothing."""
    up, add, ret, d0 = "person.updated", "person.added", "event.retracted", _at(0)
    u20 = make_event("pr", type=up, person_id="ada", title="CEO", phone="+2", occurred_at=_at(20))
    u30 = make_event("pr", type=up, person_id="ada", email="a@example.org", occurred_at=_at(30))
    g9 = make_event("pr", type=up, person_id="grace", title="back", occurred_at=_at(9))
    events = [
        make_event("pr", type=add, person_id="ada", display_name="A", title="dev", occurred_at=d0),
        make_event("pr", type=add, person_id="grace", display_name="G", occurred_at=_at(0)),
        make_event("pr", type=up, person_id="ada", title="CTO", occurred_at=_at(10)),
        u20,
        make_event("pr", type=up, person_id="ada", phone="+1", occurred_at=_at(5)),
        g9,
        make_event("pr", type="person.forgotten", person_id="grace", occurred_at=_at(11)),
        make_event("pr", type=ret, retracted_event_id=str(u20.event_id), occurred_at=_at(21)),
        make_event("pr", type=ret, retracted_event_id=str(u30.event_id), occurred_at=_at(22)),
        make_event("pr", type=ret, retracted_event_id=str(g9.event_id), occurred_at=_at(23)),
        u30,
    ]  # fmt: skip
    last = await log.publish_all(events)
    async with live_worker(settings, last) as live:
        rows = await _people(settings, live)
        assert [r[:4] for r in rows] == [
            ("ada", "CTO", "+1", None),  # day 10's title, day 5's phone, no email
            ("grace", None, None, None),
        ]
        assert rows[0][4] == T0 + timedelta(days=10)  # the latest change that holds
        rebuilt = await assert_rebuild_equals(settings, live)
        assert await _people(settings, rebuilt) == rows


async def test_a_late_add_whose_update_was_retracted_has_the_same_time_live_and_rebuilt(
    settings: Settings, log: Log
) -> None:
    """cara's add (day 0) is dead-lettered; meanwhile she is updated (day 5), forgotten, and
    the update retracted; the add comes last, in a later batch. Live, the update was already
    retracted when the add came, so her row's ``updated_at`` is the add's. A rebuild reads the
    add first, applies the update, forgets her, and folds her again for the retraction: that
    fold skipped forgotten rows, so the rebuild kept day 5 (the api shows ``updated_at``)."""
    up, add = "person.updated", "person.added"
    changed = make_event("pt", type=up, person_id="cara", title="X", occurred_at=_at(5))
    meanwhile = [
        changed,
        make_event("pt", type="person.forgotten", person_id="cara", occurred_at=_at(6)),
        make_event("pt", type="event.retracted", retracted_event_id=str(changed.event_id)),
    ]
    async with live_worker(settings, await log.publish_all(meanwhile)):
        pass
    last = await log.publish_all(
        [make_event("pt", type=add, person_id="cara", display_name="C", occurred_at=_at(0))]
    )
    async with live_worker(settings, last) as live:
        rows = await _people(settings, live)
        assert [(r[0], r[4]) for r in rows if r[0] == "cara"] == [("cara", T0)]
        rebuilt = await assert_rebuild_equals(settings, live)
        assert await _people(settings, rebuilt) == rows
