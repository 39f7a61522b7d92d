"""Introductions: whether someone can introduce two people, warm paths to a person, and the
double opt-in introductions with where each stands."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from tieline.projections.queries import introductions as queries
from tieline.projections.queries.paths import warm_paths as find_warm_paths
from tieline.services.api.deps import PID, RT, WS, AsOf, MinSeq, Reader, aware

router = APIRouter()


@router.get("/v1/workspaces/{ws}/introductions/check", tags=["introductions"])
async def can_introduce(
    ws: WS, who: Reader, rt: RT, introducer: str, a: str, b: str, as_of: AsOf = None
) -> dict[str, Any]:
    """can_introduce(introducer, a, b): the introducer must know both well enough to vouch
    (strength tier, a real conversation, history length, not one-sided), with reasons."""
    async with rt.connections.connection() as conn:
        out = await queries.can_introduce(conn, ws, introducer, a, b, aware(as_of))
    await rt.audit.record(ws, who, "GET can-introduce", [introducer, a, b])
    return out


@router.get("/v1/workspaces/{ws}/people/{person}/warm-paths", tags=["introductions"])
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
    strong enough to vouch, ranked by the weakest link."""
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        paths = await find_warm_paths(conn, ws, person, target, limit)
    await rt.audit.record(ws, who, "GET warm paths", [person, target])
    return {"person": person, "target": target, "paths": paths}


@router.get("/v1/workspaces/{ws}/introductions", tags=["introductions"])
async def introductions(
    ws: WS, who: Reader, rt: RT, person: str | None = None, min_seq: MinSeq = None
) -> dict[str, Any]:
    """Introductions (double opt-in) and where each stands."""
    await rt.waiter.wait(min_seq)
    async with rt.connections.connection() as conn:
        rows = await queries.list_introductions(conn, ws, person)
    return {"introductions": rows}
