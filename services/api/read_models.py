"""Answers of the relationship and introduction reads: strength, explanation, a person's
ties, follow-ups, give-and-take, timeline, introductions and warm paths.

Numbers come from the strength model (docs/strength-model.md); each answer lists the members
clients can rely on and allows more (a newer strength model may add some).
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import ConfigDict, Field
from tieline.services.api.models import Answer, Instant, Page

Tier = str


class Reciprocity(Answer):
    """Who makes the effort, per person id: counts of acts by each side; ``balance`` in
    [-1, 1] (positive: ``person_a`` makes more of the effort); ``one_sided`` once enough acts
    lean far enough one way; ``factor`` multiplies the points (1 unless one-sided)."""

    initiated: dict[str, int] = Field(default_factory=dict)
    followed_up: dict[str, int] = Field(default_factory=dict)
    replies: dict[str, int] = Field(default_factory=dict)
    helped: dict[str, int] = Field(default_factory=dict)
    introduced: dict[str, int] = Field(default_factory=dict)
    effort: dict[str, float] = Field(default_factory=dict)
    acts: int = 0
    balance: float = 0.0
    one_sided: bool = False
    factor: float = 1.0


class RelationshipStrength(Answer):
    """The strength of one tie now (or as of a date)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "person_a": "ada",
                    "person_b": "grace",
                    "score": 31.2,
                    "tier": "active",
                    "as_of": "2026-03-14T18:30:00+00:00",
                    "params_version": "v3",
                    "event_count": 2,
                    "meetings": 1,
                    "follow_ups": 1,
                    "introductions": 0,
                    "helps": 0,
                    "ratings": 0,
                    "first_contact_at": "2026-03-01T19:00:00+00:00",
                    "last_contact_at": "2026-03-03T09:00:00+00:00",
                    "days_since_contact": 11.4,
                    "reciprocity": {"acts": 2, "balance": 0.0, "one_sided": False,
                                    "factor": 1.0},
                    "can_vouch": False,
                    "momentum": 41.7,
                    "momentum_version": "momentum-2026.2",
                    "episodes": 2,
                    "common_neighbours": 3,
                }
            ]
        }
    )  # fmt: skip
    person_a: str = Field(description="The pair, smaller id first.")
    person_b: str
    score: float = Field(description="0-100.")
    tier: Tier
    as_of: Instant | None
    params_version: str
    event_count: int
    meetings: int
    follow_ups: int
    introductions: int
    helps: int
    ratings: int
    first_contact_at: Instant | None
    last_contact_at: Instant | None
    days_since_contact: float | None
    reciprocity: Reciprocity
    can_vouch: bool
    vouch_reasons: list[str] | None = Field(
        default=None, description="Why (not) vouching; given for an ``as_of`` answer."
    )
    momentum: float = Field(
        description="0-100: how likely the relationship goes on, both ways, soon, as a rank "
        "(higher: likelier), not a probability (a score separate from strength, validated on "
        "that question: docs/strength-model.md §8)."
    )
    momentum_version: str = Field(description="The momentum parameter set.")
    episodes: int = Field(
        description="Contacts counted as separate episodes (a burst within the parameter "
        "set's episode gap is one; with a gap of 0, as in momentum-2026.2, every contact)."
    )
    common_neighbours: int = Field(
        default=0,
        description="The people both have had contact with (up to the answer's instant); "
        "momentum rises with them when its set weighs them (momentum-2026.2 does).",
    )


class Contribution(Answer):
    event_id: str
    type: str
    occurred_at: Instant
    points: float
    current: float = Field(description="What it still contributes after decay.")
    reason: str


class Components(Answer):
    fast: float
    slow: float
    points: float
    reciprocity_factor: float
    behaviour_score: float
    rating: float | None
    rating_weight: float


class Decay(Answer):
    first_contact_at: Instant | None
    last_contact_at: Instant | None
    days_since_contact: float | None
    score_at_last_contact: float | None
    lost_since_last_contact: float | None
    tier_at_last_contact: Tier | None
    cadence_days: float | None


class Explanation(Answer):
    """Why the score is what it is, and what would raise it."""

    score: float
    tier: Tier
    params_version: str
    as_of: Instant | None
    top_contributions: list[Contribution]
    components: Components
    decay: Decay
    reciprocity: Reciprocity
    next_tier: Tier | None
    next_tier_score: float | None
    to_raise: list[str]


