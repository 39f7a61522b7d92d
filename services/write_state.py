"""The write side's own state in PostgreSQL: which event ids it has taken (with the digest of
their body and their stream sequence), which events are retracted, and where each double
opt-in introduction stands. The write side decides from these tables only; it never reads a
read model (those belong to the projections and lag behind the log).

Rows are written in the same command that publishes: an id is *taken* before the publish
(``seq`` NULL) and *recorded* with its sequence after the ack, so a second command with the
same id — concurrent or later — sees it. Each row also says whom its event names
(``people``), so an erasure can clear the digests of the person's events and wait for their
lines in flight. A database that predates these tables, or that column, is filled once from
the log (services/write_backfill.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import structlog
from psycopg import AsyncConnection
from tieline.events_schema.models import (
    Event,
    EventRetracted,
    IntroductionConsented,
    IntroductionRequested,
    PersonMerged,
    RelationshipIntroduced,
)
from tieline.plumbing.coalesce import Coalescer
from tieline.plumbing.retry import LOCK
from tieline.services.write_rules import (
    Introduction,
    Merge,
    Recorded,
    Rejected,
    check_introduction,
    check_merge,
    is_introduction_step,
    with_introduction_people,
)

log = structlog.get_logger(__name__)

#: Record the stream sequences of published events (the ids were taken before the publish).
SET_SEQS = """UPDATE write_events w SET seq = s.seq
              FROM unnest(%s::text[], %s::uuid[], %s::bigint[]) AS s(ws, event_id, seq)
              WHERE w.workspace_id = s.ws AND w.event_id = s.event_id"""

#: Clear the digests of a workspace's events that name any of some people / whose people
#: are not known (:meth:`WriteState.forget_digests`). The rows are locked in key order first
#: (the workspace by code point, as Python sorts it), as the commands' writers of the table
#: lock them (take, retake, recording sequences): an UPDATE alone locks them in the order it
#: scans them, and deadlocked with a writer holding a smaller key.
_CLEAR_DIGESTS = """UPDATE write_events w SET digest = NULL
                    FROM (SELECT workspace_id, event_id FROM write_events
                          WHERE workspace_id = %s AND {which} AND digest IS NOT NULL
                          ORDER BY workspace_id COLLATE "C", event_id FOR UPDATE) AS k
                    WHERE w.workspace_id = k.workspace_id AND w.event_id = k.event_id"""
NAMED_DIGESTS = _CLEAR_DIGESTS.format(which="people && %s::text[]")
UNKNOWN_DIGESTS = _CLEAR_DIGESTS.format(which="people IS NULL")

#: Lines in flight an erasure waits for (:meth:`WriteState.in_flight`): ``taken_at`` is the
#: take statement's start and ``destroyed_at`` the destroy's; a second's margin covers a take
#: that started after the destroy statement but committed before it.
IN_FLIGHT = """SELECT count(*) AS n FROM write_events w
               WHERE w.workspace_id = %(ws)s AND w.people && %(p)s::text[] AND w.seq IS NULL
                 AND w.type <> 'person.forgotten'
                 AND w.taken_at > now() - make_interval(secs => %(within)s)
                 AND NOT w.event_id = ANY(%(own)s::uuid[])
                 AND EXISTS (SELECT 1 FROM person_keys k
                              WHERE k.workspace_id = w.workspace_id AND k.key IS NULL
                                AND k.person_id = ANY(%(p)s::text[])
                                AND k.person_id = ANY(w.people)
                                AND w.taken_at < k.destroyed_at + interval '1 second')"""

#: The merges (claimed or recorded) that name any of the people ``p``, other than ``me``, and
#: still hold: not retracted, or retracted by a retraction whose publish is not confirmed yet
#: (until it is on the log, a merge that relies on the person being free could overtake it).
HOLDING_MERGES = """SELECT m.merged, m.survivor FROM write_merges m
                    JOIN write_events w
                      ON w.workspace_id = m.workspace_id AND w.event_id = m.event_id
                    LEFT JOIN write_events r
                      ON r.workspace_id = w.workspace_id AND r.event_id = w.retracted_by
                    WHERE m.workspace_id = %(ws)s AND m.event_id <> %(me)s
                      AND (w.retracted_by IS NULL OR r.seq IS NULL)
                      AND (m.merged = ANY(%(p)s) OR m.survivor = ANY(%(p)s))"""


def merge_lock(workspace_id: str, person_id: str) -> int:
    """The advisory lock key of one person's merges (a signed 64-bit hash; a collision only
    makes two unrelated merges wait for each other)."""
    return _lock_key(f"tieline:merge:{workspace_id}:{person_id}")


def introduction_lock(workspace_id: str, introduction_id: UUID) -> int:
    """The advisory lock key of one introduction's steps (see :meth:`WriteState.step`)."""
    return _lock_key(f"tieline:introduction:{workspace_id}:{introduction_id}")


