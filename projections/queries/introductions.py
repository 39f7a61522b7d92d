"""Introductions: the double opt-in records (``introductions_v1``) and whether an introducer
can vouch for both sides."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from tieline.projections.queries.common import Row
from tieline.projections.queries.strength import pair_strength
from tieline.projections.strength_model import PARAMS, can_vouch


async def list_introductions(conn: AsyncConnection[Any], ws: str, person: str | None) -> list[Row]:
    """The latest 500 introductions, newest first; those ``person`` takes part in when given."""
    cur = await conn.execute(
        """SELECT introduction_id, requester, introducer, target, requester_consent,
                  target_consent, status, made_event_id, outcome, requested_at,
                  updated_at
           FROM introductions_v1 WHERE workspace_id = %(ws)s AND (%(p)s::text IS NULL
             OR %(p)s IN (requester, introducer, target))
           ORDER BY requested_at DESC LIMIT 500""",
        {"ws": ws, "p": person},
    )
    return await cur.fetchall()


async def can_introduce(
    conn: AsyncConnection[Any], ws: str, introducer: str, a: str, b: str, as_of: datetime | None
) -> dict[str, Any]:
    """can_introduce(introducer, a, b): the introducer must be able to vouch for each side
    (strength tier, a real conversation, history length, not one-sided), with the reasons;
    and ``a`` and ``b`` must be two people."""
    out: dict[str, Any] = {"introducer": introducer, "a": a, "b": b}
    ok = True
    for side in (a, b):
        s = await pair_strength(conn, ws, introducer, side, as_of)
        if s is None:
            out[side] = {
                "can_vouch": False,
                "reasons": [f"{introducer} has no recorded contact with {side}"],
            }
            ok = False
            continue
        vouch, reasons = can_vouch(s, PARAMS)
        out[side] = {
            "can_vouch": vouch,
            "score": round(s.score, 4),
            "tier": s.tier,
            "reasons": reasons,
        }
        ok = ok and vouch
    out["can_introduce"] = ok and a != b
    return out
