"""The ranked lists' bound (projections/strength_model_bound.py): a tie's score at any time is
at most the bound of its stored keys, and the bound grows with each key, for random decay
states, random parameter sets and the states real histories fold to."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from tieline.projections.strength_model import (
    PARAMS,
    DecayState,
    Fold,
    Params,
    bound_keys,
    score_bound,
)

from tests.unit.test_strength_model import A, B, histories, rename

T0 = datetime(2024, 1, 1, tzinfo=UTC)
amounts = st.one_of(st.just(0.0), st.floats(0.0, 5000.0))


@st.composite
def params_sets(draw: st.DrawFn) -> Params:
    """The model's parameters with the terms the bound depends on drawn at random."""
    half = st.floats(0.5, 3000.0)
    return replace(
        PARAMS,
        version="drawn",
        fast_half_life_days=draw(half),
        slow_half_life_days=draw(half),
        rating_half_life_days=draw(half),
        rating_weight=draw(st.floats(0.0, 1.0)),
        reciprocity_penalty=draw(st.floats(0.0, 1.0)),
        score_scale_points=draw(st.floats(0.5, 100.0)),
        score_exponent=draw(st.floats(0.2, 2.0)),
    )


@st.composite
def states(draw: st.DrawFn, params: Params) -> DecayState:
    r_max = max(params.rating_scores.values())
    rating = draw(st.one_of(st.none(), st.just(0.0), st.floats(0.0, r_max)))
    factor = draw(st.floats(1.0 - params.reciprocity_penalty, 1.0))
    at = T0 + timedelta(days=draw(st.floats(0.0, 3000.0)))
    return DecayState(at, draw(amounts), draw(amounts), factor, rating, params.version)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_score_never_exceeds_the_bound_of_its_key(data: st.DataObject) -> None:
    params = data.draw(params_sets())
    state = data.draw(states(params))
    assert state.at is not None
    t = state.at + timedelta(days=data.draw(st.floats(-200.0, 20_000.0)))
    assert state.score_at(t, params) <= score_bound(*bound_keys(state, params), t, params)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_bound_grows_with_the_key(data: st.DataObject) -> None:
    params = data.draw(params_sets())
    one, two = data.draw(states(params)), data.draw(states(params))
    t = T0 + timedelta(days=data.draw(st.floats(0.0, 10_000.0)))
    (f1, s1), (f2, s2) = bound_keys(one, params), bound_keys(two, params)
    lo, hi = (min(f1, f2), min(s1, s2)), (max(f1, f2), max(s1, s2))
    assert score_bound(*lo, t, params) <= score_bound(f1, s1, t, params)
    assert score_bound(f1, s1, t, params) <= score_bound(*hi, t, params)
    # every tie whose keys are at most both maxima scores at most their bound
    assert max(one.score_at(t, params), two.score_at(t, params)) <= score_bound(*hi, t, params)


@settings(max_examples=150, deadline=None)
@given(histories(), st.floats(0.0, 5000.0))
def test_bound_holds_on_folded_histories(events: list, later_days: float) -> None:  # type: ignore[type-arg]
    fold = Fold.of([rename(e, {A: "p1", B: "p2"}) for e in events], PARAMS)
    assert fold is not None
    state = fold.strength(PARAMS).state
    assert state.at is not None
    t = state.at + timedelta(days=later_days)
    keys = bound_keys(state, PARAMS)
    assert max(keys) > -math.inf or state.score_at(t, PARAMS) == 0.0
    assert state.score_at(t, PARAMS) <= score_bound(*keys, t, PARAMS)


def test_a_tie_without_points_or_rating_never_scores() -> None:
    state = DecayState(T0, 0.0, 0.0, 1.0, None, PARAMS.version)
    assert bound_keys(state, PARAMS) == (-math.inf, -math.inf)
    assert score_bound(-math.inf, -math.inf, T0, PARAMS) < 1e-8
    assert state.score_at(T0, PARAMS) == 0.0


def test_the_bound_is_tight_for_slow_points_without_rating() -> None:
    """Fast and slow points, factor 1, no rating: the bound is the score itself (rounding),
    so the early stop is not loose where most long ties live."""
    state = DecayState(T0, 30.0, 12.5, 1.0, None, PARAMS.version)
    keys = bound_keys(state, PARAMS)
    for days in (0, 30, 400, 2000):
        t = T0 + timedelta(days=days)
        score = state.score_at(t, PARAMS)
        assert score <= score_bound(*keys, t, PARAMS) <= score + 1e-6
