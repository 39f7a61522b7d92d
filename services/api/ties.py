"""Relationship read models served from the strength projection and the pure strength model.

Current scores come from each pair's stored decay state (closed form, no rewrite of rows over
time); anything ``as_of`` an earlier date, and every explanation, is the pure model evaluated
over the pair's events up to that date, so the API and a replay always agree.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from tieline.projections.strength_model import (
    PARAMS,
    TIERS,
    DecayState,
    PairEvent,
    Params,
    Strength,
    assign_tiers,
    can_vouch,
    follow_up_due,
    strength,
    tier_for,
    timeline,
)
from tieline.services.api.queries import ordered

Row = dict[str, Any]
TIE_COLS = """person_a, person_b, score, tier, state_at, fast, slow, reciprocity_factor, rating,
    event_count, meetings, follow_ups, introductions, helps, ratings, first_contact_at,
    last_contact_at, score_at_last_contact, deepest_meeting, one_sided, can_vouch, reciprocity,
    params_version"""


def now() -> datetime:
    return datetime.now(UTC)


def state_of(row: Row) -> DecayState:
    return DecayState(
        row["state_at"],
        row["fast"],
        row["slow"],
        row["reciprocity_factor"],
        row["rating"],
        row["params_version"],
    )


def score_at(row: Row, when: datetime, params: Params = PARAMS) -> float:
    """The pair's score at ``when`` (>= its latest event) from its stored decay state."""
    return state_of(row).score_at(when, params)


async def pair_events(
    conn: AsyncConnection[Any], ws: str, a: str, b: str, as_of: datetime | None = None
) -> list[PairEvent]:
    pa, pb = ordered(a, b)
    cur = await conn.execute(
        """SELECT event_id, type, occurred_at, seq, detail FROM pair_events_v1
           WHERE workspace_id = %s AND person_a = %s AND person_b = %s AND NOT retracted
             AND (%s::timestamptz IS NULL OR occurred_at <= %s)""",
        (ws, pa, pb, as_of, as_of),
    )
    return [
        PairEvent(
            str(r["event_id"]), r["type"], r["occurred_at"], int(r["seq"]), pa, pb, r["detail"]
        )
        for r in await cur.fetchall()
    ]


async def pair_strength(
    conn: AsyncConnection[Any], ws: str, a: str, b: str, as_of: datetime | None
) -> Strength | None:
    events = await pair_events(conn, ws, a, b, as_of)
    if not events:
        return None
    return strength(events, PARAMS, as_of or now())


