"""The projection worker process: fetch a batch from a durable pull consumer, apply it in one
PostgreSQL transaction with the checkpoint, and only then acknowledge.

It never acknowledges first and never drops an event: a database outage is retried with
backoff while the batch is held; an event that can never be applied (invalid bytes, an unknown
type or version, a workspace that does not match its subject, or one that keeps failing) is
parked in the dead-letter subject with the reason and its original bytes, and everything after
it keeps flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from psycopg import AsyncConnection
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed
from tieline.events_schema.registry import REGISTRY, EventRegistry
from tieline.plumbing import db, metrics, telemetry
from tieline.plumbing.config import Settings
from tieline.plumbing.jetstream import connect_nats, ensure_streams, first_event_at_or_after
from tieline.plumbing.subjects import dlq_subject
from tieline.projections import generations, partitions, selfcheck
from tieline.projections.classify import classify
from tieline.projections.generations import Generation
from tieline.projections.items import in_sequence
from tieline.projections.schema import READ_MODEL_VERSION, ensure_schema
from tieline.projections.store import (
    BatchResult,
    Decoded,
    Item,
    Poison,
    ProjectionStore,
    SequenceGapError,
    Skipped,
)
from tieline.projections.strength_model import PARAMS, Params
from tieline.projections.worker_support import (
    HEADER_UNSAFE,
    TRANSIENT_NATS,
    LockLost,
    ProjectionLock,
    WorkerStats,
    keep_alive,
    log_retry,
    outage,
    tune_gc,
)

log = structlog.get_logger(__name__)


class Worker:
    """Composition of one projection consumer: NATS in, PostgreSQL out.

    Without ``generation`` it feeds the live read-model generation (or, when the code's
    read-model version differs from the live one, rebuilds a new generation and switches to it
    once caught up). With ``generation`` it feeds exactly that one (a rebuild, a what-if or a
    verification replay); ``stop_at_seq`` and ``until`` bound such a replay.
    """

    def __init__(
        self,
        settings: Settings,
        registry: EventRegistry = REGISTRY,
        generation: Generation | None = None,
        *,
        stop_at_seq: int | None = None,
        until: datetime | None = None,
        params: Params | None = None,
    ) -> None:
        self.settings, self.registry, self.generation = settings, registry, generation
        self.stop_at_seq, self.until = stop_at_seq, until
        if params is None and generation is not None and generation.params:
            params = Params.from_dict(generation.params)
        self.store = ProjectionStore(
            registry, projection=settings.consumer_name, params=params or PARAMS
        )
        self.stats = WorkerStats()
        #: This worker's partition of the generation's ``partitions`` (set on start).
        self.partition, self.partitions = 0, 1
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self.pg: AsyncConnection[Any] | None = None
        self._lock: ProjectionLock | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stopping = asyncio.Event()
        self._last_gen_check = 0.0
        self._prefetch: asyncio.Task[list[Msg] | BaseException] | None = None
        self._self_check: asyncio.Task[None] | None = None
        #: True once this instance holds the projection lock (else a hot standby).
        self.active = False

    @property
    def consumer(self) -> str:
        assert self.generation is not None
        return self.generation.consumer

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, pick the generation, create its tables and durable consumer; take the
        single-consumer lock so two instances never apply the same batches."""
        tune_gc()
        self.nc = await connect_nats(self.settings, name="tieline-worker")
        self.js = self.nc.jetstream()
        js = self.js
        # JetStream may still be electing a leader or starting: 60 tries, half a second apart.
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((*TRANSIENT_NATS, RuntimeError)),
            stop=stop_after_attempt(60),
            wait=wait_fixed(0.5),
            before_sleep=log_retry("worker.streams_retry"),
            reraise=True,
        ):
            with attempt:
                await ensure_streams(js, self.settings)
        if self.generation is None:
            self.generation = await partitions.choose_generation(self.settings, READ_MODEL_VERSION)
        self._partition_setup(self.generation)
        await self._connect_pg()
        if not await self._acquire_lock():
            return  # stopped while a hot standby: run() returns at once
        self.active = True
        if self.partitions > 1:
            await partitions.ensure_rows(self._conn(), self.consumer, self.partitions)
        await self._subscribe_from_checkpoint()
        checks = self.settings.self_check_interval_s > 0 and self.partition == 0
        if checks and self.generation.status != "scratch":
            assert self.js is not None
            checker = selfcheck.SelfCheck(
                self.settings, self.js, self.registry, self.generation, self.store.params
            )
            self._self_check = asyncio.create_task(checker.run_forever(until=self.until))
        log.info(
            "worker.started",
            consumer=self.consumer,
            generation=self.generation.gen,
            status=self.generation.status,
            checkpoint=self.stats.last_seq,
            partition=f"{self.partition}/{self.partitions}",
        )

    def _partition_setup(self, gen: Generation) -> None:
        """Which share of ``gen`` this worker applies, and its checkpoint row."""
        self.partitions = max(gen.partitions, 1)
        self.partition = self.settings.projection_partition if self.partitions > 1 else 0
        self.store.projection = gen.consumer
        self.store.partition_row = (
            partitions.checkpoint_row(gen.consumer, self.partition, self.partitions)
            if self.partitions > 1
            else None
        )

    async def _subscribe_from_checkpoint(self) -> None:
        """Read the log from right after the committed checkpoint.

        The PostgreSQL checkpoint is the only truth about what was applied. A consumer whose
        delivery state lives in JetStream would, after a crash between fetch and commit, keep
        the fetched batch pending until ack_wait and serve the messages after it first; an
        ack of those (AckPolicy.ALL) would then swallow the pending batch. So every start
        creates a fresh pull consumer at ``checkpoint + 1``, under the projection lock, and the
        previous incarnation's consumer expires by itself (``inactive_threshold``).
        """
        assert self.js is not None
        self.stats.last_seq = await self.store.checkpoint(self._conn())
        config = js_api.ConsumerConfig(
            ack_policy=js_api.AckPolicy.ALL,
            deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.stats.last_seq + 1,
            ack_wait=self.settings.ack_wait_s,
            max_ack_pending=max(self.settings.batch_size * 4, 1000),
            max_deliver=-1,
            inactive_threshold=max(self.settings.ack_wait_s, 30.0),
        )
        js = self.js
        # JetStream electing a leader or restarting: try again every half second, forever.
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TRANSIENT_NATS),
            wait=wait_fixed(0.5),
            before_sleep=log_retry("worker.subscribe_retry"),
        ):
            with attempt:
                self._sub = await js.pull_subscribe(
                    subject=f"{self.settings.subject_prefix}.ev.>",
                    durable=None,
                    stream=self.settings.stream_name,
                    config=config,
                )

    async def _connect_pg(self) -> None:
        assert self.generation is not None
        self.pg = await db.connect(self.settings, rm_schema=self.generation.schema_name)
        await ensure_schema(self.pg, self.generation.schema_name)

    async def _acquire_lock(self) -> bool:
        """Wait until this instance holds the projection lock (False: stopped meanwhile).
        Until then it is a hot standby: connected, its generation's tables ready."""
        key = f"tieline-worker:{self.settings.database_schema}:{self.store.row}"
        self._lock = self._lock or ProjectionLock(self.settings, key, self.consumer)
        return await self._lock.wait(self._stopping)

    async def stream_last_seq(self) -> int:
        assert self.js is not None
        info = await self.js.stream_info(self.settings.stream_name)
        return int(info.state.last_seq)

    async def caught_up(self) -> bool:
        """Whether the generation has applied the whole stream: this worker, and every other
        partition of it."""
        last = await self.stream_last_seq()
        if self.stats.last_seq < last:
            return False
        if self.partitions == 1 or self.generation is None:
            return True
        return await partitions.generation_checkpoint(self.settings, self.generation) >= last

    async def _check_generation(self) -> None:
        """Once a second: stop when the lock is lost (:meth:`_check_lock`) or our generation
        retired (the supervisor restarts us); switch a caught-up rebuild live."""
        now = time.monotonic()
        if now - self._last_gen_check < 1.0 or self.generation is None:
            return
        self._last_gen_check = now
        if not await self._check_lock():
            return
        gen = self.generation
        if gen.status == "scratch":
            return
        # On the lock's connection, which just answered: a new connection every second cost
        # PostgreSQL a backend process each time.
        assert self._lock is not None and self._lock.conn is not None
        conn = self._lock.conn
        current = await generations.get(conn, self.settings.database_schema, gen.gen)
        stored = current.status if current is not None else None
        if gen.status == "building" and stored == "live":
            self.generation = gen.with_status("live")  # another partition switched it
        elif gen.status == "building" and stored == "building" and await self.caught_up():
            if await generations.switch(conn, self.settings.database_schema, gen):
                self.generation = gen.with_status("live")
                log.info("worker.switched_live", generation=gen.gen)
        elif stored is None or stored == "retired":
            log.info("worker.generation_retired", generation=gen.gen)
            self.stop()

    async def _check_lock(self) -> bool:
        """Whether this instance still holds the projection lock, checked between batches and
        when the database is back. If not, it stops (two instances would apply the same
        batches), and its supervisor starts it again as a standby."""
        if self._lock is None or await self._lock.still_held():
            return True
        self.active = False  # run_once raises LockLost from now on
        self.stop()
        return False

    def _conn(self) -> AsyncConnection[Any]:
        assert self.pg is not None
        return self.pg

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        if self._self_check is not None:
            self._self_check.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._self_check
            self._self_check = None
        if self._prefetch is not None:
            # Its messages stay unacknowledged; the next start reads from the checkpoint.
            self._prefetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._prefetch
            self._prefetch = None
        if self.pg is not None:
            await self.pg.close()
        if self._lock is not None:
            await self._lock.close()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    async def run(self) -> None:
        """Process batches until :meth:`stop` is called or the lock is lost."""
        with contextlib.suppress(LockLost):
            while not self._stopping.is_set():
                await self.run_once()
                if not self._stopping.is_set():
                    await self._check_generation()

    # -- one batch ------------------------------------------------------------------------

    async def run_once(self) -> BatchResult | None:
        """Fetch one batch, apply it, acknowledge it. Returns None when nothing was applied.

        While a batch is being applied the next one is already being fetched (the fetch is
        network wait and the apply mostly waits on PostgreSQL, so they overlap). That changes
        nothing about exactly-once: batches are still applied one after the other in stream
        order, each only if it continues the committed checkpoint without a hole, and each is
        acknowledged only after its own commit. Without the projection lock (lost now or
        before) it raises :class:`LockLost`, its batch unacknowledged, and applies nothing.
        """
        if not self.active:
            raise LockLost(self.consumer)
        pending, self._prefetch = self._prefetch, None
        got = await pending if pending is not None else await self._fetch()
        if isinstance(got, BaseException):
            # JetStream briefly unavailable (server restart, cluster election): wait, and if
            # our consumer is gone, subscribe again from the checkpoint.
            log.warning("worker.fetch_retry", error=repr(got))
            await asyncio.sleep(0.5)
            if isinstance(got, (NotFoundError, ConnectionClosedError)):
                await self._resubscribe("consumer_lost")
            return None
        msgs = got
        if self.stop_at_seq is not None:
            # A bounded replay: never apply past the requested sequence.
            msgs = [m for m in msgs if m.metadata.sequence.stream <= self.stop_at_seq]
        if not msgs:
            return None
        items = await self._in_sequence([self._classify(m) for m in msgs])
        if items is None:
            await self._resubscribe("sequence_gap")
            return None
        if not self._stopping.is_set():
            self._prefetch = asyncio.create_task(self._fetch())
        started = time.time_ns()
        try:
            result = await self._apply_with_retry(msgs, await self._park_poison(items))
        except SequenceGapError as exc:  # the store's own check (another writer moved it)
            log.error("worker.checkpoint_mismatch", error=str(exc))
            await self._resubscribe("checkpoint_mismatch")
            return None
        # Ack only after commit. AckPolicy.ALL: acking the last acknowledges the whole batch,
        # which is exactly what was applied (the batch continued the checkpoint, no hole).
        await msgs[-1].ack()
        self._count(result)
        seconds = (time.time_ns() - started) / 1e9
        metrics.observe_batch(result.applied, result.poison, self.stats.last_seq, seconds)
        if self.partitions > 1:
            msgs = [m for m in msgs if self._owns(m)]
        telemetry.trace_applied(msgs, started)  # a span per event, child of its producer's
        return result

    async def _in_sequence(self, items: list[Item]) -> list[Item] | None:
        """``items`` with proven holes as :class:`Gap` items, or None when the batch does not
        continue the checkpoint (:func:`~tieline.projections.items.in_sequence`)."""
        out = await in_sequence(
            items, self.stats.last_seq, self._first_event_at_or_after, self.until
        )
        if out is None:
            self.stats.gaps += 1
        return out

    async def _first_event_at_or_after(self, seq: int) -> int | None:
        """The stream sequence of the first event message at or after ``seq`` (None: none)."""
        assert self.js is not None
        return await first_event_at_or_after(self.js, self.settings, seq)

    async def _resubscribe(self, reason: str) -> None:
        """Drop whatever was fetched and not applied, and read again from the checkpoint."""
        self.stats.resubscribes += 1
        log.warning("worker.resubscribe", reason=reason, checkpoint=self.stats.last_seq)
        if self._prefetch is not None:
            self._prefetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._prefetch
            self._prefetch = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        await self._subscribe_from_checkpoint()

    async def _fetch(self) -> list[Msg] | BaseException:
        """The next batch ([] when none came in time), or the transient error that stopped it
        (the caller handles it, so a prefetch never touches the PostgreSQL connection)."""
        assert self._sub is not None
        try:
            return await self._sub.fetch(
                self.settings.batch_size, timeout=self.settings.fetch_timeout_s
            )
        except (TimeoutError, NatsTimeout):
            return []
        except TRANSIENT_NATS as exc:
            return exc

    def _classify(self, msg: Msg) -> Item:
        """The message as an item to apply; another partition's (known from its subject,
        before decoding) only moves this partition's checkpoint past it."""
        seq = msg.metadata.sequence.stream
        if self.partitions > 1 and not self._owns(msg):
            return Skipped(seq)
        return classify(self.registry, self.settings, seq, msg.subject, msg.data)

    def _owns(self, msg: Msg) -> bool:
        prefix = self.settings.subject_prefix
        return partitions.owns_subject(prefix, msg.subject, self.partition, self.partitions)

    async def _park_poison(self, items: list[Item]) -> list[Item]:
        """Publish every poison message to the dead-letter subject before the transaction that
        records it commits (dedupe by Nats-Msg-Id makes a retry after a crash harmless)."""
        out: list[Item] = []
        for it in items:
            republish = self.generation is None or self.generation.status == "live"
            if (
                isinstance(it, Poison)
                and it.dlq_seq is None
                and it.seq > self.stats.last_seq
                and republish
            ):
                it = Poison(
                    it.seq,
                    it.subject,
                    it.raw,
                    it.reason,
                    it.detail,
                    await self._publish_dead_letter(it),
                )
                log.warning(
                    "worker.dead_lettered",
                    seq=it.seq,
                    subject=it.subject,
                    reason=it.reason,
                    detail=it.detail[:200],
                )
            out.append(it)
        return out

    async def _publish_dead_letter(self, p: Poison) -> int:
        assert self.js is not None
        headers = {
            "Nats-Msg-Id": f"{self.consumer}:{p.seq}",
            "Tieline-Reason": p.reason,
            "Tieline-Detail": HEADER_UNSAFE.sub(" ", p.detail)[:1000],
            "Tieline-Original-Subject": p.subject,
            "Tieline-Original-Seq": str(p.seq),
            "Tieline-Projection": self.consumer,
        }
        subject = dlq_subject(self.settings.subject_prefix, self.consumer)
        js = self.js
        # The batch waits for its poison to be parked: retry every half second until it is.
        async for attempt in AsyncRetrying(
            wait=wait_fixed(0.5), before_sleep=log_retry("worker.dlq_publish_retry")
        ):
            with attempt:
                ack = await js.publish(
                    subject,
                    p.raw,
                    headers=headers,
                    stream=f"{self.settings.stream_name}_DLQ",
                    timeout=5,
                )
        return int(ack.seq)

    async def _apply_with_retry(self, msgs: list[Msg], items: list[Item]) -> BatchResult:
        delay = 0.1
        while True:
            try:
                try:
                    return await self.store.apply(self._conn(), items)
                except (psycopg.OperationalError, SequenceGapError):
                    raise
                except Exception as exc:
                    log.exception("worker.apply_failed", error=str(exc))
                    # (The database may go away during the trials too: handled below.)
                    items, alone = await self._isolate_failures(items, exc)
                if not alone and len(items) > 1:
                    # Each event applies alone, the batch never will: one item per transaction.
                    return await self._one_by_one(msgs, items)
                if not alone:  # one item, not an event's fault (a gap, a dead letter's row)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            except psycopg.OperationalError as exc:
                # Database down or restarting: hold the batch (unacknowledged), back off,
                # reconnect, and try the very same batch again.
                log.warning("worker.db_unavailable", error=str(exc), retry_in=delay)
                await keep_alive(msgs)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                await self._reconnect_pg()

    async def _one_by_one(self, msgs: list[Msg], items: list[Item]) -> BatchResult:
        """Apply ``items`` in stream order, each in its own transaction with its checkpoint."""
        log.warning("worker.batch_split", first_seq=items[0].seq, items=len(items))
        total = BatchResult()
        for it in items:
            r = await self._apply_with_retry(msgs, [it])
            for f in ("applied", "redelivered", "duplicate_ids", "poison"):
                setattr(total, f, getattr(total, f) + getattr(r, f))
            total.orphan_retractions += r.orphan_retractions
            total.last_seq = r.last_seq
        return total

    async def _reconnect_pg(self) -> None:
        try:
            if self.pg is not None:
                await self.pg.close()
            await self._connect_pg()
            if not await self._check_lock():  # lost while the database was away: stop
                raise LockLost(self.consumer)
        except psycopg.OperationalError as exc:
            log.warning("worker.reconnect_failed", error=str(exc))

    async def _isolate_failures(self, items: list[Item], exc: Exception) -> tuple[list[Item], bool]:
        """Find the events that fail on their own (a lone event: with ``exc``) and park them
        after ``max_attempts``. Returns the items to try again, and whether any did."""
        out: list[Item] = []
        alone = False
        for it in items:
            if not isinstance(it, Decoded):
                out.append(it)
                continue
            failed = exc if items == [it] else await self._trial(it)
            if failed is None:
                out.append(it)
                continue
            alone = True
            n = self.stats.attempts.get(it.seq, 0) + 1
            self.stats.attempts[it.seq] = n
            if n < self.settings.max_attempts:
                await asyncio.sleep(min(0.1 * 2**n, 5.0))
                out.append(it)
                continue
            poison = Poison(
                it.seq,
                it.subject,
                self.registry.encode(it.event),
                "apply_failed",
                f"{type(failed).__name__}: {failed}",
            )
            if it.seq not in self.stats.parked:
                self.stats.parked[it.seq] = await self._publish_dead_letter(poison)
            out.append(dataclasses.replace(poison, dlq_seq=self.stats.parked[it.seq]))
        return out, alone

    async def _trial(self, it: Decoded) -> Exception | None:
        """What applying ``it`` alone raises (rolled back), or None."""
        try:
            await self.store.trial(self._conn(), it)
        except psycopg.OperationalError as exc:
            if outage(self._conn(), exc):  # retried as such, not this event's failure
                raise
            return exc
        except Exception as one:
            return one
        return None

    def _count(self, r: BatchResult) -> None:
        s = self.stats
        s.batches += 1
        s.applied += r.applied
        s.redelivered += r.redelivered
        s.duplicate_ids += r.duplicate_ids
        s.dead_lettered += r.poison
        s.last_seq = max(s.last_seq, r.last_seq)
        if r.orphan_retractions:
            log.warning("worker.orphan_retractions", event_ids=r.orphan_retractions)
        log.debug(
            "worker.batch",
            applied=r.applied,
            redelivered=r.redelivered,
            duplicates=r.duplicate_ids,
            poison=r.poison,
            last_seq=r.last_seq,
        )


def create_app(settings: Settings) -> Worker:
    """Composition root of the projection worker (connects nothing until ``start``)."""
    return Worker(settings)


async def serve(settings: Settings, make: Callable[[Settings], Worker] = create_app) -> None:
    """Run the worker that ``make`` builds until SIGTERM/SIGINT."""
    import signal

    worker = make(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await worker.start()
    try:
        await worker.run()
    finally:
        await worker.close()
        log.info("worker.stopped", applied=worker.stats.applied, last_seq=worker.stats.last_seq)
