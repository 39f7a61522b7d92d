"""Small pieces every read query shares: the row type, pair ordering, the clock, and how far
a projection has applied the log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import tuple_row

Row = dict[str, Any]


def ordered(a: str, b: str) -> tuple[str, str]:
    """A pair as the read models key it: the smaller id first."""
    return (a, b) if a < b else (b, a)


def now() -> datetime:
    return datetime.now(UTC)


async def checkpoint(conn: AsyncConnection[Any], projection: str, schema: str | None = None) -> int:
    """The last stream sequence ``projection`` has committed (0 before its first batch), from
    the ``checkpoints`` table of read-model schema ``schema`` (default: the connection's
    ``search_path``). The one read of a checkpoint outside the projection's own transaction;
    any row factory works."""
    table = sql.Identifier(schema, "checkpoints") if schema else sql.Identifier("checkpoints")
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            sql.SQL("SELECT last_seq FROM {} WHERE projection = %s").format(table), (projection,)
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0
