"""Person merges on the read side (``person.merged``): which person ids count as whom.

A merge of ``B`` into ``A`` changes no stored row of the pair timeline (``pair_events_v1``
keeps the people each event named, so a retraction of the merge can restore them); it changes
what the rows *mean*. Every pair row is read through :class:`Aliases`:

* a person merged (by a merge that is not retracted) counts as their survivor: the timeline
  row ``(B, X)`` belongs to the relationship ``(A, X)``, and the person ids inside its
  non-personal detail (``from``, ``initiated_by``, ``rater``, ...) are translated too, so the
  strength model sees ``A``'s reciprocity;
* a row whose two people become one (``(A, B)`` itself) belongs to no relationship: a person
  has no tie to themselves. It stays stored and comes back when the merge is retracted;
* an event that named both ``A`` and ``B`` (a group meeting ``A, B, X``) counts once on
  ``(A, X)``: of its rows that land on one relationship the one of the lowest original pair
  (in code-point order) is kept.

The strength of a relationship is always the fold of the rows that resolve to it, so the live
store (recomputing the pairs a merge or its retraction moves) and the bulk rebuild (folding
every relationship once, with the final merges) agree. Which merges hold: per merged person
the latest (highest sequence) unretracted ``person.merged`` — the write side refuses a second
merge of a merged person and chains, so "latest" only settles races. Merges are not followed
transitively (the write side never lets a survivor be merged).

Pure except for :func:`load` (one small query per batch) and the bulk rebuild's SQL below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import tuple_row
from tieline.projections.strength_model import PairEvent

PairKey = tuple[str, str, str]  # workspace, person_a, person_b

#: Keys of a pair row's detail that hold a person id (projections/changes.py ``_detail``).
PERSON_DETAIL_KEYS = (
    "initiated_by",
    "from",
    "to",
    "introducer",
    "person_a",
    "person_b",
    "helper",
    "helped",
    "rater",
    "ratee",
)

#: The merges that hold: per (workspace, merged person) the latest unretracted one.
HOLDING_SQL = """
SELECT DISTINCT ON (workspace_id, merged) workspace_id, merged, survivor
  FROM merges_v1 WHERE NOT retracted AND workspace_id = ANY(%s)
 ORDER BY workspace_id, merged, seq DESC
"""
ALL_HOLDING_SQL = """
SELECT DISTINCT ON (workspace_id, merged) workspace_id, merged, survivor
  FROM merges_v1 WHERE NOT retracted
 ORDER BY workspace_id, merged, seq DESC
"""
#: The bulk rebuild's scan of the pair timeline when merges hold: the rows grouped by the
#: relationship they belong to (person ids are ASCII, so "C" order is Python's order), each
#: group's rows by stored pair, so the first row of an event is the one of its lowest pair.
RESOLVED_PAIR_SCAN = f"""
WITH m AS ({ALL_HOLDING_SQL}),
r AS (
    SELECT p.workspace_id, p.person_a, p.person_b, p.event_id, p.seq, p.type, p.occurred_at,
           p.detail, coalesce(ma.survivor, p.person_a) COLLATE "C" AS ra,
           coalesce(mb.survivor, p.person_b) COLLATE "C" AS rb
      FROM pair_events_v1 p
      LEFT JOIN m ma ON ma.workspace_id = p.workspace_id AND ma.merged = p.person_a
      LEFT JOIN m mb ON mb.workspace_id = p.workspace_id AND mb.merged = p.person_b
     WHERE NOT p.retracted
)
SELECT workspace_id, person_a, person_b, event_id, seq, type, occurred_at, detail FROM r
 WHERE ra <> rb
 ORDER BY workspace_id, least(ra, rb), greatest(ra, rb), person_a COLLATE "C",
          person_b COLLATE "C", seq
"""
#: Columns of ``merges_v1`` as the live store and the bulk rebuild write them.
MERGE_COLUMNS = ("workspace_id", "event_id", "merged", "survivor", "seq", "retracted")
INSERT_MERGE = (
    "INSERT INTO merges_v1 (workspace_id, event_id, merged, survivor, seq) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
#: Marks the people merged into someone (and clears it for the others) of some workspaces.
PEOPLE_MERGED_SQL = f"""
WITH m AS ({ALL_HOLDING_SQL})
UPDATE people_v1 p SET merged_into = m.survivor FROM m
 WHERE p.workspace_id = m.workspace_id AND p.person_id = m.merged
   AND p.merged_into IS DISTINCT FROM m.survivor
