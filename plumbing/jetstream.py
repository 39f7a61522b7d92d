"""The JetStream stream that is tieline's log of record, created idempotently at start."""

from __future__ import annotations

import dataclasses
import math

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError
from tieline.plumbing.config import Settings

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


def _differing_fields(want: js_api.StreamConfig, have: js_api.StreamConfig) -> list[str]:
    """Fields set in ``want`` (not None) whose value on the server is different. Fields left
    None are the server's to default; durations travel as nanoseconds and come back as float
    seconds, hence the tolerance for floats."""
    out: list[str] = []
    for f in dataclasses.fields(want):
        wanted, actual = getattr(want, f.name), getattr(have, f.name)
        if wanted is None:
            continue
        if isinstance(wanted, float) and isinstance(actual, int | float):
            if not math.isclose(wanted, actual, rel_tol=1e-9, abs_tol=1e-6):
                out.append(f.name)
        elif wanted != actual:
            out.append(f.name)
    return out


async def _stream_info(js: JetStreamContext, name: str) -> js_api.StreamInfo:
    """``$JS.API.STREAM.INFO.<name>``; a timeout is turned into an error that says why."""
    try:
        return await js.stream_info(name)
    except NatsTimeoutError as exc:
        raise RuntimeError(
            f"looking up JetStream stream {name!r} timed out: JetStream is not "
            f"answering, or this NATS user may not send $JS.API.STREAM.INFO.{name} "
            "(do the stream name and subject prefix match the server's permissions?)"
        ) from exc


async def _create_or_update(
    js: JetStreamContext, config: js_api.StreamConfig, differs: list[str] | None
) -> js_api.StreamInfo:
    """Create the stream (``differs`` None: it is missing) or update the fields that differ."""
    action = "create" if differs is None else "update"
    try:
        if differs is None:
            return await _ensure(js, config)
        return await js.update_stream(config=config)
    except NatsTimeoutError as exc:
        raise RuntimeError(
            f"could not {action} JetStream stream {config.name!r}"
            + (f" (it differs in {', '.join(differs)})" if differs else "")
            + ": the request timed out, which is how nats-py reports a permissions "
            f"violation; this NATS user may lack $JS.API.STREAM.{action.upper()}. Let the "
            "admin user create the streams first (tieline up does that)"
        ) from exc


async def ensure_streams(js: JetStreamContext, settings: Settings) -> js_api.StreamInfo:
    """Make sure the dead-letter stream and the event stream exist as configured; return the
    event stream's info.

    Each stream is looked up first (``$JS.API.STREAM.INFO.<name>``, which every tieline NATS
    user may call) and created or updated only when it is missing or differs in a field that
    :func:`stream_config` / :func:`dlq_stream_config` set. So once an admin step has created
    the streams (``tieline up`` does it as the NATS ``admin`` user, see
    services/runtime/nats_auth.py), a process whose user may not ``STREAM.CREATE`` /
    ``STREAM.UPDATE`` starts without sending either request: the server would refuse them with
    a permissions violation, which nats-py surfaces only as a request timeout.
    """
    info: js_api.StreamInfo | None = None
    for config in (dlq_stream_config(settings), stream_config(settings)):
        try:
            info = await _stream_info(js, config.name or "")
        except NotFoundError:
            info = await _create_or_update(js, config, None)
            continue
        differs = _differing_fields(config, info.config)
        if differs:
            log.info("stream.update", stream=config.name, fields=differs)
            info = await _create_or_update(js, config, differs)
    assert info is not None
    return info


def inbox_prefix(settings: Settings) -> str:
    """Each NATS user gets its own reply inboxes (``_INBOX_<user>``), and its permissions
    allow subscribing only there: no process can read replies meant for another."""
    return f"_INBOX_{settings.nats_user}" if settings.nats_user else "_INBOX"


async def connect_nats(settings: Settings, name: str) -> NatsClient:
    """Connect to NATS with reconnects forever (services ride out broker restarts)."""
    kwargs: dict[str, object] = {}
    if settings.nats_user:
        kwargs["user"] = settings.nats_user
        kwargs["password"] = settings.nats_password or ""
        kwargs["inbox_prefix"] = inbox_prefix(settings)
    return await nats.connect(
        # A cluster is given as a comma-separated list; the client fails over between them.
        [u.strip() for u in settings.nats_url.split(",") if u.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=5,
        **kwargs,
    )


async def first_event_at_or_after(js: JetStreamContext, settings: Settings, seq: int) -> int | None:
    """The stream sequence of the first *event* message at or after ``seq`` (None: none).

    What proves a hole in a consumer's deliveries empty (``$JS.API.STREAM.MSG.GET`` with
    ``next_by_subj``): the projections apply across a hole only when this says so.
    """
    try:
        msg = await js.get_msg(
            settings.stream_name, seq=seq, subject=f"{settings.subject_prefix}.ev.>", next=True
        )
    except NotFoundError:
        return None
    return int(msg.seq) if msg.seq is not None else None
