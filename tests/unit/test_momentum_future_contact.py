"""A contact dated a little ahead of the clock (accepted within ``max_future_skew_s``) read
*now* from its stored row: momentum treats it as just now, in 0-100, for every set of the
documented grid (a set on momentum-2026.1's arithmetic with eps of a minute gave scores above
100, below 0, or divided by zero)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from tieline.projections.strength_model_momentum import (
    MOMENTUM_2026_1,
    MOMENTUM_GRID,
    MOMENTUM_SETS,
    combine,
)

MINUTE = 1 / 1440
#: Days since the last contact, as a read now sees a contact dated that far ahead.
AHEAD = (-0.5 * MINUTE, -MINUTE, -3 * MINUTE, -5 * MINUTE)


def grid_sets() -> list[object]:
    """Every combination of the grid, on each base set's arithmetic."""
    keys = list(MOMENTUM_GRID)
    out = []
    for base in MOMENTUM_SETS.values():
        for values in itertools.product(*(MOMENTUM_GRID[k] for k in keys)):
            out.append(dataclasses.replace(base, **dict(zip(keys, values, strict=True))))
    return out


@pytest.mark.parametrize("g", AHEAD)
def test_a_contact_dated_ahead_scores_as_one_just_now(g: float) -> None:
    for params in grid_sets():
        for episodes in (1, 4):
            ahead = combine(params, episodes, g, 0.0, 0.0, 2)  # type: ignore[arg-type]
            now = combine(params, episodes, 0.0, 0.0, 0.0, 2)  # type: ignore[arg-type]
            assert 0.0 <= ahead <= 100.0 and ahead == now, (params, g)


def test_the_first_sets_arithmetic_is_unchanged_for_past_contacts() -> None:
    """Its stored versions read back bit for bit: only g < 0 changed."""
    p = dataclasses.replace(MOMENTUM_2026_1, eps_days=MINUTE)
    m = 2.0**p.episode_exponent * (MINUTE / (0.25 + MINUTE))
    m *= (MINUTE / (0.5 + MINUTE)) ** p.activity_weight
    assert combine(p, 2, 0.25, 0.5) == 100.0 * m / (1.0 + m)
