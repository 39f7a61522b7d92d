"""Entry point of one tieline process: ``python -m tieline.services.runtime.run ROLE``.

Roles: ``api``, ``people``, ``interactions``, ``worker``, ``webhooks``, ``sync``. Settings come
from the environment (``TIELINE_*``); ``tieline up`` sets them for the processes it supervises
(and adds ``--data-dir DIR`` to name the installation), the deployment files in deploy/ for
containers.
With ``TIELINE_HEALTH_PORT`` the roles without an HTTP API answer health probes
(services/runtime/health.py); the api has ``/healthz`` and ``/readyz`` itself, and with a
health port (``tieline up --api-workers N`` gives each api process one) serves its own
``/metrics`` there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

from tieline.plumbing import metrics, telemetry
from tieline.plumbing.config import Settings
from tieline.plumbing.logging import configure_logging
from tieline.services.runtime.health import ReadyCheck, Refresh, start_health_server

ROLES = ("api", "people", "interactions", "worker", "webhooks", "sync")

_CONNECTIONS = ("nats_url", "nats_user", "nats_password", "database_url")
#: Settings each role must be given explicitly when ``TIELINE_STRICT_CONFIG`` is on (the
#: container image turns it on). Without them a deployed process would fall back to
#: ``localhost`` servers, connect to NATS without a user, or (master key) store per-person
#: keys unwrapped. ``bootstrap`` is the one-shot ``tieline bootstrap`` (streams, first token).
REQUIRED: dict[str, tuple[str, ...]] = {
    "api": (*_CONNECTIONS, "master_key"),
    "people": (*_CONNECTIONS, "master_key"),
    "interactions": (*_CONNECTIONS, "master_key"),
    "worker": _CONNECTIONS,
    # Endpoint secrets are sealed under the master key: without it nothing can be signed.
    "webhooks": (*_CONNECTIONS, "master_key"),
    # Source credentials and the cached calendar objects are sealed under the master key.
    "sync": (*_CONNECTIONS, "master_key"),
    "bootstrap": _CONNECTIONS,
}


def missing_settings(role: str, settings: Settings) -> list[str]:
    """The ``TIELINE_*`` variables ``role`` needs but was not given.

    Under ``strict_config`` every name in :data:`REQUIRED` must have been set explicitly (a
    default does not count) and be non-empty. A NATS user without a password is always an
    error: the server would refuse it with a message that names neither variable.
    """
    names = list(REQUIRED[role]) if settings.strict_config else []
    missing = [n for n in names if n not in settings.model_fields_set or not getattr(settings, n)]
    if settings.nats_user and not settings.nats_password and "nats_password" not in missing:
        missing.append("nats_password")
    return [f"TIELINE_{name.upper()}" for name in missing]


def check_settings(role: str, settings: Settings) -> None:
    """Exit with a message naming every missing variable (see :func:`missing_settings`)."""
    missing = missing_settings(role, settings)
    if missing:
        raise SystemExit(
            f"tieline {role}: missing required setting(s): {', '.join(missing)}. "
            "Set them in the environment (deploy/: the compose file's environment or the "
            "Kubernetes Secret; docs/operations.md)."
        )


@contextlib.asynccontextmanager
async def _health(
    role: str, settings: Settings, ready: ReadyCheck, refresh: Refresh | None = None
) -> AsyncIterator[None]:
    """Serve health probes and ``/metrics`` for ``role`` while the body runs (when a port is
    configured)."""
    if settings.health_port is None:
        yield
        return
    server = await start_health_server(
        role, settings.health_host, settings.health_port, ready, refresh
    )
    try:
        yield
    finally:
        server.close()


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` that other processes may bind too (SO_REUSEPORT):
    the kernel spreads new connections over every process listening on it.

    Bound, not listening: uvicorn's server listens on it (asyncio's ``create_server``) once
    the app's startup has run. Listening from the start, the kernel gave a process that was
    still connecting to NATS and PostgreSQL its share of new connections, which waited, and
    were reset when its startup failed (a reviewer's run: 8 of 20 requests reset after 3.4 s
    while another process could have answered them), and the supervisor took it for ready.

    Made with ``IPPROTO_TCP`` named: asyncio sets TCP_NODELAY only on sockets whose ``proto``
    says TCP, and connections accepted on a socket made with proto 0 kept Nagle's algorithm.
    Every request on a kept-alive connection then waited for the client's delayed ACK:
    44 ms each under ``--api-workers 2`` against about 1 ms with one api process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def api_server_config(settings: Settings, app: Any) -> Any:
    """uvicorn's configuration of the api process (a ``uvicorn.Config``).

    ``X-Forwarded-For`` / ``-Proto`` are believed only from the proxies named in
    ``TIELINE_FORWARDED_ALLOW_IPS``; with none named, not at all (uvicorn itself would trust
    127.0.0.1 by default, letting any local process pick the client address the rate limits
    key on).
    """
    import uvicorn

    trusted = settings.forwarded_allow_ips
    return uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
    )


async def _run_api(settings: Settings) -> None:
    """One API process; with ``api_workers`` > 1 it is one of several on the same port."""
    import uvicorn
    from tieline.services.api.app import create_app as create_api

    server = uvicorn.Server(api_server_config(settings, create_api(settings)))

    async def serving() -> tuple[bool, dict[str, Any]]:
        """Ready while uvicorn has started and is not shutting down (the api port's own
        ``/readyz`` checks NATS and PostgreSQL; this port is for scraping one process)."""
        listening = server.started and not server.should_exit
        return listening, {"listening": listening}

    # Under ``--api-workers`` N > 1 each process also serves its own /metrics on its health
    # port: on the shared port a scrape reaches whichever process the kernel picks. A single
    # api process does not open it, even when TIELINE_HEALTH_PORT is set (the image sets it for
    # every role): its own port already serves /metrics, and the two could collide.
    health = (
        settings if settings.api_workers > 1 else settings.model_copy(update={"health_port": None})
    )
    async with _health("api", health, serving):
        if settings.api_workers > 1:
            await server.serve(sockets=[reuse_port_socket(settings.api_host, settings.api_port)])
        else:
            await server.serve()


async def _run_service(role: str, settings: Settings) -> None:
    """A write service: ready once started and its broker's NATS connection is up."""
    if role == "people":
        from tieline.services.people.app import create_app
    else:
        from tieline.services.interactions.app import create_app
    app = create_app(settings)
    started = asyncio.Event()
    app.after_startup(started.set)

    async def ready() -> tuple[bool, dict[str, Any]]:
        broker = app.broker
        connected = broker is not None and await broker.ping(timeout=1.0)
        details = {"started": started.is_set(), "nats": "connected" if connected else "down"}
        return started.is_set() and connected, details

    async with _health(role, settings, ready):
        await app.run()


