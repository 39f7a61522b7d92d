"""Privacy and access: erase a person, read the access log, manage the workspace's tokens.
Every route here needs an admin token."""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, HTTPException, Query
from tieline.projections.queries.people import get_person
from tieline.services.api.deps import PID, RT, WS, Admin
from tieline.services.api.erasure import forget_person
from tieline.services.api.models import TokenIn
from tieline.services.auth import create_token, list_tokens, revoke_token, token_in_workspace

log = structlog.get_logger(__name__)
router = APIRouter()


@router.post("/v1/workspaces/{ws}/people/{person}/forget", tags=["privacy"])
async def forget(ws: WS, person: PID, who: Admin, rt: RT) -> dict[str, Any]:
    """Erase a person: destroy their key, purge the read models, and report a scan of the
    stream, the archive and every read-model table for their former values."""
    async with rt.connections.connection() as conn:
        known = await get_person(conn, ws, person)
    if known is None:
        raise HTTPException(404, "person not found")
    report = await forget_person(rt, ws, person, who.actor)
    return report


@router.get("/v1/workspaces/{ws}/access-log", tags=["privacy"])
async def access_log(
    ws: WS,
    who: Admin,
    rt: RT,
    person: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> dict[str, Any]:
    return {"entries": await rt.audit.entries(ws, person, limit)}


@router.post("/v1/workspaces/{ws}/tokens", tags=["privacy"], status_code=201)
async def new_token(ws: WS, body: TokenIn, who: Admin, rt: RT) -> dict[str, Any]:
    """Create a token for this workspace; the plaintext is shown only in this answer."""
    async with rt.connections.connection() as conn:
        token = await create_token(conn, ws, body.role, body.name)
    log.info("token.created", workspace_id=ws, role=body.role, name=body.name, by=who.actor)
    return {
        "token": token,
        "token_id": token.split("_")[1],
        "role": body.role,
        "name": body.name,
    }


@router.get("/v1/workspaces/{ws}/tokens", tags=["privacy"])
async def tokens(ws: WS, who: Admin, rt: RT) -> dict[str, Any]:
    async with rt.connections.connection() as conn:
        rows = await list_tokens(conn, ws)
    keys = ("token_id", "workspace_id", "role", "name", "created_at", "revoked_at")
    return {"tokens": [dict(zip(keys, r, strict=True)) for r in rows]}


@router.delete("/v1/workspaces/{ws}/tokens/{token_id}", tags=["privacy"])
async def revoke(ws: WS, token_id: str, who: Admin, rt: RT) -> dict[str, Any]:
    async with rt.connections.connection() as conn:
        if not await token_in_workspace(conn, token_id, ws):
            raise HTTPException(404, "no such token")
        done = await revoke_token(conn, token_id)
    rt.principals.clear()
    return {"revoked": done}
