"""Privacy and access: erase a person, read the access log, manage the workspace's tokens.
Every route here needs an admin token."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Path, Query
from tieline.projections.queries.people import get_person, merged_into
from tieline.services.api import pagination
from tieline.services.api.deps import PID, RT, WS, Admin
from tieline.services.api.erasure import forget_person
from tieline.services.api.errors import ApiError
from tieline.services.api.models import (
    AccessLogPage,
    ErasureReport,
    Revoked,
    TokenCreated,
    TokenIn,
    TokensPage,
)
from tieline.services.api.openapi import AUTH, WRITE, problems
from tieline.services.auth import create_token, list_tokens, revoke_token, token_in_workspace

log = structlog.get_logger(__name__)
router = APIRouter(tags=["privacy"])

TokenId = Annotated[
    str, Path(pattern=r"^[0-9a-f]{12}$", description="The token's id (the part after tl_).")
]


@router.post(
    "/v1/workspaces/{ws}/people/{person}/forget",
    response_model=ErasureReport,
    responses=WRITE,
)
async def forget(ws: WS, person: PID, who: Admin, rt: RT) -> dict[str, Any]:
    """Erase a person: destroy their key, purge the read models, and report a scan of the
    stream, the archive and every read-model table for their former values. The people merged
    into them (duplicates of the same human) are erased with them; a person merged into
    another is erased only with that survivor (409 naming it; retract the merge to erase the
    duplicate alone)."""
    # Who is merged into the person is read once the projection has applied the whole log as
    # it is now: a merge retracted just before must not take an unrelated person along.
    last = await rt.waiter.stream_last_seq()
    if last is None:  # cannot tell how far the log goes: do not erase on a stale read
        raise ApiError(503, "the log (NATS) does not answer; retry the erasure later", [])
    await rt.waiter.wait(last)
    async with rt.connections.connection() as conn:
        known = await get_person(conn, ws, person)
        # The people merged into this one go with it (the write side refuses otherwise).
        merged = [] if known is None or known["forgotten"] else await merged_into(conn, ws, person)
    if known is None:
        raise ApiError(
            404,
            f"person: no person {person!r} in this workspace",
            [{"loc": ["path", "person"], "msg": "not found"}],
        )
    report = await forget_person(rt, ws, person, who.actor, merged)
    if not report.get("erased"):
        raise ApiError(
            int(report.get("status") or 500),
            str(report.get("error") or "the person could not be forgotten"),
            report.get("errors") or [],
        )
    return report


@router.get("/v1/workspaces/{ws}/access-log", response_model=AccessLogPage, responses=AUTH)
async def access_log(
    ws: WS,
    who: Admin,
    rt: RT,
    person: Annotated[
        str | None,
        Query(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Only entries naming this person."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    cursor: pagination.CursorParam = None,
) -> dict[str, Any]:
    """Who read whose personal data, through which endpoint, newest first."""
    start = pagination.decode(cursor, "access-log", (int,))
    before = int(start.key[0]) if start is not None else None  # type: ignore[arg-type]
    rows = await rt.audit.entries(ws, person, limit + 1, before)
    nxt = pagination.next_cursor("access-log", rows, limit, lambda r: (int(r["id"]),))
    entries = [{k: v for k, v in r.items() if k != "id"} for r in rows[:limit]]
    return {"entries": entries, "next_cursor": nxt}


@router.post(
    "/v1/workspaces/{ws}/tokens",
    status_code=201,
    response_model=TokenCreated,
    responses=AUTH,
)
async def new_token(ws: WS, body: TokenIn, who: Admin, rt: RT) -> TokenCreated:
    """Create a token for this workspace; the plaintext is shown only in this answer."""
    async with rt.connections.connection() as conn:
        token = await create_token(conn, ws, body.role, body.name)
    log.info("token.created", workspace_id=ws, role=body.role, name=body.name, by=who.actor)
    return TokenCreated(token=token, token_id=token.split("_")[1], role=body.role, name=body.name)


@router.get("/v1/workspaces/{ws}/tokens", response_model=TokensPage, responses=AUTH)
async def tokens(
    ws: WS,
    who: Admin,
    rt: RT,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: pagination.CursorParam = None,
) -> dict[str, Any]:
    """The workspace's tokens (revoked ones too), oldest first; never their secrets."""
    start = pagination.decode(cursor, "tokens", (str, str))
    after = None
    if start is not None:
        try:
            after = (datetime.fromisoformat(str(start.key[0])), str(start.key[1]))
        except ValueError:
            raise pagination.refuse("malformed sort key") from None
    async with rt.connections.connection() as conn:
        rows = await list_tokens(conn, ws, limit + 1, after)
    keys = ("token_id", "workspace_id", "role", "name", "created_at", "revoked_at")
    found = [dict(zip(keys, r, strict=True)) for r in rows]
    nxt = pagination.next_cursor(
        "tokens", found, limit, lambda t: (t["created_at"].isoformat(), t["token_id"])
    )
    return {"tokens": found[:limit], "next_cursor": nxt}


@router.delete(
    "/v1/workspaces/{ws}/tokens/{token_id}",
    response_model=Revoked,
    responses=AUTH | problems(404),
)
async def revoke(ws: WS, token_id: TokenId, who: Admin, rt: RT) -> Revoked:
    """Revoke a token of this workspace (at once on this instance, within seconds on others)."""
    async with rt.connections.connection() as conn:
        if not await token_in_workspace(conn, token_id, ws):
            raise ApiError(
                404,
                f"token_id: no token {token_id!r} in this workspace",
                [{"loc": ["path", "token_id"], "msg": "not found"}],
            )
        done = await revoke_token(conn, token_id)
    rt.principals.clear()
    return Revoked(revoked=done)
