"""How a relationship developed: the pair's events (``pair_events_v1``) with who recorded
them, each one's contribution, and the strength right after it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from tieline.projections.queries.common import Row, ordered
from tieline.projections.queries.strength import pair_events, relationship, stored_rows
from tieline.projections.strength_model import PARAMS, PairEvent, Params, strength
from tieline.projections.strength_model import timeline as model_timeline
from tieline.projections.workspace_models import workspace_model


async def timeline(
    conn: AsyncConnection[Any], ws: str, a: str, b: str, retracted_only: bool = False
) -> list[Row]:
    """The relationship's stored rows in the order they occurred, retracted ones included
    (only those when ``retracted_only``), each event once; with a merge, the rows of the
    merged person's pairs too (queries/strength.py ``relationship``)."""
    aliases, key = await relationship(conn, ws, a, b)
    if key is None:
        return []
    rows = await stored_rows(conn, aliases, key, "(p.retracted OR NOT %s)", (retracted_only,))
    once: dict[str, Row] = {}
    for r in rows:
        once.setdefault(str(r["event_id"]), r)
    fields = ("event_id", "seq", "type", "occurred_at", "recorded_at", "recorded_by")
    out = [
        {
            **{f: r[f] for f in fields},
            "detail": aliases.event_detail(ws, r["detail"]),
            "retracted": r["retracted"],
        }
        for r in once.values()
    ]
    return sorted(out, key=lambda r: (r["occurred_at"], r["seq"]))


async def recorded(conn: AsyncConnection[Any], ws: str, a: str, b: str) -> dict[str, Row]:
    """Who recorded each of the relationship's events and when, by event id."""
    return {str(r["event_id"]): r for r in await timeline(conn, ws, a, b)}


#: Most model evaluations spent on the decay curves of one timeline (each is a fold of the
#: events so far, so a long history gets fewer samples per gap).
DECAY_BUDGET = 200_000


def decay_after(
    ordered: list[PairEvent], end: datetime, per_gap: int, params: Params = PARAMS
) -> list[list[dict[str, Any]]]:
    """For each event (in the model's order), the score at ``per_gap`` instants between it and
    the next event (or ``end``), computed by the model itself with only the events up to it:
    the curve a front end draws between two events, with no copy of the model's formula."""
    out: list[list[dict[str, Any]]] = []
    for i, e in enumerate(ordered):
        nxt = ordered[i + 1].occurred_at if i + 1 < len(ordered) else end
        span = (nxt - e.occurred_at).total_seconds()
        if span <= 0 or per_gap <= 0:
            out.append([])
            continue
        prefix = ordered[: i + 1]
        instants = [
            e.occurred_at + timedelta(seconds=span * j / (per_gap + 1))
            for j in range(1, per_gap + 1)
        ]
        out.append(
            [{"at": t, "score": round(strength(prefix, params, t).score, 4)} for t in instants]
        )
    return out


def timeline_view(
    events: list[PairEvent],
    as_of: datetime | None,
    recorded: dict[str, Row],
    params: Params = PARAMS,
) -> list[dict[str, Any]]:
    """Each event with who recorded it and when, its contribution, the score after it, and the
    score's decay until the next event (``decay_after``)."""
    out = []
    rows = model_timeline(events, params, as_of)
    n = len(rows)
    per_gap = max(0, min(8, DECAY_BUDGET // max(n * n, 1)))
    end = as_of or datetime.now(UTC)
    curves = decay_after([e for e, _, _ in rows], end, per_gap, params)
    for (e, c, after), curve in zip(rows, curves, strict=True):
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
                "decay_after": curve,
                "retracted": False,
            }
        )
    return out


async def pair_timeline(
    conn: AsyncConnection[Any], ws: str, person_a: str, person_b: str, as_of: datetime | None
) -> dict[str, Any]:
    """The timeline endpoint's answer: the events that count, scored in order, and the
    retracted ones (contributing nothing) that occurred by ``as_of``."""
    _, key = await relationship(conn, ws, person_a, person_b)
    a, b = key[1:] if key is not None else ordered(person_a, person_b)
    events = await pair_events(conn, ws, a, b, as_of)
    who = await recorded(conn, ws, a, b)
    rows = await timeline(conn, ws, a, b, retracted_only=True)
    view = timeline_view(events, as_of, who, (await workspace_model(conn, ws)).strength)
    gone = [
        dict(r, contribution=0.0, strength_after=None)
        for r in rows
        if r["retracted"] and (as_of is None or r["occurred_at"] <= as_of)
    ]
    return {"person_a": a, "person_b": b, "as_of": as_of, "events": view, "retracted": gone}
