"""What the write services do once at start so the write-side tables match the log:

* :func:`backfill`: a database from before the write-side tables (revision 0004) gets them
  filled from the log;
* :func:`backfill_people`: rows taken before revision 0008 get whom their event names;
* :func:`note_taken_ids`, :func:`reconcile_with_log` (``tieline stream restore``): after a
  restore of the log, the tables forget ids the log does not hold and learn those it does;
* :func:`sweep_digests` (every start): no digest is left of an event naming a person whose
  key is destroyed, whatever happened between the destroy and its clear (a crash, an
  instance of the release before 0008 erasing during a rolling upgrade).

Each runs under one advisory lock, so one service does it while the others wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any
from uuid import UUID

import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from psycopg import AsyncConnection
from psycopg.rows import tuple_row
from tieline.events_schema.models import Event, IntroductionOutcome
from tieline.events_schema.registry import EventDecodeError, EventRegistry
from tieline.services.write_state import apply_to_state, load_introduction

log = structlog.get_logger(__name__)

#: Messages fetched concurrently while backfilling from the log.
BACKFILL_BATCH = 256

LOCK = "SELECT pg_advisory_xact_lock(hashtext('tieline:write-backfill'))"
#: The same lock held across several transactions (:func:`backfill_people`).
SESSION_LOCK = "SELECT pg_advisory_lock(hashtext('tieline:write-backfill'))"
SESSION_UNLOCK = "SELECT pg_advisory_unlock(hashtext('tieline:write-backfill'))"

#: Clear the digests of the events naming a person whose key is destroyed, and of those whose
#: people are unknown in a workspace where someone's key is (docs/privacy.md, "Digests"). One
#: statement that locks its rows in key order, as the commands' writers of the table do (see
#: write_state.NAMED_DIGESTS): a replica starts beside others serving commands.
SWEEP = """
UPDATE write_events w SET digest = NULL
  FROM (SELECT v.workspace_id, v.event_id FROM write_events v
         WHERE (v.workspace_id, v.event_id) IN (
               SELECT e.workspace_id, e.event_id FROM write_events e
                 JOIN person_keys k ON k.workspace_id = e.workspace_id
                WHERE k.key IS NULL AND e.digest IS NOT NULL AND e.people && ARRAY[k.person_id]
               UNION ALL
               SELECT e.workspace_id, e.event_id FROM write_events e
                WHERE e.people IS NULL AND e.digest IS NOT NULL
                  AND EXISTS (SELECT 1 FROM person_keys k
                               WHERE k.workspace_id = e.workspace_id AND k.key IS NULL))
         ORDER BY v.workspace_id COLLATE "C", v.event_id FOR UPDATE) AS t
 WHERE w.workspace_id = t.workspace_id AND w.event_id = t.event_id"""


async def backfill(
    conn: AsyncConnection[Any], js: JetStreamContext, stream: str, registry: EventRegistry
) -> int:
    """Fill the write-side tables from the log once (a database from before they existed).

    Events other services publish meanwhile take their own rows (``ON CONFLICT DO NOTHING``
    here). Returns the number of events read (0 when done before).
    """
    async with conn.transaction():
        await conn.execute(LOCK)
        cur = await conn.execute("SELECT 1 FROM write_backfill WHERE stream = %s", (stream,))
        if await cur.fetchone() is not None:
            return 0
        last = int((await js.stream_info(stream)).state.last_seq)
        count = 0
        async for seq, data in _log(js, stream, last):
            await _backfill_one(conn, registry.decode(data), seq)
            count += 1
        await conn.execute(
            "INSERT INTO write_backfill (stream, upto_seq) VALUES (%s, %s)", (stream, last)
        )
    log.info("write_state.backfilled", stream=stream, events=count, upto_seq=last)
    return count


async def _log(js: JetStreamContext, stream: str, last: int) -> AsyncIterator[tuple[int, bytes]]:
    """(sequence, bytes) of every message of ``stream`` up to ``last``, in order, fetched
    :data:`BACKFILL_BATCH` at a time; sequences removed by the stream's limits are skipped."""
    for start in range(1, last + 1, BACKFILL_BATCH):
        seqs = range(start, min(start + BACKFILL_BATCH, last + 1))
        msgs = await asyncio.gather(
            *(js.get_msg(stream, seq=s) for s in seqs), return_exceptions=True
        )
        for seq, msg in zip(seqs, msgs, strict=True):
            if isinstance(msg, NotFoundError):
                continue
            if isinstance(msg, BaseException):
                raise msg
            yield seq, msg.data or b""


#: What the write side decided from events (besides each event's own row): rebuilt from the
#: log by :func:`reconcile_with_log`.
_FORGET_DECISIONS = (
    "UPDATE write_events SET retracted_by = NULL WHERE retracted_by IS NOT NULL",
    "DELETE FROM write_introductions",
    "DELETE FROM write_merges",
)


