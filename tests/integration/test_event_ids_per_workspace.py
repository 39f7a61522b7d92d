"""Event ids are unique per workspace: the projections keep two workspaces' events with the
same id apart, live and in a bulk rebuild (real NATS JetStream and PostgreSQL)."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from tieline.plumbing import db
from tieline.plumbing.config import Settings

from tests.integration.conftest import Log, assert_rebuild_equals, live_worker, make_event


async def _rows(settings: Settings, schema: str, query: str) -> list[tuple[Any, ...]]:
    conn = await db.connect(settings, rm_schema=schema)
    try:
        cur = await conn.execute(query)
        return list(await cur.fetchall())
    finally:
        await conn.close()


async def _same_ids_in_two_workspaces(log: Log) -> int:
    """w1 and w2 each record a meeting and a merge with the same ids (in one batch), then w1
    retracts both, by one retraction id that w2 then uses for a follow-up of its own."""
    for ws in ("w1", "w2"):
        for pid in ("a", "b", "c"):
            await log.publish(make_event(ws, type="person.added", person_id=pid, display_name=pid))
    met, merge, retraction, again = (str(uuid4()) for _ in range(4))
    for ws in ("w1", "w2"):  # the write side's Nats-Msg-Id: workspace/event_id
        e = make_event(
            ws, type="relationship.met", participants=["a", "b"], depth="conversation", event_id=met
        )
        await log.publish(e, msg_id=f"{ws}/{met}")
        m = make_event(ws, type="person.merged", person_id="c", survivor="b", event_id=merge)
        await log.publish(m, msg_id=f"{ws}/{merge}")
    for target, rid in ((met, retraction), (merge, again)):
        r = make_event("w1", type="event.retracted", retracted_event_id=target, event_id=rid)
        await log.publish(r, msg_id=f"w1/{rid}")
    fu = make_event(
        "w2",
        type="relationship.followed_up",
        from_person="a",
        to_person="b",
        channel="email",
        event_id=retraction,
    )
    return await log.publish(fu, msg_id=f"w2/{retraction}")


async def test_two_workspaces_events_with_one_id_are_each_their_own(
    settings: Settings, log: Log
) -> None:
    last = await _same_ids_in_two_workspaces(log)
    async with live_worker(settings, last) as live:
        archived = await _rows(
            settings, live, "SELECT workspace_id, count(*) FROM events GROUP BY 1 ORDER BY 1"
        )
        assert archived == [("w1", 7), ("w2", 6)]
        timelines = await _rows(
            settings,
            live,
            "SELECT workspace_id, type, retracted FROM pair_events_v1 ORDER BY 1, 2",
        )
        # w1's meeting is retracted; w2's stands, and its follow-up (w1's retraction id) counts.
        assert timelines == [
            ("w1", "relationship.met", True),
            ("w2", "relationship.followed_up", False),
            ("w2", "relationship.met", False),
        ]
        pairs = await _rows(settings, live, "SELECT workspace_id, meetings FROM strength_v1")
        assert pairs == [("w2", 1)]
        merged = await _rows(
            settings, live, "SELECT workspace_id, retracted FROM merges_v1 ORDER BY 1"
        )
        assert merged == [("w1", True), ("w2", False)]
        # A bulk rebuild from the log gives the same tables.
        await assert_rebuild_equals(settings, live)
