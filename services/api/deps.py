"""The routes' dependencies in one place: path and query parameter types, the runtime, and
the bearer-token principal a route requires for the workspace in its path."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import structlog
from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send
from tieline.services.api.errors import ApiError, retry_after
from tieline.services.api.runtime import REQUEST_WORKSPACE, Runtime
from tieline.services.auth import Principal

WS = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Workspace id")]
PID = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Person id", examples=["ada"])
]
#: A person id in the query string.
PersonQuery = Annotated[str, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Person id")]
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
            "Read-your-writes: the `seq` a write returned. The read waits (at most "
            "TIELINE_MIN_SEQ_WAIT_S) until the projection has applied it: 503 `unavailable` "
            "if it does not in time; 422 `min-seq-beyond-log` at once if the log has not "
            "reached it."
        ),
    ),
]


def runtime(request: Request) -> Runtime:
    """The app's :class:`Runtime` (built by ``create_app``, opened in its lifespan)."""
    rt: Runtime = request.app.state.runtime
    return rt


async def runtime_dependency(request: Request) -> Runtime:
    """:func:`runtime` as a route dependency. ``async`` on purpose: FastAPI runs a plain
    ``def`` dependency in a worker thread, a thread hand-off on every request (about a tenth
    of the api's samples under load: docs/performance.md, "HTTP read path after the issue 15
    run")."""
    return runtime(request)


RT = Annotated[Runtime, Depends(runtime_dependency)]


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


#: The bearer scheme in the OpenAPI document (the Authorize button of /docs). It never refuses
#: by itself: ``require`` answers 401 in the API's own problem shape.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="tl_<id>_<secret>",
    description="An API token bound to one workspace with a role (read < write < admin).",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def require(role: str) -> Any:
    """Dependency: a valid bearer token for the workspace in the path, with ``role``.

    Errors say only 401 or 403: nothing that tells an attacker which part was wrong.
    """

    async def dependency(request: Request, ws: WS, credentials: Credentials) -> Principal:
        rt = runtime(request)
        # The real client: uvicorn puts a trusted proxy's X-Forwarded-For here
        # (TIELINE_FORWARDED_ALLOW_IPS), so clients behind an ingress do not share a bucket.
        client = request.client.host if request.client else "unknown"
        blocked = rt.limiter.blocked(client)
        if blocked is not None:
            raise _too_many_failures(blocked)
        token = credentials.credentials.strip() if credentials is not None else ""
        found = await rt.principals.get(token) if token else None
        if found is None:
            blocked = await rt.limiter.failed(client)
            if blocked is not None:
                raise _too_many_failures(blocked)
            raise ApiError(401, "unauthorized: send Authorization: Bearer <token>")
        if found.workspace_id != ws or not found.may(role):
            raise ApiError(403, f"forbidden: the token is not a {role} token of workspace {ws!r}")
        wait = await rt.limiter.request(found.token_id, client)
        if wait is not None:
            raise ApiError(
                429, "too many requests with this token; retry later", headers=retry_after(wait)
            )
        structlog.contextvars.bind_contextvars(actor=found.actor, workspace_id=ws)
        # From here on this request's read connections see only workspace ``ws``'s rows.
        REQUEST_WORKSPACE.set(ws)
        return found

    return Depends(dependency)


def _too_many_failures(seconds: float) -> ApiError:
    return ApiError(
        429,
        "too many failed authentication attempts from this client; retry later",
        headers=retry_after(seconds),
    )


class WorkspaceScope:
    """ASGI middleware: every request starts with no workspace bound
    (:data:`REQUEST_WORKSPACE`), whatever the task serving it saw before (an in-process
    client may run requests one after another in one task), and ends leaving none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = REQUEST_WORKSPACE.set(None)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_WORKSPACE.reset(token)


Reader = Annotated[Principal, require("read")]
Writer = Annotated[Principal, require("write")]
Admin = Annotated[Principal, require("admin")]
