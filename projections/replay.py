"""Replay the log into a fresh read-model generation: rebuild (then switch live), as-of
snapshots, and continuous verification against the live generation.

A new generation is first filled from empty by the bulk path (projections/bulk_load.py: the
whole log read in large ordered chunks, folded in memory with the live worker's pure rules,
COPY, keys built after the load, the checkpoint written last, one transaction), then handed to
an ordinary worker of the generation, which continues from that checkpoint in batches with
whatever arrived meanwhile. ``TIELINE_REPLAY_BULK=false`` (or ``bulk=False``) replays through
the worker alone, batch by batch, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from psycopg import AsyncConnection, sql
from tieline.events_schema.registry import REGISTRY, EventRegistry
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.projections import bulk_load, generations, partitions
from tieline.projections.bulk_load import BulkResult
from tieline.projections.generations import Generation
from tieline.projections.queries.common import checkpoint, checkpoint_span
from tieline.projections.schema import READ_MODEL_VERSION
from tieline.projections.strength_model import PARAMS, Params
from tieline.projections.what_if_compare import Comparison, compare_scores
from tieline.projections.worker import Worker
from tieline.projections.worker_support import tune_gc

log = structlog.get_logger(__name__)

#: progress(done_seq, target_seq, events_applied, elapsed_s)
Progress = Callable[[int, int, int, float], None]


@dataclass
class ReplayResult:
    generation: Generation
    last_seq: int
    applied: int
    seconds: float
    switched: bool = False
    #: What the bulk load did before the worker took over (None: replayed by the worker).
    bulk: BulkResult | None = None

    @property
    def events_per_s(self) -> float:
        return self.applied / self.seconds if self.seconds > 0 else 0.0


async def _drive(
    worker: Worker, target: Callable[[], Any], progress: Progress | None, started: float
) -> None:
    """Run batches until the worker reaches ``target()`` (re-evaluated when idle)."""
    goal = int(await target())
    idle = 0
    while worker.stats.last_seq < goal:
        result = await worker.run_once()
        if progress is not None:
            progress(worker.stats.last_seq, goal, worker.stats.applied, time.monotonic() - started)
        if result is None:
            idle += 1
            goal = int(await target())
            if idle >= 3:  # nothing left to fetch up to the goal (deleted sequences)
                return
        else:
            idle = 0


async def replay(
    settings: Settings,
    *,
    status: str = "building",
    until: datetime | None = None,
    stop_at_seq: int | None = None,
    schema_name: str | None = None,
    note: str | None = None,
    progress: Progress | None = None,
    registry: EventRegistry = REGISTRY,
    switch: bool = True,
    params: Params | None = None,
    bulk: bool | None = None,
) -> tuple[ReplayResult, Worker]:
    """Replay the stream into a new generation. A ``building`` generation is switched live
    once caught up (``switch``); a ``scratch`` one never is. The caller closes the worker.
    ``bulk`` (default: the ``replay_bulk`` setting) fills the generation with the bulk path
    first; the worker then only continues from its checkpoint.

    One worker builds it; with partitioned workers (``projection_workers`` N > 1) it is handed
    to N partitions as it switches (:func:`~.partitions.split`), so the N live workers take it
    over without building another. Its worker is then stopped: close it, apply nothing more."""
    tune_gc()  # the bulk load keeps even more objects alive than a worker's batch
    started = time.monotonic()
    gen = await _new_generation(settings, status, params, note, schema_name)
    use_bulk = settings.replay_bulk if bulk is None else bulk
    worker = Worker(
        settings, registry, generation=gen, stop_at_seq=stop_at_seq, until=until, params=params
    )
    try:
        built = await _bulk(settings, gen, registry, params, stop_at_seq, until, progress, use_bulk)
        await worker.start()
        result = await _build(worker, built, progress, started, switch)
    except BaseException:
        # Leave nothing half done behind: the worker's connections, and a scratch copy (a
        # generation being built stays, for `tieline replay` to be run again). The error that
        # stopped us matters more than one in cleaning up.
        with contextlib.suppress(Exception):
            await worker.close()
        if status == "scratch":
            with contextlib.suppress(Exception):
                await discard(settings, gen)
        raise
    return result, worker


async def _build(
    worker: Worker,
    built: BulkResult | None,
    progress: Progress | None,
    started: float,
    switch: bool,
) -> ReplayResult:
    """Drive ``worker`` through the stream (after the bulk load ``built``, if any) and switch
    a ``building`` generation live when ``switch``."""
    gen, settings, stop_at_seq = worker.generation, worker.settings, worker.stop_at_seq
    assert gen is not None

    async def target() -> int:
        last = await worker.stream_last_seq()
        return min(last, stop_at_seq) if stop_at_seq is not None else last

    bulk_applied = built.counts.applied if built is not None else 0
    progress = _offset(progress, bulk_applied)
    await _drive(worker, target, progress, started)
    applied = worker.stats.applied + bulk_applied
    result = ReplayResult(
        gen, worker.stats.last_seq, applied, time.monotonic() - started, bulk=built
    )
    if gen.status == "building" and switch:
        # Catch the last few events that arrived while we finished, then flip the pointer.
        await _drive(worker, target, progress, started)
        gen = await _split_and_switch(settings, gen, worker)
        result.switched = True
        result.generation = worker.generation = gen.with_status("live")
        if gen.partitions > 1:
            worker.stop()  # its checkpoint row is the partitions' now
        log.info("replay.switched", generation=gen.gen, last_seq=result.last_seq)
    return result


async def _bulk(
    settings: Settings,
    gen: Generation,
    registry: EventRegistry,
    params: Params | None,
    stop_at_seq: int | None,
    until: datetime | None,
    progress: Progress | None,
    bulk: bool,
) -> BulkResult | None:
    """Fill ``gen`` with the bulk path (None: not asked for)."""
    if not bulk:
        return None
    return await bulk_load.build(
        settings,
        gen,
        registry,
        params or PARAMS,
        stop_at_seq=stop_at_seq,
        until=until,
        progress=progress,
    )


async def _split_and_switch(settings: Settings, gen: Generation, worker: Worker) -> Generation:
    """Hand ``gen`` to its partitions and make it live, in one transaction; raise (undoing
    the split, closing ``worker``) when it was retired or dropped while being built."""
    conn = await db.connect(settings)
    try:
        async with conn.transaction():
            n = settings.projection_workers
            gen = await partitions.split(conn, settings.database_schema, gen, n)
            if not await generations.switch(conn, settings.database_schema, gen):
                await worker.close()
                raise RuntimeError(f"generation {gen.gen} is no longer being built")
    finally:
        await conn.close()
    return gen


def _offset(progress: Progress | None, applied: int) -> Progress | None:
    """``progress`` counting the ``applied`` events of the bulk load before the worker's."""
    if progress is None or not applied:
        return progress
    report = progress

    def shifted(done: int, goal: int, count: int, elapsed: float) -> None:
        report(done, goal, count + applied, elapsed)

    return shifted


