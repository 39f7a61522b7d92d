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

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from tieline.projections.strength_model_acc import _canonical, _compute
from tieline.projections.strength_model_bound import bound_keys, score_bound
from tieline.projections.strength_model_core import (
    Contribution,
    DecayState,
    PairEvent,
    Strength,
    _days,
    met_points,
    tier_for,
)
from tieline.projections.strength_model_fold import Fold
from tieline.projections.strength_model_params import (
    CONTACT_TYPES,
    CONVERSATION_DEPTHS,
    DEPTHS,
    FOLLOWED_UP,
    HELPED,
    INTRODUCED,
    MET,
    PARAMS,
    RATED,
    TIERS,
    Params,
)

__all__ = [
    "CONTACT_TYPES",
    "CONVERSATION_DEPTHS",
    "DEPTHS",
    "FOLLOWED_UP",
    "HELPED",
    "INTRODUCED",
    "MET",
    "PARAMS",
    "RATED",
    "TIERS",
    "Contribution",
    "DecayState",
    "Fold",
    "PairEvent",
    "Params",
    "Strength",
    "assign_tiers",
    "bound_keys",
    "can_vouch",
    "follow_up_due",
    "met_points",
    "score_bound",
    "strength",
    "tier_for",
    "timeline",
    "vouches",
]


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
