"""Momentum served from the read models: "will this relationship go on, both ways, soon?"

Momentum (docs/strength-model.md §8) is a score separate from strength. Its parts are the
pair's episodes (stored per pair: ``strength_v1.episodes``, folded like strength), the time
since the pair's last contact (stored: ``last_contact_at``), the time since each of the two
people had contact with anyone, and their common neighbours (the people both have had contact
with): those last parts change whenever either person is in touch with someone else, so they
are read at query time, not stored.

Now: each person's latest contact is the latest ``last_contact_at`` of their stored ties (up to
the asked instant). As of an earlier date: the latest unretracted contact event in the pair
timelines up to then, and the pair's own momentum from its events up to then, exactly as the
pure model computes it (:func:`~tieline.projections.strength_model_momentum.momentum`). Both
read people through the merges that hold (projections/merges.py): a merged person's contacts
are the survivor's, and a contact between the two is nobody's (a person has no tie to
themselves), as in the stored ties.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import tuple_row
from tieline.projections import merges
from tieline.projections.queries.common import Row
from tieline.projections.queries.strength import (
    counts_as,
    pair_events,
    pair_row,
    summary,
    summary_now,
)
from tieline.projections.strength_model import CONTACT_TYPES, PairEvent, strength
from tieline.projections.strength_model_momentum import Momentum, combine, momentum
from tieline.projections.strength_model_workspace import momentum_params
from tieline.projections.workspace_models import workspace_model

_DAY = 86400.0

#: Now, in one pass over the stored ties of ``p`` and of ``others`` (``people``: all of them):
#: each one's latest contact up to ``at`` and how many people with a stored tie (a contact up
#: to ``at``) to ``p`` they also have one with (for ``p`` itself: its ties, not counted). The
#: stored ties are the survivors' already.
_NOW_AROUND_SQL = """
WITH t AS (
    SELECT person_a AS p, person_b AS x, first_contact_at AS f, last_contact_at AS l
      FROM strength_v1 WHERE workspace_id = %(ws)s AND person_a = ANY(%(people)s)
    UNION ALL
    SELECT person_b, person_a, first_contact_at, last_contact_at
      FROM strength_v1 WHERE workspace_id = %(ws)s AND person_b = ANY(%(people)s)
),
n AS (SELECT x FROM t WHERE p = %(p)s AND f <= %(at)s)
SELECT p, max(l) FILTER (WHERE l <= %(at)s),
       count(*) FILTER (WHERE f <= %(at)s AND x IN (SELECT x FROM n))
  FROM t GROUP BY p"""

#: The ties (as whom each person counts as) of the people asked for, each with its latest
#: contact up to ``at``: each person's latest activity and their neighbours both come from it.
#: ``members``: the people asked for and everyone merged into them; ``merged``/``survivor``:
#: the workspace's merges that hold, so each row's two people are read as whom they count as.
_AS_OF_TIES_SQL = """
WITH m AS (SELECT * FROM unnest(%(merged)s::text[], %(survivor)s::text[]) AS m(merged, survivor)),
e AS (
    SELECT person_a, person_b, occurred_at FROM pair_events_v1
     WHERE workspace_id = %(ws)s AND person_a = ANY(%(members)s) AND NOT retracted
       AND type = ANY(%(types)s) AND occurred_at <= %(at)s
    UNION ALL
    SELECT person_a, person_b, occurred_at FROM pair_events_v1
     WHERE workspace_id = %(ws)s AND person_b = ANY(%(members)s) AND NOT retracted
       AND type = ANY(%(types)s) AND occurred_at <= %(at)s
),
r AS (
    SELECT coalesce(ma.survivor, e.person_a) AS ra, coalesce(mb.survivor, e.person_b) AS rb,
           e.occurred_at AS t
      FROM e LEFT JOIN m ma ON ma.merged = e.person_a LEFT JOIN m mb ON mb.merged = e.person_b
)
SELECT ra, rb, max(t) FROM r WHERE ra <> rb GROUP BY ra, rb"""


async def _as_of_args(
    conn: AsyncConnection[Any], ws: str, asked: list[str], at: datetime
) -> tuple[dict[str, str], dict[str, Any]]:
    """Whom each asked person counts as (through the merges that hold) and the arguments of
    the as-of queries for them."""
    aliases = await merges.load(conn, [ws])
    whom = {p: aliases.person(ws, p) for p in asked}
    found = sorted(set(whom.values()))
    held = sorted((m, s) for (w, m), s in aliases.survivor.items() if w == ws)
    args = {
        "ws": ws,
        "people": found,
        "members": sorted({x for p in found for x in aliases.members(ws, p)}),
        "merged": [m for m, _ in held],
        "survivor": [s for _, s in held],
        "at": at,
        "types": sorted(CONTACT_TYPES),
    }
    return whom, args


Around = tuple[dict[str, datetime], dict[str, int]]


async def around_now(
    conn: AsyncConnection[Any], ws: str, person: str, others: Iterable[str], at: datetime
) -> Around:
    """Now, from the stored ties in one query: the latest contact up to ``at`` of ``person``
    and of each of ``others`` (:func:`last_active`), and the common neighbours of ``person``
    and each of ``others``: how many people both had contact with up to ``at`` (momentum's
    ``CN``)."""
    asked = sorted(set(others) - {person})
    args = {"ws": ws, "p": person, "people": [person, *asked], "at": at}
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(_NOW_AROUND_SQL, args)
        rows = await cur.fetchall()
    active = {p: t for p, t, _ in rows if t is not None}
    counted = {p: int(n) for p, _, n in rows}
    return active, {o: counted.get(o, 0) for o in asked}


async def around_as_of(
    conn: AsyncConnection[Any], ws: str, person: str, others: Iterable[str], at: datetime
) -> Around:
    """As :func:`around_now`, exact for any date: from the pair timelines up to ``at``, read
    through the merges that hold (a merged person's answer is their survivor's), in one
    query."""
    asked = sorted(set(others) - {person})
    whom, args = await _as_of_args(conn, ws, [person, *asked], at)
    ties: dict[str, dict[str, datetime]] = {}
    async with conn.cursor(row_factory=tuple_row) as cur:  # whatever the connection's rows
        await cur.execute(_AS_OF_TIES_SQL, args)
        # After a merge one tie can come back as two rows, (b, e) and (e, b): the latest wins,
        # not whichever row came last (so an as_of read equals the read now).
        for a, b, t in await cur.fetchall():
            for x, y in ((a, b), (b, a)):
                known = ties.setdefault(x, {})
                known[y] = max(t, known.get(y, t))
    active = {p: max(ties[q].values()) for p, q in whom.items() if ties.get(q)}
    me = whom[person]
    mine = set(ties.get(me, {}))
    common = {}
    for o in asked:
        pair = {me, whom[o]}
        # someone merged into the person is the person: no tie, so no common neighbours
        common[o] = 0 if len(pair) == 1 else len((mine & set(ties.get(whom[o], {}))) - pair)
    return active, common


async def around(
    conn: AsyncConnection[Any],
    ws: str,
    person: str,
    others: Iterable[str],
    at: datetime,
    historical: bool,
) -> Around:
    """:func:`around_as_of` when ``historical``, else :func:`around_now`."""
    read = around_as_of if historical else around_now
    return await read(conn, ws, person, others, at)


async def last_active(
    conn: AsyncConnection[Any],
    ws: str,
    people: Iterable[str],
    at: datetime,
    historical: bool,
) -> dict[str, datetime]:
    """Each person's latest contact with anyone up to ``at``: from the stored ties (``now``) or,
    when ``historical``, from the pair timelines (exact for any earlier date). A merged
    person's answer is their survivor's."""
    asked = sorted(set(people))
    if not asked:
        return {}
    return (await around(conn, ws, asked[0], asked[1:], at, historical))[0]


def from_row(row: Row, when: datetime, active: Mapping[str, datetime], common: int = 0) -> Momentum:
    """A pair's momentum at ``when`` (>= its latest event) from its stored row, with the
    momentum set the row was computed with (a workspace may have adopted its own), and the
    pair's ``common`` neighbours."""
    params = momentum_params(row["momentum_version"])
    last = row["last_contact_at"]
    episodes = int(row["episodes"])
    if last is None or episodes == 0:
        return Momentum(0.0, 0, None, None, params.version)
    g = (when - last).total_seconds() / _DAY
    seen = [max(last, active.get(p, last)) for p in (row["person_a"], row["person_b"])]
    h = (when - min(seen)).total_seconds() / _DAY
    h2 = (when - max(seen)).total_seconds() / _DAY
    score = combine(params, episodes, g, h, h2, common)
    return Momentum(score, episodes, g, h, params.version, h2, common)


