"""Bulk rebuild, the pure part: what the whole log, read once in stream order, leaves in the
read models that are not pair strengths. No I/O here (projections/bulk_load.py does it).

The live store applies the log batch by batch with SQL statements; a rebuild from empty does
not need those round trips. :class:`BulkFold` takes the same classified items
(:mod:`tieline.projections.items`) in the same order and applies the same pure rules
(:func:`~tieline.projections.changes.changes_for`, the row builders of
:mod:`tieline.projections.rows`) in memory:

* the archive and the pair timeline are final as soon as an event is read (only their
  ``retracted`` marks change later), so their rows are handed out in chunks for COPY and not
  kept;
* people and introductions are small and kept in memory until the end;
* retractions need the archive (the target's type, workspace and position), so they are
  collected here and resolved by one set-based statement after the load
  (:data:`RETRACT_SQL`), with exactly the live store's rule: the first retraction of an
  archived event, in the same workspace, wins, wherever the event is in the log (a dead-lettered
  event that ``tieline dlq replay`` brought back after its retraction is retracted too); a
  retraction whose event is not archived waits for it in ``pending_retractions_v1``;
* pair strengths are folded afterwards from the loaded pair timeline, pair by pair, with
  :meth:`~tieline.projections.strength_model.Fold.of` (projections/bulk_load.py), so memory
  does not grow with the number of pairs.

The one structure that grows with the log is the set of archived event ids (the idempotency
key beyond JetStream's dedupe window), about 75 bytes per event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb
from tieline.events_schema.registry import EventRegistry
from tieline.projections import people
from tieline.projections.changes import PERSON_FIELDS, changes_for
from tieline.projections.items import Decoded, Gap, Item, Poison, Skipped, stored_detail
from tieline.projections.rows import archive_row, pair_row, person_row

#: Columns of the tables written from memory at the end (in this order).
PEOPLE_COLUMNS = (
    "workspace_id",
    "person_id",
    *PERSON_FIELDS,
    "added_event_id",
    "added_at",
    "updated_at",
    "last_seq",
    "field_at",
    "retracted",
    "forgotten",
)
INTRO_COLUMNS = (
    "workspace_id",
    "introduction_id",
    "requester",
    "introducer",
    "target",
    "requester_consent",
    "target_consent",
    "status",
    "made_event_id",
    "outcome",
    "requested_at",
    "updated_at",
)
DEAD_COLUMNS = ("projection", "stream_seq", "subject", "reason", "detail", "dlq_seq")
PENDING_PEOPLE_COLUMNS = ("workspace_id", "person_id", "forget_seq")

# Positions in a people row (PEOPLE_COLUMNS).
_P_FIELDS = {f: 2 + i for i, f in enumerate(PERSON_FIELDS)}
_P_UPDATED, _P_SEQ, _P_FIELD_AT, _P_RETRACTED, _P_FORGOTTEN = 10, 11, 12, 13, 14
# Positions in an introduction row (INTRO_COLUMNS).
_I_REQUESTER, _I_TARGET, _I_RC, _I_TC, _I_STATUS, _I_MADE, _I_OUTCOME, _I_UPDATED = (
    2,
    4,
    5,
    6,
    7,
    8,
    9,
    11,
)

#: Resolves the collected retractions against the loaded archive in one statement, with the
#: live store's rule (see the module docstring); returns each retracted event's id, type,
#: workspace and (for person.added) person.
RETRACT_SQL = """
WITH r(rid, rseq, ws, target) AS (
    SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::uuid[])
), first AS (
    SELECT DISTINCT ON (r.ws, r.target) r.rid, r.ws, r.target
      FROM r JOIN events e ON e.event_id = r.target AND e.workspace_id = r.ws
     ORDER BY r.ws, r.target, r.rseq
)
UPDATE events e SET retracted_by = first.rid FROM first
 WHERE e.workspace_id = first.ws AND e.event_id = first.target
