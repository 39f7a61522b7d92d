"""Retracting the event that made an introduction unmakes it, wherever the log's batches are
cut: here the make and its retraction reach the live worker in one batch (and, for a second
introduction, the retraction before its make, as a dead letter replayed late would), and the
live tables equal a bulk rebuild of the same log (real NATS JetStream and PostgreSQL)."""

from __future__ import annotations

from uuid import uuid4

from tieline.plumbing import db
from tieline.plumbing.config import Settings

from tests.integration.conftest import Log, assert_rebuild_equals, live_worker, make_event

WS = "ir"


def _steps(intro: str) -> list[dict[str, object]]:
    return [
        {"type": "introduction.requested", "introduction_id": intro, "requester": "ada",
         "introducer": "grace", "target": "linus"},
        {"type": "introduction.consented", "introduction_id": intro, "person": "ada"},
        {"type": "introduction.consented", "introduction_id": intro, "person": "linus"},
    ]  # fmt: skip


async def test_a_make_retracted_in_the_same_batch_leaves_the_introduction_ready(
    settings: Settings, log: Log
) -> None:
    first, second = str(uuid4()), str(uuid4())
    made = {"type": "relationship.introduced", "introducer": "grace", "person_a": "ada",
            "person_b": "linus"}  # fmt: skip
    m1 = make_event(WS, **made, introduction_id=first)
    m2 = make_event(WS, **made, introduction_id=second)
    retract = "event.retracted"
    bodies = [
        *({"type": "person.added", "person_id": p, "display_name": p} for p in
          ("ada", "grace", "linus")),
        *_steps(first),
        *_steps(second),
    ]  # fmt: skip
    await log.publish_all(make_event(WS, **body) for body in bodies)
    last = await log.publish_all(
        (
            m1,
            make_event(WS, type="introduction.outcome", introduction_id=first, outcome="met"),
            make_event(WS, type=retract, retracted_event_id=str(m1.event_id)),
            make_event(WS, type=retract, retracted_event_id=str(m2.event_id)),
            m2,  # after its retraction
        )
    )
    async with live_worker(settings, last) as live:
        conn = await db.connect(settings, rm_schema=live)
        try:
            cur = await conn.execute(
                "SELECT introduction_id::text, status, made_event_id FROM introductions_v1"
            )
            rows = {r[0]: r[1:] for r in await cur.fetchall()}
        finally:
            await conn.close()
        assert rows == {first: ("ready", None), second: ("ready", None)}
        await assert_rebuild_equals(settings, live)