#: The ids the write side had taken when a restore began (a table of this session only).
_NOTE_TAKEN = (
    "CREATE TEMP TABLE IF NOT EXISTS reconcile_known "
    "(workspace_id text NOT NULL, event_id uuid NOT NULL, PRIMARY KEY (workspace_id, event_id))",
    "TRUNCATE reconcile_known",
    "INSERT INTO reconcile_known SELECT workspace_id, event_id FROM write_events",
)
_KNOWN = "(workspace_id, event_id) IN (SELECT workspace_id, event_id FROM reconcile_known)"


async def note_taken_ids(conn: AsyncConnection[Any]) -> None:
    """Before a restore: remember, on ``conn``'s session, which ids the write side has taken,
    so :func:`reconcile_with_log` on the same connection leaves the ids of commands of
    services running meanwhile alone (a set of keys, not a time: a dump from another server
    carries that server's clock)."""
    for statement in _NOTE_TAKEN:
        await conn.execute(statement)


async def reconcile_with_log(
    conn: AsyncConnection[Any], js: JetStreamContext, stream: str, registry: EventRegistry
) -> tuple[int, int]:
    """Make the write-side tables say what the log says, after the log was restored from a
    backup (``tieline stream restore``) next to a state dump of another moment.

    The documented backup takes the stream first and the state dump second, so the dump may
    know ids accepted after the stream backup. Left there, a client re-sending such an id
    was answered "duplicate, seq N" for an event the log no longer holds: accepted and lost.
    Here, among the ids :func:`note_taken_ids` noted on this connection (all taken ids when
    it was not called), every id whose sequence is beyond the log, or never confirmed and
    not on it, is forgotten, so a re-send is accepted again; an id never confirmed that is
    on the log gets its sequence (its digest kept); ids on the log the dump does not know
    are learnt (a dump older than the backup); and what events decided (retractions,
    introductions, merges) is rebuilt from the log in order, for every id: run it before
    clients write. A message that cannot be decoded is skipped (logged). Returns
    (forgotten, learnt).
    """
    async with conn.cursor(row_factory=tuple_row) as cur:  # whatever the connection's rows
        await cur.execute("SELECT to_regclass('pg_temp.reconcile_known') IS NOT NULL")
        noted = await cur.fetchone()
    if not (noted and noted[0]):
        await note_taken_ids(conn)
    async with conn.transaction():
        await conn.execute(LOCK)
        last = int((await js.stream_info(stream)).state.last_seq)
        cur = await conn.execute(
            f"DELETE FROM write_events WHERE {_KNOWN} AND seq > %s RETURNING 1", (last,)
        )
        forgotten = len(await cur.fetchall())
        for statement in _FORGET_DECISIONS:
            await conn.execute(statement)
        learnt, unreadable = await _replay(conn, js, stream, registry, last)
        cur = await conn.execute(
            f"DELETE FROM write_events WHERE {_KNOWN} AND seq IS NULL RETURNING 1"
        )
        forgotten += len(await cur.fetchall())
        await conn.execute(
            "INSERT INTO write_backfill (stream, upto_seq) VALUES (%s, %s) "
            "ON CONFLICT (stream) DO UPDATE SET upto_seq = excluded.upto_seq, done_at = now()",
            (stream, last),
        )
        await conn.execute("DROP TABLE reconcile_known")
    log.info(
        "write_state.reconciled",
        stream=stream,
        upto_seq=last,
        forgotten=forgotten,
        learnt=learnt,
        unreadable=unreadable,
    )
    return forgotten, learnt


async def _replay(
    conn: AsyncConnection[Any],
    js: JetStreamContext,
    stream: str,
    registry: EventRegistry,
    last: int,
) -> tuple[int, int]:
    """Every event of the log up to ``last``, in order, into the write-side tables: its row
    (learnt when new) and what it decided. Returns (learnt, unreadable)."""
    learnt = unreadable = 0
    async for seq, data in _log(js, stream, last):
        try:
            event = registry.decode(data)
        except EventDecodeError as exc:
            unreadable += 1
            log.warning("write_state.event_unreadable", seq=seq, error=str(exc))
            continue
        new = await _learn(conn, event, seq)  # a new row has its decisions applied
        if not new:
            await apply_to_state(conn, event)
        learnt += new
    return learnt, unreadable


async def _learn(conn: AsyncConnection[Any], event: Event, seq: int) -> int:
    """Like :func:`_backfill_one`, and a row taken but never confirmed gets the sequence
    the log has its event at (keeping its digest); 1 if the row is new."""
    await conn.execute(
        "UPDATE write_events SET seq = %s WHERE workspace_id = %s AND event_id = %s "
        "AND seq IS NULL",
        (seq, event.workspace_id, event.event_id),
    )
    return await _backfill_one(conn, event, seq)