RETURNING e.event_id, e.type, e.workspace_id, e.payload->>'person_id'
"""


def _purge(row: list[Any], seq: int) -> None:
    """A ``people_v1`` row forgotten at ``seq``: every field cleared, and its times."""
    for i in _P_FIELDS.values():
        row[i] = None
    row[_P_FORGOTTEN], row[_P_SEQ], row[_P_FIELD_AT] = True, seq, {}


@dataclass
class BulkCounts:
    applied: int = 0
    duplicate_ids: int = 0
    poison: int = 0
    skipped: int = 0
    last_seq: int = 0
    #: Pair-timeline rows written (before retractions).
    pair_rows: int = 0


@dataclass
class BulkFold:
    """The in-memory state of a rebuild from empty (see the module docstring)."""

    registry: EventRegistry
    projection: str
    counts: BulkCounts = field(default_factory=BulkCounts)
    #: Rows not yet handed out (:meth:`take_rows`).
    archive: list[tuple[Any, ...]] = field(default_factory=list)
    pairs: list[tuple[Any, ...]] = field(default_factory=list)
    people: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    intros: dict[tuple[str, UUID], list[Any]] = field(default_factory=dict)
    dead: list[tuple[Any, ...]] = field(default_factory=list)
    #: ``merges_v1`` rows (projections/merges.py MERGE_COLUMNS), by (workspace, merge event id).
    merges: dict[tuple[str, UUID], list[Any]] = field(default_factory=dict)
    #: People (workspace, person) with a retracted ``person.updated``: their fields are
    #: folded again from the archive once it is loaded (projections/people.py ``refold``).
    refolds: set[tuple[str, str]] = field(default_factory=set)
    #: (retraction event id, its seq, workspace, retracted event id), in stream order.
    retractions: list[tuple[UUID, int, str, UUID]] = field(default_factory=list)
    #: Forgets of people not added yet: (workspace, person) -> the first one's seq.
    forgets: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Updates of people not added yet, in stream order: (seq, occurred_at, the update).
    updates: dict[tuple[str, str], list[tuple[int, datetime, dict[str, Any]]]] = field(
        default_factory=dict
    )
    _seen: set[tuple[str, int]] = field(default_factory=set)

    def add_all(self, items: Iterable[Item]) -> None:
        for it in items:
            self.add(it)

    def add(self, it: Item) -> None:
        """Apply one item; the caller guarantees stream order without holes
        (:func:`~tieline.projections.items.continuing`)."""
        if isinstance(it, Decoded):
            self._event(it)
        elif isinstance(it, Poison):
            # A rebuild never republishes to the dead-letter subject (like the worker on a
            # generation that is not live): the row records it, dlq_seq stays empty.
            detail = stored_detail(it.detail)
            self.dead.append((self.projection, it.seq, it.subject, it.reason, detail, None))
            self.counts.poison += 1
        elif isinstance(it, Skipped):
            self.counts.skipped += 1
        else:
            assert isinstance(it, Gap)
        self.counts.last_seq = it.seq

    def take_rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The archive and pair-timeline rows gathered since the last call."""
        archive, pairs = self.archive, self.pairs
        self.archive, self.pairs = [], []
        return archive, pairs

    def _event(self, it: Decoded) -> None:
        e = it.event
        key = (e.workspace_id, e.event_id.int)  # ids are unique per workspace
        if key in self._seen:  # a re-send beyond the dedupe window changes nothing
            self.counts.duplicate_ids += 1
            return
        self._seen.add(key)
        self.counts.applied += 1
        self.archive.append(archive_row(it.seq, it.subject, e, self.registry.encode(e).decode()))
        ch = changes_for(e)
        for r in ch.pair_rows:
            self.pairs.append(pair_row(it.seq, e, r))
        self.counts.pair_rows += len(ch.pair_rows)
        if ch.person_added is not None:
            self._add_person(it, ch.person_added)
        if ch.person_updated is not None:
            self._update_person(it.seq, e.workspace_id, e.occurred_at, ch.person_updated)
        if ch.retracts is not None:
            self.retractions.append((e.event_id, it.seq, e.workspace_id, ch.retracts))
        if ch.merges is not None:
            self.merges[(e.workspace_id, e.event_id)] = [
                e.workspace_id,
                e.event_id,
                *ch.merges,
                it.seq,
                False,
            ]
        if ch.forgets is not None:
            row = self.people.get((e.workspace_id, ch.forgets))
            if row is not None:
                _purge(row, it.seq)
            else:  # waits for the person's add, as in the live store (projections/people.py)
                self.forgets.setdefault((e.workspace_id, ch.forgets), it.seq)
        if ch.introduction is not None:
            self._introduction(e.workspace_id, e.occurred_at, *ch.introduction)

    def _add_person(self, it: Decoded, p: dict[str, Any]) -> None:
        """The live store's rule: the first add of a person makes the row; the updates and
        the forget that came before it are applied at once, in that order."""
        key = (it.event.workspace_id, p["person_id"])
        if key not in self.people:
            self.people[key] = [*person_row(it, p), False, False]
            for seq, at, upd in self.updates.pop(key, ()):
                self._update_person(seq, key[0], at, upd)
            forgotten_at = self.forgets.pop(key, None)
            if forgotten_at is not None:
                _purge(self.people[key], forgotten_at)

    def _update_person(self, seq: int, ws: str, at: datetime, upd: dict[str, Any]) -> None:
        """The live store's rule (projections/people.py): each field newer than its last
        change; forgotten, nothing."""
        row = self.people.get((ws, upd["person_id"]))
        if row is None:  # waits for the add, as in the live store (people._updated_before)
            self.updates.setdefault((ws, upd["person_id"]), []).append((seq, at, upd))
            return
        if row[_P_FORGOTTEN]:
            return
        s = people.stamp(at, seq)
        for f, v in people.newer(upd, row[_P_FIELD_AT], s).items():
            row[_P_FIELDS[f]] = v
            row[_P_FIELD_AT][f] = s
        row[_P_UPDATED] = max(row[_P_UPDATED], at)
        row[_P_SEQ] = seq

    def _introduction(self, ws: str, at: datetime, intro_id: UUID, change: dict[str, Any]) -> None:
        """The live store's introduction steps (requested -> consented -> made -> outcome)."""
        key = (ws, intro_id)
        if change.get("new"):
            self.intros.setdefault(
                key,
                [
                    *(ws, intro_id, change["requester"], change["introducer"], change["target"]),
                    *(None, None, "awaiting consent", None, None, at, at),
                ],
            )
            return
        row = self.intros.get(key)
        if row is None:
            return
        if "person" in change:
            if row[_I_REQUESTER] == change["person"]:
                row[_I_RC] = change["consented"]
            if row[_I_TARGET] == change["person"]:
                row[_I_TC] = change["consented"]
        elif "made" in change:
            row[_I_MADE] = change["made"]
        elif "outcome" in change:
            row[_I_OUTCOME] = change["outcome"]
        row[_I_UPDATED] = max(row[_I_UPDATED], at)
        row[_I_STATUS] = _intro_status(row)

    def retracted(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Mark the people whose ``person.added`` :data:`RETRACT_SQL` retracted, note those
        a retracted ``person.updated`` of must be folded again (:attr:`refolds`), and unmake
        the introductions whose ``relationship.introduced`` it retracted."""
        made = {(k[0], r[_I_MADE]): r for k, r in self.intros.items() if r[_I_MADE] is not None}
        for event_id, etype, ws, person_id in rows:
            if etype == "person.updated":
                self.refolds.add((ws, person_id))
            intro = made.get((ws, event_id)) if etype == "relationship.introduced" else None
            if intro is not None:  # the live store's _unmake
                intro[_I_MADE] = None
                intro[_I_STATUS] = _intro_status(intro)
            row = self.people.get((ws, person_id)) if etype == "person.added" else None
            if row is not None:
                row[_P_RETRACTED] = True
            merge = self.merges.get((ws, event_id)) if etype == "person.merged" else None
            if merge is not None:
                merge[-1] = True

    def retraction_arrays(self) -> tuple[list[UUID], list[int], list[str], list[UUID]]:
        r = self.retractions
        return [x[0] for x in r], [x[1] for x in r], [x[2] for x in r], [x[3] for x in r]

    def pending_people_rows(self) -> list[tuple[str, str, int | None]]:
        """``pending_people_v1``: the people whose updates or forget came and add never did."""
        waiting = sorted(set(self.forgets) | set(self.updates))
        return [(ws, person, self.forgets.get((ws, person))) for ws, person in waiting]

    def people_rows(self) -> list[list[Any]]:
        f = _P_FIELD_AT
        return [[*r[:f], Jsonb(r[f]), *r[f + 1 :]] for r in self.people.values()]

    def merge_rows(self) -> list[list[Any]]:
        return list(self.merges.values())

    def intro_rows(self) -> list[list[Any]]:
        return list(self.intros.values())


def _intro_status(row: list[Any]) -> str:
    """The live store's status rule for an introduction row (store.py ``INTRO_STATUS``)."""
    if row[_I_OUTCOME] is not None and row[_I_MADE] is not None:
        return f"outcome: {row[_I_OUTCOME]}"
    if row[_I_MADE] is not None:
        return "made"
    if row[_I_RC] is False or row[_I_TC] is False:
        return "declined"
    if row[_I_RC] and row[_I_TC]:
        return "ready"
    return "awaiting consent"