async def _new_generation(
    settings: Settings,
    status: str,
    params: Params | None,
    note: str | None,
    schema_name: str | None,
) -> Generation:
    conn = await db.connect(settings)
    try:
        await generations.ensure_live(
            conn,
            settings.database_schema,
            settings.consumer_name,
            READ_MODEL_VERSION,
            partitions=settings.projection_workers,
        )
        return await generations.create(
            conn,
            settings.database_schema,
            settings.consumer_name,
            READ_MODEL_VERSION,
            status,
            params=params.to_dict() if params is not None else None,
            note=note,
            schema_name=schema_name,
        )
    finally:
        await conn.close()


async def discard(settings: Settings, gen: Generation) -> None:
    """Drop a scratch or retired generation's tables. (Its worker's pull consumer is created
    per start with an inactivity threshold, so JetStream removes it by itself.)"""
    conn = await db.connect(settings)
    try:
        await generations.drop(conn, settings.database_schema, gen)
    finally:
        await conn.close()


async def retire_old(settings: Settings, keep: int = 0, grace_s: float = 5.0) -> list[int]:
    """Drop retired generations (after a grace period for readers still on them)."""
    await asyncio.sleep(grace_s)
    conn = await db.connect(settings)
    dropped = []
    try:
        cur = await conn.execute(
            sql.SQL(
                "SELECT {} FROM {}.generations WHERE status = 'retired' ORDER BY gen DESC"
            ).format(sql.SQL(generations.COLS), sql.Identifier(settings.database_schema))
        )
        rows = await cur.fetchall()
        for r in rows[keep:]:
            gen = generations._row(r)
            await generations.drop(conn, settings.database_schema, gen)
            dropped.append(gen.gen)
    finally:
        await conn.close()
    return dropped


# -- verification ------------------------------------------------------------------------

#: Columns that record *when in the batch sequence* a row was written, not what it says;
#: they legitimately differ between a live projection and a replay with other batch limits.
BOOKKEEPING = {"last_seq", "updated_at", "id", "created_at", "dlq_seq", "replayed_at", "projection"}
#: Tables compared row by row.
COMPARED = (
    "events",
    "people_v1",
    "pair_events_v1",
    "strength_v1",
    "dead_letters",
    "merges_v1",
    "pending_retractions_v1",
    "pending_people_v1",
)


@dataclass
class TableDiff:
    table: str
    live_rows: int
    replay_rows: int
    only_live: int
    only_replay: int
    samples: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.only_live == 0 and self.only_replay == 0


async def _columns(conn: AsyncConnection[Any], schema: str, table: str) -> list[tuple[str, str]]:
    cur = await conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (schema, table),
    )
    return [(r[0], r[1]) for r in await cur.fetchall() if r[0] not in BOOKKEEPING]


