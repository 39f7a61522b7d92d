"""Properties and examples of the tie-strength model (projections/strength_model.py)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tieline.projections.strength_model import (
    PARAMS,
    TIERS,
    DecayState,
    Fold,
    PairEvent,
    Params,
    assign_tiers,
    can_vouch,
    follow_up_due,
    met_points,
    strength,
    tier_for,
    timeline,
)
from tieline.projections.strength_model_momentum import momentum

T0 = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)
A, B = "ann", "bob"
HISTORY_MINUTES = 4 * 365 * 24 * 60

PROPERTY = settings(max_examples=150, deadline=None)


def rank(tier: str) -> int:
    """0 = innermost tier; larger = weaker."""
    return TIERS.index(tier)


def met(
    i: int,
    at: datetime,
    depth: str = "conversation",
    minutes: int = 60,
    mode: str = "in_person",
    initiated_by: str | None = None,
    group_size: int = 2,
) -> PairEvent:
    detail = {
        "depth": depth,
        "mode": mode,
        "duration_minutes": minutes,
        "initiated_by": initiated_by,
        "group_size": group_size,
    }
    return PairEvent(f"m{i}", "relationship.met", at, i, A, B, detail)


def followed_up(
    i: int, at: datetime, sender: str, replied: bool, channel: str = "email"
) -> PairEvent:
    to = B if sender == A else A
    detail = {"from": sender, "to": to, "channel": channel, "replied": replied}
    return PairEvent(f"f{i}", "relationship.followed_up", at, i, A, B, detail)


def helped(i: int, at: datetime, helper: str) -> PairEvent:
    other = B if helper == A else A
    return PairEvent(
        f"h{i}", "relationship.helped", at, i, A, B, {"helper": helper, "helped": other}
    )


def rated(i: int, at: datetime, rater: str, rating: int) -> PairEvent:
    ratee = B if rater == A else A
    detail = {"rater": rater, "ratee": ratee, "rating": rating}
    return PairEvent(f"r{i}", "relationship.closeness_rated", at, i, A, B, detail)


def card(i: int, at: datetime) -> PairEvent:
    return met(i, at, depth="card_exchange", minutes=0)


def regular(
    days: float, years: float, depth: str = "conversation", minutes: int = 60
) -> list[PairEvent]:
    """In contact every ``days`` for ``years``, alternating who initiates."""
    n = int(years * 365 / days)
    return [
        met(i, T0 + timedelta(days=days * i), depth, minutes, initiated_by=(A, B)[i % 2])
        for i in range(n)
    ]


# --- hypothesis: random histories of one pair ----------------------------------------------------

people = st.sampled_from([A, B])


@st.composite
def pair_event(draw: st.DrawFn, i: int) -> PairEvent:
    at = T0 + timedelta(minutes=draw(st.integers(0, HISTORY_MINUTES)))
    seq = draw(st.integers(0, 10))
    kind = draw(
        st.sampled_from(["met", "met", "met", "followed_up", "introduced", "helped", "rated"])
    )
    detail: dict[str, Any]
    if kind == "met":
        detail = {
            "depth": draw(
                st.sampled_from(
                    [
                        "card_exchange",
                        "brief_chat",
                        "conversation",
                        "deep_conversation",
                        "meal_or_activity",
                    ]
                )
            ),
            "mode": draw(st.sampled_from(["in_person", "remote"])),
            "duration_minutes": draw(st.integers(0, 600)),
            "initiated_by": draw(st.sampled_from([A, B, None, "cat"])),
            "group_size": draw(st.integers(2, 12)),
        }
        return PairEvent(f"e{i}", "relationship.met", at, seq, A, B, detail)
    if kind == "followed_up":
        sender = draw(people)
        detail = {
            "from": sender,
            "to": B if sender == A else A,
            "channel": draw(st.sampled_from(["email", "phone", "message", "video", "social"])),
            "replied": draw(st.booleans()),
        }
        return PairEvent(f"e{i}", "relationship.followed_up", at, seq, A, B, detail)
    if kind == "introduced":
        if draw(st.booleans()):
            detail = {"introducer": "cat", "person_a": A, "person_b": B, "role": "introduced"}
        else:
            introducer = draw(people)
            other = B if introducer == A else A
            detail = {
                "introducer": introducer,
                "person_a": other,
                "person_b": "dan",
                "role": "introducer",
            }
        return PairEvent(f"e{i}", "relationship.introduced", at, seq, A, B, detail)
    if kind == "helped":
        helper = draw(people)
        detail = {"helper": helper, "helped": B if helper == A else A}
        return PairEvent(f"e{i}", "relationship.helped", at, seq, A, B, detail)
    rater = draw(people)
    detail = {"rater": rater, "ratee": B if rater == A else A, "rating": draw(st.integers(1, 5))}
    return PairEvent(f"e{i}", "relationship.closeness_rated", at, seq, A, B, detail)


@st.composite
def histories(draw: st.DrawFn, min_size: int = 1, max_size: int = 25) -> list[PairEvent]:
    n = draw(st.integers(min_size, max_size))
    return [draw(pair_event(i)) for i in range(n)]


def rename(e: PairEvent, mapping: dict[str, str]) -> PairEvent:
    """The same event with people renamed (person_a < person_b kept)."""

    def m(v: Any) -> Any:
        return mapping.get(v, v) if isinstance(v, str) else v

    a, b = sorted((m(e.person_a), m(e.person_b)))
    detail = {
        k: (v if k in ("depth", "mode", "channel", "role") else m(v)) for k, v in e.detail.items()
    }
    return PairEvent(e.event_id, e.type, e.occurred_at, e.seq, a, b, detail)


# --- the behaviour the brief asks for ------------------------------------------------------------


@PROPERTY
@given(minutes=st.lists(st.integers(0, HISTORY_MINUTES), min_size=1, max_size=300))
def test_card_exchanges_alone_never_reach_the_vouch_tier(minutes: list[int]) -> None:
    events = [card(i, T0 + timedelta(minutes=m)) for i, m in enumerate(minutes)]
    last = max(e.occurred_at for e in events)
    for as_of in (last, last + timedelta(days=1), last + timedelta(days=400)):
        s = strength(events, as_of=as_of)
        assert rank(s.tier) > rank(PARAMS.vouch_tier)
        assert s.tier == "contact"
        assert can_vouch(s)[0] is False


def test_a_burst_of_many_card_exchanges_stays_a_contact() -> None:
    events = [card(i, T0 + timedelta(seconds=10 * i)) for i in range(1000)]
    s = strength(events)
    assert s.tier == "contact"
    assert s.score < PARAMS.tier_thresholds["acquaintance"]
    assert any("burst" in c.reason for c in s.contributions)
    ok, reasons = can_vouch(s)
    assert not ok and any("conversation" in r for r in reasons)


@PROPERTY
@given(
    minutes=st.lists(st.integers(0, HISTORY_MINUTES), min_size=1, max_size=400),
    length=st.integers(0, 120),
)
def test_small_talk_alone_never_makes_more_than_a_friend(minutes: list[int], length: int) -> None:
    """Frequent small talk over-rates ties such as co-workers' (Marsden & Campbell 1984)."""
    events = [
        met(i, T0 + timedelta(minutes=m), "brief_chat", length) for i, m in enumerate(minutes)
    ]
    events += [card(1000 + i, T0 + timedelta(minutes=m)) for i, m in enumerate(minutes[:50])]
    assert rank(strength(events).tier) >= rank("friend")


