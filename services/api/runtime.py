"""What the API holds while it runs, one small class per job: connections, the principal
cache, the access log, decryption, the command bus and the read-your-writes waiter.

Nothing here connects when built; :meth:`Runtime.start` opens everything in the app's
lifespan and :meth:`Runtime.stop` closes it in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from psycopg import sql
from tenacity import RetryCallState
from tieline.plumbing import db, metrics, telemetry
from tieline.plumbing.coalesce import Coalescer
from tieline.plumbing.config import Settings
from tieline.plumbing.crypto import FORGOTTEN, KeyStore, decrypt_value, master_key_of
from tieline.plumbing.jetstream import connect_nats, ensure_streams
from tieline.plumbing.retry import POSTGRES
from tieline.plumbing.state import ensure_state_schema
from tieline.plumbing.subjects import command_subject
from tieline.projections.generations import Generation
from tieline.projections.queries.common import checkpoint
from tieline.projections.readpool import LivePool
from tieline.services.api import strict_json
from tieline.services.api.errors import ApiError
from tieline.services.api.live import ChangeFeed
from tieline.services.api.ratelimit import SharedLimiter
from tieline.services.auth import Principal, verify_token
from tieline.services.service_app import INTERACTION_TYPES, PEOPLE_TYPES

#: The event types a command may carry (the label values of the command metrics).
EVENT_TYPES = PEOPLE_TYPES | INTERACTION_TYPES

log = structlog.get_logger(__name__)

#: The workspace of the request being served, once its caller is authenticated for it
#: (services/api/deps.py ``require``); cleared at the start of every request
#: (:func:`tieline.services.api.deps.workspace_scope`). While it is set, every read
#: connection runs under row-level security and sees only that workspace.
REQUEST_WORKSPACE: ContextVar[str | None] = ContextVar("tieline_request_workspace", default=None)

#: Personal fields of a people row (encrypted at rest).
PERSON_FIELDS = ("display_name", "email", "phone", "organization", "title", "notes")


class Connections:
    """The read pools (the owner's and the api role's, following the live read-model
    generation), the access-log pool and the NATS connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Requests read on the scoped side (api role, one workspace); the owner's side serves
        # the process's own work (tokens, rate limits, checkpoints, the live feed's reader).
        # fail_fast: while PostgreSQL is down a request gets its 503 in a second, not ten
        self.pool = LivePool(
            settings, min_size=2, max_size=8, scoped_max_size=16, fail_fast=True, name="api"
        )
        # The read-access log: one row per read of personal data. Without waiting for its
        # WAL flush (an fsync per read, measured as the largest single cost of a read), a crash
        # of PostgreSQL itself can lose the last fraction of a second of access records; an
        # API crash loses none (each row has reached PostgreSQL before the answer is sent).
        self.audit_pool = db.make_pool(
            settings,
            min_size=1,
            max_size=4,
            synchronous_commit=settings.audit_synchronous_commit,
            fail_fast=True,
            name="api-audit",
        )
        self._nc: NatsClient | None = None

    @property
    def nc(self) -> NatsClient:
        assert self._nc is not None, "Connections.open() first"
        return self._nc

    @property
    def nats_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def connection(self, timeout: float | None = None) -> Any:
        """A read connection on the live generation (``async with``). Inside a request for a
        workspace (:data:`REQUEST_WORKSPACE`), a connection as the api role that sees only
        that workspace's rows (row-level security), so a query missing its ``WHERE
        workspace_id`` cannot leak another's; otherwise as :meth:`system`."""
        ws = REQUEST_WORKSPACE.get()
        if ws is None:
            return self.pool.connection(timeout=timeout)
        return self.pool.workspace_connection(ws, checkout_s=timeout)

    def system(self, timeout: float | None = None) -> Any:
        """A connection as the tables' owner, not scoped to a workspace: for the process's
        own work (token lookup before the workspace is known, rate-limit counters, the
        erasure proof's scan of every table)."""
        return self.pool.connection(timeout=timeout)

    async def open(self) -> None:
        self._nc = await connect_nats(self.settings, name="tieline-api")
        await ensure_streams(self._nc.jetstream(), self.settings)
        await self.pool.open(wait=True)
        async with self.pool.connection() as conn:
            await ensure_state_schema(conn, self.settings.database_schema)
        await self.audit_pool.open(wait=True)

    async def close(self) -> None:
        await self.audit_pool.close()
        await self.pool.close()
        if self._nc is not None:
            await self._nc.drain()


