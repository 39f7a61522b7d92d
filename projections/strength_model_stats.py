"""Statistics of the strength validation: ROC AUC, precision@k per person, paired bootstrap.

* **ROC AUC** by the rank-sum (Mann-Whitney) formula, tied scores counting one half. It is
  computed by one sweep over score groups sorted once, with a weight (multiplicity) per item, so
  a bootstrap resample costs O(n) instead of a sort.
* **precision@k per person**: each person's candidate ties ranked by the score; the share of
  positives among the top ``min(k, ties)``, averaged over the people who have at least one
  positive tie. Tied scores at the cut of the top k count at the tie group's positive rate (the
  expected precision under a random tie break), so a constant score scores the base rate.
* **Paired bootstrap**: resample the pairs (for AUC) or the people (for precision@k) with
  replacement, the same resample for both predictors, and take the 2.5% and 97.5% percentiles
  of the difference.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranked:
    """One predictor's scores, grouped by value in increasing order (indices into the items)."""

    groups: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, scores: Sequence[float]) -> Ranked:
        order = sorted(range(len(scores)), key=lambda i: scores[i])
        groups: list[tuple[int, ...]] = []
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
                j += 1
            groups.append(tuple(order[i : j + 1]))
            i = j + 1
        return cls(tuple(groups))

    def auc(self, labels: Sequence[bool], weights: Sequence[int] | None = None) -> float:
        """The (weighted) AUC; NaN without both classes."""
        num = pos_total = neg_below = 0.0
        for group in self.groups:
            pos = neg = 0.0
            for i in group:
                w = 1.0 if weights is None else float(weights[i])
                if labels[i]:
                    pos += w
                else:
                    neg += w
            num += pos * neg_below + 0.5 * pos * neg
            neg_below += neg
            pos_total += pos
        if pos_total == 0 or neg_below == 0:
            return math.nan
        return num / (pos_total * neg_below)


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC AUC of ``scores`` for ``labels`` (ties count one half)."""
    return Ranked.of(scores).auc(labels)


def _interval(values: list[float]) -> list[float]:
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return [math.nan, math.nan]
    lo = values[int(0.025 * len(values))]
    hi = values[max(math.ceil(0.975 * len(values)) - 1, 0)]
    return [lo, hi]


def auc_difference_ci(
    ours: Sequence[float], theirs: Sequence[float], labels: Sequence[bool], n: int, seed: int = 0
) -> list[float]:
    """95% paired-bootstrap interval of AUC(ours) - AUC(theirs) over ``n`` resamples."""
    if n <= 0:
        return [math.nan, math.nan]
    a, b = Ranked.of(ours), Ranked.of(theirs)
    diffs = [a.auc(labels, w) - b.auc(labels, w) for w in _resamples(len(labels), n, seed)]
    return _interval(diffs)


@functools.lru_cache(maxsize=2)
def _resamples(size: int, n: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """``n`` bootstrap resamples of ``size`` items as multiplicities; the same for every
    predictor compared on the same items (paired), computed once."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        weights = [0] * size
        for _ in range(size):
            weights[rng.randrange(size)] += 1
        out.append(tuple(weights))
    return tuple(out)


def precision_at(scores: Sequence[float], labels: Sequence[bool], k: int) -> float:
    """Expected precision of the top ``min(k, len)`` items (random break of tied scores)."""
    top = min(k, len(scores))
    if top == 0:
        return math.nan
    by_score: dict[float, list[bool]] = {}
    for s, label in zip(scores, labels, strict=True):
        by_score.setdefault(s, []).append(label)
    hits, left = 0.0, top
    for s in sorted(by_score, reverse=True):
        group = by_score[s]
        take = min(left, len(group))
        hits += take * sum(group) / len(group)
        left -= take
        if left == 0:
            break
    return hits / top


def per_person_precision(
    people: Mapping[str, Sequence[int]],
    scores: Sequence[float],
    labels: Sequence[bool],
    k: int = 10,
) -> dict[str, float]:
    """precision@k of each person (``people``: person -> indices of their candidate ties) who
    has at least one positive tie."""
    out: dict[str, float] = {}
    for person, idx in people.items():
        own = [labels[i] for i in idx]
        if any(own):
            out[person] = precision_at([scores[i] for i in idx], own, k)
    return out


def mean_difference_ci(
    ours: Mapping[str, float], theirs: Mapping[str, float], n: int, seed: int = 0
) -> list[float]:
    """95% paired-bootstrap interval of mean(ours) - mean(theirs) over the same keys."""
    keys = sorted(ours)
    if n <= 0 or not keys:
        return [math.nan, math.nan]
    diff = [ours[key] - theirs[key] for key in keys]
    rng = random.Random(seed)
    size = len(diff)
    means = [sum(diff[rng.randrange(size)] for _ in range(size)) / size for _ in range(n)]
    return _interval(means)