def test_a_coworker_seen_every_weekday_is_at_most_a_friend_and_a_low_rating_says_less() -> None:
    coworker = [met(i, T0 + timedelta(days=i), "brief_chat", 20) for i in range(700) if i % 7 < 5]
    s = strength(coworker)
    assert s.tier == "friend"
    assert any("capped" in c.reason for c in s.contributions)
    rated_low = strength([*coworker, rated(9999, coworker[-1].occurred_at, A, 1)])
    assert rated_low.score < s.score


def test_daily_card_exchanges_for_years_stay_a_contact() -> None:
    events = [card(i, T0 + timedelta(days=i)) for i in range(3 * 365)]
    assert strength(events).tier == "contact"


@PROPERTY
@given(
    events=histories(),
    gaps=st.lists(st.floats(0, 5000, allow_nan=False), min_size=1, max_size=6),
)
def test_without_new_events_strength_never_rises(
    events: list[PairEvent], gaps: list[float]
) -> None:
    last = max(e.occurred_at for e in events)
    previous = strength(events, as_of=last)
    for gap in sorted(gaps):
        now = strength(events, as_of=last + timedelta(days=gap))
        assert now.score <= previous.score + 1e-9
        assert rank(now.tier) >= rank(previous.tier)
        if previous.rating is not None:
            assert now.rating is not None and now.rating <= previous.rating + 1e-9
        previous = now


