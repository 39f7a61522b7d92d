"""Calendar and address-book sync sources (admin): add a CalDAV/CardDAV source, list them with
their status, run one now, remove one. The ``sync`` process (services/sync) pulls them; the
password is sealed under the master key and never returned."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tieline.plumbing.crypto import MasterKey, master_key_of
from tieline.services.api.deps import RT, WS, Admin
from tieline.services.api.errors import ApiError
from tieline.services.api.openapi import AUTH, problems
from tieline.services.sync import state
from tieline.services.sync.app import sync_policy
from tieline.services.webhooks.ssrf import UrlRefused, check_url

router = APIRouter()

SourceId = Annotated[str, Path(pattern=r"^src_[0-9a-f]{16}$", description="Source id")]


class SourceIn(BaseModel):
    """A source to sync. ``owner`` is the person whose calendar it is (required for
    ``caldav``): every meeting found is theirs with the other attendees who are people."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "caldav",
                    "url": "https://dav.example.org/ada/calendar/",
                    "username": "ada",
                    "password": "app-password",
                    "owner": "ada",
                }
            ]
        },
    )
    kind: Literal["caldav", "carddav"] = "caldav"
    url: str = Field(max_length=2000)
    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1000)
    owner: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    window_days: int = Field(default=90, ge=1, le=3660)
    interval_s: int = Field(default=900, ge=10, le=7 * 86400)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("put the user and password in their own fields, not in the URL")
        return value


class SourceStatus(BaseModel):
    """How the source's syncs are going. ``last_error`` stays until the next success;
    ``failures`` counts consecutive failed runs (the next run backs off exponentially)."""

    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    next_run_at: datetime
    failures: int
    items_seen: int = Field(description="Calendar objects or vCards held after the last run")
    last_run: dict[str, Any] | None = Field(description="What the last successful run did")


class Source(BaseModel):
    """A configured source (never its password)."""

    source_id: str
    workspace_id: str
    kind: str
    url: str
    username: str
    owner: str | None
    window_days: int
    interval_s: int
    created_by: str
    created_at: datetime
    status: SourceStatus

    @classmethod
    def of(cls, row: dict[str, Any]) -> Source:
        status = SourceStatus(**{k: row[k] for k in SourceStatus.model_fields})
        return cls(**{k: row[k] for k in cls.model_fields if k != "status"}, status=status)


class SourceList(BaseModel):
    sources: list[Source]


class Deleted(BaseModel):
    deleted: bool


def _master_key(rt: Any) -> MasterKey:
    key = master_key_of(rt.settings)
    if key is None:
        raise ApiError(503, "sync sources need a master key (TIELINE_MASTER_KEY) for passwords")
    return key


@router.post(
    "/v1/workspaces/{ws}/sync-sources",
    tags=["sync"],
    status_code=201,
    responses=AUTH | problems(503),
)
async def add_source(ws: WS, body: SourceIn, who: Admin, rt: RT) -> Source:
    """Add a source; the sync process pulls it at once, then every ``interval_s``. The URL
    must be https on a public address, unless the installation allows loopback
    (``TIELINE_SYNC_ALLOW_LOOPBACK``) or private addresses (``TIELINE_SYNC_ALLOW_PRIVATE``)."""
    if body.kind == "caldav" and not body.owner:
        msg = "a calendar needs its owner: the person whose calendar it is"
        raise ApiError(422, msg, [{"loc": ["body", "owner"], "msg": msg}])
    try:
        await check_url(body.url, sync_policy(rt.settings))
    except UrlRefused as exc:
        raise ApiError(422, str(exc), [{"loc": ["body", "url"], "msg": str(exc)}]) from exc
    key = _master_key(rt)
    async with rt.connections.connection() as conn:
        row = await state.create_source(
            conn,
            ws,
            kind=body.kind,
            url=body.url,
            username=body.username,
            password=body.password,
            owner=body.owner,
            window_days=body.window_days,
            interval_s=body.interval_s,
            master_key=key,
            actor=who.actor,
        )
    return Source.of(row)


@router.get("/v1/workspaces/{ws}/sync-sources", tags=["sync"], responses=AUTH)
async def list_sources(ws: WS, who: Admin, rt: RT) -> SourceList:
    async with rt.connections.connection() as conn:
        rows = await state.sources(conn, ws)
    return SourceList(sources=[Source.of(r) for r in rows])


async def _source_or_404(rt: Any, ws: str, source_id: str) -> dict[str, Any]:
    async with rt.connections.connection() as conn:
        row = await state.source(conn, ws, source_id)
    if row is None:
        raise ApiError(404, "no such sync source in this workspace")
    return row


@router.get(
    "/v1/workspaces/{ws}/sync-sources/{source_id}", tags=["sync"], responses=AUTH | problems(404)
)
async def get_source(ws: WS, source_id: SourceId, who: Admin, rt: RT) -> Source:
    return Source.of(await _source_or_404(rt, ws, source_id))


@router.post(
    "/v1/workspaces/{ws}/sync-sources/{source_id}/run",
    tags=["sync"],
    status_code=202,
    responses=AUTH | problems(404),
)
async def run_source(ws: WS, source_id: SourceId, who: Admin, rt: RT) -> Source:
    """Make the source due now (the sync process picks it up within ``sync_poll_s``); watch
    ``status.last_success_at`` / ``last_error`` for the outcome."""
    async with rt.connections.connection() as conn:
        if not await state.request_run(conn, ws, source_id):
            raise ApiError(404, "no such sync source in this workspace")
    return Source.of(await _source_or_404(rt, ws, source_id))


@router.delete(
    "/v1/workspaces/{ws}/sync-sources/{source_id}", tags=["sync"], responses=AUTH | problems(404)
)
async def delete_source(ws: WS, source_id: SourceId, who: Admin, rt: RT) -> Deleted:
    """Remove the source, its password and its cached objects. What it recorded stays on the
    log (retract events one by one if they should go)."""
    async with rt.connections.connection() as conn:
        if not await state.delete_source(conn, ws, source_id):
            raise ApiError(404, "no such sync source in this workspace")
    return Deleted(deleted=True)