"""


def ordered(ws: str, a: str, b: str) -> PairKey:
    return (ws, a, b) if a < b else (ws, b, a)


@dataclass
class Aliases:
    """Who counts as whom, per workspace: merged person -> survivor (not to be changed after
    construction: the reverse index is built once)."""

    survivor: dict[tuple[str, str], str] = field(default_factory=dict)
    _merged: dict[tuple[str, str], list[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for (ws, merged), survivor in sorted(self.survivor.items()):
            self._merged.setdefault((ws, survivor), []).append(merged)

    @classmethod
    def of(cls, rows: Iterable[tuple[str, str, str]]) -> Aliases:
        return cls({(ws, merged): survivor for ws, merged, survivor in rows})

    def person(self, ws: str, p: str) -> str:
        return self.survivor.get((ws, p), p)

    def key(self, ws: str, a: str, b: str) -> PairKey | None:
        """The relationship the stored pair ``(a, b)`` belongs to (None: the two are one)."""
        ra, rb = self.person(ws, a), self.person(ws, b)
        return None if ra == rb else ordered(ws, ra, rb)

    def members(self, ws: str, p: str) -> list[str]:
        """``p`` and everyone merged into ``p``."""
        return [p, *self._merged.get((ws, p), ())]

    def stored_keys(self, key: PairKey) -> list[PairKey]:
        """Every stored pair that may belong to the relationship ``key``."""
        ws, a, b = key
        out = {
            ordered(ws, x, y) for x in self.members(ws, a) for y in self.members(ws, b) if x != y
        }
        return sorted(k for k in out if self.key(*k) == key)

    def event_detail(self, ws: str, detail: Mapping[str, Any]) -> dict[str, Any]:
        """A stored row's detail with its person ids read through the merges."""
        return {
            k: self.person(ws, v) if k in PERSON_DETAIL_KEYS and isinstance(v, str) else v
            for k, v in detail.items()
        }

    def event(self, e: PairEvent, key: PairKey) -> PairEvent:
        """``e`` (a stored row) as an event of the relationship ``key``."""
        if not self.survivor:
            return e
        detail = self.event_detail(key[0], e.detail)
        return replace(e, person_a=key[1], person_b=key[2], detail=detail)


async def load(conn: AsyncConnection[Any], workspaces: Iterable[str]) -> Aliases:
    """The merges that hold in ``workspaces``."""
    async with conn.cursor(row_factory=tuple_row) as cur:  # whatever the connection's rows
        await cur.execute(HOLDING_SQL, (sorted(set(workspaces)),))
        return Aliases.of((ws, m, s) for ws, m, s in await cur.fetchall())


async def load_schema(conn: AsyncConnection[Any], schema: str) -> Aliases:
    """Every merge that holds in the read-model generation ``schema``."""
    query = sql.SQL(ALL_HOLDING_SQL.replace("merges_v1", "{}.merges_v1")).format(
        sql.Identifier(schema)
    )
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(query)
        return Aliases.of((ws, m, s) for ws, m, s in await cur.fetchall())


def resolve_rows(
    aliases: Aliases, rows: Iterable[tuple[PairKey, PairEvent]]
) -> dict[PairKey, list[PairEvent]]:
    """Stored rows ``(stored pair, event)`` grouped by the relationship they belong to, each
    event once per relationship (the row of the lowest stored pair wins)."""
    if not aliases.survivor:  # no merges (the common case): every row is its own pair's
        plain: dict[PairKey, list[PairEvent]] = {}
        for stored, e in rows:
            plain.setdefault(stored, []).append(e)
        return plain
    out: dict[PairKey, dict[str, PairEvent]] = {}
    for stored, e in sorted(rows, key=lambda r: (r[0], r[1].seq)):
        key = aliases.key(*stored)
        if key is None:
            continue
        out.setdefault(key, {}).setdefault(e.event_id, aliases.event(e, key))
    return {k: list(v.values()) for k, v in out.items()}


def moved_keys(before: Aliases, after: Aliases, stored: Iterable[PairKey]) -> list[PairKey]:
    """The relationships whose rows change when ``before`` becomes ``after`` (``stored``: the
    stored pairs of the person whose merge changed)."""
    keys = {k for s in stored for k in (before.key(*s), after.key(*s)) if k is not None}
    return sorted(keys)


__all__ = [
    "ALL_HOLDING_SQL",
    "HOLDING_SQL",
    "INSERT_MERGE",
    "MERGE_COLUMNS",
    "PEOPLE_MERGED_SQL",
    "PERSON_DETAIL_KEYS",
    "RESOLVED_PAIR_SCAN",
    "Aliases",
    "PairKey",
    "load",
    "load_schema",
    "moved_keys",
    "resolve_rows",
]
