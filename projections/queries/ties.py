"""A person's ties: ranked with Dunbar-like tiers, follow-ups due, and give-and-take.

Scores *now* come from each tie's stored decay state; a tie whose stored state is later than
``as_of`` is re-evaluated with the pure model over its events up to then.

The first page of a ranked list *now* (strongest ties, follow-ups) does not score every tie of
a person: :func:`top_scored` reads them in the orders of their stored bound keys (index
scans) and stops once no unread tie can enter the page (the bound and its proof are in
``projections/strength_model_bound.py``), so a hub with thousands of ties costs about a
hundred rows. Later pages and ``as_of`` lists score every tie.

Every number depends on the workspace's strength set (the default, or the one it adopted with
``workspace.model_calibrated``, projections/workspace_models.py): the bound, tiers, cadences
and what is at stake, so the functions here take it (:func:`strength_set` reads it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from tieline.projections.queries import momentum as mo
from tieline.projections.queries.common import Row, now
from tieline.projections.queries.strength import TIE_COLS, counts_as, pair_strength, score_at
from tieline.projections.strength_model import (
    MET,
    Params,
    Strength,
    assign_tiers,
    follow_up_due,
    score_bound,
    tier_for,
)
from tieline.projections.strength_model_momentum import Momentum
from tieline.projections.workspace_models import workspace_model

#: (stored row, score at the asked time, the model's strength when it was recomputed)
Scored = tuple[Row, float, Strength | None]


async def strength_set(conn: AsyncConnection[Any], ws: str) -> Params:
    """The strength set workspace ``ws``'s read models use (its adopted one, else the
    default)."""
    return (await workspace_model(conn, ws)).strength


async def ties_of(conn: AsyncConnection[Any], ws: str, person: str) -> list[Row]:
    """Every stored tie of ``person``, each with ``other`` naming the other side. A merged
    person's ties are their survivor's (:func:`counts_as`): the stored ties are keyed by
    survivors only."""
    person = await counts_as(conn, ws, person)
    cur = await conn.execute(
        f"""SELECT person_b AS other, {TIE_COLS} FROM strength_v1
             WHERE workspace_id = %(ws)s AND person_a = %(p)s
            UNION ALL
            SELECT person_a AS other, {TIE_COLS} FROM strength_v1
             WHERE workspace_id = %(ws)s AND person_b = %(p)s""",
        {"ws": ws, "p": person},
    )
    return list(await cur.fetchall())


#: Ties read in each order by the first round of :func:`top_scored` (then 8x more per round:
#: a list that cannot stop early, such as follow-ups of a hub with few due, reads everything
#: in few rounds).
FIRST_READ = 64
#: From the ties read so far, the (rounded) score an unread tie must stay below for the list to
#: be complete, or None when not known yet (see :func:`strongest_needs`, :func:`follow_ups_need`).
Need = Callable[[list[Scored]], float | None]

#: What a ranked list needs of a tie (no reciprocity JSON: parsing it is most of a row's cost).
_RANK_COLS = """person_a, person_b, state_at, fast, slow, reciprocity_factor, rating,
    params_version, event_count, meetings, last_contact_at, score_at_last_contact, one_sided,
    episodes, momentum_version, bound_fast, bound_slow"""


def _by(key: str) -> str:
    """A person's ties in ``key`` order, ``%(n)s`` of them (both sides of the pair key)."""
    return f"""
(SELECT person_b AS other, {_RANK_COLS} FROM strength_v1
  WHERE workspace_id = %(ws)s AND person_a = %(p)s ORDER BY {key} DESC LIMIT %(n)s)
UNION ALL
(SELECT person_a AS other, {_RANK_COLS} FROM strength_v1
  WHERE workspace_id = %(ws)s AND person_b = %(p)s ORDER BY {key} DESC LIMIT %(n)s)
ORDER BY {key} DESC LIMIT %(n)s"""


BY_FAST, BY_SLOW = _by("bound_fast"), _by("bound_slow")


async def top_scored(
    conn: AsyncConnection[Any], ws: str, person: str, at: datetime, need: Need, params: Params
) -> list[Scored]:
    """Ties of ``person`` scored at ``at`` from their stored states: at least every tie whose
    rounded score reaches ``need``'s threshold. Each round reads ``n`` ties in each bound
    order (projections/strength_model_bound.py) and stops when the bound of the last keys
    read is below the threshold: every unread tie's keys, hence its score, are at most those.
    Every tie is read when an order runs out. ``params``: the workspace's strength set, whose
    half-lives and score curve the stored keys were computed with; rows of another set (a
    workspace being recomputed) fall back to scoring every tie. A merged person's ties are
    their survivor's (:func:`ties_of`)."""
    person = await counts_as(conn, ws, person)
    n = FIRST_READ
    while True:
        args = {"ws": ws, "p": person, "n": n}
        fast = list(await (await conn.execute(BY_FAST, args)).fetchall())
        slow = list(await (await conn.execute(BY_SLOW, args)).fetchall())
        rows = list({r["other"]: r for r in (*fast, *slow)}.values())
        if any(r["params_version"] != params.version for r in rows):
            return await scored_ties(conn, ws, person, None, at, params)
        scored: list[Scored] = [(row, score_at(row, at), None) for row in rows]
        if len(fast) < n or len(slow) < n:
            return scored
        threshold = need(scored)
        if threshold is not None:
            last = score_bound(fast[-1]["bound_fast"], slow[-1]["bound_slow"], at, params)
            if round(last, 4) < threshold:
                return scored
        n *= 8


