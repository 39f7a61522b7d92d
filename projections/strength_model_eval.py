"""Scores as predictors of what a relationship does next: one evaluation is a history of
contacts, a cut-off, the candidate pairs, three labels, the baselines and tieline's scores, ROC
AUC and precision@10 with paired-bootstrap intervals. Used by ``bench/validate_strength.py`` (real
data sets) and by ``tieline calibrate`` (a workspace's own history).

* **Candidates**: every pair with at least one contact before the cut-off.
* **Labels** (contacts after the cut-off, up to ``end`` when given):
  - ``two_way_90d`` (primary): the relationship continues two-way: each direction has contact
    within 90 days after the cut-off. A meeting is contact in both directions.
  - ``any_30d``: any contact within 30 days after the cut-off.
  - ``ge5_90d``: at least 5 contacts within 90 days after the cut-off.
* **Baselines**: contact count; count in the last 30 days; recency (time of the last contact);
  the lesser direction's count (meetings count for both); an exponentially decayed count
  (half-life 30 days); "seen before" (1 for every candidate, so AUC 0.5 by construction: the
  floor).
* **tieline**: any number of named scorers (the strength model, the momentum score, or scores
  read from the API), each evaluated on every label against the best baseline *of that label*
  (highest AUC; for precision@10 the baseline with the highest precision@10).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tieline.projections.strength_model import (
    FOLLOWED_UP,
    HELPED,
    INTRODUCED,
    MET,
    PairEvent,
)
from tieline.projections.strength_model_stats import (
    auc,
    auc_difference_ci,
    mean_difference_ci,
    per_person_precision,
)

DAY = 86400.0
LABELS: tuple[str, ...] = ("two_way_90d", "any_30d", "ge5_90d")
PRIMARY = "two_way_90d"
BASELINES: tuple[str, ...] = (
    "count",
    "count_30d",
    "recency",
    "lesser_direction",
    "decayed_30d",
    "seen_before",
)
TOP_K = 10


Pair = tuple[str, str]


@dataclass(frozen=True)
class Contact:
    """One contact as the evaluation sees it: when (epoch seconds), the unordered pair, who
    sent it (None for a meeting, which is contact in both directions) and how long it lasted."""

    t: float
    pair: Pair
    sender: str | None
    seconds: float


def contacts_of(events: Mapping[Pair, Sequence[PairEvent]]) -> list[Contact]:
    """The contacts among stored pair events, in time order: a meeting is two-way; a follow-up
    is from its sender, help from the helper, an introduction from the introducer (to the
    introduced pair: two-way); ratings are not contacts."""
    out: list[Contact] = []
    for pair, evs in events.items():
        for e in evs:
            d = e.detail
            sender: Any = None
            if e.type == FOLLOWED_UP:
                sender = d.get("from", d.get("from_person"))
            elif e.type == HELPED:
                sender = d.get("helper")
            elif e.type == INTRODUCED and d.get("role", "introducer") == "introducer":
                sender = d.get("introducer")
            elif e.type != MET and e.type != INTRODUCED:
                continue
            sender = str(sender) if sender in pair else None
            minutes = float(d.get("duration_minutes") or 0) if e.type == MET else 0.0
            out.append(Contact(e.occurred_at.timestamp(), pair, sender, 60.0 * minutes))
    out.sort(key=lambda c: (c.t, c.pair, c.sender or ""))
    return out


@dataclass(frozen=True)
class Context:
    """What a scorer may know at the cut-off besides the pair's own events."""

    cutoff: datetime
    people_last_active: Mapping[str, datetime]  # each person's last contact with anyone
    #: Each person's contacts before the cut-off (the people they had contact with).
    neighbours: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def common_neighbours(self, pair: Pair) -> int:
        """The people both of ``pair`` had contact with before the cut-off."""
        a, b = pair
        return len((self.neighbours.get(a, _NOBODY) & self.neighbours.get(b, _NOBODY)) - {a, b})


_NOBODY: frozenset[str] = frozenset()


Scorer = Callable[[Pair, Sequence[PairEvent], Context], float]


def _labels(after: Sequence[Contact], cutoff: float, pair: Pair) -> dict[str, bool]:
    in90 = [c for c in after if c.t < cutoff + 90 * DAY]
    senders = {c.sender for c in in90}
    two_way = None in senders or (pair[0] in senders and pair[1] in senders)
    return {
        "two_way_90d": two_way,
        "any_30d": any(c.t < cutoff + 30 * DAY for c in in90),
        "ge5_90d": len(in90) >= 5,
    }


