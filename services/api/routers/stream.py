"""Live updates over Server-Sent Events: ``GET /v1/workspaces/{ws}/stream``.

Every message has ``id: <seq>-<sub>``, its position in the change log; a client that reconnects
with ``Last-Event-ID`` (browsers' ``EventSource`` does so by itself) gets what it missed, then
the live stream. See services/api/live.py for the fan-out and docs/frontends.md for clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse
from tieline.plumbing.config import Settings
from tieline.projections.changelog import KINDS
from tieline.projections.queries.live import Position
from tieline.services.api.deps import RT, WS, Reader
from tieline.services.api.errors import ApiError
from tieline.services.api.live import (
    ChangeFeed,
    Filter,
    control,
    parse_position,
)
from tieline.services.api.openapi import READ

router = APIRouter()

#: The response header that tells a client how often heartbeats come (see the 200 response).
HEARTBEAT_HEADER = "Tieline-Heartbeat-Seconds"

_ID = r"[A-Za-z0-9_-]{1,64}"
Kinds = Annotated[
    str | None,
    Query(
        description=f"Comma-separated kinds to receive (default all): {', '.join(KINDS)}.",
        examples=["relationship.changed,person.forgotten"],
    ),
]
Person = Annotated[
    str | None,
    Query(pattern=f"^{_ID}$", description="Only changes that name this person."),
]
Pair = Annotated[
    str | None,
    Query(
        pattern=f"^{_ID},{_ID}$",
        description="Only changes of this pair (and a person.forgotten of either side): `a,b`.",
        examples=["ada,grace"],
    ),
]


def parse_filter(kinds: str | None, person: str | None, pair: str | None) -> Filter:
    """The client's filter; an unknown kind or a pair of one person is refused (422)."""
    wanted = None
    if kinds is not None:
        wanted = frozenset(k.strip() for k in kinds.split(",") if k.strip())
        unknown = sorted(wanted - set(KINDS))
        if unknown or not wanted:
            raise ApiError(
                422,
                f"kinds: unknown kind {', '.join(unknown) or '(none given)'}; "
                f"expected some of {', '.join(KINDS)}",
                [{"loc": ["query", "kinds"], "msg": f"expected some of {', '.join(KINDS)}"}],
            )
    two = None
    if pair is not None:
        a, b = pair.split(",")
        if a == b:
            raise ApiError(
                422,
                "pair: needs two different people",
                [{"loc": ["query", "pair"], "msg": "needs two different people"}],
            )
        two = (a, b) if a < b else (b, a)
    return Filter(wanted, person, two)


@router.get(
    "/v1/workspaces/{ws}/stream",
    tags=["live"],
    response_class=EventSourceResponse,
    responses=READ
    | {
        200: {
            "description": "text/event-stream: `event.recorded`, `relationship.changed`, "
            "`follow_up.due`, `person.forgotten`; and `reset` (reload, then go on) or "
            "`overflow` (reconnect with Last-Event-ID) from the stream itself.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "headers": {
                HEARTBEAT_HEADER: {
                    "description": "Seconds between the stream's heartbeat comments: a "
                    "client that hears nothing (not even a heartbeat) for a few of them can "
                    "take the connection for stalled and reconnect with Last-Event-ID.",
                    "schema": {"type": "number"},
                }
            },
        }
    },
)
async def stream(
    ws: WS,
    request: Request,
    who: Reader,
    rt: RT,
    kinds: Kinds = None,
    person: Person = None,
    pair: Pair = None,
    last_event_id: Annotated[
        str | None,
        Header(description="Resume after this position (EventSource sends it on reconnect)."),
    ] = None,
    after: Annotated[
        str | None,
        Query(
            pattern=r"^\d{1,18}-\d{1,9}$",
            description="Resume after this position, for clients that cannot set "
            "Last-Event-ID (the header wins).",
        ),
    ] = None,
) -> EventSourceResponse:
    """Live changes of the workspace (read role), filtered by kind, person or pair. The
    token is checked again every ``sse_reauth_s``: a stream of a revoked token ends."""
    flt = parse_filter(kinds, person, pair)
    resume = last_event_id if last_event_id is not None else after
    settings = rt.settings
    token = request.headers.get("authorization", "")[7:].strip()

    async def authorized() -> bool:
        found = await rt.principals.get(token)
        return found is not None and found.workspace_id == ws and found.may("read")

    return EventSourceResponse(
        _messages(rt.feed, ws, flt, resume, Session(settings, authorized)),
        ping=settings.sse_heartbeat_s,
        headers={HEARTBEAT_HEADER: f"{settings.sse_heartbeat_s:g}"},
        send_timeout=settings.sse_send_timeout_s,
        sep="\n",
    )


@dataclass(frozen=True)
class Session:
    """What one stream needs besides the feed: the settings and its token's re-check."""

    settings: Settings
    authorized: Callable[[], Awaitable[bool]]


async def _catch_up(
    feed: ChangeFeed, ws: str, flt: Filter, resume: str, start: Position
) -> AsyncIterator[tuple[Position, bytes]]:
    """(position covered, messages) of what the client missed after ``resume``; a reset at
    ``start`` (then the live stream) when it cannot be resumed."""
    position = parse_position(resume)
    why = "the position is not one this stream gave out"
    if position is not None:
        why = await feed.resume_check(position) or ""
    if why:
        yield start, control("reset", start, reason=why)
        return
    assert position is not None
    yield position, b""
    async for covered, chunk in feed.replay(ws, position, flt):
        yield covered, chunk


async def _messages(
    feed: ChangeFeed, ws: str, flt: Filter, resume: str | None, session: Session
) -> AsyncIterator[bytes]:
    """What one client receives: what it missed (if it resumes), then live changes.

    The client registers with the feed first, so nothing committed from then on can fall
    between the replay and the live messages; a live message at or before what the replay
    already covered is skipped."""
    sub = feed.register(ws, flt)
    settings = session.settings
    try:
        yield b"retry: %d\n\n" % settings.sse_retry_ms
        last = sub.start
        if resume is not None:
            async for last, chunk in _catch_up(feed, ws, flt, resume, sub.start):  # noqa: B007
                if chunk:
                    yield chunk
        checked = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.sse_reauth_s):
                    await sub.wake.wait()
            if time.monotonic() - checked >= settings.sse_reauth_s:
                checked = time.monotonic()
                if not await session.authorized():
                    yield control("unauthorized", last, reason="the token is no longer valid")
                    return
            batch = [m for m in sub.take() if m.position > last]
            if batch:
                last = batch[-1].position
                yield b"".join(m.wire for m in batch)
            if sub.overflowed:
                reason = f"client too slow: more than {sub.limit} messages waiting"
                yield control("overflow", last, reason=reason)
                return
    finally:
        feed.unregister(sub)
