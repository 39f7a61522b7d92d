"""Introductions: whether someone can introduce two people, warm paths to a person, and the
double opt-in introductions with where each stands."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from tieline.projections.queries import introductions as queries
from tieline.projections.queries.paths import warm_paths as find_warm_paths
from tieline.services.api import pagination
from tieline.services.api.deps import PID, RT, WS, AsOf, MinSeq, PersonQuery, Reader, aware
from tieline.services.api.openapi import READ
from tieline.services.api.read_models import IntroductionCheck, IntroductionsPage, WarmPaths

router = APIRouter(tags=["introductions"])


@router.get(
    "/v1/workspaces/{ws}/introductions/check", response_model=IntroductionCheck, responses=READ
)
async def can_introduce(
    ws: WS,
    who: Reader,
    rt: RT,
    introducer: PersonQuery,
    a: PersonQuery,
    b: PersonQuery,
    min_seq: MinSeq = None,
    as_of: AsOf = None,
) -> dict[str, Any]:
    """can_introduce(introducer, a, b): the introducer must know both well enough to vouch
    (strength tier, a real conversation, history length, not one-sided), with reasons."""
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        out = await queries.can_introduce(conn, ws, introducer, a, b, aware(as_of))
    await rt.audit.record(ws, who, "GET can-introduce", [introducer, a, b])
    # The first release keyed each side's verdict by the person's id; kept where that id is
    # not one of the answer's own members.
    for name, side in (("b", b), ("a", a)):
        if side not in IntroductionCheck.model_fields:
            out[side] = out["checks"][name]
    return out


@router.get(
    "/v1/workspaces/{ws}/people/{person}/warm-paths", response_model=WarmPaths, responses=READ
)
async def warm_paths(
    ws: WS,
    person: PID,
    who: Reader,
    rt: RT,
    target: Annotated[str, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$")],
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    min_seq: MinSeq = None,
) -> dict[str, Any]:
    """Who can introduce ``person`` to ``target``: at most two intermediaries, every link
    strong enough to vouch, ranked by the weakest link (the best ``limit``)."""
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        paths = await find_warm_paths(conn, ws, person, target, limit)
    await rt.audit.record(ws, who, "GET warm paths", [person, target])
    return {"person": person, "target": target, "paths": paths}


@router.get("/v1/workspaces/{ws}/introductions", response_model=IntroductionsPage, responses=READ)
async def introductions(
    ws: WS,
    who: Reader,
    rt: RT,
    person: Annotated[
        str | None,
        Query(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Only those this person is in."),
    ] = None,
    min_seq: MinSeq = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    cursor: pagination.CursorParam = None,
) -> dict[str, Any]:
    """Introductions (double opt-in) and where each stands, newest request first."""
    start = pagination.decode(cursor, "introductions", (str, str))
    before = None
    if start is not None:
        before = (_instant(str(start.key[0])), _uuid(str(start.key[1])))
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        rows = await queries.list_introductions(conn, ws, person, limit + 1, before)
    nxt = pagination.next_cursor(
        "introductions",
        rows,
        limit,
        lambda r: (r["requested_at"].isoformat(), str(r["introduction_id"])),
    )
    return {"introductions": rows[:limit], "next_cursor": nxt}


def _uuid(text: str) -> str:
    try:
        return str(UUID(text))
    except ValueError:
        raise pagination.refuse("malformed sort key") from None


def _instant(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise pagination.refuse("malformed sort key") from None
    if at.tzinfo is None:
        raise pagination.refuse("malformed sort key")
    return at
