"""PostgreSQL connections scoped to tieline's schema (``search_path``)."""

from __future__ import annotations

import asyncio
import os
import select
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncConnection, OperationalError, pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tieline.plumbing.config import Settings

#: A connection attempt that hangs (a host that drops packets) fails after 10 s instead of
#: the operating system's two minutes of SYN retries; callers retry.
CONNECT_TIMEOUT_S = 10
#: Both ends of a TCP connection find a dead network path within about 25 s: libpq's
#: keepalives and TCP user timeout on the client (a query on a dead path fails instead of
#: waiting minutes), the same on the server for this session. The server side matters most:
#: an orphaned backend keeps its locks (the projection lock, a batch's checkpoint row) until
#: the server drops it, by default after about two hours of TCP keepalive. Unix sockets ignore
#: all of it.
CLIENT = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 25_000,
}
#: In a pool made with ``fail_fast`` (the api's), while the server cannot be reached (a
#: connection attempt has failed since the pool last made or handed out one, and none is in
#: use or idle), a request waits this long for a connection instead of the pool's 10 s, so a client
#: gets its 503 (with ``Retry-After``) in a second, not ten. Background work (the webhook
#: sender recording an outcome, sync) keeps the 10 s: it has no client to answer, and a short
#: outage should not cost it its work.
UNREACHABLE_WAIT_S = 1.0
#: How often a request of a ``fail_fast`` pool that is waiting for a connection looks again
#: whether the server has become unreachable, once it has waited :data:`UNREACHABLE_WAIT_S`.
UNREACHABLE_POLL_S = 0.1
#: Once a pool has connected, a slot whose connection cannot be remade within this time is
#: given up (psycopg_pool keeps retrying for 5 minutes by default, waiting 1, 2, 4, ... 128 s
#: between attempts, so after an outage of a minute the next attempt could come a minute after
#: the server was back). A given-up slot is remade :data:`REGROW_DELAY_S` later by the pool
#: itself, or sooner by a request that has to wait (unless an attempt is already waiting out
#: its backoff: a few seconds at most). Until the first connection the default stands: a
#: process that starts before its database waits for it as before.
RECONNECT_TIMEOUT_S = 5.0
#: After a slot is given up, the pool tries again this much later by itself (psycopg_pool
#: waits for a request that has to wait; a quiet pool would stay empty).
REGROW_DELAY_S = 1.0
SERVER_KEEPALIVE = (
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
    " -c tcp_user_timeout=25000"
)


def _given(url: str) -> dict[str, Any]:
    """What ``url`` sets, plus what libpq would take from the environment (``PGOPTIONS``,
    ``PGCONNECT_TIMEOUT``, ...) for the keywords the URL leaves out. libpq reads those only
    for keywords the caller does not pass, and we pass ours, so they must be read here."""
    given = conninfo_to_dict(url)
    for d in pq.Conninfo.get_defaults():
        key, envvar = d.keyword.decode(), (d.envvar or b"").decode()
        if key not in given and envvar and (value := os.environ.get(envvar)) is not None:
            given[key] = value
    return given


def conninfo_kwargs(settings: Settings, rm_schema: str | None = None) -> dict[str, Any]:
    """Connection options: a connection sees tieline's state schema and, when given, one
    read-model generation's schema first (so read-model tables resolve to that generation).

    Autocommit is on: every transaction is an explicit ``conn.transaction()`` block, so a
    stray SELECT can never leave an implicit transaction open that swallows a later commit.
    """
    path = f"{rm_schema},{settings.database_schema}" if rm_schema else settings.database_schema
    # What DATABASE_URL (or the PG* environment) sets wins over the defaults above (an
    # ``options`` of its own used to be dropped); the search path is always ours, last.
    given = _given(settings.database_url)
    own = str(given.get("options") or "")
    options = " ".join(o for o in (SERVER_KEEPALIVE, own, f"-c search_path={path}") if o)
    client = {k: v for k, v in CLIENT.items() if k not in given}
    return {"options": options, "autocommit": True, **client}


async def connect(
    settings: Settings, *, autocommit: bool = True, rm_schema: str | None = None
) -> AsyncConnection[Any]:
    kwargs = conninfo_kwargs(settings, rm_schema)
    kwargs["autocommit"] = autocommit
    return await AsyncConnection.connect(settings.database_url, **kwargs)


