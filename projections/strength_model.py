"""Tie strength: a pure, explainable function of one pair's events, a parameter set and a date.

The model (full write-up with sources in ``docs/strength-model.md``)
====================================================================

1. **Points per event** (``contribution``). Every event of the pair is worth some points at the
   moment it happened. The unit is roughly "one hour of real conversation in person", so that the
   hours of Hall (2018) and the contact cadences of Dunbar's layers can calibrate the scale:

   * ``relationship.met``: ``base[depth] + hourly[depth] * effective_hours(minutes)``, where
     ``effective_hours = knee * ln(1 + minutes / knee) / 60`` gives diminishing returns for long
     meetings; a card exchange has no hourly part. Remote meetings are worth less than in-person
     ones (Roberts & Dunbar 2015; Vlahovic et al. 2012) and a large group dilutes each
     pair's share (conversations split beyond ~4 people, Dunbar et al. 1995).
   * ``relationship.followed_up``: a little, more if the other side replied, scaled by channel.
   * ``relationship.introduced`` and ``relationship.helped``: reciprocal services (Granovetter
     1973). For the introducer's two pairs an introduction is a service; for the introduced pair it
     is a warm start.
   * ``relationship.closeness_rated`` adds no points: it is blended in at step 4.

   **Burst damping**: the k-th event of the same kind (same type and depth, or same sender)
   within ``burst_window_days`` of the first one of its burst counts ``burst_factor ** k`` of its
   points, so ten messages in one day are worth less than two on separate days. **Shallow caps**:
   card exchanges and brief chats can only top their own decayed reservoir up to
   ``shallow_cap_points[depth]``, so no number of card exchanges, in a burst or spread over
   years, makes more than a contact, and small talk alone (the co-worker at the coffee machine,
   Marsden & Campbell 1984) never makes more than a friend.

2. **Two decaying accumulators**. A share ``slow_share`` of each event's points goes to a slow
   component (half-life ``slow_half_life_days``, ~2 years: a long friendship survives a quiet year)
   and the rest to a fast one (``fast_half_life_days``, ~1 month: a one-off meeting fades; Burt
   2000, 2002: most new, weak ties are gone within a year). At ``as_of``::

       fast = sum((1 - slow_share) * p_i * 0.5 ** (age_i / fast_half_life_days))
       slow = sum(slow_share       * p_i * 0.5 ** (age_i / slow_half_life_days))

3. **Behaviour score**: ``B = 100 * (1 - exp(-(points / score_scale_points) ** score_exponent))``
   with ``points = (fast + slow) * reciprocity_factor``; ``reciprocity_factor`` is 1 unless the
   tie is clearly one-sided (one person does all the initiating, following up, helping), then
   down to ``1 - reciprocity_penalty``.

4. **Closeness rating** (the best single indicator, Marsden & Campbell 1984): each rater's latest
   rating maps to a score level that decays with ``rating_half_life_days`` from the day it was
   given; with ratings, ``score = (1 - rating_weight) * B + rating_weight * mean(levels)``.
   Both terms only decay between events, so **with no new events the score never rises**.

5. **Tier** from score thresholds (Dunbar's layers); ``assign_tiers`` then enforces the layer
   capacities (~5/15/50/150, cumulative) over one person's ties, strongest first.

Determinism: events are de-duplicated by ``event_id`` and put in a canonical order
(``occurred_at, seq, event_id``) before anything is summed, so input order and duplicates never
change a single bit of the result, and a retraction is simply the caller leaving the event out.

Lazy scores in a read model (no nightly rewrite)
================================================
Between two events of a pair the score is a closed-form function of time. Store per pair the
:class:`DecayState` of :attr:`Strength.state` -- ``at`` (the reference time, i.e. the ``as_of`` of
the computation, normally the time of the pair's latest event), ``fast``, ``slow``,
``reciprocity_factor``, ``rating`` (the decayed rating level at ``at`` or NULL) and
``params_version`` -- recompute it with :func:`strength` whenever an event of the pair is added or
retracted, and at query time evaluate ``DecayState.score_at(now)``, or in SQL, with ``d`` the days
since ``at``::

    p := (fast * 0.5 ^ (d / fast_half_life_days) + slow * 0.5 ^ (d / slow_half_life_days))
         * reciprocity_factor
    b := 100 * (1 - exp(-((p / score_scale_points) ^ score_exponent)))
    score := CASE WHEN rating IS NULL THEN b
             ELSE (1 - rating_weight) * b
                  + rating_weight * rating * 0.5 ^ (d / rating_half_life_days) END

and the tier by comparing ``score`` with ``tier_thresholds``. Events that arrive late (an
``occurred_at`` before ``at``) must trigger a recomputation from the pair's stored events rather
than an incremental fold, because burst damping, the card cap and de-duplication depend on order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

TIERS: tuple[str, ...] = ("intimate", "close", "friend", "acquaintance", "contact")
"""Dunbar-like layers, innermost first: ~5 / ~15 / ~50 / ~150 people, then everyone else."""

DEPTHS: tuple[str, ...] = (
    "card_exchange",
    "brief_chat",
    "conversation",
    "deep_conversation",
    "meal_or_activity",
)
"""Meeting depths of ``relationship.met``, shallowest first."""

#: Depths that count as a real conversation (for vouching).
CONVERSATION_DEPTHS = frozenset({"conversation", "deep_conversation", "meal_or_activity"})

MET = "relationship.met"
FOLLOWED_UP = "relationship.followed_up"
INTRODUCED = "relationship.introduced"
HELPED = "relationship.helped"
RATED = "relationship.closeness_rated"
#: Event types that are contact between the two people (a rating is a judgement, not a contact).
CONTACT_TYPES = frozenset({MET, FOLLOWED_UP, INTRODUCED, HELPED})

_DAY_SECONDS = 86400.0


@dataclass(frozen=True)
class Params:
    """One versioned parameter set. Durations are in days; use :meth:`scaled` to run the same
    model on another time scale (e.g. contact data that spans days instead of years).

    The default values, each with its source, are in :data:`PARAMS`.
    """

    version: str
    # --- decay ---------------------------------------------------------------------------------
    fast_half_life_days: float
    slow_half_life_days: float
    slow_share: float
    rating_half_life_days: float
    # --- points per event ----------------------------------------------------------------------
    met_base_points: Mapping[str, float]
    met_hourly_points: Mapping[str, float]
    met_default_minutes: Mapping[str, float]
    duration_knee_minutes: float
    remote_factor: float
    conversation_group_limit: int
    shallow_cap_points: Mapping[str, float]
    followup_points: float
    followup_replied_points: float
    channel_factor: Mapping[str, float]
    introducer_points: float
    introduced_points: float
    help_points: float
    # --- bursts --------------------------------------------------------------------------------
    burst_window_days: float
    burst_factor: float
    # --- reciprocity ---------------------------------------------------------------------------
    reply_effort: float
    reciprocity_min_acts: int
    reciprocity_free_balance: float
    reciprocity_penalty: float
    one_sided_balance: float
    # --- closeness rating ----------------------------------------------------------------------
    rating_weight: float
    rating_scores: Mapping[str, float]
    # --- score and tiers -----------------------------------------------------------------------
    score_scale_points: float
    score_exponent: float
    tier_thresholds: Mapping[str, float]
    tier_capacity: Mapping[str, int]
    tier_cadence_days: Mapping[str, float]
    vouch_tier: str
    vouch_min_history_days: float

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0.0 <= self.slow_share <= 1.0:
            problems.append("slow_share must be in [0, 1]")
        for name in (
            "fast_half_life_days",
            "slow_half_life_days",
            "rating_half_life_days",
            "duration_knee_minutes",
            "score_scale_points",
            "score_exponent",
        ):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0")
        if not 0.0 <= self.burst_factor <= 1.0:
            problems.append("burst_factor must be in [0, 1]")
        if not 0.0 <= self.rating_weight <= 1.0:
            problems.append("rating_weight must be in [0, 1]")
        if not 0.0 <= self.reciprocity_penalty <= 1.0:
            problems.append("reciprocity_penalty must be in [0, 1]")
        if not 0.0 <= self.reciprocity_free_balance < 1.0:
            problems.append("reciprocity_free_balance must be in [0, 1)")
        if any(d not in DEPTHS or c < 0 for d, c in self.shallow_cap_points.items()):
            problems.append("shallow_cap_points maps depths to caps >= 0")
        missing = [d for d in DEPTHS if d not in self.met_base_points]
        missing += [d for d in DEPTHS if d not in self.met_hourly_points]
        missing += [d for d in DEPTHS if d not in self.met_default_minutes]
        if missing:
            problems.append(f"met points need every depth, missing {sorted(set(missing))}")
        if sorted(self.rating_scores) != ["1", "2", "3", "4", "5"]:
            problems.append("rating_scores needs keys '1'..'5'")
        inner = TIERS[:-1]
        if sorted(self.tier_thresholds) != sorted(inner):
            problems.append(f"tier_thresholds needs exactly {inner}")
        else:
            values = [self.tier_thresholds[t] for t in inner]
            if values != sorted(values, reverse=True) or len(set(values)) != len(values):
                problems.append("tier_thresholds must strictly decrease from the innermost tier")
        caps = [self.tier_capacity.get(t) for t in inner]
        if any(c is None or c < 1 for c in caps) or caps != sorted(caps):  # type: ignore[type-var]
            problems.append("tier_capacity needs a cumulative, non-decreasing capacity per tier")
        if self.vouch_tier not in TIERS:
            problems.append(f"vouch_tier must be one of {TIERS}")
        if problems:
            raise ValueError("invalid strength Params: " + "; ".join(problems))

    def scaled(self, time_unit_days: float) -> Params:
        """The same model with one model "day" lasting ``time_unit_days`` real days.

        Every calendar duration (half-lives, burst window, contact cadences, vouching history) is
        multiplied by ``time_unit_days``; points, meeting minutes and thresholds are unchanged.
        ``scaled(1 / 1440)`` turns the 30-day fast half-life into 30 minutes, for contact data that
        spans days (SocioPatterns). The version records the scaling.
        """
        if not time_unit_days > 0:
            raise ValueError("time_unit_days must be > 0")
        f = time_unit_days
        return replace(
            self,
            version=f"{self.version}*{f:.6g}d",
            fast_half_life_days=self.fast_half_life_days * f,
            slow_half_life_days=self.slow_half_life_days * f,
            rating_half_life_days=self.rating_half_life_days * f,
            burst_window_days=self.burst_window_days * f,
            tier_cadence_days={k: v * f for k, v in self.tier_cadence_days.items()},
            vouch_min_history_days=self.vouch_min_history_days * f,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (mappings become plain dicts)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Params | None = None) -> Params:
        """Parameters from a (JSON) dict. Keys left out keep the value of ``base`` (default
        :data:`PARAMS`), so a what-if file only needs what it changes; mapping values are merged
        key by key. Unknown keys are an error."""
        start = (base if base is not None else PARAMS).to_dict()
        unknown = sorted(set(data) - set(start))
        if unknown:
            raise ValueError(f"unknown strength parameter(s): {unknown}")
        for key, value in data.items():
            if isinstance(start[key], dict) and isinstance(value, Mapping):
                start[key] = {**start[key], **{str(k): v for k, v in value.items()}}
            else:
                start[key] = value
        return cls(**start)


PARAMS = Params(
    # Bump whenever a number changes; stored next to every computed score.
    version="2026.1",
    # A one-off meeting fades within months: Burt (2000) found decay fastest for new
    # relationships, and Burt (2002) nine in ten bridge ties gone a year later. The fast 70% of a
    # contact halves every month (0.02% of it is left after a year).
    fast_half_life_days=30.0,
    # Established friendships decay slowly without contact: Roberts & Dunbar (2015) measured a
    # significant but partial loss of emotional closeness over 18 months; a 2-year half-life keeps
    # ~70% of the slow component after a quiet year.
    slow_half_life_days=730.0,
    # Design choice: the share of every contact that builds lasting history. 0.3 makes a long,
    # regular friendship dominated by its slow part and a one-off meeting by its fast part.
    slow_share=0.3,
    # A closeness rating goes stale like a friendship does (Roberts & Dunbar 2015): same as slow.
    rating_half_life_days=730.0,
    # Points are roughly hour-equivalents of in-person talk (Hall 2018 counts hours together).
    # Base = the meeting itself; ordinal by Granovetter's (1973) intensity/intimacy and Hall's
    # finding that catching up, joking and shared activities build friendship more than small talk.
    met_base_points={
        "card_exchange": 0.1,  # a name and a face, nothing more
        "brief_chat": 0.1,
        "conversation": 0.25,
        "deep_conversation": 0.5,  # intimacy / mutual confiding (Granovetter 1973)
        "meal_or_activity": 0.5,  # shared leisure predicted closeness (Hall 2018)
    },
    # Points per effective hour: time together is the first dimension of tie strength
    # (Granovetter 1973) and hours together drive friendship (Hall 2018); a card exchange has none.
    met_hourly_points={
        "card_exchange": 0.0,
        "brief_chat": 0.5,
        "conversation": 1.0,
        "deep_conversation": 1.5,
        "meal_or_activity": 1.25,
    },
    # Design choice: the minutes assumed when an event gives none (duration_minutes = 0).
    met_default_minutes={
        "card_exchange": 2.0,
        "brief_chat": 10.0,
        "conversation": 45.0,
        "deep_conversation": 90.0,
        "meal_or_activity": 120.0,
    },
    # Diminishing returns of one long meeting: effective = knee * ln(1 + minutes / knee), so 2 h
    # count ~1.4 h and 8 h ~3.2 h. Design choice (Marsden & Campbell 1984: sheer time over-rates).
    duration_knee_minutes=120.0,
    # Face-to-face contact maintains closeness better than remote contact (Roberts & Dunbar 2015:
    # shared activities slowed decay; Vlahovic et al. 2012 found face-to-face and video most
    # satisfying). 0.6 is a choice.
    remote_factor=0.6,
    # Conversations split into subgroups beyond ~4 people (Dunbar, Duncan & Nettle 1995); in a
    # group of n each pair gets min(1, (limit - 1) / (n - 1)) of the points.
    conversation_group_limit=4,
    # Caps on what shallow meetings can add up to (decayed), by depth. Card exchanges alone never
    # make more than a contact (0.3 points score 15.9 < 18, the acquaintance threshold). Frequent
    # small talk over-rates ties such as co-workers' (Marsden & Campbell 1984; Hall 2018: time at
    # work did not build friendship): brief chats plus cards stay below close (5.3 points score
    # 51.6 < 55). Design rule.
    shallow_cap_points={"card_exchange": 0.3, "brief_chat": 5.0},
    # A follow-up nobody answered is a small signal; a reply makes it a (remote) exchange.
    followup_points=0.2,
    followup_replied_points=0.5,
    # Richer channels count more (Vlahovic et al. 2012). Ordinal choice.
    channel_factor={
        "in_person": 1.0,
        "video": 1.0,
        "phone": 0.9,
        "letter": 0.8,
        "message": 0.6,
        "email": 0.6,
        "social": 0.4,
        "other": 0.6,
    },
    # Reciprocal services are the fourth dimension of tie strength (Granovetter 1973): vouching for
    # someone by introducing them is a real service to both; help (advice, referral) likewise.
    introducer_points=1.0,
    introduced_points=0.3,  # the introduced pair: a warm start, more than a card exchange
    help_points=1.5,
    # Same kind of event within a day: the k-th counts burst_factor**k (design choice: a burst of
    # messages or cards is one episode, not many).
    burst_window_days=1.0,
    burst_factor=0.5,
    # Reciprocity (Granovetter 1973; Gilbert & Karahalios 2009 used reciprocal services): effort
    # = initiations + follow-ups sent + help given + introductions made + reply_effort * replies.
    reply_effort=0.5,
    reciprocity_min_acts=4,  # judge one-sidedness only after a few directed acts
    reciprocity_free_balance=0.5,  # up to 3:1 effort is normal variation, no penalty
    reciprocity_penalty=0.3,  # entirely one-sided effort: points x 0.7
    one_sided_balance=0.8,  # |balance| >= 0.8 (9:1 effort) flags the tie as one-sided
    # Self-reported closeness is the best single indicator of tie strength (Marsden & Campbell
    # 1984) and corrects frequency-inflated ties (co-workers): it gets the larger weight.
    rating_weight=0.6,
    # The schema's 1 (acquaintance) .. 5 (very close), placed inside the tier bands below
    # (design choice): 1 acquaintance, 2 friend, 3 and 4 close, 5 intimate.
    rating_scores={"1": 25.0, "2": 45.0, "3": 62.0, "4": 72.0, "5": 90.0},
    # Saturation: score = 100 * (1 - exp(-sqrt(points / 10))). Design choice: the points that keep
    # a tie in each layer (below) are ~3-4x apart, like the layer sizes, so a square root spreads
    # the layers evenly over 0-100 instead of crowding the outer three below 10.
    score_scale_points=10.0,
    score_exponent=0.5,
    # Calibrated so that a tie kept in contact at its layer's cadence (see tier_cadence_days) with
    # a 60-minute in-person conversation each time, for three years, stays in that layer even
    # just before the next contact is due (tested in tests/unit/test_strength_model.py).
    # (scores then: 84.6 / 58.7 / 38.7 / 20.0; the thresholds are those rounded down).
    tier_thresholds={"intimate": 80.0, "close": 55.0, "friend": 35.0, "acquaintance": 18.0},
    # Dunbar's layers, cumulative: ~5 support clique, ~15 sympathy group, ~50, ~150 (Zhou et al.
    # 2005; Dunbar 2018).
    tier_capacity={"intimate": 5, "close": 15, "friend": 50, "acquaintance": 150},
    # Contact frequency per layer: at least weekly, at least monthly (Sutcliffe et al. 2012;
    # Dunbar 2018), every few months for the 50 layer (our choice between monthly and yearly), at
    # least yearly for the 150 layer (Hill & Dunbar 2003: the Christmas-card network).
    tier_cadence_days={"intimate": 7.0, "close": 30.0, "friend": 90.0, "acquaintance": 365.0},
    # Vouching needs at least the 50 layer ("friend") and contact spread over three months.
    vouch_tier="friend",
    vouch_min_history_days=90.0,
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
        days = max((t - self.at).total_seconds() / _DAY_SECONDS, 0.0)
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


class Fold:
    """A pair's strength maintained event by event: what a read model stores so that a new
    event costs one step instead of a recompute of the pair's whole history.

    Events must be folded in canonical order (:meth:`accepts` says whether one may come next).
    The accumulators are kept decayed to :attr:`at`, the time of the latest folded event, so
    :meth:`strength` equals :func:`strength` over the same events up to floating-point rounding
    (a product of decays instead of one decay per event). Everything else (damping, caps,
    reciprocity, ratings) runs through the very rules :func:`strength` uses. A late event or a
    retraction needs :meth:`of` over the pair's whole stored history instead.
    """

    def __init__(self, person_a: str, person_b: str) -> None:
        self.acc = _Acc(person_a, person_b)
        self.at: datetime | None = None
        self.last_key: tuple[datetime, int, str] | None = None
        self.fast = 0.0
        self.slow = 0.0
        self.counts: dict[str, int] = {}
        self.score_at_last_contact: float | None = None
        self._at_last_contact = False

    @classmethod
    def of(cls, events: Iterable[PairEvent], params: Params = PARAMS) -> Fold | None:
        """The fold of a pair's whole history (None when there are no events)."""
        ordered = _canonical(events)
        if not ordered:
            return None
        fold = cls(ordered[0].person_a, ordered[0].person_b)
        for e in ordered:
            fold.add(e, params)
        return fold

    @property
    def event_count(self) -> int:
        return sum(self.counts.values())

    def accepts(self, e: PairEvent) -> bool:
        """Whether ``e`` comes after every folded event in canonical order."""
        return self.last_key is None or (e.occurred_at, e.seq, e.event_id) > self.last_key

    def add(self, e: PairEvent, params: Params = PARAMS) -> None:
        """Fold in the next event (the caller has checked :meth:`accepts`)."""
        if self._at_last_contact:
            self._settle(params)  # the state is about to move past the last contact
        points, _ = self.acc.step(e, params)
        if self.at is not None:
            days = _days(self.at, e.occurred_at)
            self.fast *= _decay(days, params.fast_half_life_days)
            self.slow *= _decay(days, params.slow_half_life_days)
        s = params.slow_share
        self.fast += (1 - s) * points
        self.slow += s * points
        self.at = e.occurred_at
        self.last_key = (e.occurred_at, e.seq, e.event_id)
        self.counts[e.type] = self.counts.get(e.type, 0) + 1
        # Same rule as strength(): the score at the last contact includes every event at that
        # instant, so it is the score after the latest one at it. Computed lazily (_settle).
        self._at_last_contact = self.acc.last == e.occurred_at

    def _settle(self, params: Params) -> None:
        self.score_at_last_contact = self.acc.result(
            self.fast, self.slow, self.at or _EPOCH, params
        ).score
        self._at_last_contact = False

    def strength(self, params: Params = PARAMS) -> Strength:
        """The strength at :attr:`at` (without per-event contributions)."""
        if self.at is None:
            return _compute([], params, None)
        result = self.acc.result(
            self.fast,
            self.slow,
            self.at,
            params,
            score_at_last_contact=self.score_at_last_contact,
            at_last_contact=self._at_last_contact,
        )
        self.score_at_last_contact = result.score_at_last_contact
        self._at_last_contact = False
        return result

    def to_dict(self) -> dict[str, Any]:
        """The state as compact JSON-ready values (it is stored with every pair, so every byte
        counts): times as integer microseconds since the epoch, event types without their
        ``relationship.`` prefix, the pair itself left out (the row's key holds it). Floats
        and times round-trip exactly."""
        if self._at_last_contact:
            raise RuntimeError("call strength() before storing a fold")  # settles the score
        acc = self.acc
        key = self.last_key
        return {
            "at": _us(self.at),
            "key": None if key is None else [_us(key[0]), key[1]],
            "f": self.fast,
            "s": self.slow,
            "c": self.score_at_last_contact,
            "n": {_short(t): n for t, n in self.counts.items()},
            "sd": {
                p: [x.initiated, x.followed_up, x.replies, x.helped, x.introduced, x.effort]
                for p, x in acc.sides.items()
            },
            "b": {_short(k): [_us(t), n] for k, (t, n) in acc.burst.items()},
            "r": {d: [f, sl, _us(t)] for d, (f, sl, t) in acc.reservoirs.items()},
            "rt": {r: [_us(t), v] for r, (t, v) in acc.ratings.items()},
            "fi": _us(acc.first),
            "la": _us(acc.last),
            "d": acc.deepest,
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], person_a: str, person_b: str) -> Fold:
        """The inverse of :meth:`to_dict` (also after a JSON round trip) for the pair
        ``person_a``, ``person_b``. The stored key has no event id: two events of one pair
        never share a stream sequence, so (time, seq) orders them already."""
        fold = cls(person_a, person_b)
        acc = fold.acc
        fold.at = _from_us(d["at"])
        fold.fast, fold.slow = float(d["f"]), float(d["s"])
        key = d["key"]
        fold.last_key = None if key is None else (_at_us(key[0]), int(key[1]), "")
        fold.counts = {_long(k): int(v) for k, v in d["n"].items()}
        fold.score_at_last_contact = None if d["c"] is None else float(d["c"])
        for p, (i, f, r, h, n, eff) in d["sd"].items():
            acc.sides[p] = _Side(int(i), int(f), int(r), int(h), int(n), float(eff))
        acc.burst = {_long(k): (_at_us(t), int(n)) for k, (t, n) in d["b"].items()}
        acc.reservoirs = {k: (float(f), float(sl), _at_us(t)) for k, (f, sl, t) in d["r"].items()}
        acc.ratings = {k: (_at_us(t), int(v)) for k, (t, v) in d["rt"].items()}
        acc.first, acc.last = _from_us(d["fi"]), _from_us(d["la"])
        acc.deepest = d["d"]
        return fold


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


