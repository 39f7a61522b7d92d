"""Relationships: the strength of a tie (now or as of a date) and why, a person's ties,
follow-ups due, give-and-take, and the timeline of how a relationship developed."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from tieline.projections.queries import momentum, ties
from tieline.projections.queries import strength as pairs
from tieline.projections.queries.common import now
from tieline.projections.queries.timeline import pair_timeline
from tieline.projections.strength_model import Strength
from tieline.services.api import pagination
from tieline.services.api.deps import PID, RT, WS, AsOf, MinSeq, Reader, aware
from tieline.services.api.errors import ApiError
from tieline.services.api.openapi import READ, problems
from tieline.services.api.read_models import (
    Explanation,
    FollowUpsPage,
    GiveAndTakePage,
    RelationshipStrength,
    TiesPage,
    TimelinePage,
)
from tieline.services.api.runtime import Runtime

router = APIRouter(tags=["relationships"])
PAIR = "/v1/workspaces/{ws}/relationships/{person_a}/{person_b}"
Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page.")]


def _no_relationship(a: str, b: str) -> ApiError:
    return ApiError(
        404,
        f"person_b: no recorded relationship between {a!r} and {b!r}",
        [{"loc": ["path", "person_b"], "msg": "no recorded relationship"}],
    )


async def _pair(
    rt: Runtime, ws: str, a: str, b: str, as_of: datetime | None, min_seq: int | None
) -> Strength:
    """The pair's strength as of ``as_of`` from the pure model, or 404."""
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        s = await pairs.pair_strength(conn, ws, a, b, as_of)
    if s is None:
        raise _no_relationship(a, b)
    return s


