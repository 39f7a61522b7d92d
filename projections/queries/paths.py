"""Warm paths: who can introduce one person to another over ties strong enough to vouch."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from tieline.projections.queries.common import now
from tieline.projections.queries.strength import TIE_COLS, counts_as, vouches_now

#: (people along the path, the score of each link)
Path = tuple[list[str], list[float]]


async def vouching_neighbours(
    conn: AsyncConnection[Any], ws: str, person: str, when: datetime
) -> dict[str, float]:
    """The people ``person`` can vouch for (or be vouched by) at ``when``, with the score. A
    merged person's are their survivor's (the stored ties are the survivors' only)."""
    return await _vouching(conn, ws, await counts_as(conn, ws, person), when)


async def _vouching(
    conn: AsyncConnection[Any], ws: str, person: str, when: datetime
) -> dict[str, float]:
    """:func:`vouching_neighbours` of ``person`` as the stored ties name them (a survivor)."""
    cur = await conn.execute(
        f"""SELECT person_b AS other, {TIE_COLS} FROM strength_v1
             WHERE workspace_id = %(ws)s AND person_a = %(p)s AND can_vouch
            UNION ALL
            SELECT person_a AS other, {TIE_COLS} FROM strength_v1
             WHERE workspace_id = %(ws)s AND person_b = %(p)s AND can_vouch""",
        {"ws": ws, "p": person},
    )
    out = {}
    for row in await cur.fetchall():
        ok, score = vouches_now(row, when)
        if ok:
            out[row["other"]] = score
    return out


async def _two_hop_paths(
    conn: AsyncConnection[Any],
    ws: str,
    ends: tuple[str, str],
    mine: dict[str, float],
    theirs: dict[str, float],
    when: datetime,
) -> list[Path]:
    """Paths source -> i -> j -> target where i vouches with source, j with target, and the
    tie between i and j can vouch too."""
    source, target = ends
    left = [p for p in mine if p != target]
    right = [p for p in theirs if p != source]
    if not (left and right):
        return []
    cur = await conn.execute(
        f"""SELECT {TIE_COLS} FROM strength_v1
            WHERE workspace_id = %(ws)s AND can_vouch AND (
              (person_a = ANY(%(l)s) AND person_b = ANY(%(r)s)) OR
              (person_a = ANY(%(r)s) AND person_b = ANY(%(l)s)))""",
        {"ws": ws, "l": left, "r": right},
    )
    paths: list[Path] = []
    for row in await cur.fetchall():
        ok, score = vouches_now(row, when)
        if not ok:
            continue
        for i, j in ((row["person_a"], row["person_b"]), (row["person_b"], row["person_a"])):
            if (
                i in mine
                and j in theirs
                and i != j
                and target not in (i, j)
                and source not in (i, j)
            ):
                paths.append(([source, i, j, target], [mine[i], score, theirs[j]]))
    return paths


async def warm_paths(
    conn: AsyncConnection[Any], ws: str, source: str, target: str, limit: int = 10
) -> list[dict[str, Any]]:
    """Who can introduce ``source`` to ``target``: paths with at most two intermediaries over
    ties strong enough to vouch, ranked by their weakest link, then by their average. A
    merged person counts as their survivor, whom the paths name (as a pair read does); none
    when the two are one person."""
    when = now()
    source, target = await counts_as(conn, ws, source), await counts_as(conn, ws, target)
    if source == target:
        return []
    mine = await _vouching(conn, ws, source, when)
    theirs = await _vouching(conn, ws, target, when)
    paths: list[Path] = []
    if target in mine:
        paths.append(([source, target], [mine[target]]))
    for via in sorted(set(mine) & set(theirs) - {source, target}):
        paths.append(([source, via, target], [mine[via], theirs[via]]))
    paths += await _two_hop_paths(conn, ws, (source, target), mine, theirs, when)
    paths.sort(key=lambda p: (-min(p[1]), -sum(p[1]) / len(p[1]), len(p[0]), p[0]))
    return [
        {
            "path": p,
            "intermediaries": p[1:-1],
            "weakest_link": round(min(s), 4),
            "link_scores": [round(x, 4) for x in s],
        }
        for p, s in paths[:limit]
    ]