class Tie(Answer):
    other: str
    score: float
    momentum: float | None = Field(
        description="0-100: how likely the tie goes on, both ways, soon (see the pair answer)."
    )
    tier: Tier = Field(description="Capacity-limited: about 5 / 15 / 50 / 150 per layer.")
    event_count: int
    meetings: int
    last_contact_at: Instant | None
    one_sided: bool


class TiesPage(Page):
    """A person's ties, strongest (or latest) first."""

    person: str
    order: Literal["strength", "recent", "momentum"]
    as_of: Instant | None = Field(
        description="The instant the ranking is computed at: the ``as_of`` asked for, or "
        "(after the first page) the instant of the first page; null for a first page of now."
    )
    relationships: list[Tie]


class FollowUp(Answer):
    other: str
    score: float
    tier_at_last_contact: Tier | None
    last_contact_at: Instant
    days_since_contact: float
    cadence_days: float | None
    at_stake: float = Field(description="Strength lost if nothing happens for another cadence.")
    momentum: float | None = Field(
        description="0-100: how likely the tie goes on soon without a nudge (low: lapsing)."
    )


class FollowUpsPage(Page):
    """Ties due a follow-up, most strength at stake first (or least momentum first)."""

    person: str
    as_of: Instant
    due: list[FollowUp]


class GiveAndTakeTie(Answer):
    other: str
    one_sided: bool
    reciprocity: Reciprocity


class GiveAndTakePage(Page):
    """Per tie, who makes the effort; one-sided ties first."""

    person: str
    ties: list[GiveAndTakeTie]


class DecayPoint(Answer):
    at: Instant
    score: float


class TimelineEvent(Answer):
    event_id: str
    seq: int
    type: str
    occurred_at: Instant
    recorded_at: Instant | None
    recorded_by: str | None
    detail: dict[str, Any] = Field(description="The event's own fields that matter to the pair.")
    contribution: float
    contribution_now: float
    reason: str
    strength_after: float
    decay_after: list[DecayPoint] = Field(
        default_factory=list,
        description="The score at instants between this event and the next one (or as_of), "
        "as the model computes it with only the events so far: the curve to draw between "
        "events. Fewer points per gap for long histories.",
    )
    retracted: Literal[False]


class RetractedTimelineEvent(Answer):
    event_id: UUID
    seq: int
    type: str
    occurred_at: Instant
    recorded_at: Instant
    recorded_by: str
    detail: dict[str, Any]
    retracted: Literal[True]
    contribution: float
    strength_after: None


class TimelinePage(Page):
    """How a relationship developed, in the order events occurred; a page covers both lists
    (events that count, and retracted ones) over the same span of time."""

    person_a: str
    person_b: str
    as_of: Instant | None
    events: list[TimelineEvent]
    retracted: list[RetractedTimelineEvent]


class Introduction(Answer):
    introduction_id: UUID
    requester: str
    introducer: str
    target: str
    requester_consent: bool | None
    target_consent: bool | None
    status: str
    made_event_id: UUID | None
    outcome: str | None
    requested_at: Instant
    updated_at: Instant


class IntroductionsPage(Page):
    """Double opt-in introductions, newest request first."""

    introductions: list[Introduction]


class VouchCheck(Answer):
    can_vouch: bool
    score: float | None = None
    tier: Tier | None = None
    reasons: list[str]


class IntroductionCheck(Answer):
    """Whether ``introducer`` can introduce ``a`` and ``b``. ``checks`` holds the verdict for
    each side (``a``, ``b``); the same verdicts also appear under each person's id (the
    original shape, kept for existing clients) unless that id is a member name here."""

    introducer: str
    a: str
    b: str
    can_introduce: bool
    checks: dict[Literal["a", "b"], VouchCheck]


class WarmPath(Answer):
    path: list[str]
    intermediaries: list[str]
    weakest_link: float
    link_scores: list[float]


class WarmPaths(Answer):
    """The best paths (at most ``limit``), strongest weakest link first; a ranked top list,
    not a paged one."""

    person: str
    target: str
    paths: list[WarmPath]
