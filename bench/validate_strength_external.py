"""Issue #16, eleventh look: a rule chosen without the hospital's data, tested once on it.

Every earlier look chose among momentum's rules on cut-offs of the three reported data sets,
the hospital's included, and its choices tied with recency on the hospital at the reported 60%
cut-offs. This look chooses on data none of them saw: the SocioPatterns primary school
(Stehlé et al. 2011; the same wheel and format as the hospital, two school days), at the
30/40/50/60% cut-offs of both splits, together with the protocol's earlier cut-offs (30%, 40%)
of the two other reported sets; never a cell of the hospital. The protocol, fixed before the
hospital's cells were computed for it (docs/strength-model.md §8, "An eleventh look"):

* candidates: the eighth look's grid of 3,072 rules (bench/validate_strength_wide.py) and the
  served rule;
* choice: the largest smallest margin AUC(rule) - AUC(best baseline) on the primary label over
  the 16 selection cells, then the largest mean (cells where AUC is undefined, with no
  positive or no negative label, left out: :func:`informative`);
* test, once: the chosen rule at the six reported 60% cells, with the paired-bootstrap interval
  (500 resamples) against the best baseline of each;
* decision: it would become a new momentum parameter set only if its interval is above zero in
  both hospital cells and in no reported cell entirely below zero; otherwise nothing changes.

Run: ``python -m bench.validate_strength_external [--bootstrap 500]``. Pure Python, one core.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from tieline.projections.strength_model_eval import PRIMARY
from tieline.projections.strength_model_stats import auc

from bench import validate_strength_rounds as rounds
from bench import validate_strength_wide as wide
from bench.validate_strength import DEFAULT_DATA_DIR
from bench.validate_strength_data import DataSet, load

Key = wide.Key
SPLITS = ("time", "count")
EXTERNAL = "primary_school"
#: The two reported sets whose earlier cut-offs join the selection (the hospital never does).
OTHERS = ("thiers_2012", "collegemsg")
REPORTED = ("collegemsg", "thiers_2012", "hospital")


def selection_keys() -> list[tuple[str, str, float, float | None]]:
    """(data set, split, cut-off share, label end share) of every selection cell."""
    keys = [(EXTERNAL, split, share, end) for split in SPLITS for share, end in wide.CUTS]
    keys += [
        (n, split, share, end) for n in OTHERS for split in SPLITS for share, end in rounds.EARLY
    ]
    return keys


def cell(data: DataSet, split: str, share: float, end_share: float | None) -> wide.Cell:
    """One cut-off's candidates with the primary label and the best baseline."""
    end = None if end_share is None else data.cutoff(split, end_share)
    table, parts = rounds.parts_at(data.contacts, data.cutoff(split, share), end)
    best = rounds.best_baseline(table)
    return wide.Cell.of(parts, table.labels[PRIMARY], best, table.features[best])


def informative(cells: dict[Key, wide.Cell]) -> dict[Key, wide.Cell]:
    """The cells where AUC is defined: some candidates continue and some do not. (The
    primary school's earlier time cut-offs fall after the first school day, and their
    labels end that night: no one meets, every label is negative, every AUC NaN. The first
    run let NaN into ``min``, whose answer then depends on the order of the list.)"""
    return {k: c for k, c in cells.items() if not math.isnan(c.best)}


def choose(cells: dict[Key, wide.Cell]) -> tuple[wide.Rule, dict[wide.Rule, list[float]]]:
    """The protocol's choice over ``cells`` (the informative ones), and every candidate's
    margins there."""
    margins = {r: [c.margin(r) for c in cells.values()] for r in (*wide.GRID, wide.SERVED)}
    best = max(wide.GRID, key=lambda r: (min(margins[r]), statistics.mean(margins[r])))
    return best, margins


def at_report(rule: wide.Rule, c: wide.Cell, bootstrap: int) -> tuple[float, list[float]]:
    """The rule's AUC in one reported cell and its interval against the best baseline."""
    return auc(c.scores(rule), c.labels), c.interval(rule, bootstrap)


def verdict(tested: dict[Key, list[float]]) -> str:
    """The decision fixed in the protocol, applied to the reported cells' intervals."""
    ward = all(tested[k][0] > 0 for k in tested if k[0] == "hospital")
    no_loss = all(hi >= 0 for _, hi in tested.values())
    if ward and no_loss:
        return "ADOPT: above zero on both hospital cells, no reported cell below zero"
    why = [] if ward else ["not above zero on both hospital cells"]
    why += [] if no_loss else ["below zero in a reported cell"]
    return "NOT ADOPTED: " + "; ".join(why)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.validate_strength_external")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--bootstrap", type=int, default=500)
    args = parser.parse_args(argv)
    sets = {n: load(n, args.data_dir) for n in (EXTERNAL, *OTHERS)}
    every = {(n, s, sh): cell(sets[n], s, sh, e) for n, s, sh, e in selection_keys()}
    chosen_on = informative(every)
    for key in every.keys() - chosen_on.keys():
        print(f"    left out, AUC undefined: {key[0]}/{key[1]}@{key[2]:.0%}")
    rule, margins = choose(chosen_on)
    print(f"{len(wide.GRID)} rules; chosen on {len(chosen_on)} cells without the hospital")
    for name, r in (("chosen", rule), ("served", wide.SERVED)):
        m = margins[r]
        print(f"{name}: {r}: smallest {min(m):+.3f}, mean {statistics.mean(m):+.3f}")
        for key, v in zip(chosen_on, m, strict=True):
            print(f"    {key[0]}/{key[1]}@{key[2]:.0%} {v:+.3f} vs {chosen_on[key].baseline}")
    tested: dict[Key, list[float]] = {}
    for name in REPORTED:
        data = sets[name] if name in sets else load(name, args.data_dir)
        for split in SPLITS:
            c = cell(data, split, rounds.REPORT_SHARE, None)
            for label, r in (("chosen", rule), ("served", wide.SERVED)):
                got, (lo, hi) = at_report(r, c, args.bootstrap)
                print(
                    f"at 60%: {name}/{split} {label} {got:.3f} vs {c.baseline} {c.best:.3f}"
                    f" [{lo:+.3f}, {hi:+.3f}]"
                )
                if label == "chosen":
                    tested[(name, split, rounds.REPORT_SHARE)] = [lo, hi]
    print(verdict(tested))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
