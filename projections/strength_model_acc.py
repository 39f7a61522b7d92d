"""The walk over one pair's events: points per event, burst damping, shallow caps,
reciprocity and ratings (:class:`_Acc`), and the recompute from a whole history.

Part of :mod:`tieline.projections.strength_model`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime

from tieline.projections.strength_model_core import (
    Contribution,
    PairEvent,
    Strength,
    _days,
    _decay,
    _ordinal,
    _reciprocity,
    _score,
    _Side,
    met_points,
    tier_for,
)
from tieline.projections.strength_model_params import (
    CONTACT_TYPES,
    DEPTHS,
    FOLLOWED_UP,
    HELPED,
    INTRODUCED,
    MET,
    RATED,
    TIERS,
    Params,
)


def _canonical(events: Iterable[PairEvent]) -> list[PairEvent]:
    """De-duplicated by event_id (keeping the canonically first copy), in canonical order."""
    given = list(events)
    if len({e.event_id for e in given}) == len(given):
        # No duplicates (a stored timeline): (time, seq, event_id) is unique per event, so it
        # orders exactly as the full key does, without formatting every detail.
        ordered = sorted(given, key=_order)
    else:
        best: dict[str, PairEvent] = {}
        for e in given:
            kept = best.get(e.event_id)
            if kept is None or _key(e) < _key(kept):
                best[e.event_id] = e
        ordered = sorted(best.values(), key=_key)
    pairs = {(e.person_a, e.person_b) for e in ordered}
    if len(pairs) > 1:
        raise ValueError(f"events of more than one pair: {sorted(pairs)}")
    return ordered


def _order(e: PairEvent) -> tuple[datetime, int, str]:
    return (e.occurred_at, e.seq, e.event_id)


def _key(e: PairEvent) -> tuple[datetime, int, str, str, str]:
    return (e.occurred_at, e.seq, e.event_id, e.type, repr(sorted(e.detail.items())))


def _raw_points(e: PairEvent, params: Params) -> tuple[float, str, str, str | None, str | None]:
    """(points before burst damping, reason, burst kind, actor, responder) of one event."""
    d = e.detail
    pair = (e.person_a, e.person_b)
    if e.type == MET:
        depth = str(d.get("depth", "conversation"))
        if depth not in DEPTHS:
            depth = "conversation"
        minutes = float(d.get("duration_minutes") or 0)
        mode = str(d.get("mode", "in_person"))
        group = int(d.get("group_size") or 2)
        points = met_points(depth, minutes, mode, group, params)
        shown = minutes if minutes > 0 else params.met_default_minutes[depth]
        what = depth.replace("_", " ")
        if depth == "card_exchange":
            reason = "card exchange"
        else:
            assumed = "" if minutes > 0 else " (assumed)"
            reason = f"{shown:g}-minute{assumed} {what}"
        reason += " remote" if mode == "remote" else " in person"
        if group > 2:
            reason += f" in a group of {group}"
        initiator = d.get("initiated_by")
        actor = str(initiator) if initiator in pair else None
        return points, reason, f"{MET}:{depth}", actor, None
    if e.type == FOLLOWED_UP:
        sender = str(d.get("from", d.get("from_person", "")))
        receiver = str(d.get("to", d.get("to_person", "")))
        channel = str(d.get("channel", "other"))
        replied = bool(d.get("replied", False))
        base = params.followup_replied_points if replied else params.followup_points
        points = base * params.channel_factor.get(channel, params.channel_factor.get("other", 1.0))
        reason = f"follow-up by {channel} from {sender}" + (
            ", replied" if replied else ", no reply"
        )
        actor = sender if sender in pair else None
        responder = receiver if replied and receiver in pair else None
        return points, reason, f"{FOLLOWED_UP}:{sender}", actor, responder
    if e.type == INTRODUCED:
        introducer = str(d.get("introducer", ""))
        role = d.get("role")
        if role is None:
            role = "introducer" if introducer in pair else "introduced"
        if role == "introducer":
            other = e.person_b if introducer == e.person_a else e.person_a
            reason = f"{introducer} introduced {other} to someone (a service)"
            actor = introducer if introducer in pair else None
            return params.introducer_points, reason, f"{INTRODUCED}:{introducer}", actor, None
        reason = f"introduced to each other by {introducer}"
        return params.introduced_points, reason, f"{INTRODUCED}:introduced", None, None
    if e.type == HELPED:
        helper = str(d.get("helper", ""))
        helped = str(d.get("helped", ""))
        actor = helper if helper in pair else None
        return params.help_points, f"{helper} helped {helped}", f"{HELPED}:{helper}", actor, None
    if e.type == RATED:
        return 0.0, "", RATED, None, None
    return 0.0, f"{e.type}: not part of the strength model", e.type, None, None


class _Acc:
    """What the model accumulates while it walks a pair's events in canonical order: who did
    what (reciprocity), the bursts and shallow-depth reservoirs (damping), the latest rating of
    each rater, first/last contact and the deepest meeting. :func:`_compute` and :class:`Fold`
    share it, so a read model folded event by event applies exactly the rules of a recompute."""

    def __init__(self, a: str, b: str) -> None:
        self.a, self.b = a, b
        self.sides = {a: _Side(), b: _Side()}
        self.burst: dict[str, tuple[datetime, int]] = {}
        # Reservoirs of capped shallow depths: depth -> (fast, slow, as of when).
        self.reservoirs: dict[str, tuple[float, float, datetime]] = {}
        self.ratings: dict[str, tuple[datetime, int]] = {}
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.deepest: str | None = None

    def step(self, e: PairEvent, params: Params) -> tuple[float, str]:
        """Take one event (the next in canonical order); return its points after burst damping
        and the card cap, and the human reason."""
        raw, reason, kind, actor, responder = _raw_points(e, params)
        if e.type == RATED:
            rater = str(e.detail.get("rater", ""))
            given = min(max(int(e.detail.get("rating", 3)), 1), 5)
            self.ratings[rater] = (e.occurred_at, given)
            level = params.rating_scores[str(given)]
            return 0.0, f"closeness rated {given}/5 by {rater} (score level {level:g})"
        if e.type in CONTACT_TYPES:
            self.first = e.occurred_at if self.first is None else self.first
            self.last = e.occurred_at
        if e.type == MET:
            depth = str(e.detail.get("depth", "conversation"))
            if depth in DEPTHS and (
                self.deepest is None or DEPTHS.index(depth) > DEPTHS.index(self.deepest)
            ):
                self.deepest = depth
        points = raw
        if raw > 0:
            points, reason = self._damp(e, kind, points, reason, params)
        depth = str(e.detail.get("depth"))
        if e.type == MET and depth in params.shallow_cap_points and points > 0:
            points, reason = self._cap(e, depth, points, reason, params)
        self._effort(e, actor, responder, params)
        return points, reason

    def _damp(
        self, e: PairEvent, kind: str, points: float, reason: str, params: Params
    ) -> tuple[float, str]:
        start, k = self.burst.get(kind, (e.occurred_at, -1))
        if _days(start, e.occurred_at) <= params.burst_window_days:
            k += 1
        else:
            start, k = e.occurred_at, 0
        self.burst[kind] = (start, k)
        if k > 0:
            points *= params.burst_factor**k
            reason += f"; {_ordinal(k + 1)} of a burst (x{params.burst_factor**k:g})"
        return points, reason

    def _cap(
        self, e: PairEvent, depth: str, points: float, reason: str, params: Params
    ) -> tuple[float, str]:
        s = params.slow_share
        r_fast, r_slow, r_at = self.reservoirs.get(depth, (0.0, 0.0, e.occurred_at))
        dt = _days(r_at, e.occurred_at)
        r_fast *= _decay(dt, params.fast_half_life_days)
        r_slow *= _decay(dt, params.slow_half_life_days)
        cap = params.shallow_cap_points[depth]
        room = max(cap - (r_fast + r_slow), 0.0)
        if points > room:
            points = room
            reason += f"; capped: {depth.replace('_', ' ')}s add up to {cap:g} points at most"
        self.reservoirs[depth] = (r_fast + (1 - s) * points, r_slow + s * points, e.occurred_at)
        return points, reason

    def _effort(
        self, e: PairEvent, actor: str | None, responder: str | None, params: Params
    ) -> None:
        if actor is not None:
            side = self.sides[actor]
            side.effort += 1.0
            if e.type == MET:
                side.initiated += 1
            elif e.type == FOLLOWED_UP:
                side.followed_up += 1
            elif e.type == HELPED:
                side.helped += 1
            elif e.type == INTRODUCED:
                side.introduced += 1
        if responder is not None:
            self.sides[responder].replies += 1
            self.sides[responder].effort += params.reply_effort

    def rating_at(self, as_of: datetime, params: Params) -> float | None:
        """The mean decayed rating level at ``as_of`` (None without ratings)."""
        if not self.ratings:
            return None
        levels = [
            params.rating_scores[str(r)] * _decay(_days(t, as_of), params.rating_half_life_days)
            for t, r in self.ratings.values()
        ]
        return math.fsum(sorted(levels)) / len(levels)

    def score(self, fast: float, slow: float, as_of: datetime, params: Params) -> float:
        """``result(fast, slow, as_of, params).score`` without building the rest."""
        factor = float(_reciprocity(self.sides, self.a, self.b, params)["factor"])
        return _score(fast + slow, factor, self.rating_at(as_of, params), params)

    def result(
        self,
        fast: float,
        slow: float,
        as_of: datetime,
        params: Params,
        contributions: tuple[Contribution, ...] = (),
        score_at_last_contact: float | None = None,
        at_last_contact: bool = False,
    ) -> Strength:
        """The :class:`Strength` at ``as_of`` given the decayed accumulators there;
        ``at_last_contact``: ``as_of`` is the last contact, so the score is also the score at it.
        """
        reciprocity = _reciprocity(self.sides, self.a, self.b, params)
        factor = float(reciprocity["factor"])
        rating = self.rating_at(as_of, params)
        score = _score(fast + slow, factor, rating, params)
        return Strength(
            score=score,
            tier=tier_for(score, params),
            contributions=contributions,
            fast=fast,
            slow=slow,
            rating=rating,
            reciprocity=reciprocity,
            last_contact_at=self.last,
            first_contact_at=self.first,
            days_since_contact=None if self.last is None else _days(self.last, as_of),
            as_of=as_of,
            person_a=self.a,
            person_b=self.b,
            behaviour_score=_score(fast + slow, factor, None, params),
            reciprocity_factor=factor,
            deepest_meeting=self.deepest,
            score_at_last_contact=score if at_last_contact else score_at_last_contact,
            params=params,
        )


def _compute(ordered: list[PairEvent], params: Params, as_of: datetime | None) -> Strength:
    """The strength of canonical, de-duplicated, already-cut-off events at ``as_of``."""
    if not ordered or as_of is None:
        return Strength(
            score=0.0,
            tier=TIERS[-1],
            contributions=(),
            fast=0.0,
            slow=0.0,
            rating=None,
            reciprocity=_reciprocity({}, None, None, params),
            last_contact_at=None,
            first_contact_at=None,
            days_since_contact=None,
            as_of=as_of,
            params=params,
        )
    acc = _Acc(ordered[0].person_a, ordered[0].person_b)
    staged = [(e, *acc.step(e, params)) for e in ordered]
    s = params.slow_share
    fast = slow = 0.0
    contributions: list[Contribution] = []
    for e, points, reason in staged:
        age = _days(e.occurred_at, as_of)
        f_part = (1 - s) * points * _decay(age, params.fast_half_life_days)
        s_part = s * points * _decay(age, params.slow_half_life_days)
        fast += f_part
        slow += s_part
        contributions.append(
            Contribution(e.event_id, e.type, e.occurred_at, points, f_part + s_part, reason)
        )
    return acc.result(fast, slow, as_of, params, tuple(contributions))
