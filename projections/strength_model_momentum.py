"""Momentum: will this relationship go on (both ways) soon? A score separate from strength.

``strength`` (:mod:`tieline.projections.strength_model`) rates how close a tie is: lasting,
reciprocal, deep. Measured as a predictor of whether a relationship *continues* it does no better
than counting contacts (``docs/strength-model.md`` §7): its two-year memory keeps ties that have
stopped near the top for months, and its day-scale half-lives see nothing within a week. So the
question "will we be in touch again, both ways?" gets a score of its own, validated on that
label, and strength keeps its meaning.

The model, a pure function of one pair's contacts and the two people's last contact with anyone:

    M = E ** episode_exponent * (eps / (g + eps)) * (eps / (h + eps)) ** activity_weight
          * (eps / (h2 + eps)) ** partner_activity_weight
    momentum = 100 * M / (1 + M)          # in [0, 100); never saturates to ties

* ``g``: days since the pair's last contact. Recency is the strongest single predictor of
  continued contact in our data, as in Gilbert & Karahalios (2009); the decay is a power law
  (``1 / (g + eps)``), not an exponential: a power law has no time scale of its own, so the same
  parameters apply to face-to-face data over days and messages over months (no stretch).
* ``E``: the number of *episodes* (contacts more than ``episode_gap_days`` apart count
  separately; a burst of messages within the hour is one episode). Ureña-Carrion, Saramäki &
  Kivelä (2020) found the number of bursty cascades predicted neighbourhood overlap better than
  plain contact counts; here the exponent is the weight of volume against recency.
* ``h``: days since the *less recently active* of the two people was in contact with anyone. A
  pair whose members have both gone quiet rarely resumes; a person active elsewhere but not
  with this tie is a sign the tie, not the person, has stopped. (Navarro et al. 2017: a tie
  halted for more than ~8 times its previous interval most likely decays; judged against the
  pair's own interval that ranked worse than plain recency on our data, see the doc.) Without
  that information ``h = g``.
* ``h2``: days since the *more recently active* of the two was in contact with anyone: small
  while at least one of them is still around. With ``h`` this makes the activity term one
  factor per person. ``partner_activity_weight`` is 0 in ``momentum-2026.1`` (the term is off)
  and calibration does not search it: it is a what-if term (``--momentum-params``), tried in
  issue #16's third round and not adopted (the doc, §8, "Ideas tried and dropped").

The parameters were chosen on an earlier cut-off than the one they are reported at
(``bench/validate_strength.py``, the selection is described in the doc); they are a versioned
set like strength's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from tieline.projections.strength_model_core import PairEvent
from tieline.projections.strength_model_params import CONTACT_TYPES, DAY_SECONDS


@dataclass(frozen=True)
class MomentumParams:
    """One versioned parameter set of the momentum score (durations in days)."""

    version: str
    episode_gap_days: float
    episode_exponent: float
    eps_days: float
    activity_weight: float
    # Weight of the more recently active person's silence (``h2``); 0 (off) in every set before
    # momentum-2026.2, so their stored versions read back unchanged.
    partner_activity_weight: float = 0.0

    def __post_init__(self) -> None:
        if not (self.episode_gap_days >= 0 and self.eps_days > 0):
            raise ValueError("episode_gap_days must be >= 0 and eps_days > 0")
        weights = (self.episode_exponent, self.activity_weight, self.partner_activity_weight)
        if min(weights) < 0:
            raise ValueError(
                "episode_exponent, activity_weight and partner_activity_weight must be >= 0"
            )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: MomentumParams | None = None) -> Any:
        start = (base or MOMENTUM_PARAMS).to_dict()
        unknown = sorted(set(data) - set(start))
        if unknown:
            raise ValueError(f"unknown momentum parameter(s): {unknown}")
        return cls(**{**start, **data})


MOMENTUM_PARAMS = MomentumParams(
    version="momentum-2026.1",
    # Contacts within an hour of the previous one belong to the same episode (a conversation by
    # message, or one encounter in a corridor); design choice.
    episode_gap_days=1.0 / 24.0,
    # Volume against recency: chosen on the earlier cut-off (the doc, §7); 3 means ten episodes
    # make up for a gap a thousand times longer.
    episode_exponent=3.0,
    # The power law's inner scale: gaps well under a day count as "just now" (chosen on the
    # earlier cut-off among 1 minute, 1 hour and 1 day).
    eps_days=1.0,
    # The two people's own activity: chosen on the earlier cut-off (the doc, §7).
    activity_weight=0.5,
)


#: The documented range of each momentum parameter (searched by ``tieline calibrate`` and by
#: ``bench/validate_strength_select.py``).
MOMENTUM_GRID: dict[str, tuple[float, ...]] = {
    "episode_gap_days": (1 / 24, 0.5),
    "episode_exponent": (0.0, 0.5, 1.0, 2.0, 3.0),
    "activity_weight": (0.0, 0.5, 1.0),
    "eps_days": (1 / 1440, 1 / 24, 1.0),
}


@dataclass(frozen=True)
class Momentum:
    """The momentum of one pair at ``as_of`` and its parts."""

    score: float  # 0..100
    episodes: int
    days_since_contact: float | None
    days_since_people_active: float | None
    params_version: str
    #: Days since the more recently active of the two people's last contact with anyone.
    days_since_either_active: float | None = None


def momentum(
    events: Iterable[PairEvent],
    as_of: datetime,
    people_last_active: Mapping[str, datetime] | None = None,
    params: MomentumParams = MOMENTUM_PARAMS,
) -> Momentum:
    """Momentum of one pair at ``as_of`` from its contacts up to then (ratings are not contacts).

    ``people_last_active`` maps a person to their latest contact with anyone (up to ``as_of``);
    a person missing from it counts as last active at the pair's own last contact.
    """
    times = sorted(
        {
            (e.occurred_at, e.event_id)
            for e in events
            if e.type in CONTACT_TYPES and e.occurred_at <= as_of
        }
    )
    if not times:
        return Momentum(0.0, 0, None, None, params.version)
    episodes = 1
    gap = params.episode_gap_days * DAY_SECONDS
    for (before, _), (after, _) in itertools.pairwise(times):
        if (after - before).total_seconds() > gap:
            episodes += 1
    last = times[-1][0]
    g = (as_of - last).total_seconds() / DAY_SECONDS
    people = {e.person_a for e in events} | {e.person_b for e in events}
    active = [max(last, (people_last_active or {}).get(p, last)) for p in sorted(people)]
    h = (as_of - min(active)).total_seconds() / DAY_SECONDS if active else g
    h2 = (as_of - max(active)).total_seconds() / DAY_SECONDS if active else g
    score = combine(params, episodes, g, h, h2)
    return Momentum(score, episodes, g, h, params.version, h2)


def combine(
    params: MomentumParams, episodes: int, g: float, h: float, h2: float | None = None
) -> float:
    """The score from its parts: episodes, days since the pair's last contact, days since the
    less recently active person's last contact with anyone (``h``) and since the more recently
    active one's (``h2``; None: taken as ``h``, only right when both were last active together,
    so a caller with a set whose ``partner_activity_weight`` is not 0 passes it)."""
    eps = params.eps_days
    m = math.pow(episodes, params.episode_exponent) * (eps / (g + eps))
    m *= math.pow(eps / (max(h, 0.0) + eps), params.activity_weight)
    if params.partner_activity_weight:
        other = max(h if h2 is None else h2, 0.0)
        m *= math.pow(eps / (other + eps), params.partner_activity_weight)
    return 100.0 * m / (1.0 + m)
