"""Composition root of the HTTP API (FastAPI). OpenAPI at /docs and /openapi.json, AsyncAPI
(the event subjects) at /asyncapi.json.

``create_app(settings)`` builds the runtime (nothing connects until the lifespan starts),
installs the error handlers (every error a problem document), CORS for the configured
origins, and includes one router per area.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from starlette.middleware.cors import CORSMiddleware
from tieline.plumbing import metrics, telemetry
from tieline.plumbing.config import Settings
from tieline.services.api import errors, openapi
from tieline.services.api.deps import WorkspaceScope
from tieline.services.api.observe import ObserveMiddleware
from tieline.services.api.routers import (
    events,
    export,
    introductions,
    ops,
    people,
    privacy,
    relationships,
    stream,
    sync_sources,
    webhooks,
)
from tieline.services.api.runtime import Runtime
from tieline.services.api.webapp import mount_web

#: The routers in the order their routes are matched and listed in the OpenAPI document.
ROUTERS = (
    export,
    ops,
    people,
    events,
    relationships,
    introductions,
    privacy,
    stream,
    webhooks,
    sync_sources,
)

#: What a browser page on an allowed origin may send and read (CORS). No cookies: the API
#: authenticates with a bearer token, so credentials mode stays off.
CORS_METHODS = ("GET", "POST", "DELETE")
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID", "X-Request-ID")
CORS_EXPOSED_HEADERS = (
    "Retry-After",
    "WWW-Authenticate",
    "Location",
    "Content-Disposition",
    "X-Tieline-As-Of",
    "X-Request-ID",
    "Tieline-Heartbeat-Seconds",
)

DESCRIPTION = """Event-sourced relationship backend.

* **Authenticate** with `Authorization: Bearer <token>` (Authorize button above); a token is
  bound to one workspace with a role (read < write < admin).
* **Write** with `POST .../events` (one command) or `.../events/batch` (JSON Lines). Each write
  answers the event's stream `seq`; give your own `event_id` to make a retry safe.
* **Read your writes**: pass that `seq` as `?min_seq=` to any read.
* **Lists** are paged: `limit`, and `cursor` = the previous page's `next_cursor`.
* **Errors** are RFC 9457 problem documents (`application/problem+json`): `type`, `title`,
  `status`, `detail`, and `errors[]` naming each field at fault (`loc`, `msg`).
* The events on NATS are described by the AsyncAPI document at `/asyncapi.json`.
"""


def create_app(settings: Settings) -> FastAPI:
    """Build the API; connections open in the lifespan."""
    rt = Runtime.build(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        freeze_startup_heap()
        yield
        await rt.stop()

    app = FastAPI(
        title="tieline",
        version="0.1.0",
        lifespan=lifespan,
        description=DESCRIPTION,
        # operationId = the route function's name (add_person, record_event, timeline, ...):
        # what a generated client names its calls.
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.runtime = rt
    errors.install(app)
    # Added after the problem middleware, so it wraps it: every answer, errors included,
    # carries the CORS headers a browser needs to read it.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=CORS_METHODS,
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_EXPOSED_HEADERS,
        allow_credentials=False,
        max_age=600,
    )
    # Around everything but the access log: a request's workspace binding (row-level
    # security) never outlives it.
    app.add_middleware(WorkspaceScope)
    # Outermost: its access-log line and metrics see every answer, CORS and problems included.
    app.add_middleware(ObserveMiddleware)
    for module in ROUTERS:
        app.include_router(module.router)
    mount_web(app)  # the web page at /app (services/api/webapp.py)
    openapi.install(app)
    install_observability(app, rt)
    return app


def freeze_startup_heap() -> None:
    """Move every object alive after start-up (modules, the app, its routes and models) out
    of the cyclic collector's reach (``gc.freeze``): they live as long as the process, and a
    full collection walked all of them while a request waited (docs/performance.md, "HTTP
    read path after the issue 15 run"). Objects made later are collected as before."""
    gc.collect()
    gc.freeze()


def install_observability(app: FastAPI, rt: Runtime) -> None:
    """``/metrics`` (Prometheus text, plumbing/metrics.py; not in the OpenAPI document) and,
    when tracing is on (plumbing/telemetry.py), a server span per request."""
    metrics.SSE_CLIENTS.set_function(lambda: rt.feed.clients)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    if telemetry.enabled():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=telemetry.provider(), excluded_urls="healthz,readyz,metrics"
        )