def test_a_rating_after_the_last_contact_still_only_decays() -> None:
    events = [*regular(30, 2, "brief_chat", 10), rated(99, T0 + timedelta(days=800), A, 5)]
    scores = [strength(events, as_of=T0 + timedelta(days=800 + d)).score for d in range(0, 900, 30)]
    assert scores == sorted(scores, reverse=True)


@PROPERTY
@given(events=histories(), data=st.data())
def test_duplicate_events_never_change_the_result(
    events: list[PairEvent], data: st.DataObject
) -> None:
    dupes = data.draw(st.lists(st.sampled_from(events), min_size=1, max_size=10))
    mixed = [*events, *dupes]
    random.Random(data.draw(st.integers())).shuffle(mixed)
    assert strength(mixed) == strength(events)
    assert strength(mixed).explain() == strength(events).explain()


@PROPERTY
@given(events=histories(min_size=2), data=st.data())
def test_removing_an_event_gives_exactly_the_history_without_it(
    events: list[PairEvent], data: st.DataObject
) -> None:
    retracted = data.draw(st.sampled_from(events))
    as_of = max(e.occurred_at for e in events) + timedelta(days=data.draw(st.integers(0, 400)))
    never_there = [e for e in events if e.event_id != retracted.event_id]
    # The caller retracts by leaving the event out, whatever the order it sees them in.
    after_retraction = [e for e in reversed(events) if e.event_id != retracted.event_id]
    assert strength(after_retraction, as_of=as_of) == strength(never_there, as_of=as_of)
    # And adding it back gives the original result.
    assert strength([*never_there, retracted], as_of=as_of) == strength(events, as_of=as_of)


@PROPERTY
@given(events=histories())
def test_the_score_does_not_depend_on_who_is_person_a(events: list[PairEvent]) -> None:
    # "ann" < "bob"; renamed to "zoe", ann becomes person_b: same tie, seen from the other side.
    mirrored = [rename(e, {A: "zoe"}) for e in events]
    s, m = strength(events), strength(mirrored)
    assert m.person_a == B and m.person_b == "zoe"
    assert m.score == s.score
    assert m.tier == s.tier
    assert m.reciprocity["balance"] == -s.reciprocity["balance"]
    assert m.reciprocity["one_sided"] == s.reciprocity["one_sided"]
    assert m.reciprocity["effort"] == {
        "zoe": s.reciprocity["effort"][A],
        B: s.reciprocity["effort"][B],
    }


@PROPERTY
@given(events=histories(), seed=st.integers())
def test_the_order_of_the_input_does_not_matter(events: list[PairEvent], seed: int) -> None:
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    assert strength(shuffled) == strength(events)
    assert [c for _, c, _ in timeline(shuffled)] == [c for _, c, _ in timeline(events)]


