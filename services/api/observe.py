"""Per-request observability of the api: the request id, one access-log line, the HTTP metrics.

``X-Request-ID``
    Taken from the request when it is a plain token (letters, digits, ``._:-``, at most 128;
    anything else could forge log lines or blow up label sets, so it is replaced); else the
    trace id of a W3C ``traceparent`` header, so one id follows a request through a caller's
    traces; else a fresh UUID. It is bound to every log line of the request (structlog
    contextvars), returned in the response's ``X-Request-ID`` header, and is the
    ``correlation_id`` of the events the request records (:func:`correlation_id`).
Access log
    ``http.request`` once per request, after the response (a live-update stream: when it
    closes): method, route template, path, status, duration_ms, client, request_id.
Metrics
    plumbing/metrics.py ``tieline_http_*`` by route *template*; a path no route matched is
    ``unmatched`` (so scanners cannot create label values); ``/metrics`` itself is not counted.
"""

from __future__ import annotations

import re
import time
import uuid
from contextvars import ContextVar

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tieline.plumbing import metrics

log = structlog.get_logger("tieline.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
#: uuid5 namespace turning a caller's non-UUID request id into an event correlation id.
_NAMESPACE = uuid.UUID("6f1c7d1e-4b7a-5c1e-9a55-2b1d3c4e5f60")
#: The request id of the request being handled (the route runs in the middleware's context).
_CURRENT: ContextVar[str | None] = ContextVar("tieline_request_id", default=None)


def request_id_of(headers: Headers) -> str:
    """The request's id (see the module docstring for the order of preference)."""
    given = headers.get("x-request-id", "").strip()
    if _REQUEST_ID.match(given):
        return given
    parent = _TRACEPARENT.match(headers.get("traceparent", "").strip().lower())
    if parent and parent.group(1) != "0" * 32:
        return parent.group(1)
    return str(uuid.uuid4())


def correlation_id() -> str:
    """The ``correlation_id`` (a UUID) of the events the current request records: its request
    id when that is a UUID, else a UUID derived from it (uuid5), so the same id finds both;
    a fresh UUID outside a request."""
    rid = _CURRENT.get() or str(uuid.uuid4())
    try:
        return str(uuid.UUID(rid))
    except ValueError:
        return str(uuid.uuid5(_NAMESPACE, rid))


def route_template(scope: Scope) -> str:
    """The matched route's path template, or ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class ObserveMiddleware:
    """Pure ASGI (so streamed responses are not buffered and contextvars reach the route)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(Headers(scope=scope))
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # what the client gets if nothing is sent (the server answers 500)
        started = time.perf_counter()

        async def tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        current = _CURRENT.set(request_id)
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, tagged)
            finally:
                _CURRENT.reset(current)
                self._observe(scope, status, time.perf_counter() - started)

    @staticmethod
    def _observe(scope: Scope, status: int, seconds: float) -> None:
        route, method = route_template(scope), scope.get("method", "")
        if route != "/metrics":
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            metrics.HTTP_DURATION.labels(method, route).observe(seconds)
        client = scope.get("client")
        log.info(
            "http.request",
            method=method,
            route=route,
            path=scope.get("path", ""),
            status=status,
            duration_ms=round(seconds * 1000, 2),
            client=client[0] if client else None,
        )
