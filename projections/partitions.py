"""Partitioned projection workers: which worker owns which workspace, and the names of their
checkpoint rows.

Every read model (people, pair timelines, strength, introductions, follow-ups, the change
log) is keyed by workspace, and every event belongs to exactly one workspace (its subject says
which). So partitioning by workspace means an event never touches two partitions: a meeting of
five people or a forget is applied whole by the one worker that owns its workspace, in stream
order, in one transaction with that worker's checkpoint.

Each partition worker reads the whole stream (its own consumer) and applies only the events of
its workspaces; a foreign event only moves its checkpoint (as a :class:`Skipped` item, in the
same transaction as its own changes). So every partition's checkpoint is a contiguous stream
sequence and the worker's gap check stays exactly as for one worker. The generation has
applied everything up to the *smallest* partition checkpoint: readers use that minimum
(:func:`tieline.projections.queries.common.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import structlog
from psycopg import AsyncConnection, sql
from psycopg.rows import tuple_row
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.subjects import workspace_of_subject
from tieline.projections import generations
from tieline.projections.generations import Generation
from tieline.projections.queries import common

log = structlog.get_logger("tieline.projections.worker")


def partition_of(workspace_id: str | None, partitions: int) -> int:
    """The partition that owns ``workspace_id`` (stable across processes and versions:
    CRC-32 of its UTF-8 bytes, modulo ``partitions``). A subject without a workspace goes to
    partition 0, which then dead-letters it."""
    if partitions <= 1 or workspace_id is None:
        return 0
    return zlib.crc32(workspace_id.encode()) % partitions


def owns_subject(prefix: str, subject: str, partition: int, partitions: int) -> bool:
    """Whether ``partition`` applies the message on ``subject`` (decided before decoding)."""
    if partitions <= 1:
        return True
    return partition_of(workspace_of_subject(prefix, subject), partitions) == partition


def checkpoint_row(consumer: str, partition: int, partitions: int) -> str:
    """The ``checkpoints.projection`` of one partition: the consumer itself for a generation
    of one worker (as before partitions existed), ``<consumer>/p<i>`` otherwise."""
    return consumer if partitions <= 1 else f"{consumer}/p{partition}"


def checkpoint_rows(consumer: str, partitions: int) -> list[str]:
    """Every partition's checkpoint row of a generation."""
    return [checkpoint_row(consumer, i, partitions) for i in range(max(partitions, 1))]


async def ensure_rows(conn: AsyncConnection[Any], consumer: str, partitions: int) -> None:
    """Create every partition's checkpoint row (at 0) before any partition applies a batch,
    so the minimum over the rows never skips a partition that has not started yet."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO checkpoints (projection, last_seq) VALUES (%s, 0) "
            "ON CONFLICT (projection) DO NOTHING",
            [(row,) for row in checkpoint_rows(consumer, partitions)],
        )


async def split(
    conn: AsyncConnection[Any], state_schema: str, gen: Generation, n: int
) -> Generation:
    """Hand a generation one worker built (a replay) to ``n`` partitioned workers: every
    partition's checkpoint row at the one worker's checkpoint, which it replaces, and the
    generation registered as fed by ``n``. Exact, because the read models do not depend on
    how workers are partitioned (every one is keyed by workspace) and the one worker applied
    *every* event up to its checkpoint, so each partition has applied all of its own and
    skipped the others'. In one transaction (the caller's, when it has one: the switch). The
    one worker must not apply another batch afterwards (it would write its old row)."""
    if n <= 1 or gen.partitions == n:
        return gen
    if gen.partitions != 1:
        raise ValueError(f"generation {gen.gen} is fed by {gen.partitions} workers, not one")
    table = sql.Identifier(gen.schema_name, "checkpoints")
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            sql.SQL("SELECT last_seq FROM {} WHERE projection = %s FOR UPDATE").format(table),
            (gen.consumer,),
        )
        row = await cur.fetchone()
        last = int(row[0]) if row else 0
        await cur.executemany(
            sql.SQL(
                "INSERT INTO {} (projection, last_seq) VALUES (%s, %s) ON CONFLICT (projection) "
                "DO UPDATE SET last_seq = EXCLUDED.last_seq, updated_at = now()"
            ).format(table),
            [(r, last) for r in checkpoint_rows(gen.consumer, n)],
        )
        await cur.execute(
            sql.SQL("DELETE FROM {} WHERE projection = %s").format(table), (gen.consumer,)
        )
        await cur.execute(
            sql.SQL("UPDATE {}.generations SET partitions = %s WHERE gen = %s").format(
                sql.Identifier(state_schema)
            ),
            (n, gen.gen),
        )
    log.info("replay.split", generation=gen.gen, partitions=n, checkpoint=last)
    return dataclasses.replace(gen, partitions=n)


async def choose_generation(settings: Settings, version: int) -> Generation:
    """The generation the live worker(s) feed: the live one when its read-model version and
    partition count are the code's and the settings', else the ``building`` generation that
    replaces it blue/green (registered once, whichever partition asks first)."""
    state, base = settings.database_schema, settings.consumer_name
    n = settings.projection_workers
    conn = await db.connect(settings)
    try:
        live = await generations.ensure_live(conn, state, base, version, partitions=n)
        if live.version == version and live.partitions == n:
            return live
        # The read models changed shape or meaning, or the number of workers changed:
        # rebuild into a new generation while the old one keeps serving, then switch.
        note = f"read-model version {live.version} -> {version}"
        if live.partitions != n:
            note += f", workers {live.partitions} -> {n}"
        building = await generations.ensure_building(conn, state, base, version, n, note)
        log.info("worker.rebuilding", generation=building.gen, live=live.gen, partitions=n)
        return building
    finally:
        await conn.close()


async def generation_checkpoint(settings: Settings, gen: Generation) -> int:
    """Where ``gen`` as a whole has got to: the minimum over its partitions."""
    conn = await db.connect(settings)
    try:
        return await common.checkpoint(conn, gen.consumer, gen.schema_name)
    finally:
        await conn.close()
