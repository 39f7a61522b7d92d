"""Introductions: the double opt-in records (``introductions_v1``) and whether an introducer
can vouch for both sides."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from tieline.projections import merges
from tieline.projections.queries.common import Row
from tieline.projections.queries.strength import pair_strength, relationship
from tieline.projections.strength_model import can_vouch
from tieline.projections.workspace_models import workspace_model


async def list_introductions(
    conn: AsyncConnection[Any],
    ws: str,
    person: str | None,
    limit: int,
    before: tuple[datetime, str] | None = None,
) -> list[Row]:
    """Up to ``limit`` introductions, newest request first (then by id, descending); those
    ``person`` takes part in when given; only those after ``before`` (a (requested_at,
    introduction_id) of an earlier page) when given. A merged person counts as their survivor
    (projections/merges.py): in the filter and in the people each row names."""
    aliases = await merges.load(conn, [ws])
    people = None if person is None else aliases.members(ws, aliases.person(ws, person))
    cur = await conn.execute(
        """SELECT introduction_id, requester, introducer, target, requester_consent,
                  target_consent, status, made_event_id, outcome, requested_at,
                  updated_at
           FROM introductions_v1 WHERE workspace_id = %(ws)s AND (%(p)s::text[] IS NULL
             OR ARRAY[requester, introducer, target] && %(p)s::text[])
             AND (%(at)s::timestamptz IS NULL
               OR (requested_at, introduction_id) < (%(at)s, %(id)s::uuid))
           ORDER BY requested_at DESC, introduction_id DESC LIMIT %(limit)s""",
        {
            "ws": ws,
            "p": people,
            "at": before[0] if before else None,
            "id": before[1] if before else None,
            "limit": limit,
        },
    )
    roles = ("requester", "introducer", "target")
    return [{**r, **{f: aliases.person(ws, r[f]) for f in roles}} for r in await cur.fetchall()]


async def can_introduce(
    conn: AsyncConnection[Any], ws: str, introducer: str, a: str, b: str, as_of: datetime | None
) -> dict[str, Any]:
    """can_introduce(introducer, a, b): the introducer must be able to vouch for each side
    (strength tier, a real conversation, history length, not one-sided), with the reasons
    (``checks``: the verdict per side, ``a`` and ``b``); and ``a`` and ``b`` must be two
    people."""
    out: dict[str, Any] = {"introducer": introducer, "a": a, "b": b}
    checks: dict[str, Any] = {}
    ok = True
    params = (await workspace_model(conn, ws)).strength  # the workspace's (adopted) set
    for name, side in (("a", a), ("b", b)):
        s = await pair_strength(conn, ws, introducer, side, as_of, params)
        if s is None:
            checks[name] = {
                "can_vouch": False,
                "reasons": [f"{introducer} has no recorded contact with {side}"],
            }
            ok = False
            continue
        vouch, reasons = can_vouch(s, params)
        checks[name] = {
            "can_vouch": vouch,
            "score": round(s.score, 4),
            "tier": s.tier,
            "reasons": reasons,
        }
        ok = ok and vouch
    out["checks"] = checks
    _, same = await relationship(conn, ws, a, b)
    out["can_introduce"] = ok and same is not None  # None: a and b are one (merged) person
    return out
