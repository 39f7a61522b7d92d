"""Momentum: will this relationship go on (both ways) soon? A score separate from strength.

``strength`` (:mod:`tieline.projections.strength_model`) rates how close a tie is: lasting,
reciprocal, deep. Measured as a predictor of whether a relationship *continues* it does no better
than counting contacts (``docs/strength-model.md`` §7): its two-year memory keeps ties that have
stopped near the top for months, and its day-scale half-lives see nothing within a week. So the
question "will we be in touch again, both ways?" gets a score of its own, validated on that
label, and strength keeps its meaning.

The model, a pure function of one pair's contacts and the two people's last contact with anyone:

    M = E ** episode_exponent * (eps / (g + eps)) * (eps / (h + eps)) ** activity_weight
          * (eps / (h2 + eps)) ** partner_activity_weight * (1 + CN) ** neighbour_weight
    momentum = 100 * logistic((ln M - log_center) / log_scale)    # in [0, 100)

With ``log_center`` 0 and ``log_scale`` 1 (``momentum-2026.1``) that is ``100 * M / (1 + M)``.
The map is monotone, so it changes no ranking and no AUC; it only spreads the scores a person
sees over 0-100 (with ``eps`` one minute, ``M`` spans dozens of orders of magnitude). The score
is a rank, not a probability.

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
  factor per person.
* ``CN``: the pair's common neighbours, the people both of them have had contact with (up to
  ``as_of``). The overlap of two people's contacts grows with the strength of their tie
  (Granovetter 1973; Onnela et al. 2007), and common neighbours are the classic link-prediction
  score (Liben-Nowell & Kleinberg 2007).

Two sets exist; stored rows name theirs, so both read back unchanged:

* ``momentum-2026.1`` (:data:`MOMENTUM_2026_1`): episodes an hour apart, ``eps`` one day, the
  activity term for the less active person only, no neighbour term.
* ``momentum-2026.2`` (:data:`MOMENTUM_PARAMS`, the default since issue #16's seventh round):
  every contact counts (``episode_gap_days`` 0), ``eps`` one minute, both people's activity
  (weights 1 and 0.5) and ``(1 + CN) ** 0.25``: the fourth round's rule, the one with the
  largest smallest margin over the best simple baseline at the earlier cut-offs (the doc, §8).

Both were chosen on earlier cut-offs than the ones they are reported at
(``bench/validate_strength.py``; the selection is described in the doc).
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
    # Weight of the more recently active person's silence (``h2``) and of the common
    # neighbours; 0 (off) in momentum-2026.1, so its stored versions read back unchanged.
    partner_activity_weight: float = 0.0
    neighbour_weight: float = 0.0
    # The display map (module docstring): the identity-like 0 and 1 in momentum-2026.1.
    log_center: float = 0.0
    log_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.episode_gap_days >= 0 and self.eps_days > 0 and self.log_scale > 0):
            raise ValueError("episode_gap_days must be >= 0, eps_days and log_scale > 0")
        weights = (
            self.episode_exponent,
            self.activity_weight,
            self.partner_activity_weight,
            self.neighbour_weight,
        )
        if min(weights) < 0:
            raise ValueError(
                "episode_exponent, activity_weight, partner_activity_weight and "
                "neighbour_weight must be >= 0"
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


MOMENTUM_2026_1 = MomentumParams(
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

MOMENTUM_PARAMS = MomentumParams(
    version="momentum-2026.2",
    # Every contact counts (no episodes): the fourth round's rule counted contacts.
    episode_gap_days=0.0,
    episode_exponent=3.0,
    # One minute: on message data a reply within minutes is "just now", an hour later is not.
    eps_days=1.0 / 1440.0,
    # Both people's silence, the less active one's weighing double (the third round, §8).
    activity_weight=1.0,
    partner_activity_weight=0.5,
    # (1 + CN) ** 0.25: chosen at the earlier cut-offs among 0, 0.25, 0.5, 1 and 2 (§8).
    neighbour_weight=0.25,
    # Display only (monotone): ln M = -15 shows as 50 (e.g. ten contacts, the last a week ago,
    # one of the two silent since, the other active a day ago: -15.2); each 5 more in ln M
    # moves the score about 23 points.
    log_center=-15.0,
    log_scale=5.0,
)

#: Every momentum set by version: a stored ``momentum_version`` starts from one of these.
MOMENTUM_SETS: dict[str, MomentumParams] = {
    s.version: s for s in (MOMENTUM_2026_1, MOMENTUM_PARAMS)
}


#: The documented range of each momentum parameter (searched by ``tieline calibrate`` and by
#: ``bench/validate_strength_select.py``): 360 candidates. The partner term is not searched
#: (0: the third round found it adds nothing once chosen per workspace); it is a what-if term.
MOMENTUM_GRID: dict[str, tuple[float, ...]] = {
    "neighbour_weight": (0.0, 0.25, 0.5, 1.0),
    "episode_gap_days": (1 / 24, 0.5),
    "episode_exponent": (0.0, 0.5, 1.0, 2.0, 3.0),
    "activity_weight": (0.0, 0.5, 1.0),
    "eps_days": (1 / 1440, 1 / 24, 1.0),
    "partner_activity_weight": (0.0,),
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
    #: The people both have had contact with.
    common_neighbours: int = 0


def momentum(
    events: Iterable[PairEvent],
    as_of: datetime,
    people_last_active: Mapping[str, datetime] | None = None,
    params: MomentumParams = MOMENTUM_PARAMS,
    common_neighbours: int = 0,
) -> Momentum:
    """Momentum of one pair at ``as_of`` from its contacts up to then (ratings are not contacts).

    ``people_last_active`` maps a person to their latest contact with anyone (up to ``as_of``);
    a person missing from it counts as last active at the pair's own last contact.
    ``common_neighbours``: the people both had contact with up to ``as_of``.
    """
    found = parts(events, as_of, people_last_active, params.episode_gap_days)
    if found is None:
        return Momentum(0.0, 0, None, None, params.version)
    episodes, g, h, h2 = found
    score = combine(params, episodes, g, h, h2, common_neighbours)
    return Momentum(score, episodes, g, h, params.version, h2, common_neighbours)


def parts(
    events: Iterable[PairEvent],
    as_of: datetime,
    people_last_active: Mapping[str, datetime] | None,
    episode_gap_days: float,
) -> tuple[int, float, float, float] | None:
    """A pair's episodes and its days since its last contact (``g``) and since the less and
    the more recently active person's (``h``, ``h2``) at ``as_of`` (:func:`momentum`); None
    when it has no contact up to then."""
    times = sorted(
        {
            (e.occurred_at, e.event_id)
            for e in events
            if e.type in CONTACT_TYPES and e.occurred_at <= as_of
        }
    )
    if not times:
        return None
    episodes = 1
    gap = episode_gap_days * DAY_SECONDS
    for (before, _), (after, _) in itertools.pairwise(times):
        if new_episode((after - before).total_seconds(), gap):
            episodes += 1
    last = times[-1][0]
    g = (as_of - last).total_seconds() / DAY_SECONDS
    people = {e.person_a for e in events} | {e.person_b for e in events}
    active = [max(last, (people_last_active or {}).get(p, last)) for p in sorted(people)]
    h = (as_of - min(active)).total_seconds() / DAY_SECONDS if active else g
    h2 = (as_of - max(active)).total_seconds() / DAY_SECONDS if active else g
    return episodes, g, h, h2


def new_episode(seconds_apart: float, gap_seconds: float) -> bool:
    """Whether a contact ``seconds_apart`` after the previous one starts a new episode: when
    it is more than the gap later; with a gap of 0 every contact counts, even two at the same
    instant (the volume is then the pair's contacts)."""
    return gap_seconds <= 0 or seconds_apart > gap_seconds


def combine(
    params: MomentumParams,
    episodes: int,
    g: float,
    h: float,
    h2: float | None = None,
    common_neighbours: int = 0,
) -> float:
    """The score from its parts: episodes, days since the pair's last contact, days since the
    less recently active person's last contact with anyone (``h``) and since the more recently
    active one's (``h2``; None: taken as ``h``, only right when both were last active together,
    so a caller with a set whose ``partner_activity_weight`` is not 0 passes it), and the
    common neighbours."""
    eps = params.eps_days
    if episodes <= 0:
        return 0.0  # no contact: nothing to go on
    if params.log_center == 0.0 and params.log_scale == 1.0 and not params.neighbour_weight:
        # momentum-2026.1's own arithmetic, so its stored versions read back bit for bit. g < 0
        # only for a contact dated ahead of the clock (accepted within max_future_skew_s) read
        # now from the stored row: as if just now (eps / (g + eps) went negative, or divided
        # by zero, for a set with eps of a minute, and the score left 0-100).
        m = math.pow(episodes, params.episode_exponent) * (eps / (max(g, 0.0) + eps))
        m *= math.pow(eps / (max(h, 0.0) + eps), params.activity_weight)
        if params.partner_activity_weight:
            other = max(h if h2 is None else h2, 0.0)
            m *= math.pow(eps / (other + eps), params.partner_activity_weight)
        return 100.0 * m / (1.0 + m)
    # ln M: what ranks pairs; the logistic below maps it monotonically onto 0-100
    log_m = params.episode_exponent * math.log(episodes) + math.log(eps / (max(g, 0.0) + eps))
    log_m += params.activity_weight * math.log(eps / (max(h, 0.0) + eps))
    other = max(h if h2 is None else h2, 0.0)
    log_m += params.partner_activity_weight * math.log(eps / (other + eps))
    log_m += params.neighbour_weight * math.log1p(common_neighbours)
    x = (log_m - params.log_center) / params.log_scale
    # a logistic that neither overflows nor loses the small end
    return 100.0 / (1.0 + math.exp(-x)) if x >= 0 else 100.0 * math.exp(x) / (1.0 + math.exp(x))
