"""The strength model's constants and its versioned parameter set (:data:`PARAMS`).

Part of :mod:`tieline.projections.strength_model` (the write-up is in that module's docstring
and in ``docs/strength-model.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

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

DAY_SECONDS = 86400.0


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