def strongest_needs(count: int) -> Need:
    """For the ``count`` strongest ties (in :func:`rank_key` ``strength`` order): the rounded
    score of the ``count``-th; an unread tie scoring below it ranks after it."""

    def need(scored: list[Scored]) -> float | None:
        if len(scored) < count:
            return None
        return sorted((round(s, 4) for _, s, _ in scored), reverse=True)[count - 1]

    return need


def follow_ups_need(count: int, when: datetime, params: Params) -> Need:
    """For the first ``count`` follow-ups due (:func:`follow_up_key` order): the amount at
    stake of the ``count``-th; what a tie has at stake never exceeds its score now."""

    def need(scored: list[Scored]) -> float | None:
        due = follow_ups(scored, when, params)
        return None if len(due) < count else float(due[count - 1]["at_stake"])

    return need


async def scored_ties(
    conn: AsyncConnection[Any],
    ws: str,
    person: str,
    as_of: datetime | None,
    at: datetime | None = None,
    params: Params | None = None,
) -> list[Scored]:
    """(row, score at as_of, strength when recomputed) for every tie of ``person``; without
    ``as_of``, scores are taken at ``at`` (default: now) from the stored decay states.
    ``params``: the workspace's strength set, for the recomputed ties (read when None).

    A tie existed as of ``as_of`` when any of its events that count (not retracted) occurred
    at or before then: a rating is an event of the tie but not a contact, so a tie rated
    before its first contact existed from the rating on (``first_contact_at`` cannot tell).
    :func:`pair_strength` is None exactly when no such event exists."""
    rows = await ties_of(conn, ws, person)
    out: list[Scored] = []
    when = as_of or at or now()
    for row in rows:
        if as_of is None or (row["state_at"] is not None and as_of >= row["state_at"]):
            out.append((row, score_at(row, when), None))
            continue
        if not row["ratings"] and _after(row["first_contact_at"], as_of):
            continue  # no event by then: a pair's events are its contacts and its ratings
        if params is None:
            params = await strength_set(conn, ws)
        s = await pair_strength(conn, ws, row["person_a"], row["person_b"], as_of, params)
        if s is not None:
            out.append((row, s.score, s))
    return out


async def momenta(
    conn: AsyncConnection[Any],
    ws: str,
    person: str,
    scored: list[Scored],
    when: datetime,
    historical: bool,
) -> dict[str, Momentum]:
    """Momentum of each scored tie at ``when`` (projections/queries/momentum.py), by the other
    person's id; ties the strength model recomputed are recomputed here too."""
    return await mo.of_ties(
        conn, ws, person, [(row, s is not None) for row, _, s in scored], when, historical
    )


def of_others(scored: list[Scored], others: list[str]) -> list[Scored]:
    """The scored ties with the other people ``others`` (e.g. those of one page)."""
    keep = set(others)
    return [x for x in scored if x[0]["other"] in keep]


def set_momenta(views: list[dict[str, Any]], momenta: Mapping[str, Momentum]) -> None:
    """Fill in each view's ``momentum`` (a list ranked without them, once paged)."""
    for v in views:
        v["momentum"] = _momentum(momenta, v["other"])


def tie_view(
    row: Row, score: float, tier: str, s: Strength | None, m: Momentum | None = None
) -> dict[str, Any]:
    return {
        "other": row["other"],
        "score": round(score, 4),
        "momentum": None if m is None else round(m.score, 4),
        "tier": tier,
        "event_count": row["event_count"] if s is None else len(s.contributions),
        # Recomputed as of a date: the meetings up to then, not the stored (latest) count.
        "meetings": row["meetings"] if s is None else _meetings(s),
        "last_contact_at": row["last_contact_at"] if s is None else s.last_contact_at,
        "one_sided": row["one_sided"] if s is None else bool(s.reciprocity.get("one_sided")),
    }


def _after(when: datetime | None, as_of: datetime) -> bool:
    return when is not None and when > as_of


def _meetings(s: Strength) -> int:
    return sum(1 for c in s.contributions if c.type == MET)