class PrincipalCache:
    """Bearer tokens to principals, cached for a few seconds (so a revocation takes effect
    within that time on other instances); keyed by a hash, never by the token itself."""

    def __init__(self, connections: Connections, ttl_s: float = 5.0, max_entries: int = 10_000):
        self.connections = connections
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def get(self, token: str) -> Principal | None:
        """The token's principal, or None when it is unknown, malformed or revoked."""
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        async with self.connections.system() as conn:
            found = await verify_token(conn, token)
        if found is not None:
            if len(self._cache) > self.max_entries:
                self._cache.clear()
            self._cache[key] = (now, found)
        return found

    def clear(self) -> None:
        """Forget every cached principal (after a revocation on this instance)."""
        self._cache.clear()


#: One access-log entry: workspace, actor, endpoint, the people read.
AuditEntry = tuple[str, str, str, list[str]]


class AuditLog:
    """The access log: who read whose personal data, through which endpoint.

    Each read still waits until its entry is in PostgreSQL before it answers (an api crash
    loses none), but the entries of reads that finish at the same time go in one multi-row
    INSERT (plumbing/coalesce.py): one round trip and one commit for all of them instead of
    one each (docs/performance.md, "HTTP read path after the issue 15 run").
    """

    def __init__(self, connections: Connections) -> None:
        self.connections = connections
        self._inserts = Coalescer(self._insert_many, max_batch=500, max_in_flight=2)

    async def record(self, ws: str, who: Principal, endpoint: str, people: list[str]) -> None:
        """Record that ``who`` read personal data of ``people``."""
        if not people:
            return
        await self._inserts.submit((ws, who.actor, endpoint, people))

    async def _insert_many(self, entries: list[AuditEntry]) -> list[None]:
        """Insert ``entries`` in their order as one statement (ids ascend in that order)."""
        values = sql.SQL(", ").join(sql.SQL("(%s, %s, %s, %s)") for _ in entries)
        query = sql.SQL(
            "INSERT INTO access_log (workspace_id, actor, endpoint, person_ids) VALUES {}"
        ).format(values)
        async with self.connections.audit_pool.connection() as conn:
            await conn.execute(query, [v for entry in entries for v in entry])
        return [None] * len(entries)

    async def entries(
        self, ws: str, person: str | None, limit: int, before: int | None = None
    ) -> list[dict[str, Any]]:
        """The latest ``limit`` entries, newest first (with their ``id``); those naming
        ``person`` when given; only those older than entry ``before`` when given."""
        async with self.connections.connection() as conn:
            cur = await conn.execute(
                """SELECT id, at, actor, endpoint, person_ids FROM access_log
                   WHERE workspace_id = %(ws)s
                     AND (%(p)s::text IS NULL OR %(p)s = ANY(person_ids))
                     AND (%(before)s::bigint IS NULL OR id < %(before)s)
                   ORDER BY id DESC LIMIT %(limit)s""",
                {"ws": ws, "p": person, "before": before, "limit": limit},
            )
            rows: list[dict[str, Any]] = await cur.fetchall()
        return rows


