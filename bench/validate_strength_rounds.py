"""Issue #16, fourth round: two more ideas for "will the relationship continue two-way?", scored
by the protocol of docs/strength-model.md §8 (choose at earlier cut-offs, run once at the
reported one), and how far a formula *fitted* to a history transfers to a later cut-off.

1. **Neighbourhood overlap** (Granovetter 1973; Onnela et al. 2007, PNAS 104:7332: overlap of
   two people's contacts grows with the strength of their tie; link prediction by common
   neighbours, Liben-Nowell & Kleinberg 2007): the third round's rule (contacts³ · ε/(g + ε) ·
   ε/(h + ε) · (ε/(h2 + ε))^0.5, ε = 1 minute) times ``(1 + CN)^β``, CN the number of people
   both had contact with before the cut-off. β is chosen by the smallest of the 12 margins
   AUC(rule) - AUC(best baseline) of the primary label at the 30% and 40% cut-offs (labels up
   to 45% and 60%), then run once at the reported 60% cut-offs on every label.
2. **A fitted formula** (what a finer ``tieline calibrate`` could do): logistic regression of the
   label on log contacts, log(g + ε), log(h + ε), log(h2 + ε), log(1 + CN): a power-law product
   like momentum's, with exponents fitted instead of picked from a grid. *Transfer*: fitted on
   the history before the reported cut-off alone (pooled over the last five of ten earlier
   cut-offs, labels up to the reported cut-off), scored at the reported cut-off. *Ceiling*: the
   same formula fitted at the reported cut-off itself, scored out of fold (5-fold, 3 repeats):
   what this family of formulas could reach if the period's pattern were known in advance.

3. **What ``tieline calibrate`` itself would leave each history on** (``--calibrate``): the whole
   of :func:`~tieline.projections.strength_model_calibrate.calibrate` (choose, validate on
   held-out time, recommend only with the interval of the gain above zero) run on each set's
   events before the reported cut-off; the momentum set it recommends, or the default when it
   refuses, is then scored at the reported cut-off. ``momentum_calibrated`` of
   ``bench.validate_strength`` only *chooses*; this adds the refusal rule.

Run: ``python -m bench.validate_strength_rounds [--bootstrap 500] [--calibrate]``. Pure Python; a
few minutes (``--calibrate``: a few more).
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tieline.projections.strength_model_eval import (
    BASELINES,
    DAY,
    LABELS,
    PRIMARY,
    Contact,
    Table,
    build,
    score_all,
)
from tieline.projections.strength_model_eval import best_baseline as best_of
from tieline.projections.strength_model_stats import (
    auc,
    auc_difference_ci,
    mean_difference_ci,
    per_person_precision,
)

from bench.validate_strength import after_calibrate
from bench.validate_strength_data import NAMES, DataSet, load, to_events

MINUTE = 1 / 1440
EARLY = ((0.3, 0.45), (0.4, 0.6))
REPORT_SHARE = 0.6
BETAS = (0.0, 0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Parts:
    """One candidate pair at a cut-off: contacts, days since the pair's last contact, since the
    less and the more recently active person's, and the number of common neighbours."""

    contacts: int
    g: float
    h: float
    h2: float
    common: int


def parts_at(
    contacts: Sequence[Contact], cutoff: float, end: float | None
) -> tuple[Table, list[Parts]]:
    """The evaluation table and every candidate's parts at ``cutoff``: the pair's contacts and
    last contact are the table's ``count`` and ``recency``, each person's last activity its
    context's, and so are the common neighbours."""
    table = build(contacts, cutoff, end)
    last = {p: t.timestamp() for p, t in table.context.people_last_active.items()}
    out = []
    for i, (a, b) in enumerate(table.pairs):
        active = (last[a], last[b])
        out.append(
            Parts(
                int(table.features["count"][i]),
                (cutoff - table.features["recency"][i]) / DAY,
                (cutoff - min(active)) / DAY,
                (cutoff - max(active)) / DAY,
                table.context.common_neighbours((a, b)),
            )
        )
    return table, out


def rule(beta: float) -> Callable[[Parts], float]:
    """The third round's rule times (1 + CN)^β, as a log score (the ranking is the same)."""

    def score(p: Parts) -> float:
        e = MINUTE
        return (
            3 * math.log(p.contacts)
            + math.log(e / (p.g + e))
            + math.log(e / (p.h + e))
            + 0.5 * math.log(e / (p.h2 + e))
            + beta * math.log(1 + p.common)
        )

    return score


def best_baseline(table: Table, label: str = PRIMARY) -> str:
    y = table.labels[label]
    return best_of({b: auc(table.features[b], y) for b in BASELINES})


