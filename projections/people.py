"""A person's fields in ``people_v1``: the last change by event time wins, field by field.

Each field remembers when the change that set it happened (``field_at``: the event's
``occurred_at`` in microseconds, then its stream sequence). A ``person.updated`` sets only the
fields it is newer for, so an update that arrives late (replayed from the dead letters after
newer ones, or sent by a device that was offline) never undoes a newer change, and the result
does not depend on the order the log delivers the updates in: the live store and the bulk
rebuild (projections/bulk.py) apply the same rule, in stream order (:func:`apply`).
Forgetting a person clears every field and its time; an update that comes after the forget
(only a dead letter replayed late can) sets nothing. An update or a forget that comes before
the person's add (the add dead-lettered, then replayed) waits for it, as a rebuild reading the
add first has it: the person in ``pending_people_v1`` (with the first forget's position), the
updates in the archive. Retracting a ``person.updated`` undoes it: the person's fields are
folded again from the archive (:func:`refold`), so a value the update had replaced comes
back, and one a later update set stays.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from tieline.events_schema.registry import EventRegistry
from tieline.projections.changes import PERSON_FIELDS, changes_for
from tieline.projections.items import Decoded

#: When a field was set: [microseconds since the epoch of the event's occurred_at, its seq].
Stamp = list[int]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stamp(occurred_at: datetime, seq: int) -> Stamp:
    """The order of a change: its event time, then its stream sequence."""
    return [(occurred_at - _EPOCH) // timedelta(microseconds=1), seq]


def added_stamps(person: dict[str, Any], s: Stamp) -> dict[str, Stamp]:
    """The ``field_at`` of a ``person.added``: every field it sets, at its own stamp."""
    return {f: s for f in PERSON_FIELDS if person.get(f) is not None}


def newer(update: dict[str, Any], field_at: dict[str, Stamp], s: Stamp) -> dict[str, Any]:
    """The fields of ``update`` (a ``person.updated`` at stamp ``s``) that are newer than the
    change that set each one."""
    return {f: update[f] for f in PERSON_FIELDS if f in update and s > field_at.get(f, [-1 << 62])}


_INSERT = """INSERT INTO people_v1 (workspace_id, person_id, display_name, email, phone,
                  organization, title, notes, added_event_id, added_at, updated_at, last_seq,
                  field_at)
              VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
              ON CONFLICT (workspace_id, person_id) DO NOTHING"""


async def apply(
    conn: AsyncConnection[Any],
    events: list[tuple[Decoded, str, Any]],
    registry: EventRegistry,
    survivor: Mapping[tuple[str, str], str] | None = None,
    pending: Pending | None = None,
) -> None:
    """Apply a batch's people events (``add`` with its :func:`~.rows.person_row`, ``update``,
    ``forget``) in stream order, as the bulk rebuild does, so where a batch is cut never
    changes a row. An update or a forget before the person's add (a dead letter replayed
    late) waits for it (:func:`_before_add`). Runs of adds go in one statement. ``survivor``:
    the merges that hold, (workspace, merged) -> survivor, for an add after its merge;
    ``pending``: what the store knows of the waiting people (None: look once, here)."""
    pending = pending or Pending()
    adds: list[tuple[Any, ...]] = []
    for n, (it, kind, data) in enumerate(events):
        if kind == "add":
            adds.append((*data[:-1], Jsonb(data[-1])))
            if n + 1 < len(events) and events[n + 1][1] == "add":
                continue
            async with conn.cursor() as cur:
                await cur.executemany(_INSERT, adds)
            await _merged_before(conn, [(a[0], a[1]) for a in adds], survivor or {})
            if await pending.any(conn):
                await _before_add(conn, registry, [(a[0], a[1], a[-2]) for a in adds])
            adds = []
        elif await (update(conn, it, data) if kind == "update" else forget(conn, it, data)):
            pending.maybe = True


class Pending:
    """Whether people may wait for their add (``pending_people_v1``), as one store sees it.
    Almost never, and taking the batch's new people from the table cost every run of adds a
    statement (adds in batches of two, bench/store_harness.py: about 0.2 ms of Python CPU a
    batch, 15% of the rate), so the store looks once, then knows from the rows it adds.
    Another instance of the projection may add rows too: the store forgets what it knows
    when the checkpoint is not where it left it (projections/store.py)."""

    def __init__(self) -> None:
        self.maybe: bool | None = None  # None: not looked yet

    async def any(self, conn: AsyncConnection[Any]) -> bool:
        if self.maybe is None:
            cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM pending_people_v1)")
            row = await cur.fetchone()
            self.maybe = bool(row and row[0])
        return self.maybe


#: A person with events that came before their add: a ``pending_people_v1`` row (with the
#: first erasure's position, if one came).
_WAIT = """INSERT INTO pending_people_v1 (workspace_id, person_id, forget_seq) VALUES (%s, %s, %s)
           ON CONFLICT (workspace_id, person_id) DO UPDATE
           SET forget_seq = coalesce(pending_people_v1.forget_seq, EXCLUDED.forget_seq)"""


async def update(conn: AsyncConnection[Any], it: Decoded, upd: dict[str, Any]) -> bool:
    """Apply one ``person.updated`` to the live read model (forgotten: nothing). With no row
    yet it waits, in the archive, for the person's add (:func:`_before_add`): True."""
    ws = it.event.workspace_id
    if await _apply_update(conn, ws, upd, it.event.occurred_at, it.seq):
        return False
    await conn.execute(_WAIT, (ws, upd["person_id"], None))
    return True


