"""Applies a whole fetched batch to PostgreSQL in one transaction, checkpoint included.

The checkpoint is the JetStream stream sequence. A message at or below it was already applied
(a redelivery after a crash between commit and ack) and is skipped; an event whose event_id is
already archived in its workspace (a re-send beyond JetStream's dedupe window) changes nothing
either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
from psycopg import AsyncConnection
from tieline.events_schema.registry import EventRegistry
from tieline.projections import merges, people, retractions
from tieline.projections.changelog import Cause, ChangeLog, mark_trimmed
from tieline.projections.changes import Changes, changes_for
from tieline.projections.items import (
    Decoded,
    Gap,
    Item,
    Poison,
    SequenceGapError,
    Skipped,
    continuing,
    record_poison,
)
from tieline.projections.rows import (
    ARCHIVE_BULK,
    CHANGES_BULK,
    PAIRS_BULK,
    STRENGTH_BULK,
    PairKey,
    _key_arrays,
    _Staging,
    archive_row,
    pair_event,
    pair_row,
    person_row,
    strength_row,
)
from tieline.projections.strength_model import PARAMS, Fold, PairEvent, Params
from tieline.projections.strength_model_workspace import MODEL_CALIBRATED, WorkspaceModel
from tieline.projections.workspace_models import workspace_models

__all__ = [
    "BatchResult",
    "Decoded",
    "Gap",
    "Item",
    "Poison",
    "ProjectionStore",
    "SequenceGapError",
    "Skipped",
    "continuing",
]


class _TrialRollback(Exception):
    """Raised to undo a trial application (:meth:`ProjectionStore.trial`)."""


#: An introduction's status from its steps (bulk.py ``_intro_status`` is the same rule): an
#: outcome shows only while the introduction is made (its making may be retracted).
INTRO_STATUS = """UPDATE introductions_v1 SET status = CASE
        WHEN outcome IS NOT NULL AND made_event_id IS NOT NULL THEN 'outcome: ' || outcome
        WHEN made_event_id IS NOT NULL THEN 'made'
        WHEN requester_consent = false OR target_consent = false THEN 'declined'
        WHEN requester_consent AND target_consent THEN 'ready'
        ELSE 'awaiting consent' END
    WHERE workspace_id = %s AND introduction_id = %s"""


@dataclass
class BatchResult:
    applied: int = 0
    redelivered: int = 0
    duplicate_ids: int = 0
    poison: int = 0
    last_seq: int = 0
    orphan_retractions: list[str] = field(default_factory=list)


class ProjectionStore:
    """The thin I/O layer under the pure projection functions."""

    def __init__(
        self, registry: EventRegistry, projection: str = "main", params: Params = PARAMS
    ) -> None:
        self.registry = registry
        self.projection = projection
        #: This worker's checkpoint row when it is one partition of several
        #: (projections/partitions.py); None: the row is ``projection`` itself.
        self.partition_row: str | None = None
        self.params = params
        #: Workspaces that adopted parameter sets of their own (loaded per batch).
        self._models: dict[str, WorkspaceModel] = {}
        #: Workspaces whose adoption a retraction of this batch undid, with that retraction
        #: (the latest of the workspace's, the cause of its change rows).
        self._recalibrated: dict[str, Decoded] = {}
        self.staging = _Staging()
        self._changes = ChangeLog()  # the current batch's change log (projections/changelog.py)
        self._aliases = merges.Aliases()  # the merges that hold (projections/merges.py)
        #: What this store knows of the rows waiting for their event (retractions) or add
        #: (people), which only the live stores add once the generation runs; true only while
        #: no other store moved the checkpoint since this one's last commit (``_left_at``).
        self._waiting = retractions.Waiting()
        self._pending = people.Pending()
        self._left_at: int | None = None

    @property
    def row(self) -> str:
        """The ``checkpoints.projection`` this store moves."""
        return self.partition_row or self.projection

    async def checkpoint(self, conn: AsyncConnection[Any]) -> int:
        cur = await conn.execute(
            "SELECT last_seq FROM checkpoints WHERE projection = %s", (self.row,)
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def apply(self, conn: AsyncConnection[Any], items: Sequence[Item]) -> BatchResult:
        """Apply ``items`` (in stream order) and advance the checkpoint, atomically."""
        result = BatchResult()
        if not items:
            return result
        self.staging.begin()
        try:
            return await self._apply(conn, items, result)
        except BaseException:
            self.staging.forget(conn)
            raise

    async def _apply(
        self, conn: AsyncConnection[Any], items: Sequence[Item], result: BatchResult
    ) -> BatchResult:
        async with conn.transaction():
            last = await self._lock_checkpoint(conn)
            if last != self._left_at:  # another instance (a standby that took over) or none
                self._waiting, self._pending = retractions.Waiting(), people.Pending()
            # The invariant lives here, in the transaction that moves the checkpoint, so no
            # change in the worker can make the checkpoint jump over an unapplied event.
            fresh = continuing(items, last)
            result.redelivered = len(items) - len(fresh)
            result.last_seq = last
            if fresh:
                await self._apply_items(conn, fresh, result)
                result.last_seq = fresh[-1].seq
                await self._advance(conn, result.last_seq)
        self._left_at = result.last_seq  # committed
        return result

    async def trial(self, conn: AsyncConnection[Any], item: Item) -> None:
        """Apply one item's changes and roll them back: raises what applying it raises.

        The worker uses it to find the event of a failing batch that fails on its own; the
        checkpoint is neither checked nor moved (the item need not follow it)."""
        self.staging.begin()
        try:
            async with conn.transaction():
                await self._apply_items(conn, [item], BatchResult())
                raise _TrialRollback
        except _TrialRollback:
            pass
        finally:
            self.staging.forget(conn)  # the rollback may have undone the staging tables

    async def _apply_items(
        self, conn: AsyncConnection[Any], fresh: Sequence[Item], result: BatchResult
    ) -> None:
        decoded = [i for i in fresh if isinstance(i, Decoded)]
        poison = [i for i in fresh if isinstance(i, Poison)]
        new = await self._archive(conn, decoded)
        result.duplicate_ids = len(decoded) - len(new)
        result.applied = len(new)
        self._changes = ChangeLog()
        for it in new:
            self._changes.recorded(it.seq, it.event)
        self._recalibrated = {}
        await self._apply_changes(conn, new, result)
        await self._recalibrate(conn, new)
        await record_poison(conn, self.projection, poison)
        result.poison = len(poison)
        await self._write_changes(conn)

    async def _write_changes(self, conn: AsyncConnection[Any]) -> None:
        """The batch's change log, in its transaction (live updates and webhooks read it)."""
        rows, skipped = self._changes.rows()
        if rows:
            await self.staging.write(conn, CHANGES_BULK, rows)
        if skipped:
            await mark_trimmed(conn, skipped)

    async def _advance(self, conn: AsyncConnection[Any], last_seq: int) -> None:
        """Advance the checkpoint and tell readers waiting for it (min_seq), one statement;
        the payload is "<read-model schema> <last_seq>" (the channel is database-wide; the
        schema names the generation of one installation), "<schema>/p<i> <last_seq>" from
        partition ``i`` of several (readers take the minimum over the partitions)."""
        suffix = self.row[len(self.projection) :] if self.partition_row else ""
        await conn.execute(
            "WITH moved AS (UPDATE checkpoints SET last_seq = %s, updated_at = now() "
            "WHERE projection = %s AND last_seq < %s RETURNING last_seq) "
            "SELECT pg_notify('tieline_checkpoint', current_schema() || %s || ' ' || last_seq) "
            "FROM moved",
            (last_seq, self.row, last_seq, suffix),
        )

    async def _lock_checkpoint(self, conn: AsyncConnection[Any]) -> int:
        select = "SELECT last_seq FROM checkpoints WHERE projection = %s FOR UPDATE"
        row = await (await conn.execute(select, (self.row,))).fetchone()
        if row is None:  # the projection's first batch
            await conn.execute(
                "INSERT INTO checkpoints (projection, last_seq) VALUES (%s, 0) "
                "ON CONFLICT (projection) DO NOTHING",
                (self.row,),
            )
            row = await (await conn.execute(select, (self.row,))).fetchone()
        assert row is not None
        return int(row[0])

    async def _archive(self, conn: AsyncConnection[Any], items: list[Decoded]) -> list[Decoded]:
        """Insert into the archive; return the items whose (workspace, event_id) was new."""
        if not items:
            return []
        encode = self.registry.encode
        rows = [archive_row(i.seq, i.subject, i.event, encode(i.event).decode()) for i in items]
        cur = await self.staging.write(conn, ARCHIVE_BULK, rows)
        inserted = {(row[0], row[1]) for row in await cur.fetchall()}
        seen: set[tuple[str, UUID]] = set()
        new: list[Decoded] = []
        for it in items:
            eid = (it.event.workspace_id, it.event.event_id)
            if eid in inserted and eid not in seen:
                seen.add(eid)
                new.append(it)
        return new

    async def _apply_changes(
        self, conn: AsyncConnection[Any], items: list[Decoded], result: BatchResult
    ) -> None:
        who: list[tuple[Decoded, str, Any]] = []  # people events, in stream order
        pair_rows: list[tuple[Any, ...]] = []
        stored: list[tuple[PairKey, PairEvent]] = []  # new events per stored pair
        steps: list[tuple[Decoded, Changes]] = []  # retractions and merges, in stream order
        intros: list[tuple[Decoded, UUID, dict[str, Any]]] = []
        self._aliases = await merges.load(conn, {it.event.workspace_id for it in items})
        for it in items:
            e = it.event
            ch: Changes = changes_for(e)
            if ch.person_added is not None:
                who.append((it, "add", person_row(it, ch.person_added)))
            if ch.person_updated is not None:
                who.append((it, "update", ch.person_updated))
            for r in ch.pair_rows:
                pair_rows.append(pair_row(it.seq, e, r))
                stored.append(((e.workspace_id, r.person_a, r.person_b), pair_event(it.seq, e, r)))
            if ch.retracts is not None or ch.merges is not None:
                steps.append((it, ch))
            if ch.forgets is not None:
                who.append((it, "forget", ch.forgets))
            if ch.introduction is not None:
                intros.append((it, *ch.introduction))
        await people.apply(conn, who, self.registry, self._aliases.survivor, self._pending)
        if pair_rows:
            await self.staging.write(conn, PAIRS_BULK, pair_rows)
        touched = merges.resolve_rows(self._aliases, stored)  # new events per relationship
        if touched:
            await self._fold_pairs(conn, touched, items[-1].seq)
        # Introduction steps before retractions, as people events are: a retraction of the
        # make in the same batch then finds it made (the bulk rebuild retracts after all).
        for it, intro_id, change in intros:
            await self._introduction(conn, it, intro_id, change)
        for it, ch in steps:
            if ch.merges is not None:
                await self._merge(conn, it, *ch.merges)
            else:
                await self._retract(conn, it, result)
        await self._late_retractions(conn, items)

    async def _introduction(
        self, conn: AsyncConnection[Any], it: Decoded, intro_id: UUID, change: dict[str, Any]
    ) -> None:
        """Advance one introduction through requested -> consented -> made -> outcome."""
        ws, at = it.event.workspace_id, it.event.occurred_at
        if change.get("new"):
            await conn.execute(
                """INSERT INTO introductions_v1 (workspace_id, introduction_id, requester,
                       introducer, target, status, requested_at, updated_at)
                   VALUES (%s, %s, %s, %s, %s, 'awaiting consent', %s, %s)
                   ON CONFLICT DO NOTHING""",
                (ws, intro_id, change["requester"], change["introducer"], change["target"], at, at),
            )
            return
        if "person" in change:
            await conn.execute(
                """UPDATE introductions_v1 SET
                       requester_consent = CASE WHEN requester = %(p)s THEN %(c)s
                                                ELSE requester_consent END,
                       target_consent = CASE WHEN target = %(p)s THEN %(c)s
                                             ELSE target_consent END,
                       updated_at = greatest(updated_at, %(at)s)
                   WHERE workspace_id = %(ws)s AND introduction_id = %(id)s""",
                {
                    "p": change["person"],
                    "c": change["consented"],
                    "at": at,
                    "ws": ws,
                    "id": intro_id,
                },
            )
        elif "made" in change:
            await conn.execute(
                "UPDATE introductions_v1 SET made_event_id = %s, updated_at = greatest("
                "updated_at, %s) WHERE workspace_id = %s AND introduction_id = %s",
                (change["made"], at, ws, intro_id),
            )
        elif "outcome" in change:
            await conn.execute(
                "UPDATE introductions_v1 SET outcome = %s, updated_at = greatest(updated_at, %s) "
                "WHERE workspace_id = %s AND introduction_id = %s",
                (change["outcome"], at, ws, intro_id),
            )
        await conn.execute(INTRO_STATUS, (ws, intro_id))

    async def _unmake(self, conn: AsyncConnection[Any], ws: str, target: UUID) -> None:
        """The ``relationship.introduced`` ``target`` that made an introduction is retracted:
        the introduction is no longer made (and its outcome no longer shows)."""
        cur = await conn.execute(
            "UPDATE introductions_v1 SET made_event_id = NULL WHERE workspace_id = %s "
            "AND made_event_id = %s RETURNING introduction_id",
            (ws, target),
        )
        for (intro_id,) in await cur.fetchall():
            await conn.execute(INTRO_STATUS, (ws, intro_id))

    def _model(self, ws: str) -> WorkspaceModel:
        """The parameter sets of workspace ``ws`` (the generation's strength set unless the
        workspace adopted its own)."""
        model = self._models.get(ws)
        return model if model is not None else WorkspaceModel(self.params)

    async def _load_models(self, conn: AsyncConnection[Any], keys: Sequence[PairKey]) -> None:
        self._models = await workspace_models(conn, {k[0] for k in keys}, self.params)

    async def _recalibrate(self, conn: AsyncConnection[Any], items: list[Decoded]) -> None:
        """A workspace adopted parameter sets (or an adoption was retracted): they apply to
        its whole history, so every pair of the workspace is recomputed with them. The
        batch's latest adoption or retraction of an adoption in the workspace is the cause of
        the change rows of its pairs."""
        found = {it.event.workspace_id: it for it in items if it.event.type == MODEL_CALIBRATED}
        for ws, undo in self._recalibrated.items():
            if ws not in found or found[ws].seq < undo.seq:
                found[ws] = undo
        for ws in sorted(found):
            cur = await conn.execute(
                "SELECT workspace_id, person_a, person_b FROM strength_v1 WHERE workspace_id = %s",
                (ws,),
            )
            keys: list[PairKey] = [(w, a, b) for w, a, b in await cur.fetchall()]
            if not keys:
                continue
            seq = items[-1].seq
            await self._recompute_pairs(conn, keys, seq)
            it = found[ws]
            cause = Cause(it.seq, str(it.event.event_id), it.event.type)
            for key in keys:
                self._changes.caused(key, cause, 1)

    async def _fold_pairs(
        self, conn: AsyncConnection[Any], new: dict[PairKey, list[PairEvent]], seq: int
    ) -> None:
        """Fold each touched pair's new events into its stored state. A pair whose new events
        are not all later than its stored state (a late event) is recomputed from its whole
        history instead, because damping and caps depend on order."""
        keys = sorted(new)  # a stable lock order keeps concurrent writers deadlock-free
        await self._load_models(conn, keys)
        cur = await conn.execute(
            """SELECT s.workspace_id, s.person_a, s.person_b, s.fold::text, s.score, s.tier
               FROM strength_v1 s
               JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(ws, a, b)
                 ON s.workspace_id = k.ws AND s.person_a = k.a AND s.person_b = k.b""",
            _key_arrays(keys),
        )
        found = await cur.fetchall()
        stored = {(ws, a, b): orjson.loads(f) for ws, a, b, f, _, _ in found}
        self._changes.before({(ws, a, b): (sc, t) for ws, a, b, _, sc, t in found}, keys)
        for key in keys:
            last = max(new[key], key=lambda e: e.seq)
            self._changes.caused(key, Cause(last.seq, last.event_id, last.type), len(new[key]))
        folds: dict[PairKey, Fold] = {}
        late: list[PairKey] = []
        for key in keys:
            fold = self._continued(key[0], stored.get(key), new[key])
            if fold is None:
                late.append(key)
            else:
                folds[key] = fold
        if late:
            folds.update(await self._history_folds(conn, late))
        await self._write_strength(conn, folds, [k for k in late if k not in folds], seq)

    def _continued(
        self, ws: str, state: dict[str, Any] | None, events: list[PairEvent]
    ) -> Fold | None:
        """The stored fold continued with ``events``, or None when one of them is late."""
        events = sorted(events, key=lambda e: (e.occurred_at, e.seq, e.event_id))
        a, b = events[0].person_a, events[0].person_b
        fold = Fold(a, b) if state is None else Fold.from_dict(state, a, b)
        model = self._model(ws)
        for e in events:
            if not fold.accepts(e):
                return None
            fold.add(e, model.strength, model.momentum.episode_gap_days)
        return fold

    async def _recompute_pairs(
        self, conn: AsyncConnection[Any], keys: list[PairKey], seq: int
    ) -> None:
        """Recompute the strength of ``keys`` from their stored (unretracted) events."""
        keys = sorted(set(keys))
        await self._load_models(conn, keys)
        cur = await conn.execute(
            """SELECT s.workspace_id, s.person_a, s.person_b, s.score, s.tier FROM strength_v1 s
               JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(ws, a, b)
                 ON s.workspace_id = k.ws AND s.person_a = k.a AND s.person_b = k.b""",
            _key_arrays(keys),
        )
        self._changes.before({(w, a, b): (sc, t) for w, a, b, sc, t in await cur.fetchall()}, keys)
        folds = await self._history_folds(conn, keys)
        await self._write_strength(conn, folds, [k for k in keys if k not in folds], seq)

    async def _history_folds(
        self, conn: AsyncConnection[Any], keys: list[PairKey]
    ) -> dict[PairKey, Fold]:
        """Each relationship's fold of its whole stored, unretracted history (the rows of
        every stored pair that belongs to it, projections/merges.py)."""
        wanted = set(keys)
        stored = sorted({s for k in keys for s in self._aliases.stored_keys(k)})
        cur = await conn.execute(
            """SELECT p.workspace_id, p.person_a, p.person_b, p.event_id, p.seq, p.type,
                      p.occurred_at, p.detail
               FROM pair_events_v1 p
               JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(ws, a, b)
                 ON p.workspace_id = k.ws AND p.person_a = k.a AND p.person_b = k.b
               WHERE NOT p.retracted""",
            _key_arrays(stored),
        )
        rows = [
            ((ws, a, b), PairEvent(str(eid), etype, occurred, int(eseq), a, b, detail))
            for ws, a, b, eid, eseq, etype, occurred, detail in await cur.fetchall()
        ]
        out: dict[PairKey, Fold] = {}
        for key, events in merges.resolve_rows(self._aliases, rows).items():
            model = self._model(key[0])
            fold = (
                Fold.of(events, model.strength, model.momentum.episode_gap_days)
                if key in wanted
                else None
            )
            if fold is not None:
                out[key] = fold
        return out

    async def _write_strength(
        self, conn: AsyncConnection[Any], folds: dict[PairKey, Fold], gone: list[PairKey], seq: int
    ) -> None:
        rows = [self._strength_row(k, folds[k], seq) for k in sorted(folds)]
        for r in rows:
            self._changes.after((r[0], r[1], r[2]), r[3], r[4])
        for k in gone:
            self._changes.after(k, None, None)
        async with conn.cursor() as c:
            if rows:
                await self.staging.write(conn, STRENGTH_BULK, rows)
            if gone:
                await c.executemany(
                    "DELETE FROM strength_v1 WHERE workspace_id = %s AND person_a = %s "
                    "AND person_b = %s",
                    gone,
                )

    def _strength_row(self, key: PairKey, fold: Fold, seq: int) -> tuple[Any, ...]:
        model = self._model(key[0])
        return strength_row(key, fold, seq, model.strength, model.momentum.version)

    async def _retract(self, conn: AsyncConnection[Any], it: Decoded, result: BatchResult) -> None:
        """Remove exactly the retracted event's effect (same workspace only). A target not
        archived yet (dead-lettered, to be replayed later) is retracted when it arrives."""
        target = getattr(it.event, "retracted_event_id")  # noqa: B009
        ws = it.event.workspace_id
        row = None
        if not await self._waiting.has(conn, ws, target):  # else the earlier one wins
            row = await retractions.mark(conn, ws, target, it.event.event_id)
        if row is None:
            result.orphan_retractions.append(f"{ws}/{target}")
            await self._waiting.add(conn, ws, target, it.event.event_id, it.seq)
            return
        await self._undo(conn, it, ws, target, row)

    async def _late_retractions(self, conn: AsyncConnection[Any], new: list[Decoded]) -> None:
        """Retract the batch's new events that a retraction named before they arrived."""
        by_id = {(i.event.workspace_id, i.event.event_id): i for i in new}
        for ws, target, retraction in await self._waiting.take(conn, new):
            row = await retractions.mark(conn, ws, target, retraction)
            if row is not None:
                await self._undo(conn, by_id[(ws, target)], ws, target, row)

    async def _undo(
        self, conn: AsyncConnection[Any], it: Decoded, ws: str, target: UUID, row: Any
    ) -> None:
        """Undo the effect of the archived event ``target`` (of type ``row[0]``) because of
        ``it`` (the retraction, or the late target itself)."""
        if row[0] == "person.merged":
            await conn.execute(
                "UPDATE merges_v1 SET retracted = true WHERE event_id = %s AND workspace_id = %s",
                (target, ws),
            )
            await self._remap(conn, it, row[1])
            return
        if row[0] == MODEL_CALIBRATED:
            self._recalibrated[ws] = it  # the workspace's pairs are recomputed after the batch
            return
        if row[0] == "person.updated":
            await people.refold(conn, self.registry, ws, row[1], it.seq)
            return
        if row[0] == "person.added":
            await conn.execute(
                "UPDATE people_v1 SET retracted = true, last_seq = %s "
                "WHERE workspace_id = %s AND person_id = %s",
                (it.seq, ws, row[1]),
            )
            return
        if row[0] == "relationship.introduced":
            await self._unmake(conn, ws, target)
        cur = await conn.execute(
            "UPDATE pair_events_v1 SET retracted = true WHERE event_id = %s AND workspace_id = %s "
            "RETURNING person_a, person_b",
            (target, ws),
        )
        keys = {self._aliases.key(ws, a, b) for a, b in await cur.fetchall()}
        await self._recompute(conn, it, sorted(k for k in keys if k is not None))

    async def _recompute(
        self, conn: AsyncConnection[Any], it: Decoded, keys: list[PairKey]
    ) -> None:
        """Recompute ``keys`` from their history because of ``it`` (a retraction, a merge)."""
        if keys:
            await self._recompute_pairs(conn, keys, it.seq)
            cause = Cause(it.seq, str(it.event.event_id), it.event.type)
            for key in keys:
                self._changes.caused(key, cause, 1)

    async def _merge(
        self, conn: AsyncConnection[Any], it: Decoded, merged: str, survivor: str
    ) -> None:
        """A person merged into another: remembered, then every relationship it moves is
        recomputed (projections/merges.py)."""
        e = it.event
        await conn.execute(
            merges.INSERT_MERGE, (e.workspace_id, e.event_id, merged, survivor, it.seq)
        )
        await self._remap(conn, it, merged)

    async def _remap(self, conn: AsyncConnection[Any], it: Decoded, person: str) -> None:
        """The merges of ``it``'s workspace changed for ``person``: mark the person merged (or
        not) and recompute every relationship one of their stored pairs moves out of or into."""
        ws = it.event.workspace_id
        before = self._aliases
        fresh = await merges.load(conn, [ws])
        others = {k: v for k, v in before.survivor.items() if k[0] != ws}
        after = merges.Aliases({**others, **fresh.survivor})
        self._aliases = after
        await conn.execute(
            "UPDATE people_v1 SET merged_into = %s WHERE workspace_id = %s AND person_id = %s",
            (after.survivor.get((ws, person)), ws, person),
        )
        cur = await conn.execute(
            "SELECT DISTINCT person_a, person_b FROM pair_events_v1 WHERE workspace_id = %s "
            "AND (person_a = %s OR person_b = %s)",
            (ws, person, person),
        )
        stored = [(ws, a, b) for a, b in await cur.fetchall()]
        await self._recompute(conn, it, merges.moved_keys(before, after, stored))