# ------------------------------------------------------------------------------------------------
# public functions


def strength(
    events: Iterable[PairEvent], params: Params = PARAMS, as_of: datetime | None = None
) -> Strength:
    """The strength of one pair's tie at ``as_of``.

    ``as_of=None`` means the time of the latest event; events after ``as_of`` are ignored (this is
    how "strength as of a date" works). Duplicates (same ``event_id``) count once; the order of
    ``events`` does not matter. All events must be of the same pair.
    """
    ordered = _canonical(events)
    if as_of is not None:
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        ordered = [e for e in ordered if e.occurred_at <= as_of]
    elif ordered:
        as_of = ordered[-1].occurred_at
    result = _compute(ordered, params, as_of)
    if result.last_contact_at is not None and result.last_contact_at != as_of:
        upto = [e for e in ordered if e.occurred_at <= result.last_contact_at]
        at_last = _compute(upto, params, result.last_contact_at).score
        result = replace(result, score_at_last_contact=at_last)
    elif result.last_contact_at is not None:
        result = replace(result, score_at_last_contact=result.score)
    return result


def timeline(
    events: Iterable[PairEvent], params: Params = PARAMS, as_of: datetime | None = None
) -> list[tuple[PairEvent, Contribution, float]]:
    """Each event (canonical order, up to ``as_of``), its contribution at ``as_of`` and the score
    right after it happened."""
    ordered = _canonical(events)
    if as_of is not None:
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        ordered = [e for e in ordered if e.occurred_at <= as_of]
    final = strength(ordered, params, as_of)
    by_id = {c.event_id: c for c in final.contributions}
    out: list[tuple[PairEvent, Contribution, float]] = []
    for i, event in enumerate(ordered):
        after = _compute(ordered[: i + 1], params, event.occurred_at).score
        out.append((event, by_id[event.event_id], after))
    return out


