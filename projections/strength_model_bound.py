"""An upper bound on a tie's future score that an index can order: the ranked lists (a
person's strongest ties, follow-ups) read ties strongest-bound first and stop early.

Part of :mod:`tieline.projections.strength_model`; it depends on the score formula of
:meth:`~tieline.projections.strength_model_core.DecayState.score_at`, so a change of that
formula must change :func:`bound_key` and :func:`score_bound` with it (the property test in
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
every ``t``: a tie made of fast points ranks higher now and lower later. So the index orders
ties by a time-invariant *bound* key instead, and a reader scores exactly in that order.

The bound
=========
Let ``H = max(h_fast, h_slow, h_rating)``, ``m = max(fast, 0) + max(slow, 0)`` and ``r`` the
stored rating (``rating`` above). The key is ``K = log2(c) + day(at) / H`` (``day``: days since
the epoch) with

* ``c = m`` for a tie without a rating;
* ``c = max(m, B^-1(r))`` for a rated tie when ``exponent <= 1`` and ``r < 100``, where
  ``B^-1(s) = scale * (-ln(1 - s/100))^(1/exponent)`` is the points that alone score ``s``;
* ``c = +inf`` (``K = +inf``: always read first) for a rated tie otherwise;

(``K = -inf`` when ``c = 0``), and the bound at ``t`` of every tie with key at most ``K`` is
``G = B(z)`` with ``z = 2^(K - day(t) / H) = c * y``, ``y = 2^(-d/H)``.

Claim: ``score(t) <= B(c * y)`` for every ``t``, and ``B(2^(K - day(t)/H))`` grows with ``K``.

Proof. For ``d >= 0`` and any half-life ``h <= H``, ``2^(-d/h) <= y``; so ``P(t) <= m * y``
and ``R(t) <= r * y``. (For ``d < 0`` the model clamps ``d`` to 0: ``P = m``, ``R = r``, and
``y > 1``; every step below holds with ``y`` replaced by 1 on the model's side.) ``f <= 1`` and
``B`` increases, so ``B(P f) <= B(m y) <= B(c y)``: that is the whole score of a tie without a
rating. With a rating, ``score = (1 - w) B(P f) + w R <= (1 - w) B(c y) + w r y``, and ``r y
<= B(c y)``: for ``exponent <= 1``, ``B`` is concave (``1 - exp(-u)`` is concave and increasing,
``(x/scale)^exponent`` concave) with ``B(0) = 0``, so ``B(c y) >= y B(c) >= y B(B^-1(r)) = r
y`` for ``y <= 1``; otherwise ``c = +inf`` and the bound is 100. Hence ``score <= B(c y)``.
Finally ``2^(K - day(t)/H)`` increases with ``K`` and ``B`` increases, so ordering ties by ``K``
descending orders their bounds descending at every ``t``. The bound is tight for a tie of slow
points alone (``h_slow = H``, factor 1, no rating): it is its score.

The early stop
==============
Read a person's ties by ``K`` descending, score each exactly, and stop after a tie whose ``K``
gives ``G`` below the ``n``-th best exact score: every unread tie has ``K`` at most that one's,
so its score is below the ``n``-th, and the top ``n`` (and their capacity-limited tiers, which
depend only on the ties above them, see ``assign_tiers``) are those of the full list.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from tieline.projections.strength_model_core import DecayState
from tieline.projections.strength_model_params import DAY_SECONDS, Params

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _horizon(params: Params) -> float:
    """The slowest half-life of the score's decaying terms (days)."""
    return max(params.fast_half_life_days, params.slow_half_life_days, params.rating_half_life_days)


def _day(t: datetime) -> float:
    return (t - _EPOCH).total_seconds() / DAY_SECONDS


def _behaviour(points: float, params: Params) -> float:
    """``B``: the score of ``points`` without a rating, reciprocity factor 1."""
    return -100.0 * math.expm1(-((points / params.score_scale_points) ** params.score_exponent))


def _points_for(score: float, params: Params) -> float:
    """``B^-1``: the points that alone score ``score`` (< 100)."""
    units = -math.log1p(-score / 100.0)
    return params.score_scale_points * float(units ** (1.0 / params.score_exponent))


def bound_key(state: DecayState, params: Params) -> float:
    """The time-invariant key ``K`` of a stored tie (see the module docstring)."""
    if state.at is None:
        return -math.inf
    c = max(state.fast, 0.0) + max(state.slow, 0.0)
    if state.rating is not None:
        r = max(state.rating, 0.0)
        if params.score_exponent > 1.0 or r >= 100.0:
            return math.inf
        # (a rating so small that its points underflow still gets a finite key: the bound's
        # absolute margin covers its score)
        c = max(c, _points_for(r, params), math.ulp(0.0) if r > 0.0 else 0.0)
    if c <= 0.0:
        return -math.inf
    return math.log2(c) + _day(state.at) / _horizon(params)


def score_bound(key: float, t: datetime, params: Params) -> float:
    """An upper bound on the score at ``t`` of every tie whose :func:`bound_key` is at most
    ``key`` (see the module docstring), with a small margin for floating-point rounding."""
    if key == -math.inf:
        return 0.0
    exponent = key - _day(t) / _horizon(params)
    behaviour = 100.0 if exponent > 1000.0 else _behaviour(2.0**exponent, params)
    return behaviour * (1.0 + 1e-9) + 1e-9
