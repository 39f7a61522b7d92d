"""Retractions in the archive, for the live store (projections/store.py).

A retraction marks its event retracted in the ``events`` archive; the store then undoes the
event's effect. A retraction can reach the projection before its event: the write side
accepted the event, so it accepts its retraction, but the event was dead-lettered (a schema
version the worker did not know yet) and ``tieline dlq replay`` brings it back later. Such a
retraction waits in ``pending_retractions_v1`` and is taken when its event is archived, which
is what a rebuild from the log gives too (projections/bulk.py: the first retraction of an event
wins, wherever the event is in the log).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from tieline.projections.items import Decoded


async def mark(
    conn: AsyncConnection[Any], ws: str, target: UUID, retraction: UUID
) -> tuple[Any, ...] | None:
    """Mark ``target`` retracted by ``retraction``: (its type, its person_id), or None when it
    is not archived in ``ws`` or is retracted already."""
    cur = await conn.execute(
        "UPDATE events SET retracted_by = %s WHERE event_id = %s AND workspace_id = %s "
        "AND retracted_by IS NULL RETURNING type, payload->>'person_id'",
        (retraction, target, ws),
    )
    return await cur.fetchone()


async def waiting(conn: AsyncConnection[Any], ws: str, target: UUID) -> bool:
    """Whether an earlier retraction of ``target`` waits for it (it wins over a later one)."""
    cur = await conn.execute(
        "SELECT 1 FROM pending_retractions_v1 WHERE workspace_id = %s AND target_event_id = %s",
        (ws, target),
    )
    return await cur.fetchone() is not None


async def any_waiting(conn: AsyncConnection[Any]) -> bool:
    """Whether any retraction waits for its event."""
    cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM pending_retractions_v1)")
    row = await cur.fetchone()
    return bool(row and row[0])


async def wait(
    conn: AsyncConnection[Any], ws: str, target: UUID, retraction: UUID, seq: int
) -> bool:
    """Keep a retraction whose event is not archived until the event comes (the first such
    retraction of an event wins); nothing when the event is archived and retracted already.
    Whether the retraction (or an earlier one of the event) now waits."""
    cur = await conn.execute(
        "SELECT 1 FROM events WHERE event_id = %s AND workspace_id = %s", (target, ws)
    )
    if await cur.fetchone() is not None:
        return False
    await conn.execute(
        """INSERT INTO pending_retractions_v1
               (workspace_id, target_event_id, retraction_event_id, seq)
           VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING""",
        (ws, target, retraction, seq),
    )
    return True


async def take(conn: AsyncConnection[Any], new: Sequence[Decoded]) -> list[tuple[str, UUID, UUID]]:
    """(workspace, event, retraction) of the waiting retractions of ``new`` events, removed
    from the waiting list."""
    if not new:
        return []
    cur = await conn.execute(
        """DELETE FROM pending_retractions_v1 p
            USING unnest(%s::text[], %s::uuid[]) AS n(ws, id)
            WHERE p.workspace_id = n.ws AND p.target_event_id = n.id
        RETURNING p.workspace_id, p.target_event_id, p.retraction_event_id""",
        ([i.event.workspace_id for i in new], [i.event.event_id for i in new]),
    )
    return [(r[0], r[1], r[2]) for r in await cur.fetchall()]


class Waiting:
    """The waiting retractions as one store sees them. Almost always there are none, and
    looking up every batch's events in the table would cost every batch (about 4 ms per
    1,000 events), so the store looks once and then only after it added one itself: one
    active worker per partition, and a retraction waits in its event's partition. When
    another instance applied batches meanwhile (a standby that took over while this one's
    lock connection was gone), the store forgets what it knew and looks again
    (projections/store.py)."""

    def __init__(self) -> None:
        self.maybe: bool | None = None  # None: not looked yet

    async def _any(self, conn: AsyncConnection[Any]) -> bool:
        if self.maybe is None:
            self.maybe = await any_waiting(conn)
        return self.maybe

    async def has(self, conn: AsyncConnection[Any], ws: str, target: UUID) -> bool:
        return await self._any(conn) and await waiting(conn, ws, target)

    async def add(
        self, conn: AsyncConnection[Any], ws: str, target: UUID, retraction: UUID, seq: int
    ) -> None:
        if await wait(conn, ws, target, retraction, seq):
            self.maybe = True

    async def take(
        self, conn: AsyncConnection[Any], new: Sequence[Decoded]
    ) -> list[tuple[str, UUID, UUID]]:
        return await take(conn, new) if await self._any(conn) else []