def tier_for(score: float, params: Params = PARAMS) -> str:
    """The tier a score falls in (without capacity limits)."""
    for tier in TIERS[:-1]:
        if score >= params.tier_thresholds[tier]:
            return tier
    return TIERS[-1]


def assign_tiers(scores: Mapping[str, float], params: Params = PARAMS) -> dict[str, str]:
    """One person's ties (other person -> score) -> tier, with Dunbar's capacity limits.

    Strongest first (ties broken by id); each tie gets the tier its score earns unless that layer
    is full (cumulative capacities: at most ~5 intimate, ~15 intimate + close, ...), in which case
    it moves out to the first layer with room.
    """
    inner = TIERS[:-1]
    counts = dict.fromkeys(TIERS, 0)
    out: dict[str, str] = {}
    for other, score in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])):
        rank = TIERS.index(tier_for(score, params))
        while rank < len(inner):
            cumulative = sum(counts[t] for t in TIERS[: rank + 1])
            if cumulative < params.tier_capacity[TIERS[rank]]:
                break
            rank += 1
        tier = TIERS[rank]
        counts[tier] += 1
        out[other] = tier
    return out


def follow_up_due(s: Strength, as_of: datetime, params: Params = PARAMS) -> tuple[bool, float]:
    """Whether the time since the last contact exceeds the cadence of the tier the tie had at
    that contact, and how many score points are at stake: what the score would lose between
    ``as_of`` and one more cadence later without contact. Ties in the outer tier ("contact") or
    without any contact are never due."""
    if s.last_contact_at is None or s.score_at_last_contact is None:
        return False, 0.0
    cadence = params.tier_cadence_days.get(tier_for(s.score_at_last_contact, params))
    if cadence is None:
        return False, 0.0
    due = _days(s.last_contact_at, as_of) > cadence
    state = s.state
    now = state.score_at(as_of, params)
    later = state.score_at(as_of + timedelta(days=cadence), params)
    return due, max(now - later, 0.0)


