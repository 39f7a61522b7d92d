"""What a workspace export reads: the archive, the directory, strength per pair and the
pair timelines, each from one consistent snapshot in blocks of rows.

``as_of`` keeps what occurred at or before it (an event counts as retracted only if its
retraction occurred by then too); people added by then. Strength rows are always the current
ones (the caller says so to the client).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from tieline.projections.queries.common import Row

#: Rows fetched from the server-side cursor at a time.
BLOCK = 1000

EVENTS_SQL = """
SELECT e.seq, e.type, e.payload, e.retracted_by,
       (e.retracted_by IS NOT NULL
        AND (%(as_of)s::timestamptz IS NULL OR r.occurred_at <= %(as_of)s)) AS retracted
FROM events e
LEFT JOIN events r ON r.workspace_id = e.workspace_id AND r.event_id = e.retracted_by
WHERE e.workspace_id = %(ws)s
  AND (%(as_of)s::timestamptz IS NULL OR e.occurred_at <= %(as_of)s)
ORDER BY e.seq
"""

PEOPLE_SQL = """
SELECT person_id, display_name, email, phone, organization, title, notes, added_at,
       updated_at, added_event_id, retracted, forgotten
FROM people_v1
WHERE workspace_id = %(ws)s AND (%(as_of)s::timestamptz IS NULL OR added_at <= %(as_of)s)
ORDER BY person_id
"""

#: Every column of the strength read model as it is (its shape belongs to the strength model),
#: except ``fold``: the model's running state keyed by stream positions, bookkeeping that means
#: nothing outside this projection.
STRENGTH_SQL = """
SELECT * FROM strength_v1 WHERE workspace_id = %(ws)s ORDER BY person_a, person_b
"""
#: Columns a pair export leaves out (see STRENGTH_SQL).
NOT_EXPORTED = frozenset({"workspace_id", "fold"})

TIMELINE_SQL = """
SELECT t.person_a, t.person_b, t.event_id, t.seq, t.type, t.occurred_at, t.recorded_at,
       t.recorded_by, t.detail,
       COALESCE(t.retracted AND (%(as_of)s::timestamptz IS NULL OR r.occurred_at <= %(as_of)s),
                false) AS retracted
FROM pair_events_v1 t
LEFT JOIN events e ON e.workspace_id = t.workspace_id AND e.event_id = t.event_id
LEFT JOIN events r ON r.workspace_id = e.workspace_id AND r.event_id = e.retracted_by
WHERE t.workspace_id = %(ws)s
  AND (%(as_of)s::timestamptz IS NULL OR t.occurred_at <= %(as_of)s)
ORDER BY t.person_a, t.person_b, t.occurred_at, t.seq
"""

Kind = Literal["events", "people", "strength", "timeline"]
QUERIES: dict[str, str] = {
    "events": EVENTS_SQL,
    "people": PEOPLE_SQL,
    "strength": STRENGTH_SQL,
    "timeline": TIMELINE_SQL,
}


def pair_row(row: Row) -> Row:
    """A strength or timeline row as exported (without the columns of NOT_EXPORTED)."""
    return {k: v for k, v in row.items() if k not in NOT_EXPORTED}


async def blocks(
    conn: AsyncConnection[Any], kind: Kind, ws: str, as_of: datetime | None
) -> AsyncIterator[list[Row]]:
    """The export's rows in blocks of :data:`BLOCK`, all from one repeatable-read snapshot
    through a server-side cursor, so memory stays bounded whatever the size."""
    # Inside a transaction the caller opened (nothing but settings run in it yet), the
    # snapshot is set on that transaction itself: a savepoint cannot set it. The api's
    # workspace-scoped connections are not in one (their scope is the session's).
    scoped = conn.info.transaction_status == TransactionStatus.INTRANS
    async with contextlib.nullcontext() if scoped else conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        async with conn.cursor(name="tieline_export") as cur:
            await cur.execute(QUERIES[kind].encode(), {"ws": ws, "as_of": as_of})
            while True:
                rows = await cur.fetchmany(BLOCK)
                if not rows:
                    break
                yield rows
