"""Relationships: the strength of a tie (now or as of a date) and why, a person's ties,
follow-ups due, give-and-take, and the timeline of how a relationship developed."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from tieline.projections.queries import strength as pairs
from tieline.projections.queries import ties
from tieline.projections.queries.common import now
from tieline.projections.queries.timeline import pair_timeline
from tieline.projections.strength_model import Strength
from tieline.services.api.deps import PID, RT, WS, AsOf, MinSeq, Reader, aware
from tieline.services.api.runtime import Runtime

router = APIRouter()


async def _pair(
    rt: Runtime, ws: str, a: str, b: str, as_of: datetime | None, min_seq: int | None
) -> Strength:
    """The pair's strength as of ``as_of`` from the pure model, or 404."""
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        s = await pairs.pair_strength(conn, ws, a, b, as_of)
    if s is None:
        raise HTTPException(404, "no recorded relationship between these people")
    return s


@router.get("/v1/workspaces/{ws}/relationships/{person_a}/{person_b}", tags=["relationships"])
async def strength(
    ws: WS,
    person_a: PID,
    person_b: PID,
    who: Reader,
    rt: RT,
    min_seq: MinSeq = None,
    as_of: AsOf = None,
) -> dict[str, Any]:
    """Strength of the tie now (or as of a date): score 0-100, tier, counts, reciprocity,
    whether each side could vouch for the other."""
    if as_of is None:
        # Now: one indexed row and the closed-form decay (the fast path).
        await rt.waiter.wait(min_seq)
        async with rt.connections.connection() as conn:
            row = await pairs.pair_row(conn, ws, person_a, person_b)
        if row is None:
            raise HTTPException(404, "no recorded relationship between these people")
        await rt.audit.record(ws, who, "GET relationship", [person_a, person_b])
        return pairs.summary_now(row, now())
    s = await _pair(rt, ws, person_a, person_b, aware(as_of), min_seq)
    await rt.audit.record(ws, who, "GET relationship", [person_a, person_b])
    return pairs.summary(s, person_a, person_b)


@router.get(
    "/v1/workspaces/{ws}/relationships/{person_a}/{person_b}/explain", tags=["relationships"]
)
async def explain(
    ws: WS,
    person_a: PID,
    person_b: PID,
    who: Reader,
    rt: RT,
    min_seq: MinSeq = None,
    as_of: AsOf = None,
    top: Annotated[int, Query(ge=1, le=100)] = 5,
) -> dict[str, Any]:
    """Why the score is what it is: top contributions, decay since the last contact,
    reciprocity, the tier and what would raise it."""
    s = await _pair(rt, ws, person_a, person_b, aware(as_of), min_seq)
    await rt.audit.record(ws, who, "GET explain", [person_a, person_b])
    return s.explain(top)


@router.get("/v1/workspaces/{ws}/people/{person}/relationships", tags=["relationships"])
async def relationships(
    ws: WS,
    person: PID,
    who: Reader,
    rt: RT,
    min_seq: MinSeq = None,
    order: Literal["strength", "recent"] = "strength",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    as_of: AsOf = None,
) -> dict[str, Any]:
    """A person's ties with their current (or as-of) score and Dunbar-like tier; tiers
    respect the layers' capacities (about 5 / 15 / 50 / 150)."""
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        scored = await ties.scored_ties(conn, ws, person, aware(as_of))
    await rt.audit.record(ws, who, "GET person relationships", [person])
    return {
        "person": person,
        "order": order,
        "as_of": as_of,
        "relationships": ties.ranked(scored, order, limit),
    }


@router.get("/v1/workspaces/{ws}/people/{person}/follow-ups", tags=["relationships"])
async def follow_ups_due(
    ws: WS, person: PID, who: Reader, rt: RT, min_seq: MinSeq = None, as_of: AsOf = None
) -> dict[str, Any]:
    """Ties whose time since last contact exceeds their tier's cadence, ordered by how
    much strength is at stake if nothing happens for another cadence."""
    await rt.waiter.wait(min_seq)
    when = aware(as_of) or now()
    async with rt.connections.connection() as conn:
        scored = await ties.scored_ties(conn, ws, person, aware(as_of))
    await rt.audit.record(ws, who, "GET follow-ups", [person])
    return {"person": person, "as_of": when, "due": ties.follow_ups(scored, when)}


@router.get("/v1/workspaces/{ws}/people/{person}/give-and-take", tags=["relationships"])
async def give_and_take(
    ws: WS,
    person: PID,
    who: Reader,
    rt: RT,
    min_seq: MinSeq = None,
    one_sided: bool | None = None,
) -> dict[str, Any]:
    """Per tie: who initiates, follows up, replies and helps whom; one-sided ties flagged
    (one side makes nearly all the effort: the "sell and disappear" pattern)."""
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        out = await ties.give_and_take(conn, ws, person, one_sided)
    await rt.audit.record(ws, who, "GET give-and-take", [person])
    return {"person": person, "ties": out}


@router.get(
    "/v1/workspaces/{ws}/relationships/{person_a}/{person_b}/timeline", tags=["relationships"]
)
async def timeline(
    ws: WS,
    person_a: PID,
    person_b: PID,
    who: Reader,
    rt: RT,
    min_seq: MinSeq = None,
    as_of: AsOf = None,
) -> dict[str, Any]:
    """How the relationship developed: each event, who recorded it and when, its
    contribution, and the strength right after it."""
    await rt.waiter.wait(min_seq)
    cutoff = aware(as_of)
    async with rt.connections.connection() as conn:
        body = await pair_timeline(conn, ws, person_a, person_b, cutoff)
    await rt.audit.record(ws, who, "GET timeline", [person_a, person_b])
    return body