def vouches(s: Strength, params: Params = PARAMS) -> bool:
    """:func:`can_vouch`'s verdict alone (no reasons formatted: the projection's hot path)."""
    history = s.history_days
    return (
        TIERS.index(s.tier) <= TIERS.index(params.vouch_tier)
        and s.deepest_meeting in CONVERSATION_DEPTHS
        and history is not None
        and history >= params.vouch_min_history_days
        and not s.reciprocity.get("one_sided")
    )


def can_vouch(s: Strength, params: Params = PARAMS) -> tuple[bool, list[str]]:
    """Whether one side knows the other well enough to vouch for or introduce them.

    All must hold: tier at least ``vouch_tier``; at least one real conversation (a meeting of depth
    conversation or deeper); contact spread over at least ``vouch_min_history_days``; the tie is
    not one-sided. Returns the verdict and the reasons (the unmet ones when refused, the met ones
    when allowed).
    """
    met: list[str] = []
    unmet: list[str] = []
    need = TIERS.index(params.vouch_tier)
    tier_text = f"tier {s.tier} (score {s.score:.1f}); vouching needs {params.vouch_tier} or closer"
    (met if TIERS.index(s.tier) <= need else unmet).append(tier_text)
    if s.deepest_meeting in CONVERSATION_DEPTHS:
        met.append(f"has had a real conversation (deepest meeting: {s.deepest_meeting})")
    else:
        unmet.append(
            "no real conversation yet (deepest meeting: "
            f"{s.deepest_meeting or 'none'}); a card exchange or brief chat is not enough"
        )
    history = s.history_days
    if history is not None and history >= params.vouch_min_history_days:
        met.append(f"contact spread over {history:.0f} days")
    else:
        unmet.append(
            f"contact spread over {0.0 if history is None else history:.0f} days; "
            f"needs {params.vouch_min_history_days:.0f}"
        )
    if s.reciprocity.get("one_sided"):
        unmet.append("the tie is one-sided (one person makes almost all the effort)")
    else:
        met.append("the tie is not one-sided")
    return (not unmet), (unmet if unmet else met)


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


