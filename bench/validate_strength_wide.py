"""Issue #16, eighth look: is the hospital lost to a coarse grid, or to momentum's family itself?

Momentum's ``ln M`` is linear in ln C (the pair's contacts), ln(g + ε) (days since the pair's last
contact), ln(h + ε) and ln(h2 + ε) (days since the less and the more recently active person's
last contact) and ln(1 + CN) (common neighbours), so a rule of its family is a set of weights.
This scores every rule of a wider grid than ``tieline calibrate`` searches (the pair's gap
weighted too, both silences, ε up to 6 hours: :data:`GRID`) by the primary label's margin
AUC(rule) - AUC(best baseline) at the 30%, 40%, 50% and 60% cut-offs of both splits of the three
data sets (labels up to 45%, 60%, 90% and the end), and reports:

* the rule the protocol of docs/strength-model.md §8 chooses (the largest smallest margin at the
  30% and 40% cut-offs, then the mean), and the top rule by three other summaries of those
  margins (mean, median, min + mean), each with its margins at 50%;
* *post hoc* (chosen on the figures that are reported, so a bound, not a candidate): how many
  rules have the interval against the best baseline above zero in both hospital cells at 60%
  (what a calibration per workspace would have to find there), and how many in all six 60%
  cells (what one fixed rule would need for issue #16), the best three of each with their rank
  by the protocol; and how many rules have every 60% margin of at least +0.015.

Every rule shown comes with the paired-bootstrap interval against the best baseline in each of
the six 60% cells.

Run: ``python -m bench.validate_strength_wide [--bootstrap 500]``. Pure Python; about 12 minutes
on one core (measured beside other CPU-bound jobs).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tieline.projections.strength_model_eval import PRIMARY
from tieline.projections.strength_model_stats import auc, auc_difference_ci

from bench import validate_strength_rounds as rounds
from bench.validate_strength import DEFAULT_DATA_DIR
from bench.validate_strength_data import NAMES, load

MINUTE = rounds.MINUTE
EPS = (MINUTE, 1 / 24, 0.25)
#: (share, label end share or None for the end of the data): the protocol's two earlier
#: cut-offs, then the fifth round's 50% and the reported 60%.
CUTS: tuple[tuple[float, float | None], ...] = (*rounds.EARLY, (0.5, 0.9), (0.6, None))
EARLY_SHARES = tuple(share for share, _ in rounds.EARLY)
REPORT_SHARE = 0.6
HOSPITAL = {("hospital", "time", REPORT_SHARE), ("hospital", "count", REPORT_SHARE)}


@dataclass(frozen=True)
class Rule:
    """The weights of ``ln M = count·ln C - gap·ln(g + ε) - h·ln(h + ε) - h2·ln(h2 + ε) +
    cn·ln(1 + CN)``. ``momentum-2026.2`` is ``Rule(3, 1, 1, 0.5, 0.25, MINUTE)``."""

    count: float
    gap: float
    h: float
    h2: float
    cn: float
    eps: float

    def score(self, p: rounds.Parts) -> float:
        e = self.eps
        return (
            self.count * math.log(p.contacts)
            - self.gap * math.log(p.g + e)
            - self.h * math.log(p.h + e)
            - self.h2 * math.log(p.h2 + e)
            + self.cn * math.log(1 + p.common)
        )


SERVED = Rule(3, 1, 1, 0.5, 0.25, MINUTE)
GRID: tuple[Rule, ...] = tuple(
    Rule(*w)
    for w in itertools.product(
        (0.5, 1, 2, 3), (0.25, 0.5, 1, 2), (0, 0.5, 1, 2), (0, 0.5, 1, 2), (0, 0.25, 0.5, 1), EPS
    )
)

Key = tuple[str, str, float]  # data set, split, cut-off share


@dataclass(frozen=True)
class Cell:
    """One cut-off's candidates: their parts, the primary label, the best baseline (its
    name, values and AUC), with the logs every rule sums precomputed."""

    parts: list[rounds.Parts]
    labels: list[bool]
    baseline: str
    values: list[float]
    best: float
    logs: Mapping[float, tuple[list[float], ...]]

    @classmethod
    def of(
        cls, parts: list[rounds.Parts], labels: list[bool], baseline: str, values: list[float]
    ) -> Cell:
        c = [math.log(p.contacts) for p in parts]
        n = [math.log(1 + p.common) for p in parts]
        logs = {
            e: (
                c,
                [math.log(p.g + e) for p in parts],
                [math.log(p.h + e) for p in parts],
                [math.log(p.h2 + e) for p in parts],
                n,
            )
            for e in EPS
        }
        return cls(parts, labels, baseline, values, auc(values, labels), logs)

    def scores(self, r: Rule) -> list[float]:
        """:meth:`Rule.score` of every candidate (from the precomputed logs, for speed)."""
        c, g, h, h2, n = self.logs[r.eps]
        return [
            r.count * c[i] - r.gap * g[i] - r.h * h[i] - r.h2 * h2[i] + r.cn * n[i]
            for i in range(len(c))
        ]

    def margin(self, r: Rule) -> float:
        return auc(self.scores(r), self.labels) - self.best

    def interval(self, r: Rule, bootstrap: int) -> list[float]:
        """The paired-bootstrap 95% interval of AUC(rule) - AUC(best baseline)."""
        return auc_difference_ci(self.scores(r), self.values, self.labels, bootstrap)


def cells(data_dir: Path) -> dict[Key, Cell]:
    out: dict[Key, Cell] = {}
    for name in NAMES:
        data = load(name, data_dir)
        for split in ("time", "count"):
            for share, end_share in CUTS:
                end = None if end_share is None else data.cutoff(split, end_share)
                table, parts = rounds.parts_at(data.contacts, data.cutoff(split, share), end)
                best = rounds.best_baseline(table)
                cell = Cell.of(parts, table.labels[PRIMARY], best, table.features[best])
                out[(name, split, share)] = cell
    return out


Margins = dict[Key, float]


def early(m: Margins) -> list[float]:
    return [v for k, v in m.items() if k[2] in EARLY_SHARES]


def at_report(m: Margins) -> list[float]:
    return [v for k, v in m.items() if k[2] == REPORT_SHARE]


#: Ways to rank rules by their margins at the earlier cut-offs; the first is the protocol's.
CRITERIA: dict[str, Callable[[Margins], tuple[float, ...]]] = {
    "protocol (min, then mean)": lambda m: (min(early(m)), statistics.mean(early(m))),
    "mean": lambda m: (statistics.mean(early(m)),),
    "median": lambda m: (statistics.median(early(m)),),
    "min + mean": lambda m: (min(early(m)) + statistics.mean(early(m)),),
}


def intervals(rule: Rule, table: Mapping[Key, Cell], bootstrap: int) -> dict[Key, list[float]]:
    """The rule's interval against the best baseline in each 60% cell."""
    return {k: c.interval(rule, bootstrap) for k, c in table.items() if k[2] == REPORT_SHARE}


