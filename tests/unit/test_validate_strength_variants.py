"""The fifth round's tools (bench/validate_strength_variants.py): its fast one-window calibration
must choose and refuse exactly as ``tieline calibrate`` does, and its parts must be momentum's."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

from tieline.projections.strength_model_calibrate import calibrate
from tieline.projections.strength_model_eval import DAY, Contact
from tieline.projections.strength_model_momentum import (
    MOMENTUM_2026_1,
    MOMENTUM_PARAMS,
    MomentumParams,
    momentum,
)

from bench import validate_strength_rounds as rounds
from bench import validate_strength_variants as variants
from bench.validate_strength_data import DataSet, to_events


def _history(seed: int, stationary: bool = False) -> DataSet:
    """40 people over 60 days: ties with their own rate, some stopping part-way, so that the
    grid's candidates rank pairs differently (``stationary``: one slow rate, no stopping, so
    that nothing but chance separates the candidates)."""
    rng = random.Random(seed)
    people = [f"p{i:02d}" for i in range(40)]
    contacts = []
    for _ in range(120):
        a, b = sorted(rng.sample(people, 2))
        rate, stop = rng.choice((0.2, 0.5, 1.5)), rng.uniform(10, 70)
        if stationary:
            rate, stop = 0.05, 70.0
        t = rng.uniform(0, 20)
        while t < min(stop, 60):
            contacts.append(Contact(float(int(t * DAY)), (a, b), None, 600.0))
            t += rng.expovariate(rate) + rng.choice((0.0, 0.0, 0.01))
    contacts.sort(key=lambda c: (c.t, c.pair))
    return DataSet("synthetic", False, tuple(contacts), tuple(c.t for c in contacts))


def _as_momentum_set(c: variants.Candidate) -> dict[str, float]:
    """A variants candidate as ``tieline calibrate`` names it (β is ``neighbour_weight``; the
    grid's candidates leave the partner term off)."""
    out = {k: v for k, v in c.items() if k != "beta"}
    return {**out, "partner_activity_weight": c.get("partner_activity_weight", 0.0),
            "neighbour_weight": c["beta"]}  # fmt: skip


def test_served_variant_is_tieline_calibrate() -> None:
    """The seventh round's last variant (the fourth round's rule kept on refusal, the grid
    times (1 + CN)^β) is what ``tieline calibrate`` does since momentum-2026.2: same choice,
    same refusal, same held-out interval: recommended on histories where ties stop (seeds
    1-3), refused on stationary ones (seeds 1-2)."""
    seen = set()
    served = variants.VARIANTS[5]
    assert served.default == variants.FOURTH_ROUND and served.betas == variants.BETAS
    for seed, stationary in ((1, False), (2, False), (3, False), (1, True), (2, True)):
        data = _history(seed, stationary)
        report = calibrate(to_events(data), holdout_share=0.25, bootstrap=200, models=["momentum"])
        found = report["models"]["momentum"]
        chosen, why = variants.calibrated(list(data.contacts), served, 200)
        expected = found["best"] if found["recommend"] else found["default"]
        assert _as_momentum_set(chosen) == expected, (seed, why)
        if not found["recommend"]:
            lo, hi = found["auc_best_minus_baseline_ci95"]
            assert why == f"refused: held-out gain [{lo:+.3f}, {hi:+.3f}]"
        seen.add(found["recommend"])
    assert seen == {True, False}


def test_log_scores_rank_as_momentum_does() -> None:
    data = _history(4)
    cutoff = 45 * DAY
    table, parts = variants.parts_at(list(data.contacts), cutoff, None)
    events = to_events(data)
    at = datetime.fromtimestamp(cutoff, UTC)
    cand = {**variants.candidates((0.0,))[7], "beta": 0.0}
    params = MomentumParams.from_dict(
        {k: v for k, v in cand.items() if k != "beta"}, MOMENTUM_2026_1
    )
    mine = variants.scores(parts, cand)
    theirs = []
    for pair in table.pairs:
        train = [e for e in events[pair] if e.occurred_at < at]
        theirs.append(momentum(train, at, table.context.people_last_active, params).score)
    compared = 0
    for i in range(len(mine)):
        for j in range(len(mine)):
            if theirs[i] < theirs[j] - 1e-9:  # momentum saturates near 100; the log does not
                assert mine[i] < mine[j]
                compared += 1
    assert compared > 1000
    assert params != MOMENTUM_PARAMS


def test_common_neighbours_raise_a_candidate_only_with_beta() -> None:
    p = variants.Parts({1 / 24: 3, 0.5: 2}, 1.0, 1.0, 0, 4, 0.5)
    q = variants.Parts({1 / 24: 3, 0.5: 2}, 1.0, 1.0, 4, 4, 0.5)
    base = variants.candidates((0.0,))[0]
    assert variants.scores([q], {**base, "beta": 0.5})[0] > variants.scores([p], base)[0]
    assert variants.scores([q], base) == variants.scores([p], base)
    assert math.isclose(
        variants.scores([q], {**base, "beta": 1.0})[0] - variants.scores([q], base)[0], math.log(5)
    )


def test_verdict() -> None:
    assert variants.verdict(0.001, 0.02) == "win"
    assert variants.verdict(-0.001, 0.02) == "tie"
    assert variants.verdict(-0.03, -0.001) == "loss"


def test_fourth_round_default_is_the_fourth_round_rule() -> None:
    """The last two variants' default scores each pair exactly as the fourth round's rule (contacts,
    both people's silences, common neighbours) and is the candidate kept on refusal."""
    data = _history(5)
    table, parts = variants.parts_at(list(data.contacts), 45 * DAY, None)
    _, fourth = rounds.parts_at(list(data.contacts), 45 * DAY, None)
    mine = variants.scores(parts, variants.FOURTH_ROUND)
    theirs = [rounds.rule(0.25)(p) for p in fourth]
    assert len(mine) == len(table.pairs) > 50
    assert all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(mine, theirs, strict=True))
    assert any(p.h2 != p.h for p in parts) and any(p.common for p in parts)
    assert variants.candidates((0.0,), variants.FOURTH_ROUND)[0] == variants.FOURTH_ROUND
    assert variants.candidates((0.0,))[0]["episode_exponent"] == MOMENTUM_2026_1.episode_exponent
    # and it is the served default, momentum-2026.2
    fourth = _as_momentum_set(variants.FOURTH_ROUND)
    assert fourth == {k: float(getattr(MOMENTUM_PARAMS, k)) for k in fourth}