async def of_pair(
    conn: AsyncConnection[Any], ws: str, events: list[PairEvent], as_of: datetime
) -> Momentum:
    """A pair's momentum as of ``as_of`` from its events up to then (the pure model), with
    the two people's activity up to then."""
    people = {e.person_a for e in events} | {e.person_b for e in events}
    a, b = events[0].person_a, events[0].person_b
    active, common_of = await around_as_of(conn, ws, a, people, as_of)
    common = common_of.get(b, 0)
    params = (await workspace_model(conn, ws)).momentum
    return momentum(events, as_of, active, params, common)


async def of_ties(
    conn: AsyncConnection[Any],
    ws: str,
    person: str,
    ties: list[tuple[Row, bool]],
    when: datetime,
    historical: bool,
) -> dict[str, Momentum]:
    """Momentum of each of ``person``'s ties at ``when``, by the other person's id. ``ties``:
    (stored row with ``other``, whether the row is later than ``when`` and so the pair must be
    evaluated from its events up to ``when``). A merged ``person`` is their survivor, whose
    ties the stored rows are (projections/queries/ties.py ``ties_of``)."""
    person = await counts_as(conn, ws, person)
    others = [row["other"] for row, _ in ties]
    active, common = await around(conn, ws, person, others, when, historical)
    out: dict[str, Momentum] = {}
    for row, replay in ties:
        cn = common.get(row["other"], 0)
        if not replay:
            out[row["other"]] = from_row(row, when, active, cn)
            continue
        events = await pair_events(conn, ws, row["person_a"], row["person_b"], when)
        params = momentum_params(row["momentum_version"])
        out[row["other"]] = momentum(events, when, active, params, cn)
    return out