def describe(rule: Rule, m: Margins, table: Mapping[Key, Cell], bootstrap: int) -> str:
    late = " ".join(f"{k[0]}/{k[1]}@{k[2]:.0%} {v:+.3f}" for k, v in m.items() if k[2] == 0.5)
    report = []
    for k, (lo, hi) in intervals(rule, table, bootstrap).items():
        cell = table[k]
        got = auc(cell.scores(rule), cell.labels)
        report.append(
            f"{k[0]}/{k[1]} {got:.3f} vs {cell.baseline} {cell.best:.3f} [{lo:+.3f}, {hi:+.3f}]"
        )
    return (
        f"{rule}\n      smallest margin early {min(early(m)):+.3f}, at 60% {min(at_report(m)):+.3f}"
        f"\n      at 50%: {late}\n      at 60%: " + "\n              ".join(report)
    )


def hindsight(
    margins: Mapping[Rule, Margins],
    table: Mapping[Key, Cell],
    bootstrap: int,
    keys: Collection[Key],
    among: Sequence[Rule] | None = None,
) -> list[Rule]:
    """The rules (of ``among``, else :data:`GRID`) whose interval against the best baseline is
    above zero in every cell of ``keys``, the largest smallest lower bound first: chosen on the
    figures that are reported, so a bound on what the family can do there, not a candidate.
    Only rules with every margin there positive can qualify; small cells are checked first."""
    found: dict[Rule, float] = {}
    for rule in GRID if among is None else among:
        if min(margins[rule][k] for k in keys) <= 0:
            continue
        lows: list[float] = []
        for k in sorted(keys, key=lambda k: len(table[k].labels)):
            lows.append(table[k].interval(rule, bootstrap)[0])
            if lows[-1] <= 0:
                break
        else:
            found[rule] = min(lows)
    return sorted(found, key=found.__getitem__, reverse=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.validate_strength_wide")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--bootstrap", type=int, default=500)
    args = parser.parse_args(argv)
    table = cells(args.data_dir)
    margins = {r: {k: c.margin(r) for k, c in table.items()} for r in (*GRID, SERVED)}
    print(f"{len(GRID)} rules, {len(table)} cells; primary label, margin over the best baseline")
    print(f"served (momentum-2026.2): {describe(SERVED, margins[SERVED], table, args.bootstrap)}")
    protocol: list[Rule] = []
    for name, key in CRITERIA.items():
        ranked = sorted(GRID, key=lambda r: key(margins[r]), reverse=True)
        protocol = protocol or ranked
        print(f"top by {name}: {describe(ranked[0], margins[ranked[0]], table, args.bootstrap)}")
    reported = [k for k in table if k[2] == REPORT_SHARE]
    ward = hindsight(margins, table, args.bootstrap, HOSPITAL)
    every = hindsight(margins, table, args.bootstrap, reported, among=ward)
    for found, where in ((ward, "both hospital cells"), (every, "all six cells")):
        print(f"post hoc: {len(found)} rules with the interval above zero in {where} at 60%")
        for rule in found[:3]:
            shown = describe(rule, margins[rule], table, args.bootstrap)
            print(f"  rank {protocol.index(rule) + 1} of {len(GRID)} by the protocol: {shown}")
    wide = sum(1 for r in GRID if min(at_report(margins[r])) >= 0.015)
    print(f"rules with every 60% margin >= +0.015: {wide} of {len(GRID)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