@pytest.mark.parametrize(
    ("every_days", "years", "depth"),
    [(7, 3, "deep_conversation"), (14, 3, "deep_conversation"), (30, 5, "meal_or_activity")],
)
@pytest.mark.parametrize("one_off", ["conversation", "deep_conversation", "meal_or_activity"])
def test_a_long_friendship_survives_a_quiet_year_above_a_one_off_meeting_a_month_ago(
    every_days: int, years: int, depth: str, one_off: str
) -> None:
    friendship = regular(every_days, years, depth, 120)
    quiet = friendship[-1].occurred_at + timedelta(days=365)
    long_tie = strength(friendship, as_of=quiet)
    once = strength([met(0, quiet - timedelta(days=30), one_off, 120)], as_of=quiet)
    assert rank(long_tie.tier) < rank(once.tier)
    assert long_tie.score > once.score
    assert rank(long_tie.tier) <= rank("close")


@pytest.mark.parametrize("tier", ["intimate", "close", "friend", "acquaintance"])
def test_contact_at_the_layers_cadence_keeps_a_tie_in_its_layer(tier: str) -> None:
    """The calibration of tier_thresholds: an hour's talk in person at the layer's cadence for
    three years keeps the tie in that layer until the next contact is due, and not above it."""
    cadence = PARAMS.tier_cadence_days[tier]
    events = regular(cadence, 3)
    last = events[-1].occurred_at
    assert tier_for(strength(events, as_of=last + timedelta(days=cadence)).score) == tier
    assert rank(strength(events).tier) >= rank(tier)


# --- explain, follow-up, vouching ----------------------------------------------------------------


def test_explain_lists_top_contributions_decay_reciprocity_and_what_would_raise_it() -> None:
    events = [
        met(1, T0, "meal_or_activity", 90, initiated_by=A),
        met(2, T0 + timedelta(days=20), "card_exchange", 0),
        followed_up(3, T0 + timedelta(days=25), A, replied=True),
        helped(4, T0 + timedelta(days=40), B),
    ]
    as_of = T0 + timedelta(days=200)
    s = strength(events, as_of=as_of)
    x = s.explain(top=3)
    assert x["tier"] == s.tier and x["score"] == round(s.score, 4)
    assert len(x["top_contributions"]) == 3
    currents = [c["current"] for c in x["top_contributions"]]
    assert currents == sorted(currents, reverse=True)
    assert x["top_contributions"][0]["reason"] == "90-minute meal or activity in person"
    assert x["decay"]["days_since_contact"] == pytest.approx(160.0)
    assert x["decay"]["score_at_last_contact"] > x["score"]
    assert x["decay"]["lost_since_last_contact"] > 0
    assert x["reciprocity"]["initiated"] == {A: 1, B: 0}
    assert x["reciprocity"]["replies"] == {A: 0, B: 1}
    assert x["reciprocity"]["helped"] == {A: 0, B: 1}
    assert x["next_tier"] == TIERS[rank(s.tier) - 1]
    assert any("get in touch" in r for r in x["to_raise"])
    assert any(f"to reach {x['next_tier']}" in r for r in x["to_raise"])
    json.dumps(x)  # ready for the API


def test_explain_reasons_name_remote_groups_bursts_and_the_card_cap() -> None:
    events = [
        met(1, T0, "conversation", 30, mode="remote", group_size=8),
        *[card(10 + i, T0 + timedelta(days=3, minutes=i)) for i in range(3)],
        *[card(20 + i, T0 + timedelta(days=10 + i)) for i in range(5)],
    ]
    reasons = [c.reason for c in strength(events).contributions]
    assert reasons[0] == "30-minute conversation remote in a group of 8"
    assert reasons[1] == "card exchange in person"
    assert "2nd of a burst" in reasons[2]
    assert any("capped" in r for r in reasons[4:])