def summary(s: Strength, a: str, b: str) -> dict[str, Any]:
    """What the pair endpoint returns."""
    pa, pb = ordered(a, b)
    vouch, reasons = can_vouch(s, PARAMS)
    counts: dict[str, int] = defaultdict(int)
    for c in s.contributions:
        counts[c.type] += 1
    return {
        "person_a": pa,
        "person_b": pb,
        "score": round(s.score, 4),
        "tier": s.tier,
        "as_of": s.as_of,
        "params_version": PARAMS.version,
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
    pa, pb = ordered(a, b)
    cur = await conn.execute(
        f"SELECT {TIE_COLS} FROM strength_v1 WHERE workspace_id = %s AND person_a = %s "
        "AND person_b = %s",
        (ws, pa, pb),
    )
    return await cur.fetchone()


def summary_now(row: Row, when: datetime) -> dict[str, Any]:
    """The pair endpoint's answer for *now*, from the stored decay state (one indexed row, no
    history walk); the same numbers the pure model gives (tests/e2e compare them)."""
    score = score_at(row, when)
    last = row["last_contact_at"]
    return {
        "person_a": row["person_a"],
        "person_b": row["person_b"],
        "score": round(score, 4),
        "tier": tier_for(score, PARAMS),
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


def timeline_view(
    events: list[PairEvent], as_of: datetime | None, recorded: dict[str, Row]
) -> list[dict[str, Any]]:
    """Each event with who recorded it and when, its contribution, and the score after it."""
    out = []
    for e, c, after in timeline(events, PARAMS, as_of):
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


async def ties_of(conn: AsyncConnection[Any], ws: str, person: str) -> list[Row]:
    cur = await conn.execute(
        f"""SELECT person_b AS other, {TIE_COLS} FROM strength_v1
             WHERE workspace_id = %(ws)s AND person_a = %(p)s
            UNION ALL
            SELECT person_a AS other, {TIE_COLS} FROM strength_v1
             WHERE workspace_id = %(ws)s AND person_b = %(p)s""",
        {"ws": ws, "p": person},
    )
    return list(await cur.fetchall())


async def scored_ties(
    conn: AsyncConnection[Any], ws: str, person: str, as_of: datetime | None
) -> list[tuple[Row, float, Strength | None]]:
    """(row, score at as_of, strength when recomputed) for every tie of ``person``."""
    rows = await ties_of(conn, ws, person)
    out: list[tuple[Row, float, Strength | None]] = []
    when = as_of or now()
    for row in rows:
        if as_of is None or (row["state_at"] is not None and as_of >= row["state_at"]):
            out.append((row, score_at(row, when), None))
            continue
        if row["first_contact_at"] is not None and row["first_contact_at"] > as_of:
            continue  # the tie did not exist yet
        s = await pair_strength(conn, ws, row["person_a"], row["person_b"], as_of)
        if s is not None:
            out.append((row, s.score, s))
    return out


def tie_view(row: Row, score: float, tier: str, s: Strength | None) -> dict[str, Any]:
    return {
        "other": row["other"],
        "score": round(score, 4),
        "tier": tier,
        "event_count": row["event_count"] if s is None else len(s.contributions),
        "meetings": row["meetings"],
        "last_contact_at": row["last_contact_at"] if s is None else s.last_contact_at,
        "one_sided": row["one_sided"] if s is None else bool(s.reciprocity.get("one_sided")),
    }


def follow_ups(
    scored: list[tuple[Row, float, Strength | None]], when: datetime
) -> list[dict[str, Any]]:
    """Ties whose time since last contact exceeds their tier's cadence, most at stake first."""
    due = []
    for row, score, s in scored:
        if s is not None:
            is_due, stake = follow_up_due(s, when, PARAMS)
            last = s.last_contact_at
            was = (
                None
                if s.score_at_last_contact is None
                else tier_for(s.score_at_last_contact, PARAMS)
            )
        else:
            last = row["last_contact_at"]
            was = (
                None
                if row["score_at_last_contact"] is None
                else tier_for(row["score_at_last_contact"], PARAMS)
            )
            cadence = None if was is None else PARAMS.tier_cadence_days.get(was)
            if last is None or cadence is None:
                continue
            is_due = (when - last).total_seconds() / 86400 > cadence
            stake = max(score - score_at(row, when + timedelta(days=cadence)), 0.0)
        if is_due and last is not None:
            due.append(
                {
                    "other": row["other"],
                    "score": round(score, 4),
                    "tier_at_last_contact": was,
                    "last_contact_at": last,
                    "days_since_contact": round((when - last).total_seconds() / 86400, 1),
                    "cadence_days": PARAMS.tier_cadence_days.get(was or ""),
                    "at_stake": round(stake, 4),
                }
            )
    due.sort(key=lambda d: (-d["at_stake"], d["other"]))
    return due


def ranked(
    scored: list[tuple[Row, float, Strength | None]], order: str, limit: int
) -> list[dict[str, Any]]:
    tiers = assign_tiers({row["other"]: score for row, score, _ in scored}, PARAMS)
    views = [tie_view(row, score, tiers[row["other"]], s) for row, score, s in scored]
    if order == "strength":
        views.sort(key=lambda v: (-v["score"], v["other"]))
    else:
        views.sort(
            key=lambda v: (v["last_contact_at"] is None, v["last_contact_at"] or now(), v["other"]),
            reverse=False,
        )
        views.sort(
            key=lambda v: v["last_contact_at"] or datetime.min.replace(tzinfo=UTC), reverse=True
        )
    return views[:limit]


VOUCH_RANK = TIERS.index(PARAMS.vouch_tier)


def vouches_now(row: Row, when: datetime) -> tuple[bool, float]:
    """Whether a stored tie can vouch at ``when``: it could at its latest event and its decayed
    score still reaches the vouching tier."""
    score = score_at(row, when)
    return bool(row["can_vouch"]) and TIERS.index(tier_for(score, PARAMS)) <= VOUCH_RANK, score


async def vouching_neighbours(
    conn: AsyncConnection[Any], ws: str, person: str, when: datetime
) -> dict[str, float]:
    cur = await conn.execute(
        f"""SELECT person_b AS other, {TIE_COLS} FROM strength_v1
             WHERE workspace_id = %(ws)s AND person_a = %(p)s AND can_vouch
            UNION ALL
            SELECT person_a AS other, {TIE_COLS} FROM strength_v1
             WHERE workspace_id = %(ws)s AND person_b = %(p)s AND can_vouch""",
        {"ws": ws, "p": person},
    )
    out = {}
    for row in await cur.fetchall():
        ok, score = vouches_now(row, when)
        if ok:
            out[row["other"]] = score
    return out


async def warm_paths(
    conn: AsyncConnection[Any], ws: str, source: str, target: str, limit: int = 10
) -> list[dict[str, Any]]:
    """Who can introduce ``source`` to ``target``: paths with at most two intermediaries over
    ties strong enough to vouch, ranked by their weakest link, then by their average."""
    when = now()
    mine = await vouching_neighbours(conn, ws, source, when)
    theirs = await vouching_neighbours(conn, ws, target, when)
    paths: list[tuple[list[str], list[float]]] = []
    if target in mine:
        paths.append(([source, target], [mine[target]]))
    for via in sorted(set(mine) & set(theirs) - {source, target}):
        paths.append(([source, via, target], [mine[via], theirs[via]]))
    left = [p for p in mine if p != target]
    right = [p for p in theirs if p != source]
    if left and right:
        cur = await conn.execute(
            f"""SELECT {TIE_COLS} FROM strength_v1
                WHERE workspace_id = %(ws)s AND can_vouch AND (
                  (person_a = ANY(%(l)s) AND person_b = ANY(%(r)s)) OR
                  (person_a = ANY(%(r)s) AND person_b = ANY(%(l)s)))""",
            {"ws": ws, "l": left, "r": right},
        )
        for row in await cur.fetchall():
            ok, score = vouches_now(row, when)
            if not ok:
                continue
            for i, j in ((row["person_a"], row["person_b"]), (row["person_b"], row["person_a"])):
                if (
                    i in mine
                    and j in theirs
                    and i != j
                    and target not in (i, j)
                    and source not in (i, j)
                ):
                    paths.append(([source, i, j, target], [mine[i], score, theirs[j]]))
    paths.sort(key=lambda p: (-min(p[1]), -sum(p[1]) / len(p[1]), len(p[0]), p[0]))
    return [
        {
            "path": p,
            "intermediaries": p[1:-1],
            "weakest_link": round(min(s), 4),
            "link_scores": [round(x, 4) for x in s],
        }
        for p, s in paths[:limit]
    ]
