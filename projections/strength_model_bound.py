"""An upper bound on a tie's future score that an index can order: the ranked lists (a
person's strongest ties, follow-ups) read ties strongest-bound first and stop early.

Part of :mod:`tieline.projections.strength_model`; it depends on the score formula of
:meth:`~tieline.projections.strength_model_core.DecayState.score_at`, so a change of that
formula must change :func:`bound_keys` and :func:`score_bound` with it (the property test in
``tests/unit/test_strength_bound.py`` checks the bound on random states and parameter sets).

Why a bound and not the score itself
====================================
A stored tie's score at a time ``t`` after its state time ``at`` (``d`` days later) is::

    P(t) = fast * 2^(-d/h_fast) + slow * 2^(-d/h_slow)          (points)
    B(x) = 100 * (1 - exp(-(x / scale)^exponent))                 (increasing in x)
    R(t) = rating * 2^(-d/h_rating)                               (rated ties only)
    score(t) = B(P(t) * f)                      without a rating
             = (1 - w) * B(P(t) * f) + w * R(t)  with one

with the reciprocity factor ``f`` in ``[1 - penalty, 1]`` and the rating weight ``w`` in
``[0, 1]``. With two (or three) half-lives no time-invariant number orders ties by score for
every ``t``: a tie made of fast points ranks higher now and lower later. So each tie stores two
time-invariant keys, one per decaying term, each indexed; a reader walks both orders at once
and scores exactly what it reads. (One key bounding both terms with the slowest half-life is
valid too, but two years after the last events it overestimates ties whose points were mostly
fast when stored by up to ``1 / slow_share``: it read 150-270 ties of a 300-3,000-tie hub to
find the top 50 on the bench's data; two keys read about 55 of each order.)

The keys and the bound
======================
Let ``S = max(h_slow, h_rating)``, ``day(x)`` the days since the epoch, and

* ``s' = max(slow, 0)`` without a rating; with one, ``s' = max(slow, 0, B^-1(r))`` when
  ``exponent <= 1`` and ``r < 100``, where ``r`` is the stored rating and ``B^-1(v) = scale *
  (-ln(1 - v/100))^(1/exponent)`` the points that alone score ``v``; otherwise ``s' = +inf``
  (always read first);
* ``F = log2(max(fast, 0)) + day(at) / h_fast`` and ``L = log2(s') + day(at) / S``
  (``-inf`` for a zero amount): :func:`bound_keys`.

For any keys ``F0 >= F`` and ``L0 >= L`` of a tie, its score at ``t`` is at most
``B(2^(F0 - day(t)/h_fast) + 2^(L0 - day(t)/S))`` (:func:`score_bound`), which grows with
``F0`` and ``L0``.

Proof. Let ``u = 2^(-d/h_fast)`` and ``v = 2^(-d/S)``; for ``d >= 0``, ``2^(-d/h_slow) <= v``
and ``2^(-d/h_rating) <= v``. Then ``2^(F - day(t)/h_fast) = fast * u`` and ``2^(L -
day(t)/S) = s' * v``, so the bound is at least ``B(fast u + s' v) >= B(P(t)) >= B(P(t) f)``
(``f <= 1``, ``s' >= slow``, ``B`` increasing): that is the whole score of a tie without a
rating. With a rating, ``R(t) <= r v``, and ``r v <= B(s' v)``: for ``exponent <= 1``, ``B``
is concave (``1 - exp(-x)`` is concave and increasing, ``(x/scale)^exponent`` concave) with
``B(0) = 0``, so ``B(s' v) >= v B(s') >= v B(B^-1(r)) = r v`` for ``v <= 1``; otherwise ``s' =
+inf`` and the bound is 100. So ``score = (1 - w) B(P f) + w R <= (1 - w) B(fast u + s' v) + w
B(fast u + s' v)``. (For ``d < 0`` the model clamps ``d`` to 0 while ``u, v > 1``: every step
holds with the model's side at ``u = v = 1``.) The bound is tight for a tie without a rating
and with factor 1 when ``h_slow = S``: it is its score.

The early stop
==============
Read a person's ties in both orders (``F`` descending and ``L`` descending), ``n`` of each,
and score each tie read exactly. A tie read in neither has ``F`` at most the last ``F`` read
and ``L`` at most the last ``L`` read, so its score is at most the bound of those two keys;
once that is below the ``n``-th best exact score, the top ``n`` (and their capacity-limited
tiers, which depend only on the ties above them, see ``assign_tiers``) are those of the full
list. Each order holds every tie, so when one runs out every tie has been read.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from tieline.projections.strength_model_core import DecayState
from tieline.projections.strength_model_params import DAY_SECONDS, Params

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _slow_horizon(params: Params) -> float:
    """``S``: the slowest half-life of the slow points and the rating (days)."""
    return max(params.slow_half_life_days, params.rating_half_life_days)


def _day(t: datetime) -> float:
    return (t - _EPOCH).total_seconds() / DAY_SECONDS


def _behaviour(points: float, params: Params) -> float:
    """``B``: the score of ``points`` without a rating, reciprocity factor 1."""
    try:
        x = (points / params.score_scale_points) ** params.score_exponent
    except OverflowError:  # astronomically many points: saturated
        return 100.0
    return -100.0 * math.expm1(-x)


def _points_for(score: float, params: Params) -> float:
    """``B^-1``: the points that alone score ``score`` (< 100)."""
    units = -math.log1p(-score / 100.0)
    return params.score_scale_points * float(units ** (1.0 / params.score_exponent))


def _key(amount: float, day: float, half_life: float) -> float:
    if amount <= 0.0:
        return -math.inf
    return math.inf if amount == math.inf else math.log2(amount) + day / half_life


def bound_keys(state: DecayState, params: Params) -> tuple[float, float]:
    """The time-invariant keys ``(F, L)`` of a stored tie (see the module docstring)."""
    if state.at is None:
        return -math.inf, -math.inf
    slow = max(state.slow, 0.0)
    if state.rating is not None:
        r = max(state.rating, 0.0)
        if params.score_exponent > 1.0 or r >= 100.0:
            slow = math.inf
        else:
            # (a rating so small that its points underflow still gets a finite key: the
            # bound's absolute margin covers its score)
            slow = max(slow, _points_for(r, params), math.ulp(0.0) if r > 0.0 else 0.0)
    day = _day(state.at)
    fast = _key(max(state.fast, 0.0), day, params.fast_half_life_days)
    return fast, _key(slow, day, _slow_horizon(params))


def _amount(key: float, day: float, half_life: float) -> float:
    if key == -math.inf:
        return 0.0
    exponent = key - day / half_life
    return math.inf if exponent > 1000.0 else 2.0**exponent


def score_bound(fast_key: float, slow_key: float, t: datetime, params: Params) -> float:
    """An upper bound on the score at ``t`` of every tie whose :func:`bound_keys` are at most
    ``(fast_key, slow_key)`` (see the module docstring), with a small margin for
    floating-point rounding."""
    day = _day(t)
    points = _amount(fast_key, day, params.fast_half_life_days) + _amount(
        slow_key, day, _slow_horizon(params)
    )
    behaviour = 100.0 if points == math.inf else _behaviour(points, params)
    return behaviour * (1.0 + 1e-9) + 1e-9
