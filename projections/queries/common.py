"""Small pieces every read query shares: the row type, pair ordering, the clock, and how far
a projection has applied the log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import tuple_row

Row = dict[str, Any]

#: Matches every checkpoint row of a generation (projections/partitions.py): ``%s`` twice,
#: the generation's consumer.
ROWS_OF = "(projection = %s OR starts_with(projection, %s || '/p'))"


def ordered(a: str, b: str) -> tuple[str, str]:
    """A pair as the read models key it: the smaller id first."""
    return (a, b) if a < b else (b, a)


def now() -> datetime:
    return datetime.now(UTC)


async def checkpoint(conn: AsyncConnection[Any], projection: str, schema: str | None = None) -> int:
    """The last stream sequence ``projection`` (a generation's consumer) has committed, from
    the ``checkpoints`` table of read-model schema ``schema`` (default: the connection's
    ``search_path``); 0 before its first batch. A generation fed by partitioned workers has
    applied everything up to its smallest partition checkpoint, which is what this returns
    (every partition's row exists from the first worker's start on). The one read of a
    checkpoint outside the projection's own transaction; any row factory works."""
    table = sql.Identifier(schema, "checkpoints") if schema else sql.Identifier("checkpoints")
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            sql.SQL("SELECT coalesce(min(last_seq), 0) FROM {} WHERE " + ROWS_OF).format(table),
            (projection, projection),
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def checkpoint_span(
    conn: AsyncConnection[Any], projection: str, schema: str | None = None
) -> tuple[int, int]:
    """(smallest, largest) checkpoint over the partitions of ``projection`` (equal for a
    generation of one worker); (0, 0) before its first batch."""
    table = sql.Identifier(schema, "checkpoints") if schema else sql.Identifier("checkpoints")
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT coalesce(min(last_seq), 0), coalesce(max(last_seq), 0) FROM {} WHERE "
                + ROWS_OF
            ).format(table),
            (projection, projection),
        )
        row = await cur.fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)