@router.get(PAIR, response_model=RelationshipStrength, responses=READ | problems(404))
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
    whether each side could vouch for the other; and its momentum (0-100): how likely the
    relationship goes on, both ways, soon (a separate score, docs/strength-model.md §8)."""
    when = aware(as_of)
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        if when is None:
            # Now: one indexed row and the closed-form decay (the fast path).
            out = await momentum.pair_now(conn, ws, person_a, person_b, now())
        else:
            out = await momentum.pair_as_of(conn, ws, person_a, person_b, when)
    if out is None:
        raise _no_relationship(person_a, person_b)
    await rt.audit.record(ws, who, "GET relationship", [person_a, person_b])
    return out


@router.get(PAIR + "/explain", response_model=Explanation, responses=READ | problems(404))
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


def _pinned(cursor: pagination.Cursor | None, as_of: datetime | None) -> datetime | None:
    """The instant a ranked list is computed at: the first page's (in the cursor), else the
    ``as_of`` asked for (None: now)."""
    return cursor.at if cursor is not None and cursor.at is not None else aware(as_of)


@router.get(
    "/v1/workspaces/{ws}/people/{person}/relationships", response_model=TiesPage, responses=READ
)
async def relationships(
    ws: WS,
    person: PID,
    who: Reader,
    rt: RT,
    min_seq: MinSeq = None,
    order: Literal["strength", "recent", "momentum"] = "strength",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    as_of: AsOf = None,
    cursor: pagination.CursorParam = None,
) -> dict[str, Any]:
    """A person's ties with their current (or as-of) score and Dunbar-like tier; tiers
    respect the layers' capacities (about 5 / 15 / 50 / 150), and each tie's momentum: how
    likely it goes on soon (``order=momentum``: the ties you are most likely in touch with
    next first). Every page ranks at the instant of the first one (carried in the cursor)."""
    listing = f"ties:{order}"
    kinds = (bool, float, str) if order == "recent" else (float, str)
    start = pagination.decode(cursor, listing, kinds)
    await rt.waiter.wait(min_seq)
    when = _pinned(start, as_of)
    at = when or now()
    key = ties.rank_key(order)
    async with rt.connections.connection() as conn:
        params = await ties.strength_set(conn, ws)
        if when is None and order == "strength":  # the first page now: an index scan
            need = ties.strongest_needs(limit + 1)
            scored = await ties.top_scored(conn, ws, person, at, need, params)
        else:
            scored = await ties.scored_ties(conn, ws, person, when, at, params)
        # Momentum of every tie only to rank by it; else of the page's (as of a date, each
        # tie's momentum replays its events).
        ranking = order == "momentum"
        momenta = (
            await ties.momenta(conn, ws, person, scored, at, when is not None) if ranking else None
        )
        views = ties.ranked(scored, order, params, momenta)
        taken, last = pagination.page(views, key, limit, start.key if start else None)
        if not ranking:
            shown = ties.of_others(scored, [v["other"] for v in taken])
            got = await ties.momenta(conn, ws, person, shown, at, when is not None)
            ties.set_momenta(taken, got)
    await rt.audit.record(ws, who, "GET person relationships", [person])
    return {
        "person": person,
        "order": order,
        "as_of": when,
        "relationships": taken,
        "next_cursor": None if last is None else pagination.encode(listing, last, at),
    }


@router.get(
    "/v1/workspaces/{ws}/people/{person}/follow-ups", response_model=FollowUpsPage, responses=READ
)
async def follow_ups_due(
    ws: WS,
    person: PID,
    who: Reader,
    rt: RT,
    min_seq: MinSeq = None,
    as_of: AsOf = None,
    order: Literal["at_stake", "lapsing"] = "at_stake",
    limit: Limit = 100,
    cursor: pagination.CursorParam = None,
) -> dict[str, Any]:
    """Ties whose time since last contact exceeds their tier's cadence, ordered by how
    much strength is at stake if nothing happens for another cadence, or (``lapsing``) by
    momentum, lowest first: the due ties least likely to go on without a nudge."""
    listing = "follow-ups" if order == "at_stake" else f"follow-ups:{order}"
    start = pagination.decode(cursor, listing, (float, str))
    await rt.waiter.wait(min_seq)
    pinned = _pinned(start, as_of)
    when = pinned or now()
    key = ties.follow_up_order(order)
    async with rt.connections.connection() as conn:
        params = await ties.strength_set(conn, ws)
        if pinned is None and order == "at_stake":  # the first page now: an index scan
            need = ties.follow_ups_need(limit + 1, when, params)
            scored = await ties.top_scored(conn, ws, person, when, need, params)
        else:
            scored = await ties.scored_ties(conn, ws, person, pinned, when, params)
        # Momentum of the due ties only to order by it; else of the page's.
        due = ties.follow_ups(scored, when, params)
        if order == "lapsing":
            shown = ties.of_others(scored, [d["other"] for d in due])
            got = await ties.momenta(conn, ws, person, shown, when, pinned is not None)
            due = ties.follow_ups(shown, when, params, got, order)
        taken, last = pagination.page(due, key, limit, start.key if start else None)
        if order != "lapsing":
            shown = ties.of_others(scored, [d["other"] for d in taken])
            got = await ties.momenta(conn, ws, person, shown, when, pinned is not None)
            ties.set_momenta(taken, got)
    await rt.audit.record(ws, who, "GET follow-ups", [person])
    nxt = None if last is None else pagination.encode(listing, last, when)
    return {"person": person, "as_of": when, "due": taken, "next_cursor": nxt}


@router.get(
    "/v1/workspaces/{ws}/people/{person}/give-and-take",
    response_model=GiveAndTakePage,
    responses=READ,
)
async def give_and_take(
    ws: WS,
    person: PID,
    who: Reader,
    rt: RT,
    min_seq: MinSeq = None,
    one_sided: bool | None = None,
    limit: Limit = 100,
    cursor: pagination.CursorParam = None,
) -> dict[str, Any]:
    """Per tie: who initiates, follows up, replies and helps whom; one-sided ties flagged
    (one side makes nearly all the effort: the "sell and disappear" pattern) and first."""
    start = pagination.decode(cursor, "give-and-take", (bool, str))
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        out = await ties.give_and_take(conn, ws, person, one_sided)
    await rt.audit.record(ws, who, "GET give-and-take", [person])
    taken, last = pagination.page(out, ties.give_and_take_key, limit, start.key if start else None)
    nxt = None if last is None else pagination.encode("give-and-take", last)
    return {"person": person, "ties": taken, "next_cursor": nxt}


@router.get(PAIR + "/timeline", response_model=TimelinePage, responses=READ)
async def timeline(
    ws: WS,
    person_a: PID,
    person_b: PID,
    who: Reader,
    rt: RT,
    min_seq: MinSeq = None,
    as_of: AsOf = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Events per page.")] = 1000,
    cursor: pagination.CursorParam = None,
) -> dict[str, Any]:
    """How the relationship developed: each event, who recorded it and when, its
    contribution, and the strength right after it; in the order events occurred."""
    start = pagination.decode(cursor, "timeline", (int, int))
    await rt.waiter.wait(min_seq)
    cutoff = aware(as_of)
    async with rt.connections.connection() as conn:
        body = await pair_timeline(conn, ws, person_a, person_b, cutoff)
    await rt.audit.record(ws, who, "GET timeline", [person_a, person_b])
    merged = sorted(
        [(e, False) for e in body["events"]] + [(e, True) for e in body["retracted"]],
        key=lambda x: _timeline_key(x[0]),
    )
    taken, last = pagination.page(
        merged, lambda x: _timeline_key(x[0]), limit, start.key if start else None
    )
    body["events"] = [e for e, gone in taken if not gone]
    body["retracted"] = [e for e, gone in taken if gone]
    body["next_cursor"] = None if last is None else pagination.encode("timeline", last)
    return body


def _timeline_key(e: dict[str, Any]) -> pagination.Key:
    """(when it occurred, in microseconds since the epoch; stream seq): a timeline's order."""
    return ((e["occurred_at"] - ties.EPOCH) // timedelta(microseconds=1), int(e["seq"]))
