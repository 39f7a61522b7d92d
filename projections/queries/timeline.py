"""How a relationship developed: the pair's events (``pair_events_v1``) with who recorded
them, each one's contribution, and the strength right after it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from tieline.projections.queries.common import Row, ordered
from tieline.projections.queries.strength import pair_events
from tieline.projections.strength_model import PARAMS, PairEvent
from tieline.projections.strength_model import timeline as model_timeline


async def timeline(
    conn: AsyncConnection[Any], ws: str, a: str, b: str, retracted_only: bool = False
) -> list[Row]:
    """The pair's stored rows in the order they occurred, retracted ones included (only
    those when ``retracted_only``)."""
    pa, pb = ordered(a, b)
    cur = await conn.execute(
        """SELECT event_id, seq, type, occurred_at, recorded_at, recorded_by, detail,
                  retracted
           FROM pair_events_v1 WHERE workspace_id = %s AND person_a = %s AND person_b = %s
             AND (retracted OR NOT %s)
           ORDER BY occurred_at, seq""",
        (ws, pa, pb, retracted_only),
    )
    return await cur.fetchall()


async def recorded(conn: AsyncConnection[Any], ws: str, a: str, b: str) -> dict[str, Row]:
    """Who recorded each of the pair's events and when, by event id."""
    pa, pb = ordered(a, b)
    cur = await conn.execute(
        "SELECT event_id, recorded_at, recorded_by FROM pair_events_v1 "
        "WHERE workspace_id = %s AND person_a = %s AND person_b = %s",
        (ws, pa, pb),
    )
    return {str(r["event_id"]): r for r in await cur.fetchall()}


def timeline_view(
    events: list[PairEvent], as_of: datetime | None, recorded: dict[str, Row]
) -> list[dict[str, Any]]:
    """Each event with who recorded it and when, its contribution, and the score after it."""
    out = []
    for e, c, after in model_timeline(events, PARAMS, as_of):
        r = recorded.get(e.event_id, {})
        out.append(
            {
                "event_id": e.event_id,
                "seq": e.seq,
                "type": e.type,
                "occurred_at": e.occurred_at,
                "recorded_at": r.get("recorded_at"),
                "recorded_by": r.get("recorded_by"),
                "detail": dict(e.detail),
                "contribution": round(c.points, 4),
                "contribution_now": round(c.current, 4),
                "reason": c.reason,
                "strength_after": round(after, 4),
                "retracted": False,
            }
        )
    return out


async def pair_timeline(
    conn: AsyncConnection[Any], ws: str, person_a: str, person_b: str, as_of: datetime | None
) -> dict[str, Any]:
    """The timeline endpoint's answer: the events that count, scored in order, and the
    retracted ones (contributing nothing) that occurred by ``as_of``."""
    a, b = ordered(person_a, person_b)
    events = await pair_events(conn, ws, a, b, as_of)
    who = await recorded(conn, ws, a, b)
    rows = await timeline(conn, ws, a, b, retracted_only=True)
    view = timeline_view(events, as_of, who)
    gone = [
        dict(r, contribution=0.0, strength_after=None)
        for r in rows
        if r["retracted"] and (as_of is None or r["occurred_at"] <= as_of)
    ]
    return {"person_a": a, "person_b": b, "as_of": as_of, "events": view, "retracted": gone}
