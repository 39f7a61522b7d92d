"""The change log: what each projection batch changed, for live updates (SSE) and webhooks.

The store writes it in the batch's own transaction, so a change is visible exactly when the
read models that it describes are. Each row has a *position* ``(seq, sub)``: ``seq`` is the
stream sequence of the event that caused it, ``sub`` numbers the rows of that sequence. A
client that saw position P resumes with every row after P, so positions must only grow in
commit order: rows of a batch sit at the batch's own sequences, and the follow-up scan (which
is not caused by an event) writes under the checkpoint's row lock at the checkpoint's sequence
with a ``sub`` above any an event uses (:data:`SCAN_SUB`).

Kinds (:data:`KINDS`), none of which carries personal data (ids, types, scores and times only):

* ``event.recorded``: an event was applied (its type, the people it names, its seq);
* ``relationship.changed``: a pair's stored score or tier moved. One row per pair and batch:
  several events of one pair in one batch are coalesced into one row (``events`` counts them,
  ``cause`` is the latest), because the fold computes a strength per pair and batch, not per
  event. So rows depend on batch boundaries, and a replay may coalesce differently: the change
  log is a delivery aid, not a read model compared with a clean replay;
* ``follow_up.due``: a tie crossed its follow-up cadence (the time since its last contact
  passed the cadence of the tier it had then); found by :func:`scan_follow_ups`;
* ``person.forgotten``: a person was erased; clients drop whatever they cached of them.

Only events recorded within :data:`HORIZON` get rows (always true for the live projection; a
rebuild from the start of the log would otherwise fill the table with years of changes nobody
can still be waiting for). ``live_state.trimmed_seq`` records the highest sequence whose rows
were left out or trimmed: a client resuming from before it is told to reload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from psycopg import AsyncConnection
from tieline.events_schema.models import Event, PersonForgotten
from tieline.projections.queries.common import ROWS_OF
from tieline.projections.strength_model import PARAMS, TIERS, Params

RECORDED = "event.recorded"
CHANGED = "relationship.changed"
DUE = "follow_up.due"
FORGOTTEN = "person.forgotten"
KINDS: tuple[str, ...] = (RECORDED, CHANGED, DUE, FORGOTTEN)
#: Rows of one sequence in this order (then by pair), so positions do not depend on dict order.
_RANK = {RECORDED: 0, FORGOTTEN: 1, CHANGED: 2}
#: ``sub`` of the follow-up scan's rows: above any ``sub`` an event's rows use (an event names at
#: most 50 people, so at most 1,225 pairs).
SCAN_SUB = 1_000_000
#: Events recorded longer ago than this get no rows (see the module docstring).
HORIZON = timedelta(hours=24)

PairKey = tuple[str, str, str]  # workspace, person_a, person_b
#: Columns of ``changes_v1`` a batch writes (``at`` defaults to now()).
COLUMNS = (
    ("seq", "bigint"),
    ("sub", "int"),
    ("workspace_id", "text"),
    ("kind", "text"),
    ("data", "jsonb"),
)


@dataclass(frozen=True)
class Cause:
    """The event that caused a change: its sequence, id and type."""

    seq: int
    event_id: str
    type: str


@dataclass
class _PairChange:
    before: tuple[float, str] | None  # (score, tier) stored before the batch, None: a new pair
    cause: Cause
    events: int = 0
    after: tuple[float, str] | None = None  # None: the pair has no counting event left


@dataclass
class ChangeLog:
    """Collects one batch's changes while the store applies it; :meth:`rows` turns them into
    ``changes_v1`` rows. Pure: the store does the I/O."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    _events: list[tuple[int, Event]] = field(default_factory=list)
    _pairs: dict[PairKey, _PairChange] = field(default_factory=dict)

    def recorded(self, seq: int, event: Event) -> None:
        """An event the batch applied (new, not a duplicate or poison)."""
        self._events.append((seq, event))

    def before(self, scores: dict[PairKey, tuple[float, str]], keys: Sequence[PairKey]) -> None:
        """What ``keys`` had stored before this batch touched them (first call wins)."""
        for key in keys:
            if key in self._pairs:
                continue
            self._pairs[key] = _PairChange(scores.get(key), Cause(0, "", ""))

    def caused(self, key: PairKey, cause: Cause, events: int) -> None:
        """``events`` more events of the batch changed ``key``; ``cause`` is the latest."""
        change = self._pairs[key]
        change.events += events
        if cause.seq > change.cause.seq:
            change.cause = cause

    def after(self, key: PairKey, score: float | None, tier: str | None) -> None:
        """What ``key`` stores after the change (None: its row was deleted)."""
        if key in self._pairs:
            self._pairs[key].after = None if score is None or tier is None else (score, tier)

    def rows(self) -> tuple[list[tuple[Any, ...]], int]:
        """(rows for ``changes_v1``, the highest sequence left out for being older than
        :data:`HORIZON`, 0 when none)."""
        cutoff = self.now - HORIZON
        old = {seq for seq, e in self._events if e.recorded_at < cutoff}
        drafts: list[tuple[int, int, str, str, dict[str, Any]]] = []
        skipped = 0
        for seq, e in self._events:
            if seq in old:
                skipped = max(skipped, seq)
                continue
            people = list(e.people())
            recorded = {"type": e.type, "event_id": str(e.event_id), "seq": seq, "people": people}
            drafts.append((seq, _RANK[RECORDED], "", RECORDED, {"ws": e.workspace_id, **recorded}))
            if isinstance(e, PersonForgotten):
                body = {"ws": e.workspace_id, "person_id": e.person_id, "seq": seq}
                drafts.append((seq, _RANK[FORGOTTEN], "", FORGOTTEN, {**body, "people": people}))
        for (ws, a, b), ch in sorted(self._pairs.items()):
            if not ch.cause.seq or ch.before == ch.after:
                continue
            if ch.cause.seq in old:
                skipped = max(skipped, ch.cause.seq)
                continue
            key = f"{a}\0{b}"
            drafts.append((ch.cause.seq, _RANK[CHANGED], key, CHANGED, _changed(ws, a, b, ch)))
        drafts.sort(key=lambda d: d[:3])
        out: list[tuple[Any, ...]] = []
        sub, last_seq = 0, -1
        for seq, _, _, kind, data in drafts:
            sub = sub + 1 if seq == last_seq else 0
            last_seq = seq
            ws = data.pop("ws")
            out.append((seq, sub, ws, kind, orjson.dumps(data).decode()))
        return out, skipped


