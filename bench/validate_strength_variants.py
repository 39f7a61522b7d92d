"""Issue #16, fifth round: variants of ``tieline calibrate`` for momentum, scored at three report
cut-offs instead of one.

Every earlier round was judged at one cut-off per split (60% of the span or of the records),
where a difference of 0.02 AUC decides between "tie" and "win". Here each variant of the whole
calibration (choose on the history before the cut-off, validate on held-out time, refuse unless
the gain's interval is above zero, then score what it leaves at the cut-off) is run at the 40%,
50% and 60% cut-offs of both splits of the three data sets (18 cells), and each cell is counted
as a win, tie or loss against the best baseline of the primary label (the interval of the
difference above zero, straddling zero, below zero). The variants:

* **grid**: :data:`MOMENTUM_GRID` as ``tieline calibrate`` searches it, or that grid times a
  common-neighbours exponent β in {0, 0.25, 0.5, 1}: the score is momentum's ``M`` times
  ``(1 + CN)^β``, CN the people both had contact with before the cut-off (the fourth round's
  best idea, docs/strength-model.md §8);
* **refusal**: *one window* (what the command does: choose at ``1 - 2h`` with labels up to
  ``1 - h``, validate at ``1 - h``; ``h`` = 0.25) or *two windows* (rolling-origin evaluation,
  Tashman 2000: choose at ``1 - 3h``, require a gain at ``1 - 2h`` as well as the interval above
  zero at ``1 - h``; ``h`` = 0.2);
* **default** (seventh round): the set kept when the refusal holds and that wins ties:
  ``momentum-2026.1``, or the fourth round's common-neighbours rule (contacts³ · ε/(g + ε) ·
  ε/(h + ε) · (ε/(h2 + ε))^0.5 · (1 + CN)^0.25, ε = 1 minute: the rule with the largest smallest
  margin at the earlier cut-offs by the protocol of docs/strength-model.md §8, +0.010 against
  ``momentum-2026.1``'s -0.014). The grid is the same either way.

The last variant (the fourth round's rule kept on refusal, the grid times β) is ``tieline
calibrate`` since ``momentum-2026.2``; the first was it before. Both are computed faster than
the command: each pair's parts (episodes at each gap, contacts, days since its last contact and
since its people's, common neighbours) are found once per table and every candidate is a sum
of their logarithms, which ranks pairs as
:func:`~tieline.projections.strength_model_momentum.momentum` does (``tests/unit/
test_validate_strength_variants.py`` checks the last variant's choice against
:func:`calibrate`).

Each cell also reports, for what the variant leaves, the AUC of ``any_30d`` and the precision@10
of the primary label, each with its interval against the best baseline of that label and metric.

Run: ``python -m bench.validate_strength_variants [--bootstrap 500]``. Pure Python; about twenty
minutes on one core.
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tieline.projections.strength_model_eval import DAY, PRIMARY, Contact, Table
from tieline.projections.strength_model_momentum import MOMENTUM_2026_1
from tieline.projections.strength_model_stats import auc, auc_difference_ci

from bench import validate_strength_rounds as rounds
from bench import validate_strength_select as select
from bench.validate_strength_data import NAMES, DataSet, load

SHARES = (0.4, 0.5, 0.6)
BETAS = (0.0, 0.25, 0.5, 1.0)
#: The grid as ``tieline calibrate`` searched it when these variants were written, before the
#: neighbour term joined it (``momentum-2026.2``'s grid is this one times ``BETAS``).
GRID = select.GRID
Candidate = dict[str, float]
#: The fourth round's rule as a candidate (``episode_gap_days`` 0: the volume is the pair's
#: contacts, as in :func:`bench.validate_strength_rounds.rule`).
FOURTH_ROUND: Candidate = {
    "episode_gap_days": 0.0,
    "episode_exponent": 3.0,
    "activity_weight": 1.0,
    "eps_days": rounds.MINUTE,
    "partner_activity_weight": 0.5,
    "beta": 0.25,
}


@dataclass(frozen=True)
class Variant:
    """One way to calibrate: the grid (with or without β), the refusal (1 or 2 windows) and
    the set kept on refusal (None: ``momentum-2026.1``)."""

    name: str
    betas: tuple[float, ...]
    windows: int
    holdout: float
    default: Candidate | None = None


VARIANTS = (
    Variant("calibrate (one window)", (0.0,), 1, 0.25),
    Variant("one window, grid x CN^beta", BETAS, 1, 0.25),
    Variant("two windows", (0.0,), 2, 0.2),
    Variant("two windows, grid x CN^beta", BETAS, 2, 0.2),
    Variant("one window, fourth-round default", (0.0,), 1, 0.25, FOURTH_ROUND),
    Variant("one window, fourth-round default, grid x CN^beta", BETAS, 1, 0.25, FOURTH_ROUND),
)


@dataclass(frozen=True)
class Parts:
    """A candidate pair at a cut-off: episodes per episode gap, days since the pair's last
    contact and since its less recently active person's, its common neighbours, its contacts
    and the days since its more recently active person's last contact."""

    episodes: dict[float, int]
    g: float
    h: float
    common: int
    contacts: int
    h2: float