# ------------------------------------------------------------------------------------------------
# internals


def _canonical(events: Iterable[PairEvent]) -> list[PairEvent]:
    """De-duplicated by event_id (keeping the canonically first copy), in canonical order."""
    best: dict[str, PairEvent] = {}
    for e in events:
        kept = best.get(e.event_id)
        if kept is None or _key(e) < _key(kept):
            best[e.event_id] = e
    ordered = sorted(best.values(), key=_key)
    pairs = {(e.person_a, e.person_b) for e in ordered}
    if len(pairs) > 1:
        raise ValueError(f"events of more than one pair: {sorted(pairs)}")
    return ordered


def _key(e: PairEvent) -> tuple[datetime, int, str, str, str]:
    return (e.occurred_at, e.seq, e.event_id, e.type, repr(sorted(e.detail.items())))


def _days(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() / _DAY_SECONDS


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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PREFIX = "relationship."


def _us(t: datetime | None) -> int | None:
    """Microseconds since the epoch (exact for datetime's resolution)."""
    return None if t is None else (t - _EPOCH) // _MICROSECOND


def _at_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _from_us(us: int | None) -> datetime | None:
    return None if us is None else _at_us(us)


def _short(kind: str) -> str:
    return kind.removeprefix(_PREFIX)


def _long(kind: str) -> str:
    """The inverse of :func:`_short` (types of other families keep their own prefix)."""
    return kind if "." in kind.split(":", 1)[0] else _PREFIX + kind


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
