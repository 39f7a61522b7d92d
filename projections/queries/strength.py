"""Strength of one pair, served from the strength projection and the pure strength model.

Current scores come from each pair's stored decay state (closed form, no rewrite of rows over
time); anything ``as_of`` an earlier date, and every explanation, is the pure model evaluated
over the pair's events up to that date, so the API and a replay always agree.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import tuple_row
from tieline.projections import merges
from tieline.projections.queries.common import Row, now, ordered
from tieline.projections.strength_model import (
    TIERS,
    DecayState,
    PairEvent,
    Params,
    Strength,
    can_vouch,
    strength,
    tier_for,
)
from tieline.projections.strength_model_workspace import strength_params
from tieline.projections.workspace_models import workspace_model

#: The columns of ``strength_v1`` a tie read needs (everything but the fold state).
TIE_COLS = """person_a, person_b, score, tier, state_at, fast, slow, reciprocity_factor, rating,
    event_count, meetings, follow_ups, introductions, helps, ratings, first_contact_at,
    last_contact_at, score_at_last_contact, deepest_meeting, one_sided, can_vouch, reciprocity,
    params_version, episodes, momentum_version"""


def state_of(row: Row) -> DecayState:
    return DecayState(
        row["state_at"],
        row["fast"],
        row["slow"],
        row["reciprocity_factor"],
        row["rating"],
        row["params_version"],
    )


def score_at(row: Row, when: datetime, params: Params | None = None) -> float:
    """The pair's score at ``when`` (>= its latest event) from its stored decay state, with
    the parameter set the row was computed with (a workspace may have adopted its own)."""
    return state_of(row).score_at(when, params or strength_params(row["params_version"]))


async def relationship(
    conn: AsyncConnection[Any], ws: str, a: str, b: str
) -> tuple[merges.Aliases, merges.PairKey | None]:
    """The relationship the pair ``(a, b)`` is, through the merges that hold (a merged person
    counts as their survivor, projections/merges.py); None when the two are one person."""
    aliases = await merges.load(conn, [ws])
    return aliases, aliases.key(ws, a, b)


#: Whom one person counts as: the survivor of their merge that holds (the latest unretracted
#: one, as ``merges.HOLDING_SQL`` decides for every person), if any.
_SURVIVOR_SQL = """SELECT survivor FROM merges_v1
 WHERE workspace_id = %s AND merged = %s AND NOT retracted ORDER BY seq DESC LIMIT 1"""


async def counts_as(conn: AsyncConnection[Any], ws: str, person: str) -> str:
    """Whom ``person`` counts as through the merges that hold: their survivor when merged,
    else themselves. Person-scoped reads (a person's ties, vouching neighbours) read the
    stored ties, which are the survivors' only, so a merged (old) id answers what its survivor
    does, as a pair read (:func:`relationship`) does. One indexed row, not every merge of the
    workspace."""
    async with conn.cursor(row_factory=tuple_row) as cur:  # whatever the connection's rows
        await cur.execute(_SURVIVOR_SQL, (ws, person))
        row = await cur.fetchone()
    return person if row is None else str(row[0])


async def stored_rows(
    conn: AsyncConnection[Any], aliases: merges.Aliases, key: merges.PairKey, where: str, args: Any
) -> list[Row]:
    """The stored timeline rows of every stored pair that belongs to the relationship ``key``
    (``where``: more conditions on ``p``), by stored pair and sequence."""
    stored = aliases.stored_keys(key)
    cur = await conn.execute(
        f"""SELECT p.* FROM pair_events_v1 p
            JOIN unnest(%s::text[], %s::text[]) AS k(a, b) ON p.person_a = k.a AND p.person_b = k.b
            WHERE p.workspace_id = %s AND {where}
            ORDER BY p.person_a COLLATE "C", p.person_b COLLATE "C", p.seq""",
        ([k[1] for k in stored], [k[2] for k in stored], key[0], *args),
    )
    return await cur.fetchall()


async def pair_events(
    conn: AsyncConnection[Any], ws: str, a: str, b: str, as_of: datetime | None = None
) -> list[PairEvent]:
    """The relationship's events that count (not retracted; occurred by ``as_of`` when
    given), each once, as events of the relationship (see :func:`relationship`)."""
    aliases, key = await relationship(conn, ws, a, b)
    if key is None:
        return []
    rows = await stored_rows(
        conn,
        aliases,
        key,
        "NOT p.retracted AND (%s::timestamptz IS NULL OR p.occurred_at <= %s)",
        (as_of, as_of),
    )
    found = [
        (
            (ws, r["person_a"], r["person_b"]),
            PairEvent(
                str(r["event_id"]),
                r["type"],
                r["occurred_at"],
                int(r["seq"]),
                r["person_a"],
                r["person_b"],
                r["detail"],
            ),
        )
        for r in rows
    ]
    return merges.resolve_rows(aliases, found).get(key, [])


async def pair_strength(
    conn: AsyncConnection[Any],
    ws: str,
    a: str,
    b: str,
    as_of: datetime | None,
    params: Params | None = None,
) -> Strength | None:
    """The pure model over the pair's events as of ``as_of`` (now when None), with the
    workspace's parameter set (``params``, read when None); None when the pair has no
    recorded contact."""
    events = await pair_events(conn, ws, a, b, as_of)
    if not events:
        return None
    if params is None:
        params = (await workspace_model(conn, ws)).strength
    return strength(events, params, as_of or now())


def summary(s: Strength, a: str, b: str) -> dict[str, Any]:
    """What the pair endpoint returns."""
    pa, pb = ordered(a, b)
    params = strength_params(s.state.params_version)
    vouch, reasons = can_vouch(s, params)
    counts: dict[str, int] = defaultdict(int)
    for c in s.contributions:
        counts[c.type] += 1
    return {
        "person_a": pa,
        "person_b": pb,
        "score": round(s.score, 4),
        "tier": s.tier,
        "as_of": s.as_of,
        "params_version": s.state.params_version,
        "event_count": len(s.contributions),
        "meetings": counts["relationship.met"],
        "follow_ups": counts["relationship.followed_up"],
        "introductions": counts["relationship.introduced"],
        "helps": counts["relationship.helped"],
        "ratings": counts["relationship.closeness_rated"],
        "first_contact_at": s.first_contact_at,
        "last_contact_at": s.last_contact_at,
        "days_since_contact": s.days_since_contact,
        "reciprocity": s.reciprocity,
        "can_vouch": vouch,
        "vouch_reasons": reasons,
    }


async def pair_row(conn: AsyncConnection[Any], ws: str, a: str, b: str) -> Row | None:
    """The relationship's stored strength row (None if it has none); a merged person counts
    as their survivor (:func:`relationship`)."""
    _, key = await relationship(conn, ws, a, b)
    if key is None:
        return None
    cur = await conn.execute(
        f"SELECT {TIE_COLS} FROM strength_v1 WHERE workspace_id = %s AND person_a = %s "
        "AND person_b = %s",
        key,
    )
    return await cur.fetchone()


def summary_now(row: Row, when: datetime) -> dict[str, Any]:
    """The pair endpoint's answer for *now*, from the stored decay state (one indexed row, no
    history walk); the same numbers the pure model gives (tests/e2e compare them)."""
    score = score_at(row, when)
    last = row["last_contact_at"]
    params = strength_params(row["params_version"])
    return {
        "person_a": row["person_a"],
        "person_b": row["person_b"],
        "score": round(score, 4),
        "tier": tier_for(score, params),
        "as_of": when,
        "params_version": row["params_version"],
        "event_count": row["event_count"],
        "meetings": row["meetings"],
        "follow_ups": row["follow_ups"],
        "introductions": row["introductions"],
        "helps": row["helps"],
        "ratings": row["ratings"],
        "first_contact_at": row["first_contact_at"],
        "last_contact_at": last,
        "days_since_contact": None if last is None else (when - last).total_seconds() / 86400,
        "reciprocity": row["reciprocity"],
        "can_vouch": vouches_now(row, when)[0],
    }


def vouches_now(row: Row, when: datetime) -> tuple[bool, float]:
    """Whether a stored tie can vouch at ``when``: it could at its latest event and its decayed
    score still reaches the vouching tier (of the set the row was computed with)."""
    params = strength_params(row["params_version"])
    score = score_at(row, when, params)
    tier = tier_for(score, params)
    return bool(row["can_vouch"]) and TIERS.index(tier) <= TIERS.index(params.vouch_tier), score