def test_follow_up_is_due_after_the_tiers_cadence_with_strength_at_stake() -> None:
    events = regular(30, 3)  # a "close" tie: monthly contact
    last = events[-1].occurred_at
    s = strength(events)
    assert s.tier == "close"
    due, stake = follow_up_due(s, last + timedelta(days=10))
    assert not due and stake > 0
    due, stake = follow_up_due(s, last + timedelta(days=45))
    assert due and stake > 0
    later = strength(events, as_of=last + timedelta(days=45))
    due_later, _ = follow_up_due(later, last + timedelta(days=45))
    assert due_later


def test_follow_up_is_never_due_for_a_mere_contact_or_without_contact() -> None:
    s = strength([card(1, T0)])
    assert follow_up_due(s, T0 + timedelta(days=3000)) == (False, 0.0)
    assert follow_up_due(strength([]), T0) == (False, 0.0)
    only_rating = strength([rated(1, T0, A, 5)])
    assert follow_up_due(only_rating, T0 + timedelta(days=100)) == (False, 0.0)


def test_a_friend_known_for_years_can_vouch() -> None:
    s = strength(regular(30, 2, "deep_conversation", 90))
    ok, reasons = can_vouch(s)
    assert ok, reasons
    assert any("real conversation" in r for r in reasons)


def test_cannot_vouch_after_a_single_intense_week() -> None:
    events = [met(i, T0 + timedelta(days=i), "meal_or_activity", 240) for i in range(7)]
    s = strength(events)
    assert rank(s.tier) <= rank(PARAMS.vouch_tier)  # strong enough ...
    ok, reasons = can_vouch(s)
    assert not ok  # ... but known for too short a time
    assert any("needs 90" in r for r in reasons)


def test_cannot_vouch_for_a_one_sided_tie() -> None:
    events = [
        *[followed_up(i, T0 + timedelta(days=20 * i), A, replied=False) for i in range(20)],
        *[
            met(100 + i, T0 + timedelta(days=60 * i), "conversation", 60, initiated_by=A)
            for i in range(6)
        ],
    ]
    s = strength(events)
    assert s.reciprocity["one_sided"] is True
    assert s.reciprocity["balance"] == 1.0
    assert s.reciprocity_factor < 1.0
    ok, reasons = can_vouch(s)
    assert not ok and any("one-sided" in r for r in reasons)


def test_cannot_vouch_without_a_real_conversation() -> None:
    events = [met(i, T0 + timedelta(days=3 * i), "brief_chat", 15) for i in range(200)]
    s = strength(events)
    ok, reasons = can_vouch(s)
    assert not ok and any("no real conversation" in r for r in reasons)


# --- the pieces of the model ---------------------------------------------------------------------


def test_points_follow_depth_mode_duration_and_group_size() -> None:
    assert met_points("card_exchange", 30) == met_points("card_exchange", 0)
    order = ["card_exchange", "brief_chat", "conversation", "deep_conversation"]
    assert [met_points(d, 60) for d in order] == sorted(met_points(d, 60) for d in order)
    assert met_points("conversation", 60, mode="remote") < met_points("conversation", 60)
    # Minutes matter, with diminishing returns.
    p30, p60, p120, p240 = (met_points("conversation", m) for m in (30, 60, 120, 240))
    assert p30 < p60 < p120 < p240
    assert (p240 - p120) / 120 < (p120 - p60) / 60 < (p60 - p30) / 30
    assert met_points("conversation", 60, group_size=4) == met_points("conversation", 60)
    assert met_points("conversation", 60, group_size=10) < met_points("conversation", 60)


def test_a_closeness_rating_pulls_the_score_towards_it() -> None:
    coworker = [met(i, T0 + timedelta(days=i), "brief_chat", 20) for i in range(0, 700, 2)]
    base = strength(coworker)
    low = strength([*coworker, rated(999, coworker[-1].occurred_at, A, 1)])
    high = strength([*coworker, rated(999, coworker[-1].occurred_at, A, 5)])
    assert low.score < base.score < high.score
    assert low.rating == PARAMS.rating_scores["1"]
    assert strength([rated(1, T0, A, 5), rated(2, T0, B, 3)]).rating == pytest.approx(
        (PARAMS.rating_scores["5"] + PARAMS.rating_scores["3"]) / 2
    )