async def _apply_update(
    conn: AsyncConnection[Any], ws: str, upd: dict[str, Any], at: datetime, seq: int
) -> bool:
    """Apply one update by the rule of :func:`newer`; whether the person has a row."""
    person = upd["person_id"]
    cur = await conn.execute(
        "SELECT field_at, forgotten FROM people_v1 WHERE workspace_id = %s AND person_id = %s "
        "FOR UPDATE",
        (ws, person),
    )
    row = await cur.fetchone()
    if row is None or row[1]:
        return row is not None
    s = stamp(at, seq)
    values = newer(upd, row[0], s)
    sets = "".join(f"{f} = %s, " for f in values)
    await conn.execute(
        f"UPDATE people_v1 SET {sets}field_at = %s, updated_at = GREATEST(updated_at, %s), "
        "last_seq = %s WHERE workspace_id = %s AND person_id = %s",
        (*values.values(), Jsonb({**row[0], **dict.fromkeys(values, s)}), at, seq, ws, person),
    )
    return True


async def forget(conn: AsyncConnection[Any], it: Decoded, person_id: str) -> bool:
    """Purge every personal value of the person from the read model. (Archived payloads hold
    only ciphertext under the destroyed key, so they are unreadable already.) With no row yet,
    the forget waits for the person's add (the first forget of a person wins): True."""
    ws = it.event.workspace_id
    if await _purge(conn, ws, person_id, it.seq):
        return False
    await conn.execute(_WAIT, (ws, person_id, it.seq))
    return True


async def _purge(conn: AsyncConnection[Any], ws: str, person_id: str, seq: int) -> bool:
    """Clear the person's row (forgotten at ``seq``); whether there was one."""
    nulls = ", ".join(f"{f} = NULL" for f in PERSON_FIELDS)
    cur = await conn.execute(
        f"UPDATE people_v1 SET {nulls}, field_at = '{{}}', forgotten = true, last_seq = %s "
        "WHERE workspace_id = %s AND person_id = %s RETURNING 1",
        (seq, ws, person_id),
    )
    return await cur.fetchone() is not None


async def _merged_before(
    conn: AsyncConnection[Any], added: list[tuple[str, str]], survivor: Mapping[Any, str]
) -> None:
    """Mark merged the people just added whose merge came first, as a rebuild marks them."""
    for ws, person_id in added:
        if (ws, person_id) in survivor:
            await conn.execute(
                "UPDATE people_v1 SET merged_into = %s WHERE workspace_id = %s AND person_id = %s",
                (survivor[(ws, person_id)], ws, person_id),
            )


#: The people just added who have events waiting for their add (almost always none).
_WAITING = """DELETE FROM pending_people_v1 p
               USING unnest(%s::text[], %s::text[]) AS n(ws, person)
               WHERE p.workspace_id = n.ws AND p.person_id = n.person
           RETURNING p.workspace_id, p.person_id, p.forget_seq"""
