"""tieline's event schema: the immutable facts on the log, and the one registry that reads them."""

from tieline.events_schema.models import (
    EVENT_CLASSES,
    Event,
    EventRetracted,
    PersonAdded,
    PersonUpdated,
    RelationshipClosenessRated,
    RelationshipFollowedUp,
    RelationshipHelped,
    RelationshipIntroduced,
    RelationshipMet,
)
from tieline.events_schema.registry import REGISTRY, EventDecodeError, EventRegistry

__all__ = [
    "EVENT_CLASSES",
    "REGISTRY",
    "Event",
    "EventDecodeError",
    "EventRegistry",
    "EventRetracted",
    "PersonAdded",
    "PersonUpdated",
    "RelationshipClosenessRated",
    "RelationshipFollowedUp",
    "RelationshipHelped",
    "RelationshipIntroduced",
    "RelationshipMet",
]