async def _backfill_one(conn: AsyncConnection[Any], event: Event, seq: int) -> int:
    """Take ``event``'s row from the log unless it exists; 1 if it was new."""
    cur = await conn.execute(
        """INSERT INTO write_events (event_id, workspace_id, type, digest, seq)
           VALUES (%s, %s, %s, NULL, %s)
           ON CONFLICT (workspace_id, event_id) DO NOTHING RETURNING 1""",
        (event.event_id, event.workspace_id, event.type, seq),
    )
    if await cur.fetchone() is None:
        return 0
    await apply_to_state(conn, event)
    await _set_people(conn, event)
    return 1


async def backfill_people(
    conn: AsyncConnection[Any], js: JetStreamContext, stream: str, registry: EventRegistry
) -> int:
    """Once: fill ``people`` of the rows on the log taken before revision 0008 from their
    events (read by sequence), a page at a time, each page committed (a long log neither
    sits in memory nor holds its rows locked). A row whose event is no longer on the log, or
    cannot be read, keeps NULL: the next erasure in its workspace clears its digest, and a
    retraction of it reads the log itself. Returns the rows filled."""
    mark = f"people:{stream}"
    await conn.execute(SESSION_LOCK)
    try:
        cur = await conn.execute("SELECT 1 FROM write_backfill WHERE stream = %s", (mark,))
        if await cur.fetchone() is not None:
            return 0
        filled = unknown = 0
        after: tuple[str, Any] = ("", UUID(int=0))
        while True:  # in primary-key order, which the key's index serves page by page
            cur = await conn.execute(
                "SELECT workspace_id, event_id, seq FROM write_events "
                "WHERE (workspace_id, event_id) > (%s, %s) "
                "AND people IS NULL AND seq IS NOT NULL "
                "ORDER BY workspace_id, event_id LIMIT %s",
                (*after, BACKFILL_BATCH),
            )
            page = await cur.fetchall()
            if not page:
                break
            async with conn.transaction():
                done = await _fill_batch(conn, js, stream, registry, page)
            filled, unknown = filled + done, unknown + len(page) - done
            after = (page[-1]["workspace_id"], page[-1]["event_id"])
        await conn.execute("INSERT INTO write_backfill (stream, upto_seq) VALUES (%s, 0)", (mark,))
    finally:
        with contextlib.suppress(Exception):  # a dead connection released it already
            await conn.execute(SESSION_UNLOCK)
    log.info("write_state.people_backfilled", stream=stream, rows=filled, unknown=unknown)
    return filled


async def _fill_batch(
    conn: AsyncConnection[Any],
    js: JetStreamContext,
    stream: str,
    registry: EventRegistry,
    batch: Sequence[dict[str, Any]],
) -> int:
    msgs = await asyncio.gather(
        *(js.get_msg(stream, seq=r["seq"]) for r in batch), return_exceptions=True
    )
    filled = 0
    for row, msg in zip(batch, msgs, strict=True):
        if isinstance(msg, NotFoundError):
            continue  # removed by the stream's limits: left unknown
        if isinstance(msg, BaseException):
            raise msg  # NATS unavailable: the start fails and is retried
        event = event_on_log(msg.data or b"", registry, row["workspace_id"], row["event_id"])
        if event is not None:
            await _set_people(conn, event)
            filled += 1
    return filled


def event_on_log(
    data: bytes, registry: EventRegistry, workspace_id: str, event_id: UUID
) -> Event | None:
    """The event a row's sequence points at on the log, if it can be read and is that row's
    (workspace, id); None otherwise (logged when unreadable)."""
    try:
        event = registry.decode(data)
    except EventDecodeError as exc:
        log.warning("write_state.event_unreadable", event_id=str(event_id), error=str(exc))
        return None
    return event if (event.workspace_id, event.event_id) == (workspace_id, event_id) else None


async def _people_of(conn: AsyncConnection[Any], event: Event) -> list[str]:
    """Whom an event on the log names, as :meth:`WriteState.take` would record it (an outcome
    of version 1: its introduction's two people, which it did not name)."""
    people = set(event.people())
    if isinstance(event, IntroductionOutcome) and not people:
        intro = await load_introduction(conn, event.workspace_id, event.introduction_id)
        people |= {intro.requester, intro.target} if intro is not None else set()
    return sorted(people)


async def _set_people(conn: AsyncConnection[Any], event: Event) -> None:
    await conn.execute(
        "UPDATE write_events SET people = %s WHERE workspace_id = %s AND event_id = %s",
        (await _people_of(conn, event), event.workspace_id, event.event_id),
    )


async def sweep_digests(conn: AsyncConnection[Any]) -> int:
    """Every start: clear what :meth:`WriteState.forget_digests` would have cleared for every
    person whose key is destroyed (normally nothing is left). Returns the rows cleared."""
    async with conn.transaction():
        await conn.execute(LOCK)
        cur = await conn.execute(SWEEP)
        cleared = max(cur.rowcount, 0)
    if cleared:
        log.warning("write_state.digests_swept", rows=cleared)
    return cleared
