"""A pair's strength maintained event by event (:class:`Fold`), as the projection stores it.

Part of :mod:`tieline.projections.strength_model`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from tieline.projections.strength_model_acc import _Acc, _canonical, _compute
from tieline.projections.strength_model_core import PairEvent, Strength, _days, _decay, _Side
from tieline.projections.strength_model_momentum import MOMENTUM_PARAMS, new_episode
from tieline.projections.strength_model_params import CONTACT_TYPES, DAY_SECONDS, PARAMS, Params

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PREFIX = "relationship."
_GAP = MOMENTUM_PARAMS.episode_gap_days


def _us(t: datetime | None) -> int | None:
    """Microseconds since the epoch (exact for datetime's resolution)."""
    return None if t is None else (t - _EPOCH) // _MICROSECOND


def _at_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _from_us(us: int | None) -> datetime | None:
    return None if us is None else _at_us(us)


def _short(kind: str) -> str:
    return kind.removeprefix(_PREFIX)


def _long(kind: str) -> str:
    """The inverse of :func:`_short` (types of other families keep their own prefix)."""
    return kind if "." in kind.split(":", 1)[0] else _PREFIX + kind


class Fold:
    """A pair's strength maintained event by event: what a read model stores so that a new
    event costs one step instead of a recompute of the pair's whole history.

    Events must be folded in canonical order (:meth:`accepts` says whether one may come next).
    The accumulators are kept decayed to :attr:`at`, the time of the latest folded event, so
    :meth:`strength` equals :func:`strength` over the same events up to floating-point rounding
    (a product of decays instead of one decay per event). Everything else (damping, caps,
    reciprocity, ratings) runs through the very rules :func:`strength` uses. A late event or a
    retraction needs :meth:`of` over the pair's whole stored history instead.
    """

    def __init__(self, person_a: str, person_b: str) -> None:
        self.acc = _Acc(person_a, person_b)
        self.at: datetime | None = None
        self.last_key: tuple[datetime, int, str] | None = None
        self.fast = 0.0
        self.slow = 0.0
        self.counts: dict[str, int] = {}
        self.score_at_last_contact: float | None = None
        self._at_last_contact = False
        #: Momentum's episodes so far (contacts more than the momentum parameter set's
        #: episode gap apart): the one part of momentum that needs the whole history.
        self.episodes = 0

    @classmethod
    def of(
        cls, events: Iterable[PairEvent], params: Params = PARAMS, episode_gap_days: float = _GAP
    ) -> Fold | None:
        """The fold of a pair's whole history (None when there are no events)."""
        ordered = _canonical(events)
        if not ordered:
            return None
        fold = cls(ordered[0].person_a, ordered[0].person_b)
        for e in ordered:
            fold.add(e, params, episode_gap_days)
        return fold

    @property
    def event_count(self) -> int:
        return sum(self.counts.values())

    def accepts(self, e: PairEvent) -> bool:
        """Whether ``e`` comes after every folded event in canonical order."""
        return self.last_key is None or (e.occurred_at, e.seq, e.event_id) > self.last_key

    def add(self, e: PairEvent, params: Params = PARAMS, episode_gap_days: float = _GAP) -> None:
        """Fold in the next event (the caller has checked :meth:`accepts`); contacts more than
        ``episode_gap_days`` apart are separate momentum episodes."""
        if self._at_last_contact:
            self._settle(params)  # the state is about to move past the last contact
        if e.type in CONTACT_TYPES:
            self._episode(e.occurred_at, episode_gap_days)
        points, _ = self.acc.step(e, params)
        if self.at is not None:
            days = _days(self.at, e.occurred_at)
            self.fast *= _decay(days, params.fast_half_life_days)
            self.slow *= _decay(days, params.slow_half_life_days)
        s = params.slow_share
        self.fast += (1 - s) * points
        self.slow += s * points
        self.at = e.occurred_at
        self.last_key = (e.occurred_at, e.seq, e.event_id)
        self.counts[e.type] = self.counts.get(e.type, 0) + 1
        # Same rule as strength(): the score at the last contact includes every event at that
        # instant, so it is the score after the latest one at it. Computed lazily (_settle).
        self._at_last_contact = self.acc.last == e.occurred_at

    def _episode(self, at: datetime, gap_days: float) -> None:
        """Count a contact at ``at`` into momentum's episodes (the same rule as
        :func:`~tieline.projections.strength_model_momentum.momentum`)."""
        last = self.acc.last  # the previous contact, before this event is stepped in
        if last is None or new_episode((at - last).total_seconds(), gap_days * DAY_SECONDS):
            self.episodes += 1

    def _settle(self, params: Params) -> None:
        self.score_at_last_contact = self.acc.score(self.fast, self.slow, self.at or _EPOCH, params)
        self._at_last_contact = False

    def strength(self, params: Params = PARAMS) -> Strength:
        """The strength at :attr:`at` (without per-event contributions)."""
        if self.at is None:
            return _compute([], params, None)
        result = self.acc.result(
            self.fast,
            self.slow,
            self.at,
            params,
            score_at_last_contact=self.score_at_last_contact,
            at_last_contact=self._at_last_contact,
        )
        self.score_at_last_contact = result.score_at_last_contact
        self._at_last_contact = False
        return result

    def to_dict(self) -> dict[str, Any]:
        """The state as compact JSON-ready values (it is stored with every pair, so every byte
        counts): times as integer microseconds since the epoch, event types without their
        ``relationship.`` prefix, the pair itself left out (the row's key holds it). Floats
        and times round-trip exactly."""
        if self._at_last_contact:
            raise RuntimeError("call strength() before storing a fold")  # settles the score
        acc = self.acc
        key = self.last_key
        return {
            "at": _us(self.at),
            "key": None if key is None else [_us(key[0]), key[1]],
            "f": self.fast,
            "s": self.slow,
            "c": self.score_at_last_contact,
            "n": {_short(t): n for t, n in self.counts.items()},
            "sd": {
                p: [x.initiated, x.followed_up, x.replies, x.helped, x.introduced, x.effort]
                for p, x in acc.sides.items()
            },
            "b": {_short(k): [_us(t), n] for k, (t, n) in acc.burst.items()},
            "r": {d: [f, sl, _us(t)] for d, (f, sl, t) in acc.reservoirs.items()},
            "rt": {r: [_us(t), v] for r, (t, v) in acc.ratings.items()},
            "fi": _us(acc.first),
            "la": _us(acc.last),
            "d": acc.deepest,
            "ep": self.episodes,
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], person_a: str, person_b: str) -> Fold:
        """The inverse of :meth:`to_dict` (also after a JSON round trip) for the pair
        ``person_a``, ``person_b``. The stored key has no event id: two events of one pair
        never share a stream sequence, so (time, seq) orders them already."""
        fold = cls(person_a, person_b)
        acc = fold.acc
        fold.at = _from_us(d["at"])
        fold.fast, fold.slow = float(d["f"]), float(d["s"])
        key = d["key"]
        fold.last_key = None if key is None else (_at_us(key[0]), int(key[1]), "")
        fold.counts = {_long(k): int(v) for k, v in d["n"].items()}
        fold.score_at_last_contact = None if d["c"] is None else float(d["c"])
        for p, (i, f, r, h, n, eff) in d["sd"].items():
            acc.sides[p] = _Side(int(i), int(f), int(r), int(h), int(n), float(eff))
        acc.burst = {_long(k): (_at_us(t), int(n)) for k, (t, n) in d["b"].items()}
        acc.reservoirs = {k: (float(f), float(sl), _at_us(t)) for k, (f, sl, t) in d["r"].items()}
        acc.ratings = {k: (_at_us(t), int(v)) for k, (t, v) in d["rt"].items()}
        acc.first, acc.last = _from_us(d["fi"]), _from_us(d["la"])
        acc.deepest = d["d"]
        fold.episodes = int(d["ep"])
        return fold
