"""Composition of an event-emitting service: a FastStream app answering NATS request/reply
commands on ``{prefix}.cmd.{workspace}.{service}.record``.

A command is ``{"actor": ..., "correlation_id": ..., "items": [event objects]}``; the reply is
``{"results": [outcome per item]}`` in the same order (see ``writeside.Outcome``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog
from faststream import FastStream
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from faststream.nats.security import NatsUserPassword
from nats.aio.client import Client as NatsClient
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing import metrics, telemetry
from tieline.plumbing.config import Settings
from tieline.plumbing.crypto import KeyStore, master_key_from_env
from tieline.plumbing.jetstream import connect_nats, ensure_streams, inbox_prefix
from tieline.plumbing.logging import stdlib_logger
from tieline.plumbing.state import ensure_state_schema
from tieline.plumbing.subjects import command_wildcard
from tieline.projections.readpool import LivePool
from tieline.services.writeside import Outcome, WriteSide

log = structlog.get_logger(__name__)

#: Which service records which event types.
PEOPLE_TYPES = frozenset({"person.added", "person.updated", "person.forgotten"})
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
    }
)


def service_for(event_type: object) -> str:
    """The service that owns an event type (unknown types go to interactions, which rejects
    them with a clear error)."""
    return (
        "people" if isinstance(event_type, str) and event_type in PEOPLE_TYPES else "interactions"
    )


def create_service_app(settings: Settings, service: str, types: Iterable[str]) -> FastStream:
    """Build (but do not start) the FastStream app of one write-side service."""
    broker_kwargs: dict[str, Any] = {}
    if settings.nats_user:
        broker_kwargs.update(
            security=NatsUserPassword(settings.nats_user, settings.nats_password or ""),
            inbox_prefix=inbox_prefix(settings),
        )
    broker = NatsBroker(
        [u.strip() for u in settings.nats_url.split(",") if u.strip()],
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        name=f"tieline-{service}-commands",
        middlewares=telemetry.broker_middlewares(),
        logger=stdlib_logger("tieline.faststream.broker"),  # JSON through the root handler
        **broker_kwargs,
    )
    pool = LivePool(settings, min_size=2, max_size=16)
    holder: dict[str, Any] = {}

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
        workspace_id = msg.raw_message.subject.split(".")[2]
        side: WriteSide = holder["side"]
        items = body.get("items")
        actor = body.get("actor")
        if not isinstance(items, list) or not isinstance(actor, str) or not actor:
            return {"results": [], "error": "command needs 'actor' and a list of 'items'"}
        with structlog.contextvars.bound_contextvars(
            correlation_id=body.get("correlation_id"), service=service
        ):
            outcomes = await side.record_many(
                workspace_id, items, actor, body.get("correlation_id")
            )
        results = [o.as_dict() for o in outcomes]
        metrics.count_command_outcomes(items, results, PEOPLE_TYPES | INTERACTION_TYPES)
        return {"results": results}

    app = FastStream(broker, logger=stdlib_logger("tieline.faststream.app"))

    @app.on_startup
    async def _connect() -> None:
        nc: NatsClient = await connect_nats(settings, name=f"tieline-{service}-publisher")
        js = telemetry.jetstream(nc)  # publishes carry the command's trace (when tracing)
        await ensure_streams(js, settings)
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await ensure_state_schema(conn, settings.database_schema)
        keystore = KeyStore(pool, master_key_from_env(settings.master_key))
        holder.update(nc=nc, side=WriteSide(settings, js, pool, REGISTRY, types, service, keystore))
        log.info(
            "service.started",
            service=service,
            subjects=command_wildcard(settings.subject_prefix, service),
        )

    @app.on_shutdown
    async def _close() -> None:
        nc = holder.get("nc")
        if nc is not None:
            await nc.drain()
        await pool.close()

    return app


__all__ = ["INTERACTION_TYPES", "PEOPLE_TYPES", "Outcome", "create_service_app", "service_for"]