#: A person's archived, unretracted updates before a stream position (``events_person``).
_UPDATED_BEFORE = """SELECT seq, payload FROM events
                     WHERE workspace_id = %s AND payload->>'person_id' = %s AND seq < %s
                       AND type = 'person.updated' AND retracted_by IS NULL
                     ORDER BY seq"""


async def _before_add(
    conn: AsyncConnection[Any], registry: EventRegistry, added: list[tuple[str, str, int]]
) -> None:
    """For the people just added ((workspace, person, the add's seq)) whose events came
    before their add: apply those updates (archived, not retracted) in stream order, each by
    the rule of :func:`newer`, then the first forget, as a rebuild reading the add first does."""
    cur = await conn.execute(_WAITING, ([a[0] for a in added], [a[1] for a in added]))
    waiting = await cur.fetchall()
    add_seq = {(a[0], a[1]): a[2] for a in added}
    for ws, person_id, forget_seq in waiting:
        cur = await conn.execute(_UPDATED_BEFORE, (ws, person_id, add_seq[(ws, person_id)]))
        for seq, payload in await cur.fetchall():
            event = registry.decode_obj(payload)
            upd = changes_for(event).person_updated
            if upd is not None:
                await _apply_update(conn, ws, upd, event.occurred_at, seq)
        if forget_seq is not None:
            await _purge(conn, ws, person_id, forget_seq)


#: A person's archived add and the updates after it that still hold, in stream order.
_HISTORY = """SELECT type, seq, payload FROM events
               WHERE workspace_id = %s AND payload->>'person_id' = %s
                 AND type IN ('person.added', 'person.updated')
                 AND (type = 'person.added' OR retracted_by IS NULL)
               ORDER BY seq"""


def fold(registry: EventRegistry, history: list[tuple[str, int, Any]]) -> dict[str, Any] | None:
    """A person's fields, their ``field_at`` and ``updated_at`` from their archived
    ``person.added`` and their unretracted ``person.updated`` (the rows of :data:`_HISTORY`),
    by the rule of :func:`apply`: an update before the add waited for it. None without an
    add. The add counts even when retracted: its row stays, hidden, with the fields it has,
    as the live store and the bulk rebuild leave it. (Each field ends with the value of the
    change with the greatest stamp, so the order the updates are taken in does not matter.)"""
    added: tuple[dict[str, Any], Stamp, datetime] | None = None
    updates: list[tuple[dict[str, Any], Stamp, datetime]] = []
    for _type, seq, payload in history:
        event = registry.decode_obj(payload)
        ch = changes_for(event)
        s = stamp(event.occurred_at, seq)
        if ch.person_added is not None and added is None:
            added = (ch.person_added, s, event.occurred_at)
        elif ch.person_updated is not None:
            updates.append((ch.person_updated, s, event.occurred_at))
    if added is None:
        return None
    values = {f: added[0][f] for f in PERSON_FIELDS}
    field_at, updated_at = added_stamps(added[0], added[1]), added[2]
    for upd, s, at in updates:
        for f, v in newer(upd, field_at, s).items():
            values[f], field_at[f] = v, s
        updated_at = max(updated_at, at)
    return {**values, "field_at": Jsonb(field_at), "updated_at": updated_at}


async def refold(
    conn: AsyncConnection[Any], registry: EventRegistry, ws: str, person: str, seq: int
) -> None:
    """Fold ``person``'s fields again from the archive (a ``person.updated`` of theirs was
    retracted, at ``seq``); a forgotten person stays forgotten, and only the time of their
    last change that holds (``updated_at``) is folded again: a rebuild may have applied the
    retracted update before the erasure, where the live store, with the retraction first,
    never did (a late add)."""
    cur = await conn.execute(_HISTORY, (ws, person))
    folded = fold(registry, [tuple(r) for r in await cur.fetchall()])
    if folded is None:
        return
    kept = [f for f in folded if f != "updated_at"]
    sets = "".join(f"{f} = CASE WHEN forgotten THEN {f} ELSE %({f})s END, " for f in kept)
    await conn.execute(
        f"UPDATE people_v1 SET {sets}updated_at = %(updated_at)s, last_seq = %(seq)s "
        "WHERE workspace_id = %(ws)s AND person_id = %(person)s",
        {**folded, "seq": seq, "ws": ws, "person": person},
    )
