"""Placeholder strength rule (the strength-model issue replaces it with a researched model).

Each event contributes points to every pair it is about; the score saturates towards 100 so
that no amount of card exchanges runs away: ``score = 100 * (1 - exp(-total / SATURATION))``.
The rule is a pure function of the pair's events, so the projection and a replay agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from events_schema.models import (
    Event,
    RelationshipClosenessRated,
    RelationshipFollowedUp,
    RelationshipHelped,
    RelationshipIntroduced,
    RelationshipMet,
)

#: Points for a meeting by depth: a card exchange counts little, a shared meal a lot.
MET_POINTS = {
    "card_exchange": 1.0,
    "brief_chat": 2.0,
    "conversation": 5.0,
    "deep_conversation": 8.0,
    "meal_or_activity": 8.0,
}
#: Remote contact counts for less than face-to-face (Roberts & Dunbar 2015).
REMOTE_FACTOR = 0.7
SATURATION = 20.0


def contribution(event: Event, pair: tuple[str, str]) -> float:
    """Points ``event`` adds to the tie ``pair`` (a, b with a < b)."""
    if isinstance(event, RelationshipMet):
        points = MET_POINTS[event.depth]
        return points * (REMOTE_FACTOR if event.mode == "remote" else 1.0)
    if isinstance(event, RelationshipFollowedUp):
        return 2.0 if event.replied else 1.0
    if isinstance(event, RelationshipIntroduced):
        # The introducer did a service for both sides; the introduced pair merely starts.
        return 1.0 if set(pair) == {event.person_a, event.person_b} else 3.0
    if isinstance(event, RelationshipHelped):
        return 4.0
    if isinstance(event, RelationshipClosenessRated):
        return 3.0 * event.rating
    return 0.0


def score(total: float) -> float:
    """Saturating 0-100 score from accumulated points."""
    return round(100.0 * (1.0 - math.exp(-max(total, 0.0) / SATURATION)), 4)


@dataclass(frozen=True)
class PairSummary:
    """What the strength read model stores per pair."""

    total: float = 0.0
    event_count: int = 0
    meetings: int = 0
    follow_ups: int = 0
    introductions: int = 0
    helps: int = 0
    ratings: int = 0
    first_contact_at: datetime | None = None
    last_contact_at: datetime | None = None

    def add(self, event_type: str, points: float, occurred_at: datetime) -> PairSummary:
        """The summary with one more event folded in (order-independent)."""
        first, last = self.first_contact_at, self.last_contact_at
        return PairSummary(
            first_contact_at=occurred_at if first is None else min(first, occurred_at),
            last_contact_at=occurred_at if last is None else max(last, occurred_at),
            total=self.total + points,
            event_count=self.event_count + 1,
            meetings=self.meetings + (event_type == "relationship.met"),
            follow_ups=self.follow_ups + (event_type == "relationship.followed_up"),
            introductions=self.introductions + (event_type == "relationship.introduced"),
            helps=self.helps + (event_type == "relationship.helped"),
            ratings=self.ratings + (event_type == "relationship.closeness_rated"),
        )

    @property
    def score(self) -> float:
        return score(self.total)
