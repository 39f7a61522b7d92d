"""The JetStream stream that is tieline's log of record, created idempotently at start."""

from __future__ import annotations

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError

from services.config import Settings

log = structlog.get_logger(__name__)

#: Largest event body the stream accepts (a later check rejects larger ones at the edge).
MAX_MSG_BYTES = 1024 * 1024


def stream_config(settings: Settings) -> js_api.StreamConfig:
    """File storage, no age limit, a dedupe window; fsync-before-ack is a server setting
    (``sync_interval: always``) that ``tieline up`` and deploy/ configure."""
    return js_api.StreamConfig(
        name=settings.stream_name,
        subjects=settings.stream_subjects(),
        retention=js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE,
        max_age=0,
        max_msgs=-1,
        max_bytes=-1,
        max_msg_size=MAX_MSG_BYTES,
        discard=js_api.DiscardPolicy.OLD,
        num_replicas=settings.stream_replicas,
        duplicate_window=settings.duplicate_window_s,
        allow_direct=True,
        description="tieline log of record: immutable interaction events",
    )


def dlq_stream_config(settings: Settings) -> js_api.StreamConfig:
    """Dead letters: events a projection could not apply, with the reason in headers."""
    return js_api.StreamConfig(
        name=f"{settings.stream_name}_DLQ",
        subjects=[f"{settings.subject_prefix}.dlq.>"],
        retention=js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE,
        max_age=0,
        num_replicas=settings.stream_replicas,
        duplicate_window=settings.duplicate_window_s,
        allow_direct=True,
        max_msg_size=-1,
        description="tieline dead letters: poison events parked with their reason",
    )


async def _ensure(js: JetStreamContext, config: js_api.StreamConfig) -> js_api.StreamInfo:
    try:
        return await js.add_stream(config=config)
    except BadRequestError as exc:
        if exc.err_code != 10058:  # stream name already in use with a different configuration
            raise
        log.info("stream.update", stream=config.name)
        return await js.update_stream(config=config)


async def ensure_streams(js: JetStreamContext, settings: Settings) -> js_api.StreamInfo:
    """Create (or bring up to date) the event stream and its dead-letter stream."""
    await _ensure(js, dlq_stream_config(settings))
    return await _ensure(js, stream_config(settings))


async def connect_nats(settings: Settings, name: str) -> NatsClient:
    """Connect to NATS with reconnects forever (services ride out broker restarts)."""
    kwargs: dict[str, object] = {}
    if settings.nats_user:
        kwargs["user"] = settings.nats_user
        kwargs["password"] = settings.nats_password or ""
    return await nats.connect(
        settings.nats_url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=5,
        **kwargs,
    )