def fields(m: Momentum) -> dict[str, Any]:
    """What an answer says about a pair's momentum."""
    return {
        "momentum": round(m.score, 4),
        "momentum_version": m.params_version,
        "episodes": m.episodes,
        "common_neighbours": m.common_neighbours,
    }


async def pair_as_of(
    conn: AsyncConnection[Any], ws: str, a: str, b: str, as_of: datetime
) -> dict[str, Any] | None:
    """The pair endpoint's answer as of ``as_of``: the pure models (strength and momentum)
    over the pair's events up to then; None when the pair has no recorded contact. It names
    the relationship the pair is (a merged person as their survivor), as :func:`pair_now`
    does: the same pair now and as of a date."""
    events = await pair_events(conn, ws, a, b, as_of)
    if not events:
        return None
    # pair_events gives them as events of the relationship, keyed by its two people.
    a, b = events[0].person_a, events[0].person_b
    params = (await workspace_model(conn, ws)).strength
    out = summary(strength(events, params, as_of), a, b)
    out.update(fields(await of_pair(conn, ws, events, as_of)))
    return out


async def pair_now(
    conn: AsyncConnection[Any], ws: str, a: str, b: str, when: datetime
) -> dict[str, Any] | None:
    """The pair endpoint's answer for ``when`` (now) from the stored row, with momentum;
    None when the pair has no row."""
    row = await pair_row(conn, ws, a, b)
    if row is None:
        return None
    a, b = row["person_a"], row["person_b"]
    active, common_of = await around_now(conn, ws, a, [b], when)
    common = common_of.get(b, 0)
    return {**summary_now(row, when), **fields(from_row(row, when, active, common))}
