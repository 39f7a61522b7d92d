"""Composition of an event-emitting service: a FastStream app answering NATS request/reply
commands on ``{prefix}.cmd.{workspace}.{service}.record``.

A command is ``{"actor": ..., "correlation_id": ..., "items": [event objects]}`` (and, from
the API, ``"role"``: the caller's token's); the reply is
``{"results": [outcome per item]}`` in the same order (see ``writeside.Outcome``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
import structlog
from faststream import FastStream
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from faststream.nats.security import NatsUserPassword
from nats.aio.client import Client as NatsClient
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing import metrics, telemetry
from tieline.plumbing.config import Settings
from tieline.plumbing.crypto import KeyStore, master_key_of
from tieline.plumbing.db import make_pool
from tieline.plumbing.jetstream import connect_nats, ensure_streams, inbox_prefix
from tieline.plumbing.logging import stdlib_logger
from tieline.plumbing.state import ensure_state_schema
from tieline.plumbing.subjects import command_wildcard
from tieline.services.write_backfill import backfill, backfill_people, sweep_digests
from tieline.services.write_state import WriteState
from tieline.services.writeside import Outcome, WriteSide

log = structlog.get_logger(__name__)

#: Which service records which event types.
PEOPLE_TYPES = frozenset({"person.added", "person.updated", "person.forgotten", "person.merged"})
INTERACTION_TYPES = frozenset(
    {
        "relationship.met",
        "relationship.followed_up",
        "relationship.introduced",
        "relationship.helped",
        "relationship.closeness_rated",
        "event.retracted",
        "introduction.requested",
        "introduction.consented",
        "introduction.outcome",
        # An admin's adoption of model parameters for the workspace (tieline calibrate --apply)
        "workspace.model_calibrated",
    }
)


def service_for(event_type: object) -> str:
    """The service that owns an event type (unknown types go to interactions, which rejects
    them with a clear error)."""
    return (
        "people" if isinstance(event_type, str) and event_type in PEOPLE_TYPES else "interactions"
    )


def _broker(settings: Settings, service: str) -> NatsBroker:
    broker_kwargs: dict[str, Any] = {}
    if settings.nats_user:
        broker_kwargs.update(
            security=NatsUserPassword(settings.nats_user, settings.nats_password or ""),
            inbox_prefix=inbox_prefix(settings),
        )
    return NatsBroker(
        [u.strip() for u in settings.nats_url.split(",") if u.strip()],
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        name=f"tieline-{service}-commands",
        middlewares=telemetry.broker_middlewares(),
        logger=stdlib_logger("tieline.faststream.broker"),  # JSON through the root handler
        # FastStream's own "Received"/"Processed" line per message at DEBUG: the write side
        # logs each recorded event with its ids (event.recorded), and the two lines per
        # command cost ~12% of this process's CPU on single-event writes (py-spy, bench ingest).
        # Errors are still logged at ERROR.
        log_level=logging.DEBUG,
        **broker_kwargs,
    )


def _failed(exc: Exception) -> dict[str, Any]:
    """The answer to every line of a command that failed as a whole: 503 when the database or
    the broker was away (send it again: an ``event_id`` makes that safe), else 500."""
    transient = isinstance(exc, OSError | TimeoutError | psycopg.OperationalError)
    status, what = (503, "try again") if transient else (500, "internal error")
    return {"status": status, "error": f"(command): {what} ({type(exc).__name__})", "errors": []}


async def handle_command(
    side: WriteSide, subject: str, body: dict[str, Any], service: str
) -> dict[str, Any]:
    """Answer one command: its workspace is the subject's third token."""
    workspace_id = subject.split(".")[2]
    items = body.get("items")
    actor = body.get("actor")
    if not isinstance(items, list) or not isinstance(actor, str) or not actor:
        return {"results": [], "error": "command needs 'actor' and a list of 'items'"}
    correlation_id = body.get("correlation_id")
    with structlog.contextvars.bound_contextvars(correlation_id=correlation_id, service=service):
        try:
            # Only the API sends a role: what the caller's token may do.
            admin = body.get("role") == "admin"
            outcomes = await side.record_many(
                workspace_id, items, actor, correlation_id, admin=admin
            )
        except Exception as exc:
            # An answer now, not the API's 503 after its command timeout: the client learns
            # at once, and the log says why.
            log.exception("command.failed", workspace_id=workspace_id, items=len(items))
            return {"results": [_failed(exc) for _ in items]}
    results = [o.as_dict() for o in outcomes]
    metrics.count_command_outcomes(items, results, PEOPLE_TYPES | INTERACTION_TYPES)
    return {"results": results}


async def start_write_side(
    settings: Settings, service: str, types: Iterable[str], pool: Any
) -> tuple[NatsClient, WriteSide]:
    """Connect, create what is missing (streams, state and write-side tables, the one-time
    backfills of the write-side tables from the log, the sweep of digests of forgotten
    people: services/write_backfill.py) and build the write side."""
    nc: NatsClient = await connect_nats(settings, name=f"tieline-{service}-publisher")
    js = telemetry.jetstream(nc)  # publishes carry the command's trace (when tracing)
    await ensure_streams(js, settings)
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await ensure_state_schema(conn, settings.database_schema)
        await backfill(conn, js, settings.stream_name, REGISTRY)
        await backfill_people(conn, js, settings.stream_name, REGISTRY)
        await sweep_digests(conn)
    keystore = KeyStore(pool, master_key_of(settings), coalesce=True)
    side = WriteSide(settings, js, WriteState(pool), REGISTRY, types, service, keystore)
    return nc, side


def subscribe_commands(
    broker: NatsBroker, settings: Settings, service: str, side: Callable[[], WriteSide]
) -> None:
    """Answer ``service``'s commands on ``broker`` with the write side ``side()`` returns."""

    # Commands are handled concurrently: each spends most of its time waiting on JetStream
    # and PostgreSQL round trips, so one at a time would cap a service at 1/latency.
    @broker.subscriber(
        command_wildcard(settings.subject_prefix, service),
        queue=service,
        max_workers=settings.command_concurrency,
    )
    async def on_command(body: dict[str, Any]) -> dict[str, Any]:
        # The message is read from the context here rather than injected as a parameter:
        # FastStream resolves an injected NatsMessage with a synchronous function that
        # fast_depends runs in a worker thread, a thread hop per command (profiled: ~10% of
        # this process on single-event writes).
        msg: NatsMessage = broker.context.get_local("message")
        return await handle_command(side(), msg.raw_message.subject, body, service)


def create_service_app(settings: Settings, service: str, types: Iterable[str]) -> FastStream:
    """Build (but do not start) the FastStream app of one write-side service."""
    broker = _broker(settings, service)
    # The write side's own tables and the key store live in the state schema; it reads no
    # read model, so no read-model generation is on this pool's search_path.
    pool = make_pool(settings, min_size=2, max_size=16, name="write")
    holder: dict[str, Any] = {}

    subscribe_commands(broker, settings, service, lambda: holder["side"])

    app = FastStream(broker, logger=stdlib_logger("tieline.faststream.app"))

    @app.on_startup
    async def _connect() -> None:
        holder["nc"], holder["side"] = await start_write_side(settings, service, types, pool)
        log.info("service.started", service=service)

    @app.on_shutdown
    async def _close() -> None:
        nc = holder.get("nc")
        if nc is not None:
            await nc.drain()
        await pool.close()

    return app


__all__ = ["INTERACTION_TYPES", "PEOPLE_TYPES", "Outcome", "create_service_app", "service_for"]
