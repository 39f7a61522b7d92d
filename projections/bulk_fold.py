"""Phase 3 of a bulk load: every pair's strength from its loaded timeline, optionally spread
over worker processes.

Relationships share nothing: a relationship's strength is
:meth:`~tieline.projections.strength_model.Fold.of` over its unretracted timeline alone (the
live worker's full-recompute path), read through the merges that hold and folded with its
workspace's parameter sets. The
timeline is read grouped by pair, cut into chunks at pair boundaries, and each chunk folded
(in this process, or by one of ``processes`` worker processes while this one reads the next
chunk and COPYs finished rows); at most ``processes + 1`` chunks are in flight, so memory
does not grow with the number of pairs. The rows are those the live store writes
(:func:`~tieline.projections.rows.strength_row`), whichever process folded them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.types.json import set_json_loads
from tieline.projections import merges
from tieline.projections.rows import STRENGTH, PairKey, strength_row
from tieline.projections.strength_model import Fold, PairEvent, Params
from tieline.projections.strength_model_workspace import WorkspaceModel
from tieline.projections.workspace_models import workspace_models

#: Pair-timeline rows per fetch of the strength pass.
PAIR_CHUNK = 20_000
#: Fewer pair-timeline rows than this are folded in the replaying process: starting worker
#: processes (a fresh interpreter importing the model each) costs seconds, which a fold of
#: ~25 us per row only repays past ~100k rows (measured: 30k events, 36k rows, took 5.0 s
#: with two workers against ~1 s of fold CPU in one process).
POOL_MIN_ROWS = 200_000

PAIR_SCAN = """
SELECT workspace_id, person_a, person_b, event_id, seq, type, occurred_at, detail
  FROM pair_events_v1 WHERE NOT retracted ORDER BY workspace_id, person_a, person_b
"""


@dataclass(frozen=True)
class FoldContext:
    """What folding a chunk needs besides its rows (sent to each worker process): the
    checkpoint the rows carry, the parameter sets per workspace (the generation's unless a
    workspace adopted its own) and the merges that hold (projections/merges.py)."""

    seq: int
    default: WorkspaceModel
    models: dict[str, WorkspaceModel] = field(default_factory=dict)
    aliases: merges.Aliases = field(default_factory=merges.Aliases)

    def key(self, ws: str, a: str, b: str) -> PairKey | None:
        """The relationship a stored pair's row belongs to (None: the two are one)."""
        return self.aliases.key(ws, a, b) if self.aliases.survivor else (ws, a, b)


def fold_chunk(rows: Sequence[tuple[Any, ...]], ctx: FoldContext) -> list[tuple[Any, ...]]:
    """The ``strength_v1`` rows of whole relationships (``rows``: scan rows grouped by the
    relationship they belong to; an event on two stored pairs of one relationship counts once,
    on the first)."""
    out: list[tuple[Any, ...]] = []
    key: PairKey | None = None
    events: list[PairEvent] = []
    seen: set[str] = set()
    for ws, a, b, eid, eseq, etype, occurred, detail in rows:
        k = ctx.key(ws, a, b)
        if key != k:
            _flush(out, key, events, ctx)
            key, events, seen = k, [], set()
        if k is None or str(eid) in seen:
            continue  # the two are one; or the event counted on a lower stored pair
        seen.add(str(eid))
        e = PairEvent(str(eid), etype, occurred, int(eseq), a, b, detail)
        events.append(ctx.aliases.event(e, k))
    _flush(out, key, events, ctx)
    return out


def _flush(
    out: list[tuple[Any, ...]], key: PairKey | None, events: list[PairEvent], ctx: FoldContext
) -> None:
    if key is None or not events:
        return
    model = ctx.models.get(key[0], ctx.default)
    fold = Fold.of(events, model.strength, model.momentum.episode_gap_days)
    if fold is not None:
        out.append(strength_row(key, fold, ctx.seq, model.strength, model.momentum.version))


def _whole_pairs(rows: list[tuple[Any, ...]], ctx: FoldContext) -> int:
    """Where the last relationship of ``rows`` starts (it may go on in the next fetch)."""
    last = ctx.key(*rows[-1][:3])
    i = len(rows) - 1
    while i > 0 and ctx.key(*rows[i - 1][:3]) == last:
        i -= 1
    return i


class _Folder:
    """Folds chunks in order, in worker processes once there is more than one chunk."""

    def __init__(self, ctx: FoldContext, processes: int) -> None:
        self.ctx, self.processes = ctx, processes
        self.pool: ProcessPoolExecutor | None = None
        self.pending: deque[asyncio.Future[list[tuple[Any, ...]]]] = deque()

    def submit(self, rows: list[tuple[Any, ...]]) -> None:
        if self.pool is None and self.processes > 1:
            # spawn, not fork: this process runs an event loop and holds open connections
            ctx = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(self.processes, mp_context=ctx)
        loop = asyncio.get_running_loop()
        if self.pool is None:
            done: asyncio.Future[list[tuple[Any, ...]]] = loop.create_future()
            done.set_result(fold_chunk(rows, self.ctx))
            self.pending.append(done)
        else:
            job = loop.run_in_executor(self.pool, fold_chunk, rows, self.ctx)
            self.pending.append(job)

    def full(self) -> bool:
        return len(self.pending) > max(self.processes, 1)

    async def next(self) -> list[tuple[Any, ...]]:
        return await self.pending.popleft()

    def close(self) -> None:
        for job in self.pending:
            job.cancel()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


async def fold_pairs(
    conn: AsyncConnection[Any],
    params: Params,
    seq: int,
    processes: int,
    copy: Any,
    rows_hint: int,
) -> int:
    """Fold and COPY every pair's strength (``copy(conn, table, columns, rows)``); returns
    the number of pairs. ``processes`` > 1: fold in that many worker processes when the
    timeline has at least :data:`POOL_MIN_ROWS` rows (``rows_hint``) and more than one fetch."""
    pairs = 0
    aliases = merges.Aliases.of(await (await conn.execute(merges.ALL_HOLDING_SQL)).fetchall())
    # Workspaces that adopted parameter sets of their own (the archive is loaded and its
    # retractions resolved by now): the same rule as the live store.
    models = await workspace_models(conn, None, params)
    ctx = FoldContext(seq, WorkspaceModel(params), models, aliases)
    folder = _Folder(ctx, processes if rows_hint >= POOL_MIN_ROWS else 1)
    first = True
    try:
        async with conn.cursor(name="tieline_bulk_pairs") as cur:
            set_json_loads(orjson.loads, cur)
            await cur.execute(merges.RESOLVED_PAIR_SCAN if aliases.survivor else PAIR_SCAN)
            carry: list[tuple[Any, ...]] = []
            while rows := await cur.fetchmany(PAIR_CHUNK):
                rows = carry + rows
                cut = _whole_pairs(rows, ctx)
                carry, ready = rows[cut:], rows[:cut]
                if first and len(rows) < PAIR_CHUNK:  # one fetch is all: fold it here
                    folder.processes = 1
                first = False
                if ready:
                    folder.submit(ready)
                while folder.full():
                    out = await folder.next()
                    pairs += len(out)
                    await copy(conn, "strength_v1", STRENGTH, out)
            if carry:
                folder.submit(carry)
            while folder.pending:
                out = await folder.next()
                pairs += len(out)
                await copy(conn, "strength_v1", STRENGTH, out)
    finally:
        folder.close()
    return pairs