def _baselines(train: Sequence[Contact], cutoff: float, pair: Pair) -> dict[str, float]:
    senders = [c.sender for c in train]
    both = senders.count(None)  # a meeting is contact in both directions
    lesser = float(both + min(senders.count(pair[0]), senders.count(pair[1])))
    return {
        "count": float(len(train)),
        "count_30d": float(sum(1 for c in train if c.t >= cutoff - 30 * DAY)),
        "recency": max(c.t for c in train),
        "lesser_direction": lesser,
        "decayed_30d": sum(0.5 ** ((cutoff - c.t) / (30 * DAY)) for c in train),
        "seen_before": 1.0,
    }


@dataclass
class Table:
    """Candidates, labels, baselines and person -> candidate indices at one cut-off."""

    pairs: list[Pair]
    labels: dict[str, list[bool]]
    features: dict[str, list[float]]
    people: dict[str, list[int]]
    context: Context


def build(contacts: Sequence[Contact], cutoff: float, end: float | None = None) -> Table:
    """The evaluation table at ``cutoff`` over ``contacts`` in time order (contacts at or after
    ``end`` are ignored)."""
    by_pair: dict[Pair, list[Contact]] = defaultdict(list)
    last_active: dict[str, float] = {}
    neighbours: dict[str, set[str]] = defaultdict(set)
    for c in contacts:
        if end is not None and c.t >= end:
            break
        by_pair[c.pair].append(c)
        if c.t < cutoff:
            last_active[c.pair[0]] = last_active[c.pair[1]] = c.t
            neighbours[c.pair[0]].add(c.pair[1])
            neighbours[c.pair[1]].add(c.pair[0])
    table = Table(
        [],
        {k: [] for k in LABELS},
        {k: [] for k in BASELINES},
        defaultdict(list),
        Context(
            datetime.fromtimestamp(cutoff, UTC),
            {p: datetime.fromtimestamp(t, UTC) for p, t in last_active.items()},
            {p: frozenset(n) for p, n in neighbours.items()},
        ),
    )
    for pair in sorted(by_pair):
        contacts = by_pair[pair]
        train = [c for c in contacts if c.t < cutoff]
        if not train:
            continue
        index = len(table.pairs)
        table.pairs.append(pair)
        for p in pair:
            table.people[p].append(index)
        after = [c for c in contacts if c.t >= cutoff]
        for key, value in _labels(after, cutoff, pair).items():
            table.labels[key].append(value)
        for key, number in _baselines(train, cutoff, pair).items():
            table.features[key].append(number)
    return table


def score_all(
    table: Table, events: Mapping[Pair, Sequence[PairEvent]], scorers: Mapping[str, Scorer]
) -> dict[str, list[float]]:
    """Each scorer's score for every candidate, from the pair's events before the cut-off."""
    out: dict[str, list[float]] = {name: [] for name in scorers}
    cutoff = table.context.cutoff
    for pair in table.pairs:
        train = [e for e in events[pair] if e.occurred_at < cutoff]
        for name, scorer in scorers.items():
            out[name].append(scorer(pair, train, table.context))
    return out


def best_baseline(values: Mapping[str, float]) -> str:
    """The baseline with the highest value in ``values`` (an AUC or a precision per name); on
    a tie the one listed first in :data:`BASELINES`."""
    return max(BASELINES, key=lambda b: (values[b], -BASELINES.index(b)))


def evaluate(
    table: Table, scores: Mapping[str, Sequence[float]], bootstrap: int, seed: int = 0
) -> dict[str, Any]:
    """AUC and precision@10 of every baseline and scorer on every label, and each scorer's
    95% paired-bootstrap interval against the label's best baseline."""
    out: dict[str, Any] = {"pairs": len(table.pairs), "labels": {}}
    for label in LABELS:
        y = table.labels[label]
        every = {**table.features, **scores}
        aucs = {name: auc(values, y) for name, values in every.items()}
        p10 = {
            name: per_person_precision(table.people, values, y, TOP_K)
            for name, values in every.items()
        }
        mean_p10 = {name: sum(v.values()) / max(len(v), 1) for name, v in p10.items()}
        best = best_baseline(aucs)
        best_p10 = best_baseline(mean_p10)
        versus = {}
        for name in scores:
            versus[name] = {
                "auc_minus_best_baseline": aucs[name] - aucs[best],
                "auc_ci95": auc_difference_ci(scores[name], every[best], y, bootstrap, seed),
                "p_at_10_minus_best_baseline": mean_p10[name] - mean_p10[best_p10],
                "p_at_10_ci95": mean_difference_ci(p10[name], p10[best_p10], bootstrap, seed),
            }
        out["labels"][label] = {
            "positives": sum(y),
            "people_with_a_positive": len(p10[BASELINES[0]]),
            "auc": aucs,
            "p_at_10": mean_p10,
            "best_baseline_auc": best,
            "best_baseline_p_at_10": best_p10,
            "versus_best_baseline": versus,
        }
    return out