async def _run_worker(settings: Settings) -> None:
    """The projection worker: ready while connected to NATS, whether it is the active
    instance or a hot standby waiting for the projection lock (reported as ``state``)."""
    from tieline.projections.worker import Worker, serve

    made: list[Worker] = []

    def make(s: Settings) -> Worker:
        made.append(Worker(s))
        return made[-1]

    async def ready() -> tuple[bool, dict[str, Any]]:
        worker = made[-1] if made else None
        connected = bool(worker and worker.nc and worker.nc.is_connected)
        state = "active" if worker and worker.active else "standby"
        details: dict[str, Any] = {"nats": "connected" if connected else "down", "state": state}
        if worker is not None and worker.active:
            details["checkpoint"] = worker.stats.last_seq
        return connected, details

    async def refresh() -> None:
        """Lag and dead-letter count as of this scrape (two STREAM.INFO round trips)."""
        worker = made[-1] if made else None
        if worker is None or worker.js is None:
            return
        last = await worker.stream_last_seq() if worker.active else None
        metrics.observe_position(worker.active, worker.stats.last_seq, last)
        dlq = await worker.js.stream_info(f"{settings.stream_name}_DLQ")
        metrics.DLQ_MESSAGES.set(dlq.state.messages)

    async with _health("worker", settings, ready, refresh):
        await serve(settings, make)


async def _run_webhooks(settings: Settings) -> None:
    """The webhooks process: ready while connected to NATS."""
    from tieline.services.webhooks.app import WebhookService, serve

    made: list[WebhookService] = []

    def make(s: Settings) -> WebhookService:
        made.append(WebhookService(s))
        return made[-1]

    async def ready() -> tuple[bool, dict[str, Any]]:
        service = made[-1] if made else None
        connected = bool(service and service.nc and service.nc.is_connected)
        return connected, {"nats": "connected" if connected else "down"}

    async with _health("webhooks", settings, ready):
        await serve(settings, make)


async def _run_sync(settings: Settings) -> None:
    """The sync process (services/sync): ready while connected to NATS; ``/metrics`` has
    each source's status."""
    from tieline.services.sync.app import SyncService, serve

    made: list[SyncService] = []

    def make(s: Settings) -> SyncService:
        made.append(SyncService(s))
        return made[-1]

    async def ready() -> tuple[bool, dict[str, Any]]:
        service = made[-1] if made else None
        connected = bool(service and service.nc and service.nc.is_connected)
        return connected, {"nats": "connected" if connected else "down"}

    async def refresh() -> None:
        """Each source's status as of this scrape (one read of ``sync_sources``)."""
        if made and made[-1].engine is not None:
            await made[-1].refresh_metrics()

    async with _health("sync", settings, ready, refresh):
        await serve(settings, make)


async def run_role(role: str, settings: Settings) -> None:
    """Run one role until it is told to stop (SIGTERM/SIGINT)."""
    if role == "api":
        await _run_api(settings)
    elif role in ("people", "interactions"):
        await _run_service(role, settings)
    elif role == "worker":
        await _run_worker(settings)
    elif role == "webhooks":
        await _run_webhooks(settings)
    elif role == "sync":
        await _run_sync(settings)
    else:
        raise SystemExit(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def main(argv: list[str] | None = None) -> None:
    """``ROLE [--data-dir DIR]``. ``--data-dir`` only labels the process with the installation
    it belongs to (``tieline up`` passes it, so that leftovers of a crashed run can be found by
    their command line); every setting still comes from the environment."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[1] == "--data-dir":
        args = args[:1]
    if len(args) != 1 or args[0] not in ROLES:
        raise SystemExit(
            f"usage: python -m tieline.services.runtime.run {{{','.join(ROLES)}}} [--data-dir DIR]"
        )
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    import structlog

    structlog.contextvars.bind_contextvars(role=args[0])
    check_settings(args[0], settings)
    telemetry.configure_tracing(settings, f"tieline-{args[0]}")
    try:
        asyncio.run(run_role(args[0], settings))
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
