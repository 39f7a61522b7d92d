"""Composition root of the HTTP API (FastAPI). OpenAPI at /docs and /openapi.json.

``create_app(settings)`` builds the runtime (nothing connects until the lifespan starts),
installs the error handlers and includes one router per area.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from tieline.plumbing.config import Settings
from tieline.services.api import errors
from tieline.services.api.routers import (
    events,
    export,
    introductions,
    ops,
    people,
    privacy,
    relationships,
)
from tieline.services.api.runtime import Runtime
from tieline.services.api.webapp import mount_web

#: The routers in the order their routes are matched and listed in the OpenAPI document.
ROUTERS = (export, ops, people, events, relationships, introductions, privacy)


def create_app(settings: Settings) -> FastAPI:
    """Build the API; connections open in the lifespan."""
    rt = Runtime.build(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        yield
        await rt.stop()

    app = FastAPI(
        title="tieline",
        version="0.1.0",
        lifespan=lifespan,
        description="Event-sourced relationship backend. Writes return the stream "
        "sequence; reads accept ?min_seq for read-your-writes.",
    )
    app.state.runtime = rt
    errors.install(app)
    for module in ROUTERS:
        app.include_router(module.router)
    mount_web(app)  # the web page at /app (services/api/webapp.py)
    return app