def test_the_latest_rating_of_each_rater_counts() -> None:
    s = strength([rated(1, T0, A, 5), rated(2, T0 + timedelta(seconds=1), A, 2)])
    assert s.rating == pytest.approx(PARAMS.rating_scores["2"], rel=1e-6)


def test_events_after_as_of_are_ignored() -> None:
    events = regular(30, 2)
    cut = T0 + timedelta(days=200)
    assert strength(events, as_of=cut) == strength(
        [e for e in events if e.occurred_at <= cut], as_of=cut
    )
    assert strength(events, as_of=T0 - timedelta(days=1)).score == 0.0


def test_timeline_gives_each_events_contribution_and_the_score_right_after_it() -> None:
    events = regular(30, 1)
    rows = timeline(events)
    assert [e.event_id for e, _, _ in rows] == [e.event_id for e in events]
    assert rows[-1][2] == strength(events).score
    assert rows[0][2] == strength(events[:1]).score
    assert all(c.points > 0 and c.current <= c.points for _, c, _ in rows)


def test_assign_tiers_respects_dunbar_capacities_strongest_first() -> None:
    scores = {f"p{i:03d}": 95.0 - i * 0.01 for i in range(300)}
    tiers = assign_tiers(scores)
    counts = {t: list(tiers.values()).count(t) for t in TIERS}
    assert counts == {"intimate": 5, "close": 10, "friend": 35, "acquaintance": 100, "contact": 150}
    assert all(tiers[f"p{i:03d}"] == "intimate" for i in range(5))
    # Weak ties keep the tier their score earns.
    assert assign_tiers({"x": 40.0, "y": 1.0}) == {"x": "friend", "y": "contact"}


def test_decay_state_gives_the_score_lazily_at_a_later_time() -> None:
    events = [*regular(14, 2, "deep_conversation", 90), rated(500, T0 + timedelta(days=700), B, 4)]
    s = strength(events)
    state = DecayState.from_dict(json.loads(json.dumps(s.state.to_dict())))
    assert state == s.state
    for days in (0, 10, 100, 1000):
        later = s.as_of + timedelta(days=days) if s.as_of else T0
        assert state.score_at(later) == pytest.approx(strength(events, as_of=later).score, rel=1e-9)


def test_scaled_params_run_the_same_model_in_minutes() -> None:
    days = [
        met(i, T0 + timedelta(days=d), "conversation", 30)
        for i, d in enumerate([0, 3, 40, 41, 200])
    ]
    mins = [
        met(i, T0 + timedelta(minutes=d), "conversation", 30)
        for i, d in enumerate([0, 3, 40, 41, 200])
    ]
    minutes = PARAMS.scaled(1 / 1440)
    assert minutes.fast_half_life_days == pytest.approx(30 / 1440)
    assert minutes.version.startswith(PARAMS.version)
    a = strength(days, as_of=T0 + timedelta(days=300))
    b = strength(mins, params=minutes, as_of=T0 + timedelta(minutes=300))
    assert b.score == pytest.approx(a.score, rel=1e-9)
    assert b.tier == a.tier


def test_params_round_trip_through_json_and_partial_what_if_files() -> None:
    assert Params.from_dict(json.loads(json.dumps(PARAMS.to_dict()))) == PARAMS
    what_if = Params.from_dict(
        {"version": "what-if", "slow_share": 0.5, "rating_scores": {"5": 95}}
    )
    assert what_if.slow_share == 0.5 and what_if.rating_scores["5"] == 95
    assert what_if.rating_scores["1"] == PARAMS.rating_scores["1"]
    with pytest.raises(ValueError, match="unknown"):
        Params.from_dict({"nonsense": 1})
    with pytest.raises(ValueError, match="tier_thresholds"):
        Params.from_dict({"tier_thresholds": {"close": 90.0}})


