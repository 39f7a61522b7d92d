"""The people directory (``people_v1``). Personal fields come back as stored (encrypted);
decrypting them is the caller's business, with the people's keys."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from tieline.projections.queries.common import Row


async def list_people(
    conn: AsyncConnection[Any], ws: str, limit: int, after: str | None
) -> list[Row]:
    """A page of the directory in person-id order, starting after ``after``; people merged
    into another are left out (they are listed as their survivor)."""
    cur = await conn.execute(
        """SELECT person_id, display_name, email, phone, organization, title, added_at,
                  updated_at, forgotten
           FROM people_v1 WHERE workspace_id = %s AND NOT retracted AND merged_into IS NULL
             AND person_id > %s
           ORDER BY person_id LIMIT %s""",
        (ws, after or "", limit),
    )
    return await cur.fetchall()


async def get_person(conn: AsyncConnection[Any], ws: str, person: str) -> Row | None:
    """One person's row (None if unknown or retracted)."""
    cur = await conn.execute(
        """SELECT person_id, display_name, email, phone, organization, title, notes, added_at,
                  updated_at, forgotten, merged_into FROM people_v1
           WHERE workspace_id = %s AND person_id = %s AND NOT retracted""",
        (ws, person),
    )
    return await cur.fetchone()


async def merged_into(conn: AsyncConnection[Any], ws: str, survivor: str) -> list[str]:
    """The people merged into ``survivor`` (by merges that hold) and not forgotten: an erasure
    of the survivor takes them along (the same human recorded more than once)."""
    cur = await conn.execute(
        """SELECT person_id FROM people_v1
           WHERE workspace_id = %s AND merged_into = %s AND NOT forgotten
           ORDER BY person_id""",
        (ws, survivor),
    )
    return [r["person_id"] for r in await cur.fetchall()]