def _changed(ws: str, a: str, b: str, ch: _PairChange) -> dict[str, Any]:
    before_score, before_tier = ch.before if ch.before is not None else (None, None)
    after_score, after_tier = ch.after if ch.after is not None else (None, None)
    return {
        "ws": ws,
        "pair": [a, b],
        "people": [a, b],
        "score_before": None if before_score is None else round(before_score, 4),
        "score_after": None if after_score is None else round(after_score, 4),
        "tier_before": before_tier,
        "tier_after": after_tier,
        "tier_changed": before_tier != after_tier,
        "cause": {"event_id": ch.cause.event_id, "type": ch.cause.type, "seq": ch.cause.seq},
        "events": ch.events,
    }


async def mark_trimmed(conn: AsyncConnection[Any], seq: int) -> None:
    """Record that positions up to ``seq`` have no rows any more (a client resuming from
    before it must reload)."""
    await conn.execute(
        "UPDATE live_state SET trimmed_seq = greatest(trimmed_seq, %s) WHERE id = 1", (seq,)
    )


# -- the follow-up scan ------------------------------------------------------------------------


def cadence_bands(params: Params = PARAMS) -> list[tuple[str, float, float, float]]:
    """(tier, lowest score, score above the band, cadence days) of every tier with a cadence:
    the tier a tie had at its last contact decides when it is due (``tier_for``'s bands)."""
    bands = []
    upper = float("inf")
    for tier in TIERS[:-1]:
        lo = params.tier_thresholds[tier]
        cadence = params.tier_cadence_days.get(tier)
        if cadence is not None:
            bands.append((tier, lo, upper, cadence))
        upper = lo
    return bands


SCAN_QUERY = """
SELECT s.workspace_id, s.person_a, s.person_b, s.last_contact_at, c.tier, c.days,
       s.last_contact_at + c.days * interval '1 day' AS due_at
  FROM strength_v1 s
  JOIN unnest(%(tiers)s::text[], %(lo)s::float8[], %(hi)s::float8[], %(days)s::float8[])
       AS c(tier, lo, hi, days)
    ON s.score_at_last_contact >= c.lo AND s.score_at_last_contact < c.hi
 WHERE s.last_contact_at IS NOT NULL
   AND s.last_contact_at + c.days * interval '1 day' >= %(since)s
   AND s.last_contact_at + c.days * interval '1 day' < %(until)s
 ORDER BY due_at, s.workspace_id, s.person_a, s.person_b
"""