def _lock_key(name: str) -> int:
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


#: Where one introduction stands; a make whose retraction is claimed (in flight) or recorded
#: no longer counts (``unmade``).
INTRODUCTION = """SELECT i.*, w.retracted_by IS NOT NULL AS unmade FROM write_introductions i
                  LEFT JOIN write_events w ON w.workspace_id = i.workspace_id
                   AND w.event_id = i.made_event_id
                  WHERE i.workspace_id = %s AND i.introduction_id = %s"""


#: An event's identity: ids are unique within a workspace (migration 0007).
Key = tuple[str, UUID]


def _key(event: Event) -> Key:
    return (event.workspace_id, event.event_id)


def _seq_arrays(published: Sequence[tuple[Event, int]]) -> tuple[list[Any], ...]:
    """The parameters of :data:`SET_SEQS`."""
    return (
        [e.workspace_id for e, _ in published],
        [e.event_id for e, _ in published],
        [s for _, s in published],
    )


#: Take ids (one row per line; :func:`_take_params`), followed by what to do with an id taken.
TAKE = """INSERT INTO write_events (event_id, workspace_id, type, digest, people)
          SELECT event_id, ws, type, digest, string_to_array(people, ',')
          FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[])
               AS t(event_id, ws, type, digest, people)
          """


def _take_params(rows: Sequence[tuple[Event, str]]) -> tuple[list[Any], ...]:
    """The parameters of :data:`TAKE`."""
    return (
        [e.event_id for e, _ in rows],
        [e.workspace_id for e, _ in rows],
        [e.type for e, _ in rows],
        [d for _, d in rows],
        [_joined(e.people()) for e, _ in rows],
    )


def _joined(people: Iterable[str]) -> str:
    """People as one text for an ``unnest`` column (an array of arrays must be rectangular);
    a person id is letters, digits, ``_`` and ``-`` (events_schema), never a comma. ``''``
    is the empty array: the event names nobody."""
    return ",".join(sorted(set(people)))


def _recorded(row: dict[str, Any]) -> Recorded:
    return Recorded(
        workspace_id=row["workspace_id"],
        type=row["type"],
        digest=row["digest"],
        seq=None if row["seq"] is None else int(row["seq"]),
        retracted_by=None if row["retracted_by"] is None else str(row["retracted_by"]),
        people=None if row.get("people") is None else tuple(row["people"]),
    )


