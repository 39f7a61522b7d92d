"""One retry policy per kind of dependency, written with tenacity.

A retry loop written by hand tends to forget one of: a growing wait, random jitter (so that
many clients that failed together do not retry together, in lock-step, against a server that
is just coming back), an upper bound on the wait, or an end. Each policy here has all four,
and callers choose only *what* counts as a failure worth another attempt and *how long* they
may keep trying:

* :data:`NATS` -- the broker restarts in about a second (a JetStream leader election takes a
  few): start small, cap low, so a publisher resumes soon after the server is back.
* :data:`POSTGRES` -- a database restart or failover takes seconds; a connection that failed
  once is usually refused again for a while, so start a little higher.
* :data:`HTTP` -- our own API behind a load balancer answering 429/502/503/504, or a remote
  endpoint: start at half a second and wait up to eight, as the importer always did.
* :data:`PROCESS` -- a child process of ``tieline up`` that exited and is started again.
* :data:`LOCK` -- an advisory lock another command holds for the milliseconds of its step:
  try again soon, and never wait long between tries.

``policy.retrying(...)`` gives a tenacity ``AsyncRetrying`` for ``async for attempt in ...``
loops and ``await retrying(fn)``; ``policy.retrying_sync(...)`` gives a ``Retrying`` for
blocking code (the supervisor, the embedded servers). Both re-raise the last error when they
give up (``reraise=True``): a caller sees the real exception, never tenacity's ``RetryError``.
Pass ``retrying`` an ``async def`` function: tenacity awaits what it returns only when the
function itself is a coroutine function, so a ``lambda`` returning a coroutine would be
"successful" at once with the coroutine as its result.
``policy.delay(n)`` is the wait after ``n`` failures, for loops that are not one call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_base,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    stop_never,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

__all__ = ["HTTP", "LOCK", "NATS", "POSTGRES", "PROCESS", "Condition", "Options", "Policy"]


#: What counts as a failure worth another attempt: exception types, or a tenacity condition.
Condition = retry_base | type[BaseException] | tuple[type[BaseException], ...]


class Options(TypedDict, total=False):
    """How long a caller may keep trying, and what happens at the end."""

    #: At most this many attempts in all (None: no limit).
    attempts: int | None
    #: At most this many seconds from the first attempt (None: no limit).
    deadline_s: float | None
    #: What to return on giving up, e.g. ``lambda state: state.outcome.result()``: the last
    #: result, or the last exception raised. Unset: the last exception is raised.
    give_up: Callable[[RetryCallState], Any] | None
    #: Runs before each wait (to log the failure).
    on_retry: Callable[[RetryCallState], None] | None


@dataclass(frozen=True)
class Policy:
    """Exponential backoff with jitter: the n-th wait is ``initial * 2**(n-1)``, at most
    ``maximum - jitter``, plus up to ``jitter`` seconds at random; so never more than
    ``maximum``, and still spread at the cap."""

    name: str
    initial: float
    maximum: float
    jitter: float

    def __post_init__(self) -> None:
        if not 0 <= self.jitter <= self.maximum:
            raise ValueError(f"policy {self.name}: jitter must be between 0 and maximum")

    def wait(self) -> wait_base:
        """The tenacity wait strategy of this policy.

        Not tenacity's ``wait_exponential_jitter``: it adds the jitter *before* the cap, so
        once the waits reach the cap every client waits exactly ``maximum`` and a crowd that
        failed together (a database restart) retries together again, in lock-step."""
        growing = wait_exponential(multiplier=self.initial, max=self.maximum - self.jitter)
        return growing + wait_random(0, self.jitter)

    def _arguments(self, retry: Condition, options: Options) -> dict[str, Any]:
        stops: list[stop_base] = []
        attempts, deadline_s = options.get("attempts"), options.get("deadline_s")
        if attempts is not None:
            stops.append(stop_after_attempt(attempts))
        if deadline_s is not None:
            stops.append(stop_after_delay(deadline_s))
        if not isinstance(retry, retry_base):
            retry = retry_if_exception_type(retry)
        return {
            "wait": self.wait(),
            "stop": stop_any(*stops) if stops else stop_never,
            "retry": retry,
            "reraise": True,
            "retry_error_callback": options.get("give_up"),
            "before_sleep": options.get("on_retry"),
        }

    def retrying(self, retry: Condition, **options: Unpack[Options]) -> AsyncRetrying:
        """An ``AsyncRetrying`` that tries again on ``retry`` (exception types, or a tenacity
        retry condition such as ``retry_if_result``); see :class:`Options` for the rest."""
        return AsyncRetrying(**self._arguments(retry, options))

    def retrying_sync(self, retry: Condition, **options: Unpack[Options]) -> Retrying:
        """:meth:`retrying` for blocking code."""
        return Retrying(**self._arguments(retry, options))

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures, for loops that are not a
        call to retry (a supervisor restarting a child that exited)."""
        state = RetryCallState(Retrying(), None, (), {})
        state.attempt_number = max(1, failures)
        return float(self.wait()(state))


#: The NATS server or JetStream (connect, publish, stream lookups).
NATS = Policy("nats", initial=0.1, maximum=5.0, jitter=0.1)
#: PostgreSQL (connect, a transaction that failed on a lost connection).
POSTGRES = Policy("postgres", initial=0.2, maximum=5.0, jitter=0.2)
#: A child process of ``tieline up`` that exited: restarted after a growing pause, so a process
#: that cannot start (a port taken) does not spin, and one that crashed once is back at once.
PROCESS = Policy("process", initial=0.2, maximum=5.0, jitter=0.2)
#: An HTTP API (tieline's own, for the importer and the CLI; 429/5xx and transport errors).
HTTP = Policy("http", initial=0.5, maximum=8.0, jitter=0.5)
#: A PostgreSQL advisory lock another command holds (a merge's claim: a decision, milliseconds;
#: an introduction step's: a decision and a publish with fsync; an erasure's: its checks and
#: key destruction); the waiter has given back its connection (services/write_state.py,
#: ``_holding``, which also scales each pause by a random factor, spreading waiters further).
LOCK = Policy("lock", initial=0.005, maximum=0.1, jitter=0.01)