def test_events_of_two_pairs_are_refused() -> None:
    other = PairEvent("x", "relationship.met", T0, 0, A, "cat", {"depth": "conversation"})
    with pytest.raises(ValueError, match="more than one pair"):
        strength([met(1, T0), other])


def test_an_empty_history_is_a_zero_contact() -> None:
    s = strength([])
    assert (s.score, s.tier, s.last_contact_at, s.contributions) == (0.0, "contact", None, ())
    assert s.explain()["top_contributions"] == []


def test_vouches_gives_the_same_verdict_as_can_vouch() -> None:
    from tieline.projections.strength_model import can_vouch, vouches

    base = datetime(2024, 1, 1, tzinfo=UTC)
    cases = [
        [
            PairEvent(
                f"e{i}",
                "relationship.met",
                base + timedelta(days=14 * i),
                i,
                "a",
                "b",
                {"depth": depth, "duration_minutes": 90, "initiated_by": "ab"[i % 2]},
            )
            for i in range(n)
        ]
        for depth in ("card_exchange", "brief_chat", "conversation", "meal_or_activity")
        for n in (1, 3, 12, 40)
    ]
    verdicts = set()
    for events in cases:
        s = strength(events)
        verdicts.add(vouches(s))
        assert vouches(s) == can_vouch(s)[0]
    assert verdicts == {True, False}


# --- the read model's incremental fold ------------------------------------------------------------


def _close(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is y
    return abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y))


@PROPERTY
@given(histories(max_size=40))
def test_folding_events_one_by_one_gives_the_strength_of_the_whole_history(
    events: list[PairEvent],
) -> None:
    fold = Fold.of(events)
    assert fold is not None
    folded, whole = fold.strength(), strength(events)
    assert _close(folded.score, whole.score)
    assert _close(folded.fast, whole.fast) and _close(folded.slow, whole.slow)
    assert _close(folded.rating, whole.rating)
    assert _close(folded.score_at_last_contact, whole.score_at_last_contact)
    assert folded.reciprocity == whole.reciprocity
    assert (folded.first_contact_at, folded.last_contact_at, folded.deepest_meeting) == (
        whole.first_contact_at,
        whole.last_contact_at,
        whole.deepest_meeting,
    )
    assert fold.event_count == len({e.event_id for e in events})
    # The stored momentum episodes are what the pure momentum model counts.
    last = max(e.occurred_at for e in events)
    assert fold.episodes == momentum(events, last).episodes


@PROPERTY
@given(histories(max_size=40), st.integers(0, 40))
def test_a_fold_stored_as_json_and_continued_is_bit_identical_to_one_fold(
    events: list[PairEvent], cut: int
) -> None:
    ordered = sorted(
        {e.event_id: e for e in events}.values(), key=lambda e: (e.occurred_at, e.seq, e.event_id)
    )
    head, tail = ordered[:cut], ordered[cut:]
    stored = Fold.of(head)
    if stored is not None:
        stored.strength()  # what the projection does before it stores a fold
    resumed = Fold.from_dict(json.loads(stored.to_json()), A, B) if stored else Fold(A, B)
    for e in tail:
        assert resumed.accepts(e)
        resumed.add(e)
    once = Fold.of(ordered)
    assert once is not None
    assert resumed.strength() == once.strength()
    assert resumed.to_json() == once.to_json()


def test_a_fold_refuses_an_event_older_than_its_latest() -> None:
    fold = Fold.of([met(1, T0 + timedelta(days=3))])
    assert fold is not None
    assert not fold.accepts(met(2, T0 + timedelta(days=1)))
    assert fold.accepts(met(3, T0 + timedelta(days=4)))
