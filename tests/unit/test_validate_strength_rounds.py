"""The fourth round's tools (bench/validate_strength_rounds.py): common neighbours at a cut-off,
and the logistic fit that the transfer and ceiling figures rest on."""

from __future__ import annotations

import math
import random

from tieline.projections.strength_model_eval import DAY, Contact

from bench import validate_strength_rounds as rounds


def _meet(t_days: float, a: str, b: str) -> Contact:
    x, y = sorted((a, b))
    return Contact(t_days * DAY, (x, y), None, 60.0)


def test_parts_count_common_neighbours_before_the_cut_off_only() -> None:
    contacts = [
        _meet(0, "a", "b"),
        _meet(1, "a", "c"),
        _meet(2, "b", "c"),  # c: a common neighbour of a and b
        _meet(3, "a", "d"),
        _meet(4, "a", "b"),
        _meet(6, "b", "d"),  # after the cut-off: d is not (yet) common
    ]
    table, parts = rounds.parts_at(contacts, 5 * DAY, None)
    by_pair = dict(zip(table.pairs, parts, strict=True))
    ab = by_pair[("a", "b")]
    assert (ab.contacts, ab.common) == (2, 1)
    assert math.isclose(ab.g, 1.0)
    assert math.isclose(ab.h, 1.0) and math.isclose(ab.h2, 1.0)
    assert by_pair[("a", "d")].common == 0
    ad = by_pair[("a", "d")]  # d last active at day 3, a at day 4
    assert math.isclose(ad.h, 2.0) and math.isclose(ad.h2, 1.0)
    assert ("b", "d") not in by_pair  # its only contact is after the cut-off


def test_rule_rises_with_common_neighbours_when_beta_is_positive() -> None:
    p = rounds.Parts(3, 1.0, 1.0, 0.5, 0)
    q = rounds.Parts(3, 1.0, 1.0, 0.5, 4)
    assert rounds.rule(0.25)(q) > rounds.rule(0.25)(p)
    assert rounds.rule(0.0)(q) == rounds.rule(0.0)(p)


def test_logistic_fit_recovers_known_weights() -> None:
    rng = random.Random(7)
    truth = [-0.5, 1.5, -2.0]
    x, y = [], []
    for _ in range(4000):
        row = [rng.gauss(0, 1), rng.gauss(3, 2)]
        s = truth[0] + truth[1] * row[0] + truth[2] * row[1] / 2
        x.append(row)
        y.append(rng.random() < 1 / (1 + math.exp(-s)))
    w = rounds.fit_logistic(x, y, l2=1e-6)
    assert abs(w[1] - 1.5) < 0.2
    assert abs(w[2] - (-1.0)) < 0.15
    assert abs(w[0] - (-0.5)) < 0.3
