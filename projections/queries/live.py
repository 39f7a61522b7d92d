"""Reads of the change log (``changes_v1``, written by projections/changelog.py) for live
updates and webhooks: rows after a position, and the bounds a resume position is checked
against."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from tieline.projections.queries.common import Row, checkpoint

#: A change's position: (stream sequence, sub-index).
Position = tuple[int, int]


def format_position(p: Position) -> str:
    """A position as the SSE ``id`` and a webhook's ``position``: ``<seq>-<sub>``."""
    return f"{p[0]}-{p[1]}"


def payload(row: Row) -> dict[str, Any]:
    """What SSE ``data`` and a webhook's ``data`` carry for a change-log row: the row's data
    with its position and workspace (ids, types, scores and times only)."""
    position = format_position((int(row["seq"]), int(row["sub"])))
    return {"position": position, "workspace_id": row["workspace_id"], **row["data"]}


#: Rows at or below a partitioned generation's checkpoint (named parameter ``p``: its consumer).
BOUND = """AND seq <= (SELECT min(last_seq) FROM checkpoints
               WHERE projection = %(p)s OR starts_with(projection, %(p)s || '/p'))"""


async def latest_position(conn: AsyncConnection[Any], projection: str | None = None) -> Position:
    """The newest row's position, or (0, -1) when the log is empty (so (0, 0) comes after);
    ``projection`` bounds it as in :func:`changes_after`."""
    cur = await conn.execute(
        f"""SELECT seq, sub FROM changes_v1 WHERE true {"" if projection is None else BOUND}
            ORDER BY seq DESC, sub DESC LIMIT 1""",
        {"p": projection},
    )
    row = await cur.fetchone()
    return (0, -1) if row is None else (int(row["seq"]), int(row["sub"]))


async def changes_after(
    conn: AsyncConnection[Any],
    after: Position,
    ws: str | None = None,
    limit: int = 1000,
    projection: str | None = None,
) -> list[Row]:
    """Up to ``limit`` rows after ``after`` in position order: of workspace ``ws``, or of
    every workspace when it is None. With ``projection`` (a generation fed by partitioned
    workers), only rows at or below its checkpoint (the smallest partition's): those are
    final, while a partition ahead of the others writes rows that a slower one may still
    precede."""
    bound = "" if projection is None else BOUND
    cur = await conn.execute(
        f"""SELECT seq, sub, workspace_id, kind, data, at FROM changes_v1
            WHERE (seq, sub) > (%(seq)s, %(sub)s)
              AND (%(ws)s::text IS NULL OR workspace_id = %(ws)s) {bound}
            ORDER BY seq, sub LIMIT %(limit)s""",
        {"seq": after[0], "sub": after[1], "ws": ws, "limit": limit, "p": projection},
    )
    return list(await cur.fetchall())


async def changes_at(
    conn: AsyncConnection[Any], first_seq: int, last_seq: int, below_sub: int
) -> list[Row]:
    """Every row at sequences ``first_seq..last_seq`` with ``sub < below_sub`` (the rows the
    events at those sequences caused), in position order."""
    cur = await conn.execute(
        """SELECT seq, sub, workspace_id, kind, data, at FROM changes_v1
            WHERE seq BETWEEN %s AND %s AND sub < %s ORDER BY seq, sub""",
        (first_seq, last_seq, below_sub),
    )
    return list(await cur.fetchall())


async def resume_bounds(conn: AsyncConnection[Any], projection: str) -> tuple[int, int]:
    """(trim point, checkpoint): a position at or below the trim point may have lost rows, one
    beyond the checkpoint was never written here."""
    cur = await conn.execute("SELECT trimmed_seq FROM live_state WHERE id = 1")
    row = await cur.fetchone()
    trimmed = 0 if row is None else int(row["trimmed_seq"])
    return trimmed, await checkpoint(conn, projection)
