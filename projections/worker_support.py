"""Small pieces of the projection worker: its counters, which NATS errors are transient,
and the tenacity hook its retries log with."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, ServiceUnavailableError
from tenacity import RetryCallState

log = structlog.get_logger("tieline.projections.worker")


def log_retry(event: str) -> Callable[[RetryCallState], None]:
    """A tenacity ``before_sleep`` hook that logs ``event`` with the error that failed."""

    def hook(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(event, error=repr(exc), attempt=state.attempt_number)

    return hook


HEADER_UNSAFE = re.compile(r"[\r\n]+")
#: Errors that mean "JetStream is not there right now", not "this event is bad".
TRANSIENT_NATS = (
    NoRespondersError,
    ServiceUnavailableError,
    APIError,
    ConnectionClosedError,
    NatsTimeout,
)


@dataclass
class WorkerStats:
    """Counters exposed in logs (and, through Postgres, to /readyz)."""

    batches: int = 0
    applied: int = 0
    redelivered: int = 0
    duplicate_ids: int = 0
    dead_lettered: int = 0
    #: Batches refused because they did not continue the checkpoint (then read again).
    gaps: int = 0
    resubscribes: int = 0
    last_seq: int = 0
    attempts: dict[int, int] = field(default_factory=dict)
