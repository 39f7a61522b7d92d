"""Bulk rebuild, the I/O part: build an empty read-model generation from the log in one
transaction, without the live worker's per-batch round trips.

1. The generation's keys and indexes are dropped (and remembered); the log is read from its
   first message in large ordered chunks by a pull consumer without acks, classified by the
   same function as the live worker (:func:`~tieline.projections.classify.classify`), checked
   to continue without a hole (:func:`~tieline.projections.items.in_sequence`, then
   :func:`~tieline.projections.items.continuing`: a lost delivery makes it read again from the
   last sequence it applied, never skip) and folded by :class:`~.bulk.BulkFold`; the archive
   and the pair timeline go to PostgreSQL with COPY while the next chunk is read and decoded.
2. The archive's and timeline's keys are rebuilt; retractions are resolved in one statement.
3. People, introductions and dead letters are copied from memory; every pair's strength is
   folded from its loaded timeline, pair by pair (the live worker's full-recompute path,
   :meth:`~tieline.projections.strength_model.Fold.of`), in ``bulk_fold_processes`` worker
   processes (projections/bulk_fold.py), and copied.
4. The remaining keys and indexes are rebuilt, the change log is marked trimmed up to the last
   sequence (a bulk load writes no change rows: clients resuming from before it reload), and
   the checkpoint is written last. Nothing is visible before the commit; a crash leaves an
   empty generation.

The caller (projections/replay.py) then hands the generation to an ordinary worker, which
continues from the checkpoint with whatever arrived meanwhile, and switches it live.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js import api as js_api
from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb
from tieline.events_schema.registry import EventRegistry
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.jetstream import connect_nats, first_event_at_or_after
from tieline.projections import merges, people
from tieline.projections.bulk import (
    DEAD_COLUMNS,
    INTRO_COLUMNS,
    PENDING_PEOPLE_COLUMNS,
    PEOPLE_COLUMNS,
    RETRACT_SQL,
    BulkCounts,
    BulkFold,
)
from tieline.projections.bulk_fold import fold_pairs
from tieline.projections.changelog import mark_trimmed
from tieline.projections.classify import classify
from tieline.projections.generations import Generation
from tieline.projections.items import Item, continuing, in_sequence
from tieline.projections.rows import ARCHIVE, PAIR
from tieline.projections.schema import ensure_schema
from tieline.projections.strength_model import Params

log = structlog.get_logger(__name__)

#: Tables a bulk load fills; their keys and indexes are built after the load.
LOADED = ("events", "pair_events_v1", "people_v1", "introductions_v1", "strength_v1")
#: Messages per fetch from the log.
CHUNK = 5000
#: progress(done_seq, target_seq, events_applied, elapsed_s)
Progress = Callable[[int, int, int, float], None]

MARK_PAIRS = """
UPDATE pair_events_v1 p SET retracted = true
  FROM unnest(%s::uuid[], %s::text[]) AS r(event_id, ws)
 WHERE p.event_id = r.event_id AND p.workspace_id = r.ws
"""


@dataclass
class BulkResult:
    """What a bulk load did, and where its time went (seconds per phase)."""

    counts: BulkCounts
    pairs: int = 0
    retracted: int = 0
    rereads: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def last_seq(self) -> int:
        return self.counts.last_seq


@dataclass
class _Keys:
    """A table set's unique constraints and other indexes, as their definitions."""

    constraints: list[tuple[str, str, str]]  # table, name, definition
    indexes: list[tuple[str, str, str]]  # table, name, CREATE INDEX statement


async def drop_keys(conn: AsyncConnection[Any], schema: str, tables: Sequence[str]) -> _Keys:
    """Drop the keys and indexes of ``tables`` and return how to build them again. (Rows go
    in much faster without them; the definitions come from the catalog, so a key or index
    added to the DDL later is handled too.)"""
    cur = await conn.execute(
        """SELECT cl.relname, c.conname, pg_get_constraintdef(c.oid)
             FROM pg_constraint c JOIN pg_class cl ON cl.oid = c.conrelid
             JOIN pg_namespace n ON n.oid = cl.relnamespace
            WHERE n.nspname = %s AND cl.relname = ANY(%s) AND c.contype IN ('p', 'u')""",
        (schema, list(tables)),
    )
    constraints = [(r[0], r[1], r[2]) for r in await cur.fetchall()]
    names = {c[1] for c in constraints}
    cur = await conn.execute(
        "SELECT tablename, indexname, indexdef FROM pg_indexes "
        "WHERE schemaname = %s AND tablename = ANY(%s)",
        (schema, list(tables)),
    )
    indexes = [(r[0], r[1], r[2]) for r in await cur.fetchall() if r[1] not in names]
    s = sql.Identifier(schema)
    for _, name, _ in indexes:
        await conn.execute(sql.SQL("DROP INDEX {}.{}").format(s, sql.Identifier(name)))
    for table, name, _ in constraints:
        await conn.execute(
            sql.SQL("ALTER TABLE {}.{} DROP CONSTRAINT {}").format(
                s, sql.Identifier(table), sql.Identifier(name)
            )
        )
    return _Keys(constraints, indexes)