def _episodes(times: Sequence[float], gap_seconds: float) -> int:
    """Contacts more than ``gap_seconds`` apart count separately (momentum's episodes)."""
    return 1 + sum(1 for a, b in itertools.pairwise(times) if b - a > gap_seconds)


def parts_at(
    contacts: Sequence[Contact], cutoff: float, end: float | None
) -> tuple[Table, list[Parts]]:
    """The evaluation table at ``cutoff`` (labels up to ``end``) and every candidate's parts:
    the fourth round's (:func:`bench.validate_strength_rounds.parts_at`) and the episodes."""
    table, found = rounds.parts_at(contacts, cutoff, end)
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for c in contacts:
        if c.t >= cutoff:
            break
        times[c.pair].append(c.t)
    gaps = GRID["episode_gap_days"]
    out = []
    for pair, p in zip(table.pairs, found, strict=True):
        ts = sorted(set(times[pair]))
        episodes = {gap: _episodes(ts, gap * DAY) for gap in gaps}
        out.append(Parts(episodes, p.g, p.h, p.common, p.contacts, p.h2))
    return table, out


def candidates(betas: Sequence[float], default: Candidate | None = None) -> list[Candidate]:
    """The default first (it wins ties, as in ``tieline calibrate``), then the grid times each β."""
    keys = list(GRID)
    if default is None:
        default = {k: float(getattr(MOMENTUM_2026_1, k)) for k in keys} | {"beta": 0.0}
    grid = [dict(zip(keys, v, strict=True)) for v in itertools.product(*GRID.values())]
    return [default, *({**c, "beta": b} for b in betas for c in grid)]


def scores(parts: Sequence[Parts], c: Candidate) -> list[float]:
    """log of momentum's ``M`` + β·log(1 + CN); the volume is the pair's contacts when
    ``episode_gap_days`` is 0, and the partner weight 0 unless the candidate sets it (every
    searched set leaves it at 0)."""
    e, gap = c["eps_days"], c["episode_gap_days"]
    partner = c.get("partner_activity_weight", 0.0)
    return [
        c["episode_exponent"] * math.log(p.episodes[gap] if gap else p.contacts)
        + math.log(e / (p.g + e))
        + c["activity_weight"] * math.log(e / (max(p.h, 0.0) + e))
        + partner * math.log(e / (max(p.h2, 0.0) + e))
        + c["beta"] * math.log1p(p.common)
        for p in parts
    ]


def choose(table: Table, parts: Sequence[Parts], cands: Sequence[Candidate]) -> Candidate:
    """The candidate with the highest AUC of the primary label (the earliest wins ties)."""
    y = table.labels[PRIMARY]
    found = [(auc(scores(parts, c), y), -i) for i, c in enumerate(cands)]
    return cands[-max(found)[1]]