def choose_beta(sets: dict[str, DataSet]) -> tuple[float, dict[float, list[float]]]:
    """β by the smallest (then the mean) of the margins at the earlier cut-offs."""
    margins: dict[float, list[float]] = {beta: [] for beta in BETAS}
    for data in sets.values():
        for split in ("time", "count"):
            for share, end_share in EARLY:
                table, parts = parts_at(
                    data.contacts, data.cutoff(split, share), data.cutoff(split, end_share)
                )
                y = table.labels[PRIMARY]
                ref = auc(table.features[best_baseline(table)], y)
                for beta in BETAS:
                    margins[beta].append(auc([rule(beta)(p) for p in parts], y) - ref)
    chosen = max(BETAS, key=lambda b: (min(margins[b]), sum(margins[b])))
    return chosen, margins


def _features(p: Parts) -> list[float]:
    e = MINUTE
    return [
        math.log(p.contacts),
        math.log(p.g + e),
        math.log(p.h + e),
        math.log(p.h2 + e),
        math.log(1 + p.common),
    ]


def fit_logistic(x: list[list[float]], y: Sequence[bool], l2: float = 1.0) -> list[float]:
    """Weights (intercept first) of an L2-penalised logistic regression on standardised columns,
    by Newton's method; returned in the original units."""
    n, k = len(x), len(x[0])
    mean = [sum(r[j] for r in x) / n for j in range(k)]
    sd = [math.sqrt(sum((r[j] - mean[j]) ** 2 for r in x) / n) or 1.0 for j in range(k)]
    z = [[1.0] + [(r[j] - mean[j]) / sd[j] for j in range(k)] for r in x]
    w = [0.0] * (k + 1)
    for _ in range(25):
        grad = [0.0] * (k + 1)
        hess = [[0.0] * (k + 1) for _ in range(k + 1)]
        for row, label in zip(z, y, strict=True):
            s = sum(a * b for a, b in zip(w, row, strict=True))
            prob = 1 / (1 + math.exp(-max(min(s, 30.0), -30.0)))
            d, v = prob - float(label), prob * (1 - prob)
            for i in range(k + 1):
                grad[i] += d * row[i]
                for j in range(i, k + 1):
                    hess[i][j] += v * row[i] * row[j]
        for i in range(1, k + 1):
            grad[i] += l2 * w[i]
            hess[i][i] += l2
        for i in range(k + 1):
            for j in range(i):
                hess[i][j] = hess[j][i]
        step = _solve(hess, grad)
        w = [a - b for a, b in zip(w, step, strict=True)]
        if max(abs(s) for s in step) < 1e-8:
            break
    coef = [w[j + 1] / sd[j] for j in range(k)]
    return [w[0] - sum(c * m for c, m in zip(coef, mean, strict=True)), *coef]


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the Newton step; a few unknowns)."""
    m = [[*row, v] for row, v in zip(a, b, strict=True)]
    n = len(m)
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        for r in range(c + 1, n):
            f = m[r][c] / m[c][c]
            for j in range(c, n + 1):
                m[r][j] -= f * m[c][j]
    out = [0.0] * n
    for r in range(n - 1, -1, -1):
        out[r] = (m[r][n] - sum(m[r][j] * out[j] for j in range(r + 1, n))) / m[r][r]
    return out


def linear(w: Sequence[float], p: Parts) -> float:
    return w[0] + sum(a * b for a, b in zip(w[1:], _features(p), strict=True))


def transfer_scores(
    data: DataSet, split: str, parts: list[Parts]
) -> tuple[list[float], list[float]]:
    """Scores at the reported cut-off from a formula fitted on the history before it: pooled
    over the last five of ten earlier cut-offs (at 6/11 … 10/11 of the reported share), labels
    up to the reported cut-off."""
    end = data.cutoff(split, REPORT_SHARE)
    xs: list[list[float]] = []
    ys: list[bool] = []
    for i in range(6, 11):
        table, early = parts_at(data.contacts, data.cutoff(split, REPORT_SHARE * i / 11), end)
        xs += [_features(p) for p in early]
        ys += table.labels[PRIMARY]
    w = fit_logistic(xs, ys)
    return [linear(w, p) for p in parts], w


def ceiling_scores(parts: list[Parts], y: Sequence[bool], repeats: int = 3) -> list[float]:
    """Out-of-fold scores of the formula fitted at the reported cut-off itself (5 folds,
    stratified, ``repeats`` shuffles averaged): an optimistic ceiling, not a predictor."""
    out = [0.0] * len(parts)
    for rep in range(repeats):
        rng = random.Random(rep)
        folds: list[list[int]] = [[] for _ in range(5)]
        for cls in (True, False):
            idx = [i for i, v in enumerate(y) if v == cls]
            rng.shuffle(idx)
            for n, i in enumerate(idx):
                folds[n % 5].append(i)
        for fold in folds:
            held = set(fold)
            train = [i for i in range(len(parts)) if i not in held]
            w = fit_logistic([_features(parts[i]) for i in train], [y[i] for i in train])
            for i in fold:
                out[i] += linear(w, parts[i]) / repeats
    return out


def _cell(scores: Sequence[float], table: Table, label: str, bootstrap: int) -> str:
    y = table.labels[label]
    ref = best_baseline(table, label)
    lo, hi = auc_difference_ci(scores, table.features[ref], y, bootstrap, 0)
    return f"{auc(scores, y):.3f} [{lo:+.3f}, {hi:+.3f}] vs {ref} {auc(table.features[ref], y):.3f}"


def p10_vs_best(
    scores: Sequence[float], table: Table, label: str, bootstrap: int
) -> tuple[float, str, float, float, float]:
    """Precision@10 of ``label``: ours, the best baseline's name and value, and the interval of
    the difference (people resampled), as in ``bench.validate_strength``."""
    y = table.labels[label]
    ours = per_person_precision(table.people, scores, y, 10)
    refs = {b: per_person_precision(table.people, table.features[b], y, 10) for b in BASELINES}
    means = {b: sum(v.values()) / max(len(v), 1) for b, v in refs.items()}
    ref = best_of(means)
    lo, hi = mean_difference_ci(ours, refs[ref], bootstrap, 0)
    return sum(ours.values()) / max(len(ours), 1), ref, means[ref], lo, hi


def _p10(scores: Sequence[float], table: Table, label: str, bootstrap: int) -> str:
    mine, ref, base, lo, hi = p10_vs_best(scores, table, label, bootstrap)
    return f"p@10 {mine:.3f} [{lo:+.3f}, {hi:+.3f}] vs {ref} {base:.3f}"


def calibrate_then_score(data: DataSet, split: str, bootstrap: int) -> str:
    """``tieline calibrate`` (momentum) on the events before the reported cut-off, then the set
    it leaves the workspace on, scored at the reported cut-off."""
    cutoff = data.cutoff(split, REPORT_SHARE)
    events = to_events(data)
    left, scorer = after_calibrate(events, cutoff, bootstrap)
    if left["refused"]:
        return f"refused: {left['refused']}"
    table = build(data.contacts, cutoff)
    scores = score_all(table, events, {"m": scorer})["m"]
    lo, hi = left["held_out_gain_ci95"]
    held = left["held_out_auc"]
    verdict = f"recommends {left['recommended']}" if left["recommended"] else "keeps the default"
    return (
        f"held-out AUC {held['baseline']:.3f} -> {held['best']:.3f} "
        f"[{lo:+.3f}, {hi:+.3f}], {verdict}; at the reported cut-off "
        f"{_cell(scores, table, PRIMARY, bootstrap)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.validate_strength_rounds")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tieline-strength-data"
    )
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--calibrate", action="store_true", help="also section 3 (slower)")
    args = parser.parse_args(argv)
    sets = {name: load(name, args.data_dir) for name in NAMES}
    beta, margins = choose_beta(sets)
    print("1. (1 + CN)^beta on the third round's rule; margins at the 30% and 40% cut-offs:")
    for b, m in margins.items():
        print(f"   beta {b:<4g} smallest {min(m):+.3f} mean {sum(m) / len(m):+.3f}")
    print(f"   chosen beta {beta:g}; run once at the reported cut-offs:")
    for name, data in sets.items():
        for split in ("time", "count"):
            table, parts = parts_at(data.contacts, data.cutoff(split, REPORT_SHARE), None)
            scores = [rule(beta)(p) for p in parts]
            for label in LABELS:
                print(
                    f"   {name}/{split} {label}: {_cell(scores, table, label, args.bootstrap)}; "
                    f"{_p10(scores, table, label, args.bootstrap)}"
                )
    print("2. fitted formula, primary label: transfer (fitted before the cut-off) and ceiling")
    for name, data in sets.items():
        for split in ("time", "count"):
            table, parts = parts_at(data.contacts, data.cutoff(split, REPORT_SHARE), None)
            moved, w = transfer_scores(data, split, parts)
            ceiling = ceiling_scores(parts, table.labels[PRIMARY])
            print(
                f"   {name}/{split}: transfer {_cell(moved, table, PRIMARY, args.bootstrap)} "
                f"(weights {', '.join(f'{v:+.2f}' for v in w)}); "
                f"ceiling {_cell(ceiling, table, PRIMARY, args.bootstrap)}"
            )
    if args.calibrate:
        print("3. tieline calibrate (momentum) on each history before the reported cut-off")
        for name, data in sets.items():
            for split in ("time", "count"):
                print(f"   {name}/{split}: {calibrate_then_score(data, split, args.bootstrap)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