async def build_keys(
    conn: AsyncConnection[Any], schema: str, keys: _Keys, tables: Sequence[str]
) -> None:
    """Build the keys and indexes of ``tables`` that :func:`drop_keys` dropped."""
    s = sql.Identifier(schema)
    for table, name, definition in keys.constraints:
        if table in tables:
            await conn.execute(
                sql.SQL("ALTER TABLE {}.{} ADD CONSTRAINT {} {}").format(
                    s, sql.Identifier(table), sql.Identifier(name), sql.SQL(definition)
                )
            )
    for table, _, statement in keys.indexes:
        if table in tables:
            await conn.execute(sql.SQL(statement))


async def copy_rows(
    conn: AsyncConnection[Any], table: str, cols: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """COPY ``rows`` into ``table`` (of the connection's generation schema)."""
    if not rows:
        return
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols))
    )
    async with conn.cursor() as cur, cur.copy(stmt) as copy:
        for row in rows:
            await copy.write_row(row)


#: SQL type names as psycopg's type registry knows them.
_PG_NAMES = {"int": "int4", "bigint": "int8", "bool": "bool"}


def _same(text: Any) -> Any:
    return text


async def copy_binary(
    conn: AsyncConnection[Any],
    table: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[Any]],
) -> None:
    """COPY ``rows`` into ``table`` in PostgreSQL's binary format (``columns``: name and
    type; jsonb values are JSON text already). Binary rows are encoded in C without parsing
    text on either side: several times cheaper per row than text COPY here."""
    if not rows:
        return
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c, _ in columns)
    )
    json_at = [i for i, (_, t) in enumerate(columns) if t == "jsonb"]
    async with conn.cursor() as cur, cur.copy(stmt) as copy:
        copy.set_types([_PG_NAMES.get(t, t) for _, t in columns])
        for row in rows:
            if json_at:
                row = list(row)
                for i in json_at:
                    row[i] = Jsonb(row[i], dumps=_same)
            await copy.write_row(row)