class Decryption:
    """Personal fields in plaintext for an answer, with the people's keys; a forgotten
    person's fields never come back."""

    def __init__(self, connections: Connections, keystore: KeyStore) -> None:
        self.connections = connections
        self.keystore = keystore

    async def reveal(self, ws: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Decrypt people rows; a forgotten person shows as such, with nothing else."""
        keys = await self.keystore.keys(ws, [r["person_id"] for r in rows])
        out = []
        for r in rows:
            r = dict(r)
            forgotten = r.pop("forgotten", False)
            key = keys.get(r["person_id"])
            for f in PERSON_FIELDS:
                if f in r:
                    r[f] = None if forgotten else decrypt_value(key, ws, f, r[f])
            if forgotten:
                r["display_name"] = FORGOTTEN
            r["forgotten"] = forgotten
            out.append(r)
        return out

    async def keys(self, ws: str, people: set[str]) -> dict[str, bytes | None]:
        """The people's keys; a key destroyed in the database counts as gone even if another
        API instance's cache still held it a moment ago (never decrypt a forgotten person)."""
        wanted = sorted(people)
        keys = await self.keystore.keys(ws, wanted)
        async with self.connections.connection() as conn:
            cur = await conn.execute(
                "SELECT person_id FROM person_keys WHERE workspace_id = %s "
                "AND person_id = ANY(%s) AND key IS NULL",
                (ws, wanted),
            )
            for row in await cur.fetchall():
                keys[row["person_id"]] = None
        return keys

    def drop_cached(self, ws: str, person: str) -> None:
        """Forget this instance's cached key of ``person`` (after destroying it)."""
        self.keystore._cache.pop((ws, person), None)


def _unfit(loc: list[str], msg: str) -> dict[str, Any]:
    where = ".".join(loc) or "(body)"
    return {"status": 422, "error": f"{where}: {msg}", "errors": [{"loc": loc, "msg": msg}]}


class CommandBus:
    """Commands to the write-side services over NATS request/reply."""

    def __init__(self, settings: Settings, connections: Connections) -> None:
        self.settings = settings
        self.connections = connections

    async def command(
        self,
        ws: str,
        service: str,
        items: list[Any],
        actor: str,
        correlation_id: str,
        role: str = "write",
    ) -> list[dict[str, Any]]:
        """One result per item, in order; 503 when the service is not there or too slow,
        502 when its answer does not fit the request. An item no command can carry (a
        non-finite number, a lone surrogate, a NUL) is refused here (422), the rest sent."""
        unfit = {i: p for i, it in enumerate(items) if (p := strict_json.problem(it)) is not None}
        if unfit:
            rest = [it for i, it in enumerate(items) if i not in unfit]
            sent = iter(
                await self.command(ws, service, rest, actor, correlation_id, role) if rest else []
            )
            return [_unfit(*unfit[i]) if i in unfit else next(sent) for i in range(len(items))]
        subject = command_subject(self.settings.subject_prefix, ws, service, "record")
        body = json.dumps(
            {"actor": actor, "correlation_id": correlation_id, "items": items, "role": role},
            default=str,
        ).encode()
        # An erasure may wait up to twice the command timeout for other commands' lines in
        # flight naming the person (services/writeside.py, _after_in_flight), then publish.
        erasing = any(isinstance(it, dict) and it.get("type") == "person.forgotten" for it in items)
        # Half as long again as the service may take to publish, so that a line whose publish
        # timed out there is answered (503, with its event_id) beside those that went through.
        timeout = self.settings.command_timeout_s * (4 if erasing else 1) * 1.5
        try:
            with telemetry.outgoing(f"{service} command", **{"tieline.items": len(items)}) as tp:
                reply = await self.connections.nc.request(
                    subject, body, timeout=timeout, headers=tp or None
                )
        except NoRespondersError as exc:
            raise ApiError(503, f"the {service} service is not running") from exc
        except NatsTimeout as exc:
            raise ApiError(503, f"the {service} service did not answer in time") from exc
        data = json.loads(reply.data)
        if "results" not in data or len(data["results"]) != len(items):
            raise ApiError(502, f"the {service} service answered: {data.get('error')}")
        results: list[dict[str, Any]] = data["results"]
        metrics.count_command_outcomes(items, results, EVENT_TYPES)
        return results


class ReadYourWrites:
    """Waits until the live projection has applied a stream sequence (``?min_seq``), and
    refuses at once a sequence the log has not reached."""

    #: How long the log's last sequence is trusted before it is asked again. It only grows,
    #: so a cached value is a lower bound: it answers "min_seq is within the log" without a
    #: round trip; a min_seq beyond it is always checked against a fresh answer.
    LAST_SEQ_TTL_S = 1.0
    #: How often the waiters read the checkpoint from the database (all of them together).
    POLL_S = 0.05

    def __init__(self, settings: Settings, connections: Connections) -> None:
        self.settings = settings
        self.connections = connections
        self._changed = asyncio.Event()
        self._checkpoints: dict[str, int] = {}  # generation schema -> committed seq (NOTIFY)
        self._last_seq = (0, -1e9)  # (the stream's last seq, when it was read: monotonic)
        # consumer -> (checkpoint read, when the read started), and the read in flight.
        self._polled: dict[str, tuple[int, float]] = {}
        self._polling: dict[str, asyncio.Future[int]] = {}
        #: Called with (schema, seq) on every notification (the live-update feed listens too).
        self.listeners: list[Callable[[str, int], None]] = []

    async def stream_last_seq(self) -> int | None:
        """The log's last sequence now (JetStream STREAM.INFO), or None when NATS does not
        answer (the caller then cannot tell, and waits as before)."""
        try:
            info = await self.connections.nc.jetstream().stream_info(self.settings.stream_name)
        except Exception as exc:
            log.warning("api.stream_info_failed", error=repr(exc))
            return None
        last = int(info.state.last_seq)
        self._last_seq = (last, time.monotonic())
        return last

    async def check_within_log(self, min_seq: int) -> None:
        """422 ``min-seq-beyond-log`` when the log has not reached ``min_seq``: no wait can
        ever see it, so none is started."""
        cached, at = self._last_seq
        if min_seq <= cached and time.monotonic() - at < self.LAST_SEQ_TTL_S:
            return
        last = await self.stream_last_seq()
        if last is not None and min_seq > last:
            raise ApiError(
                422,
                f"min_seq: {min_seq} is beyond the log, whose last sequence is {last}; "
                "pass the seq a write of this deployment returned",
                [{"loc": ["query", "min_seq"], "msg": f"beyond the log's last sequence {last}"}],
                type="min-seq-beyond-log",
                extra={"last_seq": last},
            )

    async def wait(self, min_seq: int | None) -> None:
        """Read-your-writes: wait until the live projection's checkpoint reaches ``min_seq``
        (bounded by ``min_seq_wait_s``). The worker's ``tieline_checkpoint`` NOTIFY says at
        once when a batch commits (and usually answers without a query); a short poll of the
        checkpoint remains the fallback, shared by every waiter (:meth:`polled`)."""
        if not min_seq:
            return
        generation = self.connections.pool.generation
        if self.notified(generation) >= min_seq:
            return
        await self.check_within_log(min_seq)
        deadline = time.monotonic() + self.settings.min_seq_wait_s
        while True:
            changed = self._changed  # taken before the read: no lost wake-up
            generation = self.connections.pool.generation
            if self.notified(generation) >= min_seq:
                return
            seen = await self.polled(generation.consumer)
            if seen >= min_seq:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApiError(
                    503,
                    f"min_seq: the projection has reached seq {seen}, not {min_seq}, "
                    f"within {self.settings.min_seq_wait_s:g}s; retry later",
                    [{"loc": ["query", "min_seq"], "msg": f"not applied yet (at {seen})"}],
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=min(left, 0.05))

    async def polled(self, consumer: str) -> int:
        """``consumer``'s checkpoint from the database, one read for every waiter: a read
        started less than :data:`POLL_S` ago answers, and a read in flight is joined. Each
        waiter used to read it itself every 50 ms (and at every notification): N waiting
        ``?min_seq`` reads made 20·N queries a second on the pool the plain reads use."""
        hit = self._polled.get(consumer)
        if hit is not None and time.monotonic() - hit[1] < self.POLL_S:
            return hit[0]
        future = self._polling.get(consumer)
        if future is None:
            # Shared by every waiter: run in a fresh context, not as the request that started it.
            future = asyncio.get_running_loop().create_task(
                self._read_checkpoint(consumer), context=contextvars.Context()
            )
            self._polling[consumer] = future
            future.add_done_callback(lambda f: self._done_polling(consumer, f))
        return await asyncio.shield(future)

    def _done_polling(self, consumer: str, future: asyncio.Future[int]) -> None:
        self._polling.pop(consumer, None)
        if not future.cancelled():
            future.exception()  # retrieved: every waiter may have gone (no "never retrieved")

    async def _read_checkpoint(self, consumer: str) -> int:
        started = time.monotonic()
        # As the owner: a checkpoint is not workspace data, and the answer is shared.
        async with self.connections.system() as conn:
            seen = await checkpoint(conn, consumer)
        self._polled[consumer] = (seen, started)
        return seen

    async def listen(self) -> None:
        """Follow every projection's committed checkpoint ("<read-model schema> <seq>"
        notifications) and wake ``wait`` callers; reconnect under the PostgreSQL retry policy
        when the database goes away (waiters fall back to polling meanwhile)."""

        def lost(state: RetryCallState) -> None:
            self._checkpoints.clear()  # notifications may have been missed meanwhile
            error = state.outcome.exception() if state.outcome else None
            log.warning("api.checkpoint_listener_retry", error=str(error))

        # Exception only: a cancellation (the api stopping) ends the listener at once.
        retrying = POSTGRES.retrying(Exception, on_retry=lost)
        while True:  # a connection that ended without an error is simply opened again
            await retrying(self._listen_once)

    async def _listen_once(self) -> None:
        conn = await db.connect(self.settings)
        try:
            await conn.execute("LISTEN tieline_checkpoint")
            async for n in conn.notifies():
                self.committed(n.payload)
        finally:
            await conn.close()

    def notified(self, generation: Generation) -> int:
        """The generation's checkpoint as notifications told it (0: not known): with
        partitioned workers ("<schema>/p<i> <seq>"), the smallest partition's."""
        schema = generation.schema_name
        if generation.partitions <= 1:
            return self._checkpoints.get(schema, 0)
        return min(self._checkpoints.get(f"{schema}/p{i}", 0) for i in range(generation.partitions))

    def committed(self, payload: str) -> None:
        """A checkpoint notification: remember the seq and wake every waiter."""
        schema, _, seq = payload.rpartition(" ")
        if schema and seq.isdigit():
            # Commits of one projection (or partition) are serial: its notifications arrive
            # in order.
            self._checkpoints[schema] = max(self._checkpoints.get(schema, 0), int(seq))
            for listener in self.listeners:
                listener(schema, int(seq))
        woken, self._changed = self._changed, asyncio.Event()
        woken.set()


@dataclass
class Runtime:
    """Everything the routes use, built from the settings without connecting."""

    settings: Settings
    connections: Connections
    principals: PrincipalCache
    audit: AuditLog
    decryption: Decryption
    bus: CommandBus
    waiter: ReadYourWrites
    limiter: SharedLimiter
    feed: ChangeFeed = field(init=False)
    _listener: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.feed = ChangeFeed(self.settings, self.connections)
        self.waiter.listeners.append(self.feed.committed)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        conns = Connections(settings)
        keystore = KeyStore(conns.pool, master_key_of(settings))
        return cls(
            settings=settings,
            connections=conns,
            principals=PrincipalCache(conns),
            audit=AuditLog(conns),
            decryption=Decryption(conns, keystore),
            bus=CommandBus(settings, conns),
            waiter=ReadYourWrites(settings, conns),
            limiter=SharedLimiter(
                conns,
                auth_failures=settings.auth_failures_per_minute,
                requests=settings.requests_per_minute,
            ),
        )

    async def start(self) -> None:
        """Open the connections and start following projection checkpoints."""
        await self.connections.open()
        await self.feed.start()
        self.limiter.start()
        self._listener = asyncio.create_task(self.waiter.listen())
        log.info("api.started", port=self.settings.api_port)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.feed.stop()
        await self.limiter.stop()
        await self.connections.close()
