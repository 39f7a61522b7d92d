"""The routes' dependencies in one place: path and query parameter types, the runtime, and
the bearer-token principal a route requires for the workspace in its path."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import structlog
from fastapi import Depends, Path, Query, Request
from tieline.services.api.errors import ApiError
from tieline.services.api.runtime import Runtime
from tieline.services.auth import Principal

WS = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Workspace id")]
PID = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Person id")]
AsOf = Annotated[
    datetime | None,
    Query(
        description=(
            "Answer as of this time (ISO 8601 with a timezone): only events that occurred by then "
            "count, and decay runs to then."
        )
    ),
]
MinSeq = Annotated[
    int | None,
    Query(
        ge=0,
        description=(
            "Read-your-writes: wait (bounded) until the projection has applied this stream seq; "
            "503 if it does not in time."
        ),
    ),
]


def runtime(request: Request) -> Runtime:
    """The app's :class:`Runtime` (built by ``create_app``, opened in its lifespan)."""
    rt: Runtime = request.app.state.runtime
    return rt


RT = Annotated[Runtime, Depends(runtime)]


def aware(value: datetime | None) -> datetime | None:
    """``as_of`` as given, refused (422) when it has no timezone: a naive time would mean
    a different instant on every machine."""
    if value is not None and value.tzinfo is None:
        raise ApiError(
            422,
            "as_of: needs a timezone, e.g. 2025-06-30T00:00:00Z",
            [{"loc": ["query", "as_of"], "msg": "needs a timezone"}],
        )
    return value


def require(role: str) -> Any:
    """Dependency: a valid bearer token for the workspace in the path, with ``role``.

    Errors say only 401 or 403: nothing that tells an attacker which part was wrong.
    """

    async def dependency(request: Request, ws: WS) -> Principal:
        rt = runtime(request)
        client = request.client.host if request.client else "unknown"
        if rt.limiter.blocked(client):
            raise ApiError(429, "too many failed authentication attempts; retry later")
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        found = await rt.principals.get(token) if token else None
        if found is None:
            rt.limiter.failed(client)
            raise ApiError(401, "unauthorized")
        if found.workspace_id != ws or not found.may(role):
            raise ApiError(403, "forbidden")
        structlog.contextvars.bind_contextvars(actor=found.actor, workspace_id=ws)
        return found

    return Depends(dependency)


Reader = Annotated[Principal, require("read")]
Writer = Annotated[Principal, require("write")]
Admin = Annotated[Principal, require("admin")]