class _Copier:
    """COPYs chunks in the background, so PostgreSQL stores one chunk while the next one is
    read and decoded (a bounded queue keeps memory bounded when PostgreSQL is slower)."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn
        self.queue: asyncio.Queue[tuple[str, Sequence[tuple[str, str]], list[Any]] | None] = (
            asyncio.Queue(4)
        )
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while (job := await self.queue.get()) is not None:
            await copy_binary(self.conn, *job)

    async def put(self, table: str, cols: Sequence[tuple[str, str]], rows: list[Any]) -> None:
        if self.task.done():
            await self.task  # raises what the COPY raised
        await self.queue.put((table, cols, rows))

    async def close(self) -> None:
        if not self.task.done():
            await self.queue.put(None)
        await self.task


class _Reader:
    """Reads the log in stream order from a start sequence: an ephemeral pull consumer
    without acks (nothing to acknowledge: the checkpoint is written once, at the end)."""

    def __init__(self, settings: Settings, js: JetStreamContext) -> None:
        self.settings, self.js = settings, js
        self.sub: JetStreamContext.PullSubscription | None = None
        self.rereads = 0

    async def open(self, start: int) -> None:
        await self.close()
        config = js_api.ConsumerConfig(
            ack_policy=js_api.AckPolicy.NONE,
            deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            inactive_threshold=30.0,
        )
        self.sub = await self.js.pull_subscribe(
            subject=f"{self.settings.subject_prefix}.ev.>",
            durable=None,
            stream=self.settings.stream_name,
            config=config,
        )

    async def fetch(self) -> list[Msg]:
        assert self.sub is not None
        try:
            return await self.sub.fetch(CHUNK, timeout=self.settings.fetch_timeout_s)
        except (TimeoutError, NatsTimeout):
            return []

    async def first_at_or_after(self, seq: int) -> int | None:
        """The sequence of the first event message at or after ``seq`` (None: none)."""
        return await first_event_at_or_after(self.js, self.settings, seq)

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None


async def _read_log(
    settings: Settings,
    reader: _Reader,
    fold: BulkFold,
    copier: _Copier,
    target: int,
    until: datetime | None,
    progress: Progress | None,
) -> None:
    """Phase 1: fold every message up to ``target`` in stream order, COPYing as it goes."""
    started = time.monotonic()
    await reader.open(1)
    pending: asyncio.Task[list[Msg]] | None = None
    idle = 0
    try:
        while (last := fold.counts.last_seq) < target:
            msgs = await (pending if pending is not None else reader.fetch())
            pending = None
            msgs = [m for m in msgs if m.metadata.sequence.stream <= target]
            if not msgs:
                nxt = await reader.first_at_or_after(last + 1)
                if nxt is None or nxt > target:
                    return  # the rest up to the target holds no event (deleted messages)
                idle += 1
                if idle >= 3:  # the consumer went quiet before the target: read again
                    reader.rereads += 1
                    await reader.open(last + 1)
                    idle = 0
                continue
            idle = 0
            if msgs[-1].metadata.sequence.stream < target:
                pending = asyncio.create_task(reader.fetch())
            data = [(m.metadata.sequence.stream, m.subject, m.data) for m in msgs]
            items = [classify(fold.registry, settings, s, subj, d) for s, subj, d in data]
            checked = await in_sequence(items, last, reader.first_at_or_after, until)
            if checked is None:  # a lost delivery: drop what came, read again from `last`
                if pending is not None:
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pending
                    pending = None
                reader.rereads += 1
                await reader.open(last + 1)
                continue
            fold.add_all(continuing(checked, last))
            await _put_rows(fold, copier)
            if progress is not None:
                c = fold.counts
                progress(c.last_seq, target, c.applied, time.monotonic() - started)
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        await reader.close()


async def _put_rows(fold: BulkFold, copier: _Copier) -> None:
    archive, pairs = fold.take_rows()
    await copier.put("events", ARCHIVE, archive)
    await copier.put("pair_events_v1", PAIR, pairs)


async def _retract(conn: AsyncConnection[Any], fold: BulkFold) -> int:
    """Phase 2: resolve the collected retractions against the loaded archive."""
    if not fold.retractions:
        return 0
    cur = await conn.execute(RETRACT_SQL, fold.retraction_arrays())
    rows = [tuple(r) for r in await cur.fetchall()]
    fold.retracted(rows)
    await _pending(conn, fold, {(r[2], r[0]) for r in rows})
    others = [(r[0], r[2]) for r in rows if r[1] != "person.added"]
    if others:
        await conn.execute(MARK_PAIRS, ([o[0] for o in others], [o[1] for o in others]))
    return len(rows)


async def _pending(
    conn: AsyncConnection[Any], fold: BulkFold, retracted: set[tuple[str, Any]]
) -> None:
    """Retractions whose event is not in the archive wait for it, as in the live store: the
    first of each (by position) is kept, for a dead-lettered event replayed later."""
    waiting: dict[tuple[str, Any], tuple[Any, int]] = {}
    for rid, rseq, ws, target in sorted(fold.retractions, key=lambda r: r[1]):
        if (ws, target) not in retracted:
            waiting.setdefault((ws, target), (rid, rseq))
    if not waiting:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            """INSERT INTO pending_retractions_v1
                   (workspace_id, target_event_id, retraction_event_id, seq)
               VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            [(ws, target, rid, rseq) for (ws, target), (rid, rseq) in waiting.items()],
        )


async def _target(settings: Settings, js: JetStreamContext, stop_at_seq: int | None) -> int:
    info = await js.stream_info(settings.stream_name)
    last = int(info.state.last_seq)
    return min(last, stop_at_seq) if stop_at_seq is not None else last


