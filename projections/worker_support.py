"""Small pieces of the projection worker: its counters, which NATS errors are transient,
the tenacity hook its retries log with, and the lock that makes one instance active."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, ServiceUnavailableError
from psycopg import AsyncConnection
from tenacity import RetryCallState
from tieline.plumbing import db
from tieline.plumbing.config import Settings

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
    #: Failures of each event tried alone (parked at ``max_attempts``).
    attempts: dict[int, int] = field(default_factory=dict)
    #: The dead letter published for each event parked that way: an outage before the commit
    #: that records it must not publish it again (the stream's dedupe window is 2 minutes).
    parked: dict[int, int] = field(default_factory=dict)


#: SQLSTATEs of a query error that the statement brought on itself (57014: a statement
#: timeout; class 54: a program limit), not the state of the database.
OWN_SQLSTATES = ("57014", "54")


def outage(conn: AsyncConnection[Any], exc: psycopg.OperationalError) -> bool:
    """Whether ``exc`` on ``conn`` says the database failed rather than the statement: the
    connection broke, or the SQLSTATE is not one the statement brings on itself (a full
    disk, no memory, an I/O error, a deadlock: all pass, so the batch is retried whole)."""
    return conn.broken or not (exc.sqlstate or "").startswith(OWN_SQLSTATES)


async def keep_alive(msgs: list[Msg]) -> None:
    """Tell JetStream the batch ``msgs`` is still being worked on (its ack wait starts again),
    as far as the connection lets us."""
    for m in msgs:
        try:
            await m.in_progress()
        except Exception:
            return


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


#: How long the lock's connection may take to answer before the lock counts as lost.
LOCK_PING_S = 5.0


class LockLost(Exception):
    """This instance (of the projection named in the message) lost the projection lock to
    another, or cannot tell whether it still holds it: its batch is given up unacked."""


class ProjectionLock:
    """The session advisory lock that makes one instance of a projection (or of one of its
    partitions) the active one; the others wait as hot standbys. It is held as long as the
    session that took it lives: a connection that dies (a database restart, its backend
    killed, a cut network) gives it up, and a standby may take it."""

    def __init__(self, settings: Settings, key: str, consumer: str) -> None:
        self.settings, self.key, self.consumer = settings, key, consumer
        self.conn: AsyncConnection[Any] | None = None
        #: The backend (pid, start time) of the session that took the lock.
        self._session: tuple[int, Any] | None = None

    async def wait(self, stopping: asyncio.Event) -> bool:
        """Take the lock, waiting as a hot standby while another instance holds it (False:
        stopped meanwhile)."""
        waiting = False
        while not stopping.is_set():
            if await self.try_take():
                if waiting:
                    log.info("worker.took_over", consumer=self.consumer)
                return True
            if not waiting:
                log.info("worker.standby", reason="another instance holds the projection lock")
                waiting = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=1.0)
        return False

    async def still_held(self) -> bool:
        """Whether this instance still holds the lock, or took it back at once: False when
        its session ended and another instance holds it now, or it cannot tell (no new
        connection: a standby may hold it)."""
        if await self.held():
            return True
        log.warning("worker.lock_lost", consumer=self.consumer)
        try:
            if await self.try_take() or (await self._end_old_session() and await self.try_take()):
                return True
            log.warning("worker.lock_taken", consumer=self.consumer, by="another instance")
        except psycopg.Error as exc:
            log.warning("worker.lock_unknown", consumer=self.consumer, error=str(exc))
        # A session that does not hold the lock must not answer a later held() for it.
        await self.close()
        return False

    async def try_take(self) -> bool:
        """Take the lock if no other session holds it (on a new connection if need be)."""
        if self.conn is None or self.conn.closed:
            self.conn = await db.connect(self.settings, autocommit=True)
        cur = await self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtext(%s)), pid, backend_start"
            " FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            (self.key,),
        )
        row = await cur.fetchone()
        if row and row[0]:
            self._session = (row[1], row[2])
        return bool(row and row[0])

    async def _end_old_session(self) -> bool:
        """End this instance's own earlier lock session if it still lives, and say whether it
        did. A ping that timed out on a slow server, or a half-open connection, leaves that
        session holding the lock until the server notices the client is gone; until then the
        lock looks taken by another instance, and the worker stopped for nothing. The session
        is ours (its pid and start time), so no other instance can hold the lock meanwhile."""
        if self._session is None or self.conn is None:
            return False
        (pid, started), self._session = self._session, None
        # And only while it holds this very lock: behind a pooler a backend outlives the
        # client session, and one serving another client must not be ended.
        cur = await self.conn.execute(
            "SELECT pg_terminate_backend(a.pid, %s) FROM pg_stat_activity a"
            " JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted"
            " AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext(%s)::bigint"
            " WHERE a.pid = %s AND a.backend_start = %s",
            (int(LOCK_PING_S * 1000), self.key, pid, started),
        )
        row = await cur.fetchone()
        if row is None or not row[0]:
            return False
        log.warning("worker.lock_session_ended", consumer=self.consumer, pid=pid)
        return True

    async def held(self) -> bool:
        """Whether the session that took the lock still answers, within
        :data:`LOCK_PING_S` (a half-open connection would not fail for minutes). A dead
        connection does not say so until it is used: ``closed`` stays false."""
        if self.conn is None or self.conn.closed:
            return False
        try:
            async with asyncio.timeout(LOCK_PING_S):
                await self.conn.execute("SELECT 1")
        except (psycopg.Error, TimeoutError):
            await self.close()  # the next try takes a new connection
            return False
        return True

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self.conn.close()
            self.conn = None