class WriteState:
    """Reads and writes the write-side tables through ``pool`` (search_path: the state schema)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._take = Coalescer(self._take_many)
        self._record = Coalescer(self._record_many)

    async def take(self, lines: Sequence[tuple[Event, str]]) -> dict[UUID, Recorded]:
        """Take every (event, digest) id not taken yet; return what was already there for the
        ids another command (or an earlier send) holds.

        Concurrent commands take their ids in one statement (:class:`Coalescer`); an id two
        of them send at once is taken by the first, and the second finds it held."""
        if not lines:
            return {}
        return await self._take.submit(list(lines))

    async def _take_many(
        self, requests: list[list[tuple[Event, str]]]
    ) -> list[dict[UUID, Recorded]]:
        # An id is a workspace's own: the same id in two workspaces is two events.
        first: dict[Key, int] = {}  # (workspace, event id) -> the request that inserts it
        rows: list[tuple[Event, str]] = []
        for n, lines in enumerate(requests):
            for event, digest in lines:
                if first.setdefault(_key(event), n) == n:
                    rows.append((event, digest))
        rows.sort(key=lambda row: _key(row[0]))  # lock order, as in _record_many
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                TAKE + "ON CONFLICT (workspace_id, event_id) DO NOTHING "
                "RETURNING workspace_id, event_id",
                _take_params(rows),
            )
            new = {(r["workspace_id"], r["event_id"]) for r in await cur.fetchall()}
            held = [
                {_key(e) for e, _ in lines if _key(e) not in new or first[_key(e)] != n}
                for n, lines in enumerate(requests)
            ]
            wanted = sorted(set().union(*held))
            if not wanted:
                return [{} for _ in requests]
            cur = await conn.execute(
                """SELECT w.* FROM write_events w
                   JOIN unnest(%s::text[], %s::uuid[]) AS k(ws, event_id)
                     ON w.workspace_id = k.ws AND w.event_id = k.event_id""",
                ([k[0] for k in wanted], [k[1] for k in wanted]),
            )
            found = {(r["workspace_id"], r["event_id"]): _recorded(r) for r in await cur.fetchall()}
        return [{k[1]: found[k] for k in keys if k in found} for keys in held]

    async def release(self, workspace_id: str, event_ids: Sequence[UUID]) -> None:
        """Give back ids taken by lines that were refused before publishing."""
        if event_ids:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "DELETE FROM write_events WHERE workspace_id = %s AND event_id = ANY(%s) "
                    "AND seq IS NULL",
                    (workspace_id, list(event_ids)),
                )

    async def event(self, workspace_id: str, event_id: UUID) -> Recorded | None:
        """The workspace's event ``event_id`` as the write side recorded it, if any."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM write_events WHERE workspace_id = %s AND event_id = %s",
                (workspace_id, event_id),
            )
            row = await cur.fetchone()
        return None if row is None else _recorded(row)

    async def name_people(self, event: Event, people: Iterable[str] | None = None) -> None:
        """Record whom ``event`` names as published (``people``, or its own): an outcome its
        introduction's people, a retraction those of the event it retracts, once the write
        side knows them. Done before their keys are read, so an erasure that destroys one of
        them after that read finds the row."""
        named = sorted(set(event.people() if people is None else people))
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE write_events SET people = %s WHERE workspace_id = %s AND event_id = %s",
                (named, event.workspace_id, event.event_id),
            )

    async def forget_digests(self, workspace_id: str, people: Sequence[str]) -> int:
        """Clear the digests of the workspace's events that name any of ``people`` (just
        erased), and of those whose people are not known (taken before revision 0008 and not
        found on the log): a digest of a body with a note would let whoever holds the
        database and the log confirm a guess of the note. A re-sent id of such an event is
        answered as already recorded, whatever its body. Returns the rows cleared."""
        async with self.pool.connection() as conn:
            # Two statements: each uses its own index (the GIN on people, the partial one).
            named = await conn.execute(NAMED_DIGESTS, (workspace_id, list(people)))
            unknown = await conn.execute(UNKNOWN_DIGESTS, (workspace_id,))
            return int(max(named.rowcount, 0) + max(unknown.rowcount, 0))

    async def in_flight(
        self, workspace_id: str, people: Sequence[str], other_than: Sequence[UUID], within_s: float
    ) -> int:
        """How many lines naming any of ``people`` (just erased) other commands have taken
        and not recorded yet: taken (or taken again) in the last ``within_s`` seconds (older
        ones failed) and before that person's key was destroyed (a line taken after reads
        the key after, and is refused). Erasures are not counted: two erasures of one person
        never wait for each other."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                IN_FLIGHT,
                {
                    "ws": workspace_id,
                    "p": list(people),
                    "within": within_s,
                    "own": list(other_than),
                },
            )
            row = await cur.fetchone()
            return 0 if row is None else int(row["n"])

    async def retake(self, lines: Sequence[tuple[Event, str]]) -> set[UUID]:
        """Take again ids taken and not recorded (re-sends): ``taken_at`` now (and ``people``
        where a row from before revision 0008 lacks them), or the row back if its first sender
        gave it back meanwhile. Returns the ids put back: the caller's own now."""
        first = {_key(e): (e, d) for e, d in lines}  # one row per id: an id sent twice
        if not first:
            return set()
        rows = [first[k] for k in sorted(first)]
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                TAKE
                + """ON CONFLICT (workspace_id, event_id) DO UPDATE
                   SET taken_at = now(), people = coalesce(write_events.people, EXCLUDED.people)
                   WHERE write_events.seq IS NULL
                   RETURNING event_id, (xmax = 0) AS inserted""",
                _take_params(rows),
            )
            return {r["event_id"] for r in await cur.fetchall() if r["inserted"]}

    async def claim_retraction(self, event: EventRetracted) -> bool:
        """Mark the target retracted by this retraction unless another one did first (two
        concurrent retractions of one event: exactly one is published)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """UPDATE write_events SET retracted_by = %s
                   WHERE event_id = %s AND workspace_id = %s
                     AND (retracted_by IS NULL OR retracted_by = %s) RETURNING 1""",
                (event.event_id, event.retracted_event_id, event.workspace_id, event.event_id),
            )
            return await cur.fetchone() is not None

    async def unclaim_retraction(self, event: EventRetracted) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE write_events SET retracted_by = NULL WHERE workspace_id = %s "
                "AND event_id = %s AND retracted_by = %s",
                (event.workspace_id, event.retracted_event_id, event.event_id),
            )

    async def introduction(self, workspace_id: str, introduction_id: UUID) -> Introduction | None:
        async with self.pool.connection() as conn:
            return await load_introduction(conn, workspace_id, introduction_id)

    async def step(
        self, event: Event, publish: Callable[[Event], Awaitable[tuple[int, bool]]]
    ) -> tuple[int, bool]:
        """Decide, publish and record one introduction step (:func:`is_introduction_step`)
        under its introduction's lock, in one transaction: of two makes racing (on any
        replica, or two lines of one command) exactly one is published, and a consent
        withdrawn while a make is decided lands on the log after that make, never before it.
        The double opt-in is checked (:func:`check_introduction`) against the state as it
        is under the lock; a request only records where the introduction stands.

        A refused publish (a 410 from encryption) changes nothing. One that fails otherwise
        (a timeout: it may be on the log) keeps its change of state, the event's row staying
        taken (``seq`` NULL), and the failure is raised; a retry with the same event id is
        decided again (a make's own retry passes), published (deduped) and recorded."""
        ws, intro_id = event.workspace_id, getattr(event, "introduction_id", None)
        assert intro_id is not None and is_introduction_step(event)
        failure: Exception | None = None
        async with _holding(self.pool, [introduction_lock(ws, intro_id)]) as conn:
            stamped = event
            if not isinstance(event, IntroductionRequested):
                intro = await load_introduction(conn, ws, intro_id)
                check_introduction(event, intro)
                stamped = with_introduction_people(event, intro)  # an outcome names them
            try:
                seq, dup = await publish(stamped)
            except Rejected:
                raise  # refused: nothing changes
            except Exception as exc:  # a timeout: it may be on the log
                failure = exc
            else:
                await conn.execute(SET_SEQS, _seq_arrays([(event, seq)]))
            # Kept when the publish failed otherwise, like a merge's claim: the step may be on
            # the log, so no other step may be decided as if it were not (a second make);
            # a retry with the same event id publishes it again (deduped) and records it.
            await apply_to_state(conn, event)
        if failure is not None:
            raise failure
        return seq, dup

    async def claim_merge(self, event: PersonMerged) -> bool:
        """Decide a merge and hold it (a ``write_merges`` row) before it is published, so a
        racing merge sees it: refused (:func:`check_merge`) when it would merge someone twice
        or make a chain with a merge that holds or is claimed.

        Any two merges that conflict name a common person, so each claim locks both of its
        people (transaction-scoped advisory locks, :func:`_holding`) and conflicting claims
        run one after the other, on any replica.
        Returns whether this call made the claim (False: an earlier send of the same event id
        made it and its publish was not confirmed; the retry publishes it again)."""
        ws = event.workspace_id
        async with _holding(self.pool, _merge_locks(ws, [event.person_id, event.survivor])) as conn:
            cur = await conn.execute(
                HOLDING_MERGES,
                {"ws": ws, "p": [event.person_id, event.survivor], "me": event.event_id},
            )
            check_merge(event, [Merge(r["merged"], r["survivor"]) for r in await cur.fetchall()])
            cur = await conn.execute(
                "INSERT INTO write_merges (event_id, workspace_id, merged, survivor) "
                "VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (workspace_id, event_id) DO NOTHING RETURNING 1",
                (event.event_id, ws, event.person_id, event.survivor),
            )
            return await cur.fetchone() is not None

    async def merges_naming(self, workspace_id: str, person_id: str) -> list[Merge]:
        """The merges that hold (or are claimed) and name the person, either side."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                HOLDING_MERGES, {"ws": workspace_id, "p": [person_id], "me": UUID(int=0)}
            )
            return [Merge(r["merged"], r["survivor"]) for r in await cur.fetchall()]

    @asynccontextmanager
    async def merge_locked(self, workspace_id: str, people: Iterable[str]) -> AsyncIterator[None]:
        """Hold the merge locks of ``people`` (as :meth:`claim_merge` takes them): an erasure
        decides and destroys the key under them, so a merge claimed after it sees the key
        gone and one claimed before it is seen by the erasure's check."""
        async with _holding(self.pool, _merge_locks(workspace_id, people)):
            yield

    async def unclaim_merge(self, event: PersonMerged) -> None:
        """Give back the claim of a merge that was refused while publishing."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "DELETE FROM write_merges WHERE workspace_id = %s AND event_id = %s",
                (event.workspace_id, event.event_id),
            )

    async def recorded(self, published: Sequence[tuple[Event, int]]) -> None:
        """After the acks: the sequences, and what the events change in the write-side state."""
        if not published:
            return
        # (An introduction step changed the state when it was published, under its lock:
        # applying it again here could undo a later step of another command.)
        changing = [
            e for e, _ in published if isinstance(e, CHANGES_STATE) and not is_introduction_step(e)
        ]
        if not changing:  # the common case: one statement with other commands' sequences
            await self._record.submit(list(published))
            return
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(SET_SEQS, _seq_arrays(sorted(published, key=lambda p: _key(p[0]))))
            for event in changing:
                await apply_to_state(conn, event)

    async def _record_many(self, requests: list[list[tuple[Event, int]]]) -> list[None]:
        # In id order: two writers updating overlapping rows lock them in the same order.
        published = sorted((p for lines in requests for p in lines), key=lambda p: _key(p[0]))
        async with self.pool.connection() as conn:
            await conn.execute(SET_SEQS, _seq_arrays(published))
        return [None] * len(requests)


#: The event types that change write-side state besides their own row.
CHANGES_STATE = (
    EventRetracted,
    IntroductionRequested,
    IntroductionConsented,
    RelationshipIntroduced,
    PersonMerged,
)


def _merge_locks(workspace_id: str, people: Iterable[str]) -> list[int]:
    return [merge_lock(workspace_id, p) for p in people]


@asynccontextmanager
async def _holding(pool: Any, keys: Iterable[int]) -> AsyncIterator[AsyncConnection[Any]]:
    """A connection of ``pool`` in a transaction holding the advisory locks ``keys``.

    A waiter does not keep a connection while another transaction holds one of the locks: it
    ends its transaction (which gives back any of the locks it got) and the connection, and
    tries again after a short pause (:data:`~tieline.plumbing.retry.LOCK`, times a random
    factor so waiters do not try in lock-step). Waiting inside PostgreSQL held one connection
    per waiter, and the holder may need more of the same pool (an erasure reads keys and
    clears digests under its people's merge locks): enough merges waiting took the whole
    pool and the erasure failed on the pool's timeout. A try never waits, so the order the
    locks are taken in cannot deadlock; but waiters are not served in arrival order."""
    wanted = sorted(set(keys))
    failures = 0
    while True:
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT coalesce(bool_and(pg_try_advisory_xact_lock(k)), true) AS held "
                "FROM unnest(%s::bigint[]) AS t(k)",
                (wanted,),
            )
            row = await cur.fetchone()
            held = row is not None and bool(row["held"])
            if held:
                yield conn
        if held:  # (also when the body ended its transaction with psycopg.Rollback)
            return
        failures += 1
        await asyncio.sleep(LOCK.delay(failures) * random.uniform(0.5, 1.0))


async def load_introduction(
    conn: AsyncConnection[Any], workspace_id: str, introduction_id: UUID
) -> Introduction | None:
    cur = await conn.execute(INTRODUCTION, (workspace_id, introduction_id))
    row = await cur.fetchone()
    if row is None:
        return None
    made = None if row["unmade"] else row["made_event_id"]
    return Introduction(
        row["requester"],
        row["introducer"],
        row["target"],
        row["requester_consent"],
        row["target_consent"],
        None if made is None else str(made),
    )


async def apply_to_state(conn: AsyncConnection[Any], event: Event) -> None:
    """What one recorded event changes in the write-side tables (besides its own row)."""
    if isinstance(event, EventRetracted):
        await conn.execute(
            "UPDATE write_events SET retracted_by = %s WHERE event_id = %s AND workspace_id = %s"
            " AND retracted_by IS NULL",
            (event.event_id, event.retracted_event_id, event.workspace_id),
        )
        # The retracted event may have made an introduction: it can be made again.
        await conn.execute(
            "UPDATE write_introductions SET made_event_id = NULL WHERE workspace_id = %s "
            "AND made_event_id = %s",
            (event.workspace_id, event.retracted_event_id),
        )
    elif isinstance(event, PersonMerged):
        await conn.execute(
            "INSERT INTO write_merges (event_id, workspace_id, merged, survivor) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (event.event_id, event.workspace_id, event.person_id, event.survivor),
        )
    elif isinstance(event, IntroductionRequested):
        await conn.execute(
            """INSERT INTO write_introductions (workspace_id, introduction_id, requester,
                   introducer, target) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (
                event.workspace_id,
                event.introduction_id,
                event.requester,
                event.introducer,
                event.target,
            ),
        )
    elif isinstance(event, IntroductionConsented):
        await conn.execute(
            """UPDATE write_introductions SET
                   requester_consent = CASE WHEN requester = %(p)s THEN %(c)s
                                            ELSE requester_consent END,
                   target_consent = CASE WHEN target = %(p)s THEN %(c)s ELSE target_consent END
               WHERE workspace_id = %(ws)s AND introduction_id = %(id)s""",
            {
                "p": event.person,
                "c": event.consented,
                "ws": event.workspace_id,
                "id": event.introduction_id,
            },
        )
    elif isinstance(event, RelationshipIntroduced) and event.introduction_id is not None:
        await conn.execute(
            "UPDATE write_introductions SET made_event_id = %s WHERE workspace_id = %s "
            "AND introduction_id = %s",
            (event.event_id, event.workspace_id, event.introduction_id),
        )