async def build(
    settings: Settings,
    gen: Generation,
    registry: EventRegistry,
    params: Params,
    *,
    stop_at_seq: int | None = None,
    until: datetime | None = None,
    progress: Progress | None = None,
) -> BulkResult:
    """Fill the empty generation ``gen`` from the log up to ``stop_at_seq`` (default: the
    stream's last sequence now), in one transaction (see the module docstring)."""
    started = time.monotonic()
    nc = await connect_nats(settings, name="tieline-bulk")
    conn = await db.connect(settings, rm_schema=gen.schema_name)
    try:
        # The worker's lock for this generation (projections/worker.py): no worker applies a
        # batch to it while it is being loaded (the session ends, and frees it, at close).
        key = f"tieline-worker:{settings.database_schema}:{gen.consumer}"
        await conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        await ensure_schema(conn, gen.schema_name)
        js = nc.jetstream()
        target = await _target(settings, js, stop_at_seq)
        fold = BulkFold(registry, gen.consumer)
        reader = _Reader(settings, js)
        result = BulkResult(fold.counts)

        async def read(fold: BulkFold, copier: _Copier) -> None:
            await _read_log(settings, reader, fold, copier, target, until, progress)

        async with conn.transaction():
            await _load(
                conn, gen.schema_name, fold, result, params, read, settings.bulk_fold_processes
            )
        result.rereads = reader.rereads
        await conn.execute(
            sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, LOADED)))
        )
    finally:
        await conn.close()
        await nc.close()
    result.seconds = time.monotonic() - started
    log.info(
        "bulk.built",
        generation=gen.gen,
        last_seq=result.last_seq,
        applied=result.counts.applied,
        pairs=result.pairs,
        seconds=round(result.seconds, 2),
        phases={k: round(v, 2) for k, v in result.phases.items()},
    )
    return result


#: Phase 1 of a load: fold the source into ``fold`` in stream order, COPYing as it goes.
Read = Callable[[BulkFold, _Copier], Awaitable[None]]


async def load_items(
    conn: AsyncConnection[Any],
    gen: Generation,
    registry: EventRegistry,
    params: Params,
    chunks: Iterable[Sequence[Item]],
    processes: int = 1,
) -> BulkResult:
    """Bulk-load classified items (chunks in stream order, from the start of the log) into
    the empty generation ``gen`` that ``conn`` points at, in one transaction: :func:`build`
    with another source than the log (the property tests use it); ``processes``: the
    strength pass's worker processes (projections/bulk_fold.py)."""
    fold = BulkFold(registry, gen.consumer)
    result = BulkResult(fold.counts)

    async def read(fold: BulkFold, copier: _Copier) -> None:
        for chunk in chunks:
            fold.add_all(continuing(chunk, fold.counts.last_seq))
            await _put_rows(fold, copier)

    async with conn.transaction():
        await _load(conn, gen.schema_name, fold, result, params, read, processes)
    return result


async def _load(
    conn: AsyncConnection[Any],
    schema: str,
    fold: BulkFold,
    result: BulkResult,
    params: Params,
    read: Read,
    processes: int,
) -> None:
    """The phases of :func:`build`, inside its transaction."""
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        result.phases[name] = now - clock
        clock = now

    cur = await conn.execute("SELECT count(*) FROM events")
    row = await cur.fetchone()
    if row is None or row[0] != 0:
        raise RuntimeError(f"{schema} is not empty: a bulk load builds from empty")
    keys = await drop_keys(conn, schema, LOADED)
    copier = _Copier(conn)
    try:
        await read(fold, copier)
    finally:
        await copier.close()
    lap("read_decode_copy")
    await build_keys(conn, schema, keys, ("events", "pair_events_v1"))
    lap("archive_keys")
    result.retracted = await _retract(conn, fold)
    await copy_rows(conn, "people_v1", PEOPLE_COLUMNS, fold.people_rows())
    await copy_rows(conn, "pending_people_v1", PENDING_PEOPLE_COLUMNS, fold.pending_people_rows())
    await copy_rows(conn, "introductions_v1", INTRO_COLUMNS, fold.intro_rows())
    await copy_rows(conn, "merges_v1", merges.MERGE_COLUMNS, fold.merge_rows())
    if fold.merges:
        await conn.execute(merges.PEOPLE_MERGED_SQL)
    await copy_rows(conn, "dead_letters", DEAD_COLUMNS, fold.dead)
    lap("retract_people")
    last = fold.counts.last_seq
    rows = fold.counts.pair_rows
    result.pairs = await fold_pairs(conn, params, last, processes, copy_binary, rows)
    lap("fold_pairs")
    await build_keys(conn, schema, keys, ("people_v1", "introductions_v1", "strength_v1"))
    lap("other_keys")
    for ws, person in sorted(fold.refolds):  # with the keys: one indexed update each
        await people.refold(conn, fold.registry, ws, person, last)
    if last:
        await mark_trimmed(conn, last)
    # The checkpoint last: it says every event up to `last` is in the tables above.
    await conn.execute(
        "INSERT INTO checkpoints (projection, last_seq) VALUES (%s, %s) "
        "ON CONFLICT (projection) DO UPDATE SET last_seq = EXCLUDED.last_seq, updated_at = now()",
        (fold.projection, last),
    )