def _expr(col: str, data_type: str) -> sql.Composable:
    # Floating-point sums depend on how events were grouped into batches; compare to 1e-6.
    if data_type == "double precision":
        return sql.SQL("round({}::numeric, 6)").format(sql.Identifier(col))
    return sql.Identifier(col)


async def compare(
    conn: AsyncConnection[Any],
    live_schema: str,
    replay_schema: str,
    tables: tuple[str, ...] = COMPARED,
) -> list[TableDiff]:
    """Row-by-row comparison (multiset EXCEPT in both directions) of every compared table."""
    out = []
    for table in tables:
        cols = await _columns(conn, live_schema, table)
        select = sql.SQL(", ").join(_expr(c, t) for c, t in cols)

        def q(
            a: str, b: str, *, select: sql.Composable = select, table: str = table
        ) -> sql.Composed:
            return sql.SQL("SELECT {s} FROM {a}.{t} EXCEPT ALL SELECT {s} FROM {b}.{t}").format(
                s=select, a=sql.Identifier(a), b=sql.Identifier(b), t=sql.Identifier(table)
            )

        counts = []
        samples: list[str] = []
        for a, b in ((live_schema, replay_schema), (replay_schema, live_schema)):
            cur = await conn.execute(sql.SQL("SELECT count(*) FROM ({}) d").format(q(a, b)))
            row = await cur.fetchone()
            counts.append(int(row[0]) if row else 0)
            cur = await conn.execute(sql.SQL("{} LIMIT 3").format(q(a, b)))
            samples += [f"only in {a}: {tuple(r)}" for r in await cur.fetchall()]
        sizes = []
        for schema in (live_schema, replay_schema):
            cur = await conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            )
            row = await cur.fetchone()
            sizes.append(int(row[0]) if row else 0)
        out.append(TableDiff(table, sizes[0], sizes[1], counts[0], counts[1], samples))
    return out


async def verify(
    settings: Settings, *, keep: bool = False, progress: Progress | None = None, rounds: int = 5
) -> tuple[int, list[TableDiff]]:
    """Replay into a scratch generation up to the live checkpoint and compare row by row.

    The live projection may move on while we replay; each round catches the scratch copy up
    to the live checkpoint seen in one snapshot, and compares inside that snapshot. With
    partitioned workers it compares only a snapshot in which every partition is at the same
    sequence (each partition's tables hold its workspaces up to its own checkpoint).
    """
    live, reached = await live_and_checkpoint(settings)
    result, worker = await replay(
        settings, status="scratch", stop_at_seq=reached, note="verify", progress=progress
    )
    try:
        for _ in range(rounds):
            conn = await db.connect(settings)
            try:
                async with conn.transaction():
                    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    lo, seen = await checkpoint_span(conn, live.consumer, live.schema_name)
                    if lo == seen <= worker.stats.last_seq:
                        return seen, await compare(
                            conn, live.schema_name, result.generation.schema_name
                        )
            finally:
                await conn.close()
            worker.stop_at_seq = seen
            await _drive(worker, _const(seen), progress, time.monotonic())
        raise RuntimeError("the live projection kept moving; verify again when it is quieter")
    finally:
        await worker.close()
        if not keep:
            await discard(settings, result.generation)


def _const(value: int) -> Callable[[], Any]:
    async def target() -> int:
        return value

    return target


async def live_and_checkpoint(settings: Settings) -> tuple[Generation, int]:
    """The live generation and the stream sequence its projection has reached."""
    conn = await db.connect(settings)
    try:
        live = await generations.live(conn, settings.database_schema)
    finally:
        await conn.close()
    if live is None:
        raise RuntimeError("no live read-model generation yet")
    return live, await _live_checkpoint(settings, live)


async def _live_checkpoint(settings: Settings, live: Generation) -> int:
    conn = await db.connect(settings, rm_schema=live.schema_name)
    try:
        return await checkpoint(conn, live.consumer)  # every partition's, for several
    finally:
        await conn.close()


# -- what-if -------------------------------------------------------------------------------


WhatIf = Comparison  # what ``tieline what-if`` reports (projections/what_if_compare.py)


async def what_if(
    settings: Settings,
    params: Params,
    *,
    keep: bool = False,
    progress: Progress | None = None,
    top: int = 10,
) -> WhatIf:
    """Replay with ``params`` into a scratch generation (nothing live is touched) and compare
    every pair's score and tier with the live generation, plus each person's top-tie order."""
    live, stop = await live_and_checkpoint(settings)
    result, worker = await replay(
        settings,
        status="scratch",
        stop_at_seq=stop,
        note=f"what-if {params.version}",
        progress=progress,
        params=params,
    )
    await worker.close()
    try:
        conn = await db.connect(settings)
        try:
            return await compare_scores(
                conn, live.schema_name, result.generation.schema_name, top=top
            )
        finally:
            await conn.close()
    finally:
        if not keep:
            await discard(settings, result.generation)
