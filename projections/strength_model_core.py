"""The values of the strength model: events, contributions, decay state, a tie's strength
and its explanation, plus the small numeric helpers every part shares.

Part of :mod:`tieline.projections.strength_model`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tieline.projections.strength_model_params import (
    CONVERSATION_DEPTHS,
    DAY_SECONDS,
    PARAMS,
    RATED,
    TIERS,
    Params,
)


@dataclass(frozen=True)
class PairEvent:
    """One event as it concerns one pair (what the projection stores per pair and event).

    ``detail`` holds the non-personal facts (see ``tieline.projections.changes._detail``): for
    ``relationship.met`` depth, mode, duration_minutes, initiated_by, group_size; for
    ``followed_up`` from, to, channel, replied; for ``introduced`` introducer, person_a, person_b,
    role ('introducer' | 'introduced'); for ``helped`` helper, helped; for ``closeness_rated``
    rater, ratee, rating. Unknown keys are ignored.
    """

    event_id: str
    type: str
    occurred_at: datetime
    seq: int
    person_a: str
    person_b: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Contribution:
    """What one event adds to the tie."""

    event_id: str
    type: str
    occurred_at: datetime
    points: float  # its weight when it happened (after burst damping and the card cap)
    current: float  # what is left of it at as_of after decay
    reason: str  # human explanation, e.g. "90-minute meal or activity in person"


@dataclass(frozen=True)
class DecayState:
    """The per-pair state a read model stores to compute the score lazily at any later time
    (see the module docstring for the SQL form)."""

    at: datetime | None
    fast: float
    slow: float
    reciprocity_factor: float
    rating: float | None  # mean decayed rating level at ``at``, or None without ratings
    params_version: str

    def score_at(self, t: datetime, params: Params = PARAMS) -> float:
        """The score at ``t`` (>= ``at``; earlier times are treated as ``at``) if nothing new
        happens in between."""
        if self.at is None:
            return 0.0
        days = max((t - self.at).total_seconds() / DAY_SECONDS, 0.0)
        fast = self.fast * _decay(days, params.fast_half_life_days)
        slow = self.slow * _decay(days, params.slow_half_life_days)
        rating = (
            None
            if self.rating is None
            else self.rating * _decay(days, params.rating_half_life_days)
        )
        return _score(fast + slow, self.reciprocity_factor, rating, params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": None if self.at is None else self.at.isoformat(),
            "fast": self.fast,
            "slow": self.slow,
            "reciprocity_factor": self.reciprocity_factor,
            "rating": self.rating,
            "params_version": self.params_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecayState:
        at = data.get("at")
        return cls(
            at=None if at is None else datetime.fromisoformat(at),
            fast=float(data["fast"]),
            slow=float(data["slow"]),
            reciprocity_factor=float(data["reciprocity_factor"]),
            rating=None if data.get("rating") is None else float(data["rating"]),
            params_version=str(data["params_version"]),
        )


@dataclass(frozen=True)
class Strength:
    """The strength of one tie at ``as_of``, with everything needed to explain it."""

    score: float  # 0..100
    tier: str
    contributions: tuple[Contribution, ...]  # every event's contribution, in time order
    fast: float  # decayed fast accumulator at as_of (points)
    slow: float  # decayed slow accumulator at as_of (points)
    rating: float | None  # mean decayed closeness-rating level at as_of (0..100), if any
    reciprocity: Mapping[str, Any]
    last_contact_at: datetime | None
    first_contact_at: datetime | None
    days_since_contact: float | None
    # --- additions beyond the brief ------------------------------------------------------------
    as_of: datetime | None = None
    person_a: str | None = None
    person_b: str | None = None
    behaviour_score: float = 0.0  # the score from events alone, before the rating blend
    reciprocity_factor: float = 1.0
    deepest_meeting: str | None = None  # deepest relationship.met depth seen
    score_at_last_contact: float | None = None
    params: Params = field(default=PARAMS, repr=False, compare=False)

    @property
    def points(self) -> float:
        """Accumulated points at as_of (fast + slow, before the reciprocity factor)."""
        return self.fast + self.slow

    @property
    def history_days(self) -> float | None:
        """Days from the first to the last contact."""
        if self.first_contact_at is None or self.last_contact_at is None:
            return None
        return _days(self.first_contact_at, self.last_contact_at)

    @property
    def state(self) -> DecayState:
        """What a read model stores to compute this score lazily later (``score_at``)."""
        return DecayState(
            at=self.as_of,
            fast=self.fast,
            slow=self.slow,
            reciprocity_factor=self.reciprocity_factor,
            rating=self.rating,
            params_version=self.params.version,
        )

    def explain(self, top: int = 5) -> dict[str, Any]:
        """Why the score is what it is: the strongest contributions, the decay since the last
        contact, reciprocity, the tier and what would raise it."""
        p = self.params
        ranked = sorted(self.contributions, key=lambda c: (-c.current, c.occurred_at, c.event_id))
        top_list = [
            {
                "event_id": c.event_id,
                "type": c.type,
                "occurred_at": c.occurred_at.isoformat(),
                "points": round(c.points, 4),
                "current": round(c.current, 4),
                "reason": c.reason,
            }
            for c in ranked[: max(top, 0)]
            if c.points > 0 or c.type == RATED
        ]
        lost = None
        if self.score_at_last_contact is not None:
            lost = round(max(self.score_at_last_contact - self.score, 0.0), 4)
        was = None
        if self.score_at_last_contact is not None:
            was = tier_for(self.score_at_last_contact, p)
        rank = TIERS.index(self.tier)
        next_tier = TIERS[rank - 1] if rank > 0 else None
        needed = None if next_tier is None else p.tier_thresholds[next_tier]
        return {
            "score": round(self.score, 4),
            "tier": self.tier,
            "params_version": p.version,
            "as_of": None if self.as_of is None else self.as_of.isoformat(),
            "top_contributions": top_list,
            "components": {
                "fast": round(self.fast, 4),
                "slow": round(self.slow, 4),
                "points": round(self.points, 4),
                "reciprocity_factor": round(self.reciprocity_factor, 4),
                "behaviour_score": round(self.behaviour_score, 4),
                "rating": None if self.rating is None else round(self.rating, 4),
                "rating_weight": p.rating_weight if self.rating is not None else 0.0,
            },
            "decay": {
                "first_contact_at": _iso(self.first_contact_at),
                "last_contact_at": _iso(self.last_contact_at),
                "days_since_contact": _round(self.days_since_contact),
                "score_at_last_contact": _round(self.score_at_last_contact),
                "lost_since_last_contact": lost,
                "tier_at_last_contact": was,
                "cadence_days": None if was is None else p.tier_cadence_days.get(was),
            },
            "reciprocity": dict(self.reciprocity),
            "next_tier": next_tier,
            "next_tier_score": needed,
            "to_raise": _suggestions(self, next_tier),
        }


def tier_for(score: float, params: Params = PARAMS) -> str:
    """The tier a score falls in (without capacity limits)."""
    for tier in TIERS[:-1]:
        if score >= params.tier_thresholds[tier]:
            return tier
    return TIERS[-1]


def met_points(
    depth: str,
    minutes: float = 0.0,
    mode: str = "in_person",
    group_size: int = 2,
    params: Params = PARAMS,
) -> float:
    """Points of one meeting before burst damping and the card cap."""
    if minutes <= 0:
        minutes = params.met_default_minutes[depth]
    knee = params.duration_knee_minutes
    effective_hours = knee * math.log1p(minutes / knee) / 60.0
    points = params.met_base_points[depth] + params.met_hourly_points[depth] * effective_hours
    if mode == "remote":
        points *= params.remote_factor
    return points * _group_factor(group_size, params)


def _days(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() / DAY_SECONDS


def _decay(days: float, half_life: float) -> float:
    return 0.5 ** (days / half_life) if days > 0 else 1.0


def _group_factor(group_size: int, params: Params) -> float:
    if group_size <= 2:
        return 1.0
    return min(1.0, (params.conversation_group_limit - 1) / (group_size - 1))


def _score(points: float, factor: float, rating: float | None, params: Params) -> float:
    x = max(points, 0.0) * factor / params.score_scale_points
    behaviour = -100.0 * math.expm1(-(x**params.score_exponent))  # = 100 * (1 - exp(-x**e))
    if rating is None:
        return behaviour
    return (1.0 - params.rating_weight) * behaviour + params.rating_weight * rating


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


@dataclass
class _Side:
    initiated: int = 0
    followed_up: int = 0
    replies: int = 0
    helped: int = 0
    introduced: int = 0
    effort: float = 0.0


def _reciprocity(
    sides: Mapping[str, _Side], a: str | None, b: str | None, params: Params
) -> dict[str, Any]:
    """Who initiates, follows up, replies, helps and introduces; balance in [-1, 1] (positive:
    ``person_a`` makes more of the effort); the one-sided flag and the points factor."""
    if a is None or b is None:
        return {
            "initiated": {},
            "followed_up": {},
            "replies": {},
            "helped": {},
            "introduced": {},
            "effort": {},
            "acts": 0,
            "balance": 0.0,
            "one_sided": False,
            "factor": 1.0,
        }
    sa, sb = sides[a], sides[b]
    acts = sum(x.initiated + x.followed_up + x.helped + x.introduced + x.replies for x in (sa, sb))
    total = sa.effort + sb.effort
    balance = 0.0 if total == 0 else (sa.effort - sb.effort) / total
    judged = acts >= params.reciprocity_min_acts
    excess = max(abs(balance) - params.reciprocity_free_balance, 0.0) / (
        1.0 - params.reciprocity_free_balance
    )
    factor = 1.0 - params.reciprocity_penalty * min(excess, 1.0) if judged else 1.0
    return {
        "initiated": {a: sa.initiated, b: sb.initiated},
        "followed_up": {a: sa.followed_up, b: sb.followed_up},
        "replies": {a: sa.replies, b: sb.replies},
        "helped": {a: sa.helped, b: sb.helped},
        "introduced": {a: sa.introduced, b: sb.introduced},
        "effort": {a: sa.effort, b: sb.effort},
        "acts": acts,
        "balance": balance,
        "one_sided": judged and abs(balance) >= params.one_sided_balance,
        "factor": factor,
    }


def _suggestions(s: Strength, next_tier: str | None) -> list[str]:
    p = s.params
    out: list[str] = []
    was = None if s.score_at_last_contact is None else tier_for(s.score_at_last_contact, p)
    cadence = None if was is None else p.tier_cadence_days.get(was)
    if s.days_since_contact is not None and cadence is not None and s.days_since_contact > cadence:
        out.append(
            f"get in touch: {s.days_since_contact:.0f} days since the last contact; it was a "
            f"{was} tie then, and those are usually in contact every {cadence:g} days"
        )
    if s.deepest_meeting not in CONVERSATION_DEPTHS:
        out.append("have a real conversation (depth conversation or deeper), ideally in person")
    if s.reciprocity.get("one_sided"):
        out.append("let the other side take the initiative: the effort is one-sided")
    if next_tier is not None:
        target = p.tier_thresholds[next_tier]
        behaviour_needed = target
        if s.rating is not None:
            w = p.rating_weight
            behaviour_needed = (target - w * s.rating) / (1.0 - w) if w < 1 else math.inf
        if behaviour_needed >= 100.0:
            out.append(f"{next_tier} needs a higher closeness rating as well as more contact")
        else:
            factor = max(s.reciprocity_factor, 1e-9)
            points_needed = (
                -p.score_scale_points * math.log(1.0 - max(behaviour_needed, 0.0) / 100.0) / factor
            )
            missing = max(points_needed - s.points, 0.0)
            hour = met_points("conversation", 60.0, params=p)
            if missing > 0:
                n = max(math.ceil(missing / hour), 1)
                out.append(
                    f"about {missing:.1f} more points to reach {next_tier}: e.g. {n} one-hour "
                    "conversations in person on separate days, soon"
                )
    return out