async def scan_follow_ups(
    conn: AsyncConnection[Any], projection: str, params: Params = PARAMS
) -> list[tuple[Any, ...]]:
    """Write a ``follow_up.due`` row for every tie whose due time (last contact + the cadence
    of its tier then) fell since the previous scan; return the rows written.

    The first scan of a generation only records where it started (ties that were already
    overdue are not news). Runs in one transaction that holds the projection's checkpoint
    rows (every partition's: no batch commits meanwhile), at the checkpoint (the smallest
    partition's) with ``sub`` from :data:`SCAN_SUB` up: positions keep growing in commit order
    among the rows at or below the checkpoint, all that readers take. A tie due exactly at the
    window's end is found by the next scan (windows are half-open, none overlap).
    """
    async with conn.transaction():
        cur = await conn.execute(
            f"SELECT last_seq FROM checkpoints WHERE {ROWS_OF} ORDER BY projection FOR UPDATE",
            (projection, projection),
        )
        held = [int(_first(r)) for r in await cur.fetchall()]
        seq = min(held, default=0)
        state = await (
            await conn.execute(
                "SELECT scanned_until, now(), scan_seq, scan_sub, retired FROM live_state "
                "WHERE id = 1 FOR UPDATE"
            )
        ).fetchone()
        assert state is not None, "live_state has its row from the DDL"
        since, until, floor_seq, floor_sub, retired = _values(state)
        if retired:
            return []  # switched out: the new generation's scan goes on from here
        if seq < floor_seq:
            # A generation switched in below the last scan's position: its rows would sit
            # behind what readers have taken. Scan once the checkpoint has caught up.
            return []
        await conn.execute("UPDATE live_state SET scanned_until = %s WHERE id = 1", (until,))
        if since is None or seq == 0:
            return []
        bands = cadence_bands(params)
        cur = await conn.execute(
            SCAN_QUERY,
            {
                "tiers": [b[0] for b in bands],
                "lo": [b[1] for b in bands],
                "hi": [b[2] for b in bands],
                "days": [b[3] for b in bands],
                "since": since,
                "until": until,
            },
        )
        found = [_values(r) for r in await cur.fetchall()]
        if not found:
            return []
        return await _write_due(conn, seq, found, (int(floor_seq), int(floor_sub)))


async def _write_due(
    conn: AsyncConnection[Any], seq: int, found: list[list[Any]], floor: tuple[int, int]
) -> list[tuple[Any, ...]]:
    """Write the scan's ``follow_up.due`` rows at ``seq``, above ``floor`` (the last scan's
    position); return them."""
    top = await (
        await conn.execute("SELECT max(sub) FROM changes_v1 WHERE seq = %s", (seq,))
    ).fetchone()
    # Above the rows at this seq and above the last scan's position, whose rows a trim may
    # have deleted: a position is never given out twice (webhooks dedupe on it, and live
    # clients that saw it would skip the new rows).
    first = max(SCAN_SUB, int(_first(top) or 0) + 1)
    if floor[0] == seq:
        first = max(first, floor[1] + 1)
    rows = [_due_row(seq, first + i, r) for i, r in enumerate(found)]
    async with conn.cursor() as c:
        await c.executemany(
            "INSERT INTO changes_v1 (seq, sub, workspace_id, kind, data) "
            "VALUES (%s, %s, %s, %s, %s)",
            rows,
        )
    await conn.execute(
        "UPDATE live_state SET scan_seq = %s, scan_sub = %s WHERE id = 1",
        (seq, first + len(rows) - 1),
    )
    await conn.execute(
        "SELECT pg_notify('tieline_checkpoint', current_schema() || ' ' || %s)", (str(seq),)
    )
    return rows


def _due_row(seq: int, sub: int, r: Sequence[Any]) -> tuple[Any, ...]:
    ws, a, b, last, tier, days, due = r
    data = {
        "pair": [a, b],
        "people": [a, b],
        "due_at": due.isoformat(),
        "last_contact_at": last.isoformat(),
        "tier_at_last_contact": tier,
        "cadence_days": days,
    }
    return (seq, sub, ws, DUE, orjson.dumps(data).decode())


def _values(row: Any) -> list[Any]:
    """A row's values whether the connection returns tuples or dicts."""
    return list(row.values()) if isinstance(row, dict) else list(row)


def _first(row: Any) -> Any:
    return None if row is None else _values(row)[0]


async def trim(conn: AsyncConnection[Any], through_seq: int, batch: int = 10_000) -> int:
    """Delete the change-log rows at or below ``through_seq`` (in slices, so no transaction
    grows large) and record the trim point; the number of rows deleted."""
    total = 0
    while True:
        cur = await conn.execute(
            "DELETE FROM changes_v1 WHERE (seq, sub) IN (SELECT seq, sub FROM changes_v1 "
            "WHERE seq <= %s ORDER BY seq, sub LIMIT %s)",
            (through_seq, batch),
        )
        total += cur.rowcount
        if cur.rowcount < batch:
            break
    await mark_trimmed(conn, through_seq)
    return total
