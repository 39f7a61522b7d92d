"""The eighth look's grid (bench/validate_strength_wide.py): a rule's weights score pairs as the
served momentum rule does, and a cell's fast path (precomputed logarithms) equals the rule's own
score and its margin over the best baseline; and the post-hoc search keeps only rules whose
interval is above zero in every reported cell."""

from __future__ import annotations

import math
import random

import pytest
from tieline.projections.strength_model_eval import DAY, PRIMARY, Contact
from tieline.projections.strength_model_stats import auc

from bench import validate_strength_rounds as rounds
from bench import validate_strength_wide as wide


def _contacts(seed: int = 3) -> list[Contact]:
    rng = random.Random(seed)
    people = [f"p{i}" for i in range(12)]
    out = []
    for _ in range(300):
        a, b = sorted(rng.sample(people, 2))
        out.append(Contact(rng.uniform(0, 20) * DAY, (a, b), None, 60.0))
    return sorted(out, key=lambda c: (c.t, c.pair))


def test_the_served_weights_rank_as_the_fourth_rounds_rule() -> None:
    _, parts = rounds.parts_at(_contacts(), 12 * DAY, None)
    served = [wide.SERVED.score(p) for p in parts]
    fourth = [rounds.rule(0.25)(p) for p in parts]
    # the same log score up to the constant the rule's ε/(x + ε) factors add
    shift = [s - f for s, f in zip(served, fourth, strict=True)]
    assert max(shift) - min(shift) < 1e-9
    assert math.isclose(shift[0], -2.5 * math.log(wide.MINUTE))
    assert wide.SERVED in wide.GRID


def test_a_cell_scores_rules_as_they_do_and_its_margin_is_over_the_best_baseline() -> None:
    table, parts = rounds.parts_at(_contacts(), 12 * DAY, 16 * DAY)
    labels = table.labels[PRIMARY]
    assert 0 < sum(labels) < len(labels)  # both classes, so the AUCs mean something
    baseline = rounds.best_baseline(table)
    cell = wide.Cell.of(parts, labels, baseline, table.features[baseline])
    for rule in (wide.SERVED, wide.GRID[0], wide.GRID[-1], wide.Rule(1, 2, 0.5, 1, 1, 1 / 24)):
        fast = cell.scores(rule)
        slow = [rule.score(p) for p in parts]
        assert all(math.isclose(f, s, abs_tol=1e-9) for f, s in zip(fast, slow, strict=True))
        want = auc(slow, labels) - auc(table.features[baseline], labels)
        assert math.isclose(cell.margin(rule), want, abs_tol=1e-12)


def test_hindsight_keeps_only_rules_above_the_baseline_in_every_reported_cell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(5)
    parts = [rounds.Parts(rng.randint(1, 9), rng.uniform(0, 3), 1.0, 0.5, 0) for _ in range(120)]
    labels = [p.contacts >= 5 for p in parts]
    noise = [rng.random() for _ in parts]  # a baseline that ranks at random
    cell = wide.Cell.of(parts, labels, "noise", noise)
    table = {(n, s, wide.REPORT_SHARE): cell for n in wide.NAMES for s in ("time", "count")}
    by_count = wide.Rule(1, 0, 0, 0, 0, wide.MINUTE)  # separates the labels exactly
    by_gap = wide.Rule(0, 1, 0, 0, 0, wide.MINUTE)  # as random as the baseline
    monkeypatch.setattr(wide, "GRID", (by_gap, by_count))
    margins = {r: {k: c.margin(r) for k, c in table.items()} for r in wide.GRID}
    assert margins[by_count][("hospital", "time", wide.REPORT_SHARE)] > 0.4
    assert wide.hindsight(margins, table, 200, list(table)) == [by_count]
    assert wide.hindsight(margins, table, 200, wide.HOSPITAL, among=[by_gap]) == []
