"""How the API refuses: every error, whatever raised it, is one RFC 9457 problem document
(``application/problem+json``): ``type`` (a URI naming the kind of problem), ``title`` (the
same for every problem of that type), ``status`` (the HTTP status), ``detail`` (this
occurrence, in a sentence that names the field at fault) and ``errors`` (one ``{loc, msg}``
per field at fault; empty when no field is). Some types add members (``event_id`` on a write,
``last_seq`` on a ``min_seq`` beyond the log, ``ready``/``checks`` on readiness).

Sources of errors, all turned into that shape here: :class:`ApiError` raised by the routes,
FastAPI's request validation, Starlette's routing errors (no such path, method not allowed),
infrastructure failures (PostgreSQL or NATS unreachable: 503) and anything unexpected (500,
logged with its traceback, never shown to the client).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from nats import errors as nats_errors
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
#: Where the OpenAPI document keeps the Problem schema.
REF_PROBLEM = "#/components/schemas/Problem"
#: Prefix of every problem ``type`` URI (documented in docs/frontends.md).
PROBLEM_BASE = "https://tieline.dev/problems/"


@dataclass(frozen=True)
class ProblemType:
    """One kind of problem: its ``type`` slug, HTTP status, fixed title and what it means."""

    slug: str
    status: int
    title: str
    meaning: str

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug


PROBLEM_TYPES: dict[str, ProblemType] = {
    p.slug: p
    for p in (
        ProblemType(
            "validation",
            422,
            "Request is not valid",
            "A path or query parameter or the body is malformed or breaks a rule; `errors` "
            "names each field (`loc`) and what is wrong with it (`msg`). Fix the request.",
        ),
        ProblemType(
            "min-seq-beyond-log",
            422,
            "min_seq is beyond the log",
            "`min_seq` names a stream sequence the log has not reached, so waiting could "
            "never succeed. `last_seq` is the log's last sequence now. Pass a `seq` that a "
            "write of this deployment returned.",
        ),
        ProblemType(
            "unauthorized",
            401,
            "Authentication required",
            "No bearer token, or one that is unknown, malformed or revoked. Send "
            "`Authorization: Bearer <token>`.",
        ),
        ProblemType(
            "forbidden",
            403,
            "Not allowed",
            "The token is valid but bound to another workspace, or its role is too low "
            "(read < write < admin).",
        ),
        ProblemType(
            "not-found",
            404,
            "Not found",
            "The person, relationship, token or event named does not exist in this workspace.",
        ),
        ProblemType(
            "no-such-route",
            404,
            "No such route",
            "No route matches this path (a typo in the URL, not a missing resource).",
        ),
        ProblemType(
            "method-not-allowed",
            405,
            "Method not allowed",
            "The path exists but not with this method; the `Allow` header lists those that do.",
        ),
        ProblemType(
            "conflict",
            409,
            "Conflict",
            "The request contradicts what is recorded: a person id that is taken, an "
            "`event_id` already used for a different event (idempotency conflict), a "
            "retraction of a retracted event, an introduction step out of order.",
        ),
        ProblemType(
            "gone",
            410,
            "Gone",
            "The person was forgotten (erased); nothing can be recorded about them.",
        ),
        ProblemType(
            "payload-too-large",
            413,
            "Payload too large",
            "The body is larger than the limit (bytes or lines) given in `detail`.",
        ),
        ProblemType(
            "rate-limited",
            429,
            "Too many requests",
            "Too many failed authentications from this client; retry after `Retry-After` seconds.",
        ),
        ProblemType(
            "internal",
            500,
            "Internal server error",
            "Something unexpected failed; it is logged on the server. Retrying may help.",
        ),
        ProblemType(
            "bad-gateway",
            502,
            "Bad gateway",
            "A write-side service answered something the API could not use.",
        ),
        ProblemType(
            "unavailable",
            503,
            "Service unavailable",
            "A dependency (NATS, PostgreSQL, a write-side service) is down or slow, or the "
            "projection did not reach `min_seq` in time. Retry after `Retry-After` seconds.",
        ),
        ProblemType(
            "not-ready",
            503,
            "Not ready",
            "Readiness failed: `checks` says which dependency is down or how far the "
            "projection lags.",
        ),
    )
}
#: The type of an :class:`ApiError` raised with only a status.
DEFAULT_TYPE = {
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    410: "gone",
    413: "payload-too-large",
    422: "validation",
    429: "rate-limited",
    500: "internal",
    502: "bad-gateway",
    503: "unavailable",
}


class FieldError(BaseModel):
    """One field at fault: where (``loc``: ``["body", "participants", "1"]``,
    ``["query", "min_seq"]``, ...) and what is wrong with it."""

    loc: list[str]
    msg: str


class Problem(BaseModel):
    """An RFC 9457 problem document, the body of every error answer."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": PROBLEM_BASE + "validation",
                    "title": "Request is not valid",
                    "status": 422,
                    "detail": "body.depth: Input should be 'card_exchange', 'brief_chat', "
                    "'conversation', 'deep_conversation' or 'meal_or_activity'",
                    "instance": "/v1/workspaces/default/events",
                    "errors": [{"loc": ["body", "depth"], "msg": "Input should be ..."}],
                }
            ]
        },
    )
    type: str = Field(description="URI of the problem type: " + PROBLEM_BASE + "<slug>.")
    title: str = Field(description="Short summary, the same for every problem of the type.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="This occurrence, naming the field at fault.")
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[FieldError] = Field(
        default_factory=list, description="Each field at fault; empty when none is."
    )
    event_id: str | None = Field(
        default=None, description="On a refused write: the event id it carried or was given."
    )
    last_seq: int | None = Field(
        default=None, description="On min-seq-beyond-log: the log's last stream sequence."
    )


class ApiError(Exception):
    """A refusal: HTTP ``status``, a ``detail`` sentence naming the field at fault, the
    fields (``errors``: ``{"loc": [...], "msg": ...}``), and optionally a problem ``type``
    slug (else the status's default), headers and extra members of the problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        *,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.type = type or DEFAULT_TYPE.get(status, "internal")
        self.headers = headers or {}
        self.extra = extra or {}


def problem_body(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The problem document as a dict: the type's URI and title, and what was given."""
    kind = PROBLEM_TYPES[slug or DEFAULT_TYPE.get(status, "internal")]
    body: dict[str, Any] = {
        "type": kind.uri,
        "title": kind.title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body["errors"] = [
        {"loc": [str(p) for p in e["loc"]], "msg": str(e["msg"])} for e in errors or []
    ]
    body.update({k: v for k, v in (extra or {}).items() if v is not None})
    return body


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """A problem document as an ``application/problem+json`` response."""
    body = problem_body(status, detail, slug=slug, errors=errors, instance=instance, extra=extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def describe(errors: list[dict[str, Any]]) -> str:
    """The fields at fault in one line: ``body.depth: Input should be ...; query.limit: ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}" for e in errors
    )


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's validation errors (path, query, body) as a ``validation`` problem."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    return problem_response(
        422, describe(errors) or "invalid request", errors=errors, instance=request.url.path
    )


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    """An :class:`ApiError`; a 401 says which scheme to use."""
    assert isinstance(exc, ApiError)
    headers = dict(exc.headers)
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    if exc.status == 503:
        headers.setdefault("Retry-After", "1")
    return problem_response(
        exc.status,
        exc.detail,
        slug=exc.type,
        errors=exc.errors,
        instance=request.url.path,
        headers=headers,
        extra=exc.extra,
    )


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (no route for the path, method not allowed) as problems."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # FastAPI: a body it could not even parse (not UTF-8, ...)
        errors = [{"loc": ["body"], "msg": str(exc.detail)}]
        return problem_response(
            422, f"body: {exc.detail}", errors=errors, instance=request.url.path
        )
    slug = "no-such-route" if exc.status_code == 404 else None
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
    detail = (
        f"no route matches {request.url.path}"
        if exc.status_code == 404
        else f"{request.method} {request.url.path}: {exc.detail}"
    )
    return problem_response(
        exc.status_code,
        detail,
        slug=slug,
        instance=request.url.path,
        headers=headers,
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route has for this path (Starlette names only the first route's
    when two routes share a path, e.g. GET and POST /people)."""
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.routes):
        match, _ = context.route.matches(request.scope)
        if match != Match.NONE:
            methods.update(context.methods or ())
    return sorted(methods)


#: Failures of a dependency rather than of tieline: answered 503 (retry), not 500.
UNAVAILABLE = (
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    nats_errors.ConnectionClosedError,
    nats_errors.NoServersError,
    nats_errors.TimeoutError,
    nats_errors.NoRespondersError,
    nats_errors.StaleConnectionError,
)


class ProblemMiddleware:
    """Turns an exception no handler took into a problem document: 503 when a dependency is
    unreachable, else 500 (logged with its traceback; the client sees no internals).

    It sits inside the CORS middleware, so even these answers carry the CORS headers a
    browser needs to read them (Starlette's own last-resort handler sits outside it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:  # a streamed body failed midway: nothing can be said any more
                raise
            response = _last_resort(exc, scope.get("path", ""))
            await response(scope, receive, send)


def _last_resort(exc: Exception, path: str) -> JSONResponse:
    if isinstance(exc, UNAVAILABLE):
        log.warning("api.dependency_unavailable", path=path, error=repr(exc))
        return problem_response(
            503,
            f"a dependency is unavailable ({type(exc).__name__}); retry later",
            instance=path,
            headers={"Retry-After": "1"},
        )
    log.exception("api.unhandled_error", path=path)
    return problem_response(500, "unexpected error; it has been logged", instance=path)


def install(app: FastAPI) -> None:
    """Answer every error as a problem document (see the module docstring)."""
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(ProblemMiddleware)


def retry_after(seconds: float) -> dict[str, str]:
    """A ``Retry-After`` header of at least one whole second."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