def _has_input(fileno: int) -> bool:
    """Whether the socket has bytes (or its end) waiting, without blocking."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fileno, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    return bool(select.select([fileno], [], [], 0)[0])  # pragma: no cover - Windows


async def check_on_checkout(conn: AsyncConnection[Any]) -> None:
    """Raises when ``conn``, idle in a pool, is dead; returns when it is usable.

    An idle connection has nothing to read. When the server ends its side (a restart, a
    fast or immediate shutdown, a failover that kills the old primary's backends, an
    administrator's ``pg_terminate_backend``), its last message or the end of the stream is
    waiting on the socket: only then is the round trip of psycopg_pool's own check spent on
    it. A healthy connection costs one ``poll`` and no round trip. A path that went dead
    without a word (a host gone) is not seen here; the keepalives of ``CLIENT`` end it."""
    if conn.closed or conn.broken:
        raise OperationalError("the connection is closed")
    try:
        waiting = _has_input(conn.fileno())
    except (OSError, ValueError) as e:
        raise OperationalError(f"the connection's socket is unusable: {e}") from e
    if waiting:
        await AsyncConnectionPool.check_connection(conn)


#: Every :class:`CheckedPool` of this process, for the metrics (plumbing/metrics.py).
_POOLS: weakref.WeakSet[CheckedPool] = weakref.WeakSet()
#: The counters of the closed pools, by pool name: a read pool replaced at a read-model
#: switch (or one that failed to open) must not take its counts away with it, or a counter
#: would go down, which Prometheus takes for a restart.
_RETIRED: dict[str, dict[str, int]] = {}
#: The figures :func:`pool_figures` gives: gauges (summed over the open pools of a name; for
#: ``unreachable`` 1 only when every one of them is), then counters.
POOL_GAUGES = ("connections", "connections_in_use", "connections_idle", "connections_max",
               "requests_waiting", "unreachable")  # fmt: skip
POOL_COUNTERS = ("connection_errors", "timeouts")


def open_pools() -> list[CheckedPool]:
    """The pools of this process that are open now."""
    return [pool for pool in list(_POOLS) if not pool.closed]


def pool_figures() -> dict[str, dict[str, int]]:
    """This process's pools' figures by pool name (:data:`POOL_GAUGES`, :data:`POOL_COUNTERS`),
    the closed pools' counts included."""
    figures = {
        name: {**dict.fromkeys(POOL_GAUGES, 0), **counts} for name, counts in _RETIRED.items()
    }
    reachable: dict[str, bool] = {}
    for pool in open_pools():
        mine = figures.setdefault(pool.name, dict.fromkeys(POOL_GAUGES + POOL_COUNTERS, 0))
        for key, value in pool.figures().items():
            if key != "unreachable":
                mine[key] = mine.get(key, 0) + value
        reachable[pool.name] = reachable.get(pool.name, False) or not pool.unreachable
    for name, any_reaches in reachable.items():
        figures[name]["unreachable"] = int(not any_reaches)
    return figures


class CheckedPool(AsyncConnectionPool[Any]):
    """A pool that checks a connection before it hands it out: a dead one is dropped and
    another handed out, instead of the caller's command failing with 503
    (:func:`check_on_checkout`).

    A dead connection rarely comes alone: after a restart every idle one is dead. psycopg_pool
    waits before trying the next one, 1 s, 2 s, 4 s, ... and a request behind five dead
    connections ran out of the pool's 10 s. So the first dead one found has every idle
    connection checked at once (``check()``: the dead are replaced), and the request's next
    try gets a live or a new connection. One sweep runs at a time, in a task of its own:
    ``check()`` swallows CancelledError (it is meant for the pool's workers), so awaited on
    the request's path it would eat the request's cancellation. :meth:`close` waits for it."""

    def __init__(
        self,
        *args: Any,
        configure: Callable[[AsyncConnection[Any]], Awaitable[None]] | None = None,
        fail_fast: bool = False,
        **kwargs: Any,
    ) -> None:
        self._sweeps: set[asyncio.Task[None]] = set()
        self._own_configure = configure
        self.fail_fast = fail_fast
        #: connections_errors (psycopg_pool's count of failed attempts) at the last success
        self._errors_at_success = 0
        #: The connections handed out and not yet given back (a set, not a count: a
        #: connection given back twice, or to the wrong pool, cannot make it drift).
        self._out: weakref.WeakSet[AsyncConnection[Any]] = weakref.WeakSet()
        #: Connections being checked on their way to a request (:meth:`_checked`): neither
        #: in use nor idle, yet proof that the server was there.
        self._checking = 0
        self._regrowing: set[asyncio.Task[None]] = set()
        #: Requests of a ``fail_fast`` pool waiting for a connection -> when they began, and
        #: those whose wait has been cancelled because the server cannot be reached.
        self._waiters: dict[asyncio.Task[Any], float] = {}
        self._given_up: set[asyncio.Task[Any]] = set()
        self._watch: asyncio.TimerHandle | None = None
        self._watch_loop: asyncio.AbstractEventLoop | None = None
        #: Connections handed out so far, and their number when the timer last found the pool
        #: unreachable (None: it did not): see :meth:`_give_up_if_unreachable`.
        self._checkouts = 0
        self._unreachable_at: int | None = None
        #: Requests that got no connection in time (PoolTimeout; a cancelled wait is not one)
        self.timeouts = 0
        super().__init__(*args, check=self._checked, configure=self._configured, **kwargs)
        _POOLS.add(self)

    async def _configured(self, conn: AsyncConnection[Any]) -> None:
        """psycopg_pool's hook for each new connection: the caller's, then a note that the
        server was reached (from now on a slot that cannot reconnect is given up soon)."""
        if self._own_configure is not None:
            await self._own_configure(conn)
        self._errors_at_success = self._failed_attempts()
        self.reconnect_timeout = RECONNECT_TIMEOUT_S

    async def reconnect_failed(self) -> None:
        """psycopg_pool has given a slot up (:data:`RECONNECT_TIMEOUT_S`): try again after
        :data:`REGROW_DELAY_S`, so a pool nobody asks (the api's audit pool at night) fills up
        again once the server is back. Left to requests alone, it stayed empty and
        ``unreachable`` after the outage until one came (a reviewer's finding)."""
        await super().reconnect_failed()
        if not self.closed and not self._regrowing:
            task = asyncio.create_task(self._regrow())
            self._regrowing.add(task)
            task.add_done_callback(self._regrowing.discard)

    async def _regrow(self) -> None:
        """After :data:`REGROW_DELAY_S`, a check (which grows the pool: psycopg_pool's own
        attempt, with backoff) when the pool is below ``min_size``.

        Only then: a slot above it was made for requests that waited, and regrown it was
        refused again at a role's connection limit, given up, regrown, for ever, on a quiet
        and healthy pool (a reviewer's run: the error count from 6 to 26 in 25 s). The check
        runs as a sweep, which :meth:`close` waits for: ``check()`` takes a cancellation for
        a broken connection and dropped a healthy one unclosed (the same reviewer)."""
        await asyncio.sleep(REGROW_DELAY_S)
        if self.closed or self._nconns >= self._min_size or self._sweeps:
            return  # a sweep running grows the pool too
        sweep = asyncio.create_task(self.check())
        self._sweeps.add(sweep)
        sweep.add_done_callback(self._swept)

    def _failed_attempts(self) -> int:
        """psycopg_pool's count of failed connection attempts (``connections_errors`` of
        ``get_stats()``), read from its counter: ``get_stats()`` copies every figure, and this
        runs on each checkout and return (it was a sixth of a checkout's CPU)."""
        return int(self._stats.get(self._CONNECTIONS_ERRORS, 0))

    @property
    def unreachable(self) -> bool:
        """Whether the server is down or cannot be reached, as far as the pool knows: a
        connection attempt has failed since the pool last made a connection or handed one
        out, and no connection is in use, idle or being checked for a request. (One in use,
        idle or being checked says the server was there: an attempt refused for the server's
        connection limit, a slow connect, or a slot's reconnection that failed during a
        restart on a quiet pool is not an outage.)"""
        return not self._out and self._unreachable(self.get_stats())

    def _unreachable(self, stats: dict[str, int]) -> bool:
        return (
            not self._out
            and not self._checking
            and stats.get("pool_available", 0) == 0
            and stats.get("connections_errors", 0) > self._errors_at_success
        )

    def figures(self) -> dict[str, int]:
        """This pool's figures for the metrics (:data:`POOL_GAUGES`, :data:`POOL_COUNTERS`)."""
        stats = self.get_stats()
        return {
            "connections": stats.get("pool_size", 0),
            "connections_in_use": len(self._out),
            "connections_idle": stats.get("pool_available", 0),
            "connections_max": stats.get("pool_max", 0),
            "requests_waiting": stats.get("requests_waiting", 0),
            "unreachable": int(self._unreachable(stats)),
            "connection_errors": stats.get("connections_errors", 0),
            "timeouts": self.timeouts,
        }

    async def getconn(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (the base's)
        """A connection. With ``fail_fast``, waiting at most :data:`UNREACHABLE_WAIT_S`
        while the server cannot be reached (:attr:`unreachable`), whether it was so when the
        request came or became so while it waited: the whole timeout for a connection that
        cannot be made only holds the client. The wait still starts an attempt when the pool
        has room, so a request after the server is back can get one."""
        wait = self.timeout if timeout is None else timeout
        try:
            if not self.fail_fast:
                conn = await super().getconn(wait)
            elif self.unreachable:
                conn = await super().getconn(min(wait, UNREACHABLE_WAIT_S))
            else:
                conn = await self._getconn_until_unreachable(wait)
        except PoolTimeout:
            self.timeouts += 1
            raise
        # One that passed its check: without it, an attempt that failed late (a timed-out
        # connect to a path that has since come back) left a full, healthy pool "unreachable"
        # until it made a new connection, which a full pool never does.
        self._errors_at_success = self._failed_attempts()
        self._checkouts += 1
        self._out.add(conn)
        return conn

    async def _getconn_until_unreachable(self, wait_s: float) -> Any:
        """psycopg_pool's getconn, given up (PoolTimeout) once the request has waited
        :data:`UNREACHABLE_WAIT_S` and the pool has become :attr:`unreachable` meanwhile.

        The requests already waiting when an outage begins are the ones that find the dead
        connections: the pool becomes unreachable only after they have started waiting, and
        they waited the whole 10 s for their 503 while later ones waited 1 s. One timer per
        pool looks after every waiting request (:meth:`_give_up_if_unreachable`), so a request
        costs a dictionary entry, not a timer or a task of its own (a timer and
        ``asyncio.timeout`` each, first tried, doubled the CPU of a checkout). A cancelled
        wait gives back a connection just handed to it (psycopg_pool's own ``wait``)."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._waiters[task] = loop.time()
        if self._watch is None or self._watch_loop is not loop:  # none, or one of a past loop
            self._watch = loop.call_later(UNREACHABLE_POLL_S, self._give_up_if_unreachable)
            self._watch_loop = loop
        try:
            conn = await super().getconn(wait_s)
        except asyncio.CancelledError:
            if task in self._given_up:
                self._given_up.discard(task)
                if task.uncancel() == 0:  # else the caller cancelled it too: that stands
                    waited = loop.time() - self._waiters[task]
                    raise PoolTimeout(
                        f"couldn't get a connection after {waited:.2f} sec:"
                        " the server cannot be reached"
                    ) from None
            raise
        except Exception:
            if task in self._given_up:  # the cancellation became another error: not the
                self._given_up.discard(task)  # caller's, so it must not stay on the task
                task.uncancel()
            raise
        finally:
            self._waiters.pop(task, None)
        if task in self._given_up:  # psycopg_pool swallowed the cancellation (not seen)
            self._given_up.discard(task)
            task.uncancel()
        return conn

    def _give_up_if_unreachable(self) -> None:
        """While requests wait: when the pool is :attr:`unreachable` at two looks in a row with
        no connection handed out between them, cancel the wait of each request that has waited
        :data:`UNREACHABLE_WAIT_S` (its getconn raises PoolTimeout); look again every
        :data:`UNREACHABLE_POLL_S` until none waits.

        Why two looks: a connection given back to a waiting request is for a moment neither
        in use nor idle (it is the waiter's once the waiter runs), and a failed attempt then
        (a busy pool growing past the server's connection limit) made a healthy pool look
        unreachable; one look cancelled waits that got a connection a moment later (a
        reviewer's finding: 18 of 76 requests of a busy pool). The moment ends with a
        checkout, so it cannot be seen twice with none between."""
        self._watch = None
        if not self._waiters or self.closed:
            self._unreachable_at = None  # a later outage starts with a first look again
            return
        loop = asyncio.get_running_loop()
        if not self.unreachable:
            self._unreachable_at = None
        elif self._unreachable_at != self._checkouts:
            self._unreachable_at = self._checkouts  # first look: confirm at the next one
        else:
            now = loop.time()
            for task, began in self._waiters.items():
                if now - began >= UNREACHABLE_WAIT_S and task not in self._given_up:
                    self._given_up.add(task)
                    task.cancel()
        self._watch = loop.call_later(UNREACHABLE_POLL_S, self._give_up_if_unreachable)

    async def putconn(self, conn: AsyncConnection[Any]) -> None:
        """Give a connection back. A healthy one says the server was there just now: failed
        attempts before this (growth refused at the connection limit) no longer count
        towards :attr:`unreachable`."""
        self._out.discard(conn)
        if not conn.closed and conn.info.transaction_status != pq.TransactionStatus.UNKNOWN:
            self._errors_at_success = self._failed_attempts()
        await super().putconn(conn)

    async def _checked(self, conn: AsyncConnection[Any]) -> None:
        """psycopg_pool's check of a connection on its way to a request. While it runs the
        connection is counted (:attr:`_checking`): a check with a round trip (input was
        waiting on the socket) that outlasted two of the timer's looks made a busy pool look
        unreachable, and a request that had waited 1 s was given up with a live connection
        on its way (a known limit until this count)."""
        self._checking += 1
        try:
            await check_on_checkout(conn)
        except Exception:
            if not self._sweeps and not self.closed:
                sweep = asyncio.create_task(self.check())
                self._sweeps.add(sweep)
                sweep.add_done_callback(self._swept)
                # It empties the pool before its first wait: the retry does not meet the
                # other dead connections, it waits for a checked or a new one.
                await asyncio.sleep(0)
            raise
        finally:
            self._checking -= 1

    def _swept(self, task: asyncio.Task[None]) -> None:
        self._sweeps.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so a failure is not logged as never retrieved

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (the base's signature)
        """Close after the sweep running, if any, has put back or replaced what it took (left
        running, it outlived the pool and dropped healthy connections unclosed)."""
        for task in self._regrowing:
            task.cancel()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._sweeps or self._regrowing:
            await asyncio.wait(self._sweeps | self._regrowing, timeout=timeout)
        if not self.closed:
            retired = _RETIRED.setdefault(self.name, dict.fromkeys(POOL_COUNTERS, 0))
            counts = self.figures()
            for key in POOL_COUNTERS:
                retired[key] += counts[key]
        await super().close(timeout)


def make_pool(
    settings: Settings,
    *,
    min_size: int = 1,
    max_size: int = 10,
    rm_schema: str | None = None,
    synchronous_commit: bool = True,
    configure: Callable[[AsyncConnection[Any]], Awaitable[None]] | None = None,
    fail_fast: bool = False,
    name: str | None = None,
) -> CheckedPool:
    """A pool for read paths; rows come back as dicts. ``synchronous_commit=False``: commits
    return before their WAL is flushed (a crash of PostgreSQL itself may lose the last fraction
    of a second of them, never corrupt anything): only for records that may be lost that way.
    ``configure`` runs once on each new connection (psycopg_pool's hook); every checkout is
    checked (:class:`CheckedPool`). ``fail_fast``: for pools that answer clients (the api's):
    a request waits :data:`UNREACHABLE_WAIT_S`, not 10 s, while the server cannot be reached.
    ``name``: the pool's label in the metrics (``tieline_db_pool_*{pool=...}``)."""
    kwargs = conninfo_kwargs(settings, rm_schema)
    if not synchronous_commit:
        kwargs["options"] += " -c synchronous_commit=off"
    kwargs["autocommit"] = True
    kwargs["row_factory"] = dict_row
    return CheckedPool(
        settings.database_url,
        kwargs=kwargs,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=10,
        configure=configure,
        fail_fast=fail_fast,
        name=name,
    )
