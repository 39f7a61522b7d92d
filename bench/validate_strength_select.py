"""How the momentum parameters were chosen: a grid on an *earlier* cut-off than the reported one.

For each data set and split, the cut-off is put at ``SELECT_SHARE`` (40%) of the span or of the
records, and contacts from the reported cut-off (60%) on are ignored, so nothing the reported
evaluation labels is seen while choosing. Each grid point is scored by its smallest margin over
the data sets and splits: AUC(momentum) - AUC(best baseline) for the primary label. The grid is
the documented range of each parameter as it was then (``GRID``: momentum-2026.1's four
parameters); this is how ``momentum-2026.1`` was chosen. ``momentum-2026.2`` was chosen by the
fourth round's protocol (``bench/validate_strength_rounds.py``, docs/strength-model.md §8).

Run: ``python -m bench.validate_strength_select [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tieline.projections.strength_model_eval import BASELINES, PRIMARY, Table, build
from tieline.projections.strength_model_momentum import (
    MOMENTUM_2026_1,
    MOMENTUM_GRID,
    MomentumParams,
    momentum,
)
from tieline.projections.strength_model_momentum import combine as momentum_combine
from tieline.projections.strength_model_stats import auc

from bench.validate_strength_data import NAMES, load, to_events

SELECT_SHARE = 0.4
REPORT_SHARE = 0.6
#: The range searched when momentum-2026.1 was chosen (the grid has grown since).
GRID = {
    k: MOMENTUM_GRID[k]
    for k in ("episode_gap_days", "episode_exponent", "activity_weight", "eps_days")
}


def grid() -> list[MomentumParams]:
    """Every parameter set of :data:`GRID`."""
    keys = list(GRID)
    out = []
    for values in itertools.product(*(GRID[k] for k in keys)):
        change = dict(zip(keys, values, strict=True))
        tag = ",".join(f"{k}={v:g}" for k, v in change.items())
        out.append(MomentumParams.from_dict({**change, "version": f"grid({tag})"}, MOMENTUM_2026_1))
    return out


def parts(
    table: Table, events: Mapping[Any, Sequence[Any]], params: MomentumParams
) -> list[tuple[int, float, float]]:
    """(episodes, days since the pair's contact, days since the less active person's) per
    candidate: computed once per episode gap; the other parameters only combine them."""
    out = []
    cutoff = table.context.cutoff
    for pair in table.pairs:
        train = [e for e in events[pair] if e.occurred_at < cutoff]
        m = momentum(train, cutoff, table.context.people_last_active, params)
        out.append((m.episodes, m.days_since_contact or 0.0, m.days_since_people_active or 0.0))
    return out


def combine(p: MomentumParams, part: tuple[int, float, float]) -> float:
    return momentum_combine(p, *part)


def margins(data_dir: Path, share: float, end_share: float | None) -> dict[str, dict[str, float]]:
    """grid version -> {set/split: AUC(momentum) - AUC(best baseline)} at ``share``."""
    out: dict[str, dict[str, float]] = {}
    candidates = grid()
    for name in NAMES:
        data = load(name, data_dir)
        events = to_events(data)
        for split in ("time", "count"):
            end = None if end_share is None else data.cutoff(split, end_share)
            table = build(data.contacts, data.cutoff(split, share), end)
            y = table.labels[PRIMARY]
            best = max(auc(table.features[b], y) for b in BASELINES)
            by_gap = {
                gap: parts(
                    table,
                    events,
                    MomentumParams.from_dict({"episode_gap_days": gap}, MOMENTUM_2026_1),
                )
                for gap in GRID["episode_gap_days"]
            }
            for p in candidates:
                score = auc([combine(p, x) for x in by_gap[p.episode_gap_days]], y)
                out.setdefault(p.version, {})[f"{name}/{split}"] = score - best
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.validate_strength_select")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tieline-strength-data"
    )
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)
    found = margins(args.data_dir, SELECT_SHARE, REPORT_SHARE)
    ranked = sorted(found.items(), key=lambda kv: -min(kv[1].values()))
    print(f"primary label, cut-off at {SELECT_SHARE:.0%}, contacts from {REPORT_SHARE:.0%} ignored")
    print("smallest margin over sets/splits | margins: " + " ".join(next(iter(found.values()))))
    for version, m in ranked[: args.top]:
        cells = " ".join(f"{v:+.3f}" for v in m.values())
        print(f"{min(m.values()):+.3f} {version} | {cells}")
    print(f"chosen then {MOMENTUM_2026_1.version}: {MOMENTUM_2026_1.to_dict()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
