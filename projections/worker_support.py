"""Small pieces of the projection worker: its counters, which NATS errors are transient,
and the tenacity hook its retries log with."""

from __future__ import annotations

import gc
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


#: The cyclic collector's first threshold in a worker process (CPython's default is 700).
GC_YOUNG_THRESHOLD = 100_000


def tune_gc() -> None:
    """Run the cyclic garbage collector once per ~100k net new objects instead of 700.

    A batch keeps its objects alive until it commits (thousands of decoded events, rows and
    folds); with the default threshold the collector traverses them again and again, promotes
    them, and the promotions set off full collections of the whole heap: about a quarter of
    the worker's CPU in ``python -m bench projection`` (docs/performance.md, "Worker profile
    after the issue 15 run"). Reference counting frees almost all of a batch when it ends, so
    the net count seldom reaches the new threshold; cyclic garbage is still collected, only
    later. Nothing here changes results. A threshold already higher (or 0, collection off) is
    left alone."""
    young, middle, old = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
