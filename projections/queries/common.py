"""Small pieces every read query shares: the row type, pair ordering, the clock, and how far
a projection has applied the log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection

Row = dict[str, Any]


def ordered(a: str, b: str) -> tuple[str, str]:
    """A pair as the read models key it: the smaller id first."""
    return (a, b) if a < b else (b, a)


def now() -> datetime:
    return datetime.now(UTC)


async def checkpoint(conn: AsyncConnection[Any], projection: str) -> int:
    """The last stream sequence ``projection`` has committed (0 before its first batch)."""
    cur = await conn.execute(
        "SELECT last_seq FROM checkpoints WHERE projection = %s", (projection,)
    )
    row = await cur.fetchone()
    return int(row["last_seq"]) if row else 0