def _due_stored(
    row: Row, score: float, when: datetime, params: Params
) -> tuple[bool, float, Any, str | None]:
    """(due, at stake, last contact, tier at last contact) from a stored tie; not due when
    the tie has no last contact or no cadence."""
    last = row["last_contact_at"]
    was = (
        None
        if row["score_at_last_contact"] is None
        else tier_for(row["score_at_last_contact"], params)
    )
    cadence = None if was is None else params.tier_cadence_days.get(was)
    if last is None or cadence is None:
        return False, 0.0, last, was
    is_due = (when - last).total_seconds() / 86400 > cadence
    stake = max(score - score_at(row, when + timedelta(days=cadence)), 0.0)
    return is_due, stake, last, was


def follow_ups(
    scored: list[Scored],
    when: datetime,
    params: Params,
    momenta: Mapping[str, Momentum] | None = None,
    order: str = "at_stake",
) -> list[dict[str, Any]]:
    """Ties whose time since last contact exceeds their tier's cadence: most at stake first,
    or (``lapsing``) least momentum first: the ties least likely to go on without a nudge.
    ``params``: the workspace's strength set (tiers, cadences and decay)."""
    due = []
    for row, score, s in scored:
        if s is not None:
            is_due, stake = follow_up_due(s, when, params)
            last = s.last_contact_at
            was = (
                None
                if s.score_at_last_contact is None
                else tier_for(s.score_at_last_contact, params)
            )
        else:
            is_due, stake, last, was = _due_stored(row, score, when, params)
        if is_due and last is not None:
            due.append(
                {
                    "other": row["other"],
                    "score": round(score, 4),
                    "tier_at_last_contact": was,
                    "last_contact_at": last,
                    "days_since_contact": round((when - last).total_seconds() / 86400, 1),
                    "cadence_days": params.tier_cadence_days.get(was or ""),
                    "at_stake": round(stake, 4),
                    "momentum": _momentum(momenta, row["other"]),
                }
            )
    due.sort(key=follow_up_order(order))
    return due


def _momentum(momenta: Mapping[str, Momentum] | None, other: str) -> float | None:
    m = None if momenta is None else momenta.get(other)
    return None if m is None else round(m.score, 4)


#: A sort key of a ranked list (compared as a tuple; a pagination cursor holds one).
Key = tuple[bool | float | str, ...]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rank_key(order: str) -> Callable[[Row], Key]:
    """The order of a person's ties: strongest first (``strength``) or latest contact first
    (``recent``; never contacted last), then by the other person's id."""
    if order == "strength":
        return lambda v: (-v["score"], v["other"])
    if order == "momentum":
        return lambda v: (-(v["momentum"] or 0.0), v["other"])

    def recent(v: Row) -> Key:
        last = v["last_contact_at"]
        ago = 0.0 if last is None else -(last - EPOCH).total_seconds()
        return (last is None, ago, v["other"])

    return recent


def ranked(
    scored: list[Scored],
    order: str,
    params: Params,
    momenta: Mapping[str, Momentum] | None = None,
) -> list[dict[str, Any]]:
    """The ties with tiers that respect the layers' capacities (``params``: the workspace's
    strength set), in ``rank_key`` order."""
    tiers = assign_tiers({row["other"]: score for row, score, _ in scored}, params)
    got = momenta or {}
    views = [
        tie_view(row, score, tiers[row["other"]], s, got.get(row["other"]))
        for row, score, s in scored
    ]
    views.sort(key=rank_key(order))
    return views


def follow_up_key(d: Row) -> Key:
    """Follow-ups: most strength at stake first, then by the other person's id."""
    return (-d["at_stake"], d["other"])


def lapsing_key(d: Row) -> Key:
    """Follow-ups, ``lapsing``: least momentum first, then by the other person's id."""
    return (d["momentum"] or 0.0, d["other"])


def follow_up_order(order: str) -> Callable[[Row], Key]:
    return lapsing_key if order == "lapsing" else follow_up_key


def give_and_take_key(d: Row) -> Key:
    """Give-and-take: one-sided ties first, then by the other person's id."""
    return (not d["one_sided"], d["other"])


async def give_and_take(
    conn: AsyncConnection[Any], ws: str, person: str, one_sided: bool | None
) -> list[dict[str, Any]]:
    """Per tie, who makes the effort (the stored reciprocity) and whether it is one-sided;
    one-sided ties first. ``one_sided`` filters on that flag when given."""
    rows = await ties_of(conn, ws, person)
    out = [
        {"other": r["other"], "one_sided": r["one_sided"], "reciprocity": r["reciprocity"]}
        for r in rows
        if one_sided is None or r["one_sided"] == one_sided
    ]
    out.sort(key=give_and_take_key)
    return out