def calibrated(contacts: Sequence[Contact], v: Variant, bootstrap: int) -> tuple[Candidate, str]:
    """The set variant ``v`` leaves a workspace with ``contacts`` on, and why."""
    first, last = contacts[0].t, contacts[-1].t

    def at(share: float) -> float:
        return first + share * (last - first)

    h, n = v.holdout, v.windows
    cands = candidates(v.betas, v.default)
    best = choose(*parts_at(contacts, at(1 - (n + 1) * h), at(1 - n * h)), cands)
    if best == cands[0]:
        return best, "the default is best"
    for k in range(n - 1, -1, -1):  # the check windows, then the validation window
        table, parts = parts_at(contacts, at(1 - (k + 1) * h), at(1 - k * h) if k else None)
        y = table.labels[PRIMARY]
        mine, base = scores(parts, best), scores(parts, cands[0])
        if k:
            gain = auc(mine, y) - auc(base, y)
            if not gain > 0:
                return cands[0], f"refused: check window gain {gain:+.3f}"
        else:
            lo, hi = auc_difference_ci(mine, base, y, bootstrap, 0)
            if lo <= 0:
                return cands[0], f"refused: held-out gain [{lo:+.3f}, {hi:+.3f}]"
    return best, "recommended"


def verdict(lo: float, hi: float) -> str:
    """A cell's verdict from the interval of (score - best baseline)."""
    return "win" if lo > 0 else "loss" if hi < 0 else "tie"


def cell(data: DataSet, split: str, share: float, v: Variant, bootstrap: int) -> dict[str, object]:
    """Calibrate on the history before the cut-off at ``share``; score at the cut-off, labels
    up to 40% of the span (or of the records) later, as at the 60% cut-off."""
    cut = data.cutoff(split, share)
    before = [c for c in data.contacts if c.t < cut]
    chosen, why = calibrated(before, v, bootstrap)
    end = data.cutoff(split, share + 0.4) if share + 0.4 < 1 else None
    table, parts = parts_at(data.contacts, cut, end)
    y = table.labels[PRIMARY]
    ref = rounds.best_baseline(table)
    mine = scores(parts, chosen)
    lo, hi = auc_difference_ci(mine, table.features[ref], y, bootstrap, 0)
    y30 = table.labels["any_30d"]
    ref30 = rounds.best_baseline(table, "any_30d")
    return {
        "any_30d": (
            auc(mine, y30),
            *auc_difference_ci(mine, table.features[ref30], y30, bootstrap, 0),
        ),
        "p10": rounds.p10_vs_best(mine, table, PRIMARY, bootstrap),
        "auc": auc(mine, y),
        "baseline": ref,
        "baseline_auc": auc(table.features[ref], y),
        "ci": (lo, hi),
        "verdict": verdict(lo, hi),
        "why": why,
        "chosen": chosen,
    }


def describe(r: Mapping[str, Any]) -> str:
    """One cell as two lines: the primary label's verdict and AUC, then any_30d and p@10."""
    lo, hi = r["ci"]
    a30, lo30, hi30 = r["any_30d"]
    p10, ref10, base10, lo10, hi10 = r["p10"]
    return (
        f"{r['verdict']:<4} {r['auc']:.3f} [{lo:+.3f}, {hi:+.3f}] vs {r['baseline']} "
        f"{r['baseline_auc']:.3f}; {r['why']}\n        any_30d {a30:.3f} [{lo30:+.3f}, "
        f"{hi30:+.3f}]; p@10 {p10:.3f} [{lo10:+.3f}, {hi10:+.3f}] vs {ref10} {base10:.3f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.validate_strength_variants")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tieline-strength-data"
    )
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES))
    parser.add_argument(
        "--variants", type=int, nargs="+", help="indices into VARIANTS (default: all)"
    )
    args = parser.parse_args(argv)
    sets = {name: load(name, args.data_dir) for name in NAMES}
    for v in [VARIANTS[i] for i in args.variants] if args.variants else VARIANTS:
        tally: Counter[str] = Counter()
        print(f"== {v.name}", flush=True)
        for share in args.shares:
            for name, data in sets.items():
                for split in ("time", "count"):
                    r = cell(data, split, share, v, args.bootstrap)
                    tally[str(r["verdict"])] += 1
                    print(f"   {share:.1f} {name}/{split}: {describe(r)}", flush=True)
        print(f"   {v.name}: {tally['win']} wins, {tally['tie']} ties, {tally['loss']} losses")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
