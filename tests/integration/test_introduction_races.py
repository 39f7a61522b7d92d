"""The double opt-in under concurrency, on the write side with real PostgreSQL and JetStream:
two replicas of the interactions service get makes of one introduction at the same moment,
and exactly one is published; two makes in one command are decided one after the other; a
request, its consents and the make in one command are each decided against the lines before
them; a consent withdrawn while a make is decided lands on the log after that make."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from tieline.events_schema.models import Event
from tieline.plumbing.config import Settings
from tieline.plumbing.db import make_pool
from tieline.services.service_app import INTERACTION_TYPES, PEOPLE_TYPES, start_write_side
from tieline.services.write_rules import Outcome
from tieline.services.writeside import WriteSide

WS = "intro-race"


def request(intro: str) -> dict[str, Any]:
    return {
        "type": "introduction.requested",
        "introduction_id": intro,
        "requester": "ada",
        "introducer": "grace",
        "target": "linus",
    }


def consent(intro: str, person: str, yes: bool = True) -> dict[str, Any]:
    return {
        "type": "introduction.consented",
        "introduction_id": intro,
        "person": person,
        "consented": yes,
    }


def make(intro: str) -> dict[str, Any]:
    return {
        "type": "relationship.introduced",
        "introducer": "grace",
        "person_a": "ada",
        "person_b": "linus",
        "introduction_id": intro,
    }


def statuses(out: list[Outcome]) -> list[int]:
    return [o.status for o in out]


async def ready(side: WriteSide, intro: str) -> None:
    """An introduction both sides consented to, not made yet."""
    lines = [request(intro), consent(intro, "ada"), consent(intro, "linus")]
    for line in lines:  # one command each: the state before these changes
        assert statuses(await side.record_many(WS, [line], "t")) == [201]


async def test_racing_makes_of_one_introduction_publish_exactly_one(settings: Settings) -> None:
    pools = [make_pool(settings), make_pool(settings)]
    started = [
        await start_write_side(settings, "interactions", INTERACTION_TYPES, p) for p in pools
    ]
    people_nc, people = await start_write_side(settings, "people", PEOPLE_TYPES, pools[0])
    sides = [side for _, side in started]
    try:
        added = [
            {"type": "person.added", "person_id": p, "display_name": p}
            for p in ("ada", "grace", "linus")
        ]
        assert set(statuses(await people.record_many(WS, added, "t"))) <= {200, 201}

        # Six makes (each its own event id) on two replicas at once: one is published.
        intro = str(uuid.uuid4())
        await ready(sides[0], intro)
        outs = await asyncio.gather(
            *(sides[n % 2].record_many(WS, [make(intro)], "t") for n in range(6))
        )
        got = sorted(s for out in outs for s in statuses(out))
        assert got == [201, 409, 409, 409, 409, 409], got
        losers = [o for out in outs for o in out if o.status == 409]
        assert all("made already" in str(o.errors) for o in losers), losers

        # Two makes in one command: the second is decided after the first is recorded.
        intro = str(uuid.uuid4())
        await ready(sides[0], intro)
        assert statuses(await sides[1].record_many(WS, [make(intro), make(intro)], "t")) == [
            201,
            409,
        ]

        # A request, both consents and the make in one command: each line sees the ones
        # before it, never a later one (the make before the consents is refused).
        intro = str(uuid.uuid4())
        lines = [
            make(intro),
            request(intro),
            consent(intro, "ada"),
            make(intro),
            consent(intro, "linus"),
            make(intro),
            make(intro),
        ]
        got = statuses(await sides[0].record_many(WS, lines, "t"))
        assert got == [404, 201, 201, 409, 201, 201, 409], got

        # A withdrawal racing a make: if the make is accepted it is on the log before the
        # withdrawal (it was decided while both had consented); if not, it was refused for
        # the missing consent.
        for n in range(4):
            intro = str(uuid.uuid4())
            await ready(sides[0], intro)
            made, withdrawn = await asyncio.gather(
                sides[n % 2].record_many(WS, [make(intro)], "t"),
                sides[(n + 1) % 2].record_many(WS, [consent(intro, "linus", False)], "t"),
            )
            assert statuses(withdrawn) == [201]
            if made[0].status == 201:
                assert made[0].seq is not None and withdrawn[0].seq is not None
                assert made[0].seq < withdrawn[0].seq, (made[0], withdrawn[0])
            else:
                assert made[0].status == 409 and "double opt-in" in str(made[0].errors)
    finally:
        for nc, _ in started:
            await nc.close()
        await people_nc.close()
        for p in pools:
            await p.close()


async def test_a_make_whose_publish_failed_still_counts_and_its_retry_passes(
    settings: Settings,
) -> None:
    """A make's publish times out (it may be on the log): the write side keeps the
    introduction made by it, so a second make is refused rather than risking two on the log;
    the client's retry with the same event id is published and recorded."""
    pool = make_pool(settings)
    nc, side = await start_write_side(settings, "interactions", INTERACTION_TYPES, pool)
    people_nc, people = await start_write_side(settings, "people", PEOPLE_TYPES, pool)
    try:
        added = [
            {"type": "person.added", "person_id": p, "display_name": p}
            for p in ("ada", "grace", "linus")
        ]
        await people.record_many(WS, added, "t")
        intro = str(uuid.uuid4())
        await ready(side, intro)
        first = {**make(intro), "event_id": str(uuid.uuid4())}
        event = side.build(WS, first, "t", None)

        async def timed_out(_: Event) -> tuple[int, bool]:
            raise TimeoutError("publish timed out")

        with pytest.raises(TimeoutError):
            await side.state.step(event, timed_out)
        state = await side.state.introduction(WS, uuid.UUID(intro))
        assert state is not None and state.made_event_id == first["event_id"]
        other = await side.record_many(WS, [make(intro)], "t")
        assert other[0].status == 409 and first["event_id"] in str(other[0].errors)
        retry = await side.record_many(WS, [first], "t")
        assert retry[0].status == 201, retry[0].as_dict()
        again = await side.record_many(WS, [first], "t")
        assert (again[0].status, again[0].seq) == (200, retry[0].seq)
    finally:
        await nc.close()
        await people_nc.close()
        await pool.close()
