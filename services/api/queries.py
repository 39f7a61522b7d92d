"""Read-model queries. Every query is scoped by workspace_id first: a read can never see
another workspace's rows, whatever ids it is given."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

Row = dict[str, Any]


def ordered(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


async def checkpoint(conn: AsyncConnection[Any], projection: str) -> int:
    cur = await conn.execute(
        "SELECT last_seq FROM checkpoints WHERE projection = %s", (projection,)
    )
    row = await cur.fetchone()
    return int(row["last_seq"]) if row else 0


async def list_people(
    conn: AsyncConnection[Any], ws: str, limit: int, after: str | None
) -> list[Row]:
    cur = await conn.execute(
        """SELECT person_id, display_name, email, phone, organization, title, added_at,
                  updated_at, forgotten
           FROM people_v1 WHERE workspace_id = %s AND NOT retracted AND person_id > %s
           ORDER BY person_id LIMIT %s""",
        (ws, after or "", limit),
    )
    return await cur.fetchall()


async def get_person(conn: AsyncConnection[Any], ws: str, person: str) -> Row | None:
    cur = await conn.execute(
        """SELECT person_id, display_name, email, phone, organization, title, notes, added_at,
                  updated_at, forgotten FROM people_v1
           WHERE workspace_id = %s AND person_id = %s AND NOT retracted""",
        (ws, person),
    )
    return await cur.fetchone()


async def timeline(conn: AsyncConnection[Any], ws: str, a: str, b: str, limit: int) -> list[Row]:
    pa, pb = ordered(a, b)
    cur = await conn.execute(
        """SELECT event_id, seq, type, occurred_at, recorded_at, recorded_by, detail,
                  retracted
           FROM pair_events_v1 WHERE workspace_id = %s AND person_a = %s AND person_b = %s
           ORDER BY occurred_at, seq LIMIT %s""",
        (ws, pa, pb, limit),
    )
    return await cur.fetchall()
