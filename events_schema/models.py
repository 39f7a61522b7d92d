"""The events tieline records: immutable facts about people and the ties between them.

Every event is a frozen pydantic model with ``extra="forbid"`` and a ``type`` literal that
discriminates it. Names are past tense because an event states something that already
happened. Fields that hold personal data (names, contact details, free text) carry
``x-personal-data: true`` in their JSON Schema so that erasure (crypto-shredding) can find them.

Never edit a model that has been released: add a new ``schema_version`` and an upcaster in
:mod:`events_schema.registry` instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

#: Marks a field as personal data in the generated JSON Schema.
PERSONAL: dict[str, Any] = {"x-personal-data": True}

WorkspaceId = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$"),
    Field(description="Workspace slug: lower-case letters, digits, dashes (a NATS subject token)."),
]
PersonId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$"),
    Field(description="Stable id of a person inside a workspace (letters, digits, '_' and '-')."),
]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
FreeText = Annotated[str, StringConstraints(max_length=2000)]

Depth = Literal[
    "card_exchange", "brief_chat", "conversation", "deep_conversation", "meal_or_activity"
]
Mode = Literal["in_person", "remote"]
Channel = Literal["email", "phone", "message", "video", "in_person", "social", "letter", "other"]


class Event(BaseModel):
    """The envelope every event carries.

    ``occurred_at`` is when it happened in life; ``recorded_at`` when tieline took it.
    ``event_id`` is the idempotency key: sending the same id twice records one event.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    #: Current schema version of the concrete event class (class-level, not a field).
    version: ClassVar[int] = 1

    event_id: UUID
    type: str
    schema_version: int = Field(ge=1)
    occurred_at: AwareDatetime
    recorded_at: AwareDatetime
    workspace_id: WorkspaceId
    recorded_by: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    correlation_id: UUID | None = None
    causation_id: UUID | None = None

    def people(self) -> tuple[str, ...]:
        """Every person this event names, in a stable order."""
        return ()

    def pairs(self) -> list[tuple[str, str]]:
        """The unordered pairs of people this event is about, each as (a, b) with a < b."""
        return []


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


class PersonAdded(Event):
    """A person was added to the workspace's directory."""

    type: Literal["person.added"] = "person.added"
    person_id: PersonId
    display_name: Annotated[ShortText, Field(json_schema_extra=PERSONAL)]
    email: Annotated[str | None, Field(max_length=254, json_schema_extra=PERSONAL)] = None
    phone: Annotated[str | None, Field(max_length=64, json_schema_extra=PERSONAL)] = None
    organization: Annotated[str | None, Field(max_length=200, json_schema_extra=PERSONAL)] = None
    title: Annotated[str | None, Field(max_length=200, json_schema_extra=PERSONAL)] = None
    notes: Annotated[FreeText | None, Field(json_schema_extra=PERSONAL)] = None

    def people(self) -> tuple[str, ...]:
        return (self.person_id,)


class PersonUpdated(Event):
    """Some of a person's directory fields changed; fields left out are unchanged."""

    type: Literal["person.updated"] = "person.updated"
    person_id: PersonId
    display_name: Annotated[ShortText | None, Field(json_schema_extra=PERSONAL)] = None
    email: Annotated[str | None, Field(max_length=254, json_schema_extra=PERSONAL)] = None
    phone: Annotated[str | None, Field(max_length=64, json_schema_extra=PERSONAL)] = None
    organization: Annotated[str | None, Field(max_length=200, json_schema_extra=PERSONAL)] = None
    title: Annotated[str | None, Field(max_length=200, json_schema_extra=PERSONAL)] = None
    notes: Annotated[FreeText | None, Field(json_schema_extra=PERSONAL)] = None

    @model_validator(mode="after")
    def _changes_something(self) -> PersonUpdated:
        fields = ("display_name", "email", "phone", "organization", "title", "notes")
        if all(getattr(self, f) is None for f in fields):
            raise ValueError("person.updated must change at least one field")
        return self

    def people(self) -> tuple[str, ...]:
        return (self.person_id,)


class RelationshipMet(Event):
    """Two or more people met. ``depth`` says how much of a meeting it was.

    A card exchange at a conference is a ``card_exchange``; an hour-long one-to-one talk is a
    ``conversation`` or ``deep_conversation``; a shared meal or activity is ``meal_or_activity``.
    """

    type: Literal["relationship.met"] = "relationship.met"
    participants: Annotated[list[PersonId], Field(min_length=2, max_length=50)]
    depth: Depth
    mode: Mode = "in_person"
    duration_minutes: Annotated[int, Field(ge=0, le=24 * 60)] = 0
    initiated_by: PersonId | None = None
    where: Annotated[str | None, Field(max_length=200, json_schema_extra=PERSONAL)] = None
    context: Annotated[FreeText | None, Field(json_schema_extra=PERSONAL)] = None

    @model_validator(mode="after")
    def _consistent(self) -> RelationshipMet:
        if len(set(self.participants)) != len(self.participants):
            raise ValueError("participants must be distinct people")
        if self.initiated_by is not None and self.initiated_by not in self.participants:
            raise ValueError("initiated_by must be one of the participants")
        return self

    def people(self) -> tuple[str, ...]:
        return tuple(self.participants)

    def pairs(self) -> list[tuple[str, str]]:
        ps = self.participants
        return [_pair(ps[i], ps[j]) for i in range(len(ps)) for j in range(i + 1, len(ps))]


class RelationshipFollowedUp(Event):
    """``from_person`` reached out to ``to_person`` after an earlier contact; ``replied`` says
    whether the other side answered (reciprocity)."""

    type: Literal["relationship.followed_up"] = "relationship.followed_up"
    from_person: PersonId
    to_person: PersonId
    channel: Channel
    replied: bool = False
    note: Annotated[FreeText | None, Field(json_schema_extra=PERSONAL)] = None

    @model_validator(mode="after")
    def _two_people(self) -> RelationshipFollowedUp:
        if self.from_person == self.to_person:
            raise ValueError("to_person must differ from from_person")
        return self

    def people(self) -> tuple[str, ...]:
        return (self.from_person, self.to_person)

    def pairs(self) -> list[tuple[str, str]]:
        return [_pair(self.from_person, self.to_person)]


class RelationshipIntroduced(Event):
    """``introducer`` introduced ``person_a`` and ``person_b`` to each other: a service the
    introducer did for both (Granovetter's reciprocal services)."""

    type: Literal["relationship.introduced"] = "relationship.introduced"
    introducer: PersonId
    person_a: PersonId
    person_b: PersonId
    reason: Annotated[FreeText | None, Field(json_schema_extra=PERSONAL)] = None

    @model_validator(mode="after")
    def _three_people(self) -> RelationshipIntroduced:
        if self.person_a == self.person_b:
            raise ValueError("person_b: a person cannot be introduced to themselves")
        if self.introducer in (self.person_a, self.person_b):
            raise ValueError("introducer must differ from the people introduced")
        return self

    def people(self) -> tuple[str, ...]:
        return (self.introducer, self.person_a, self.person_b)

    def pairs(self) -> list[tuple[str, str]]:
        return [
            _pair(self.introducer, self.person_a),
            _pair(self.introducer, self.person_b),
            _pair(self.person_a, self.person_b),
        ]


class RelationshipHelped(Event):
    """``helper`` did something for ``helped`` (advice, a referral, a favour)."""

    type: Literal["relationship.helped"] = "relationship.helped"
    helper: PersonId
    helped: PersonId
    what: Annotated[FreeText | None, Field(json_schema_extra=PERSONAL)] = None

    @model_validator(mode="after")
    def _two_people(self) -> RelationshipHelped:
        if self.helper == self.helped:
            raise ValueError("helped must differ from helper")
        return self

    def people(self) -> tuple[str, ...]:
        return (self.helper, self.helped)

    def pairs(self) -> list[tuple[str, str]]:
        return [_pair(self.helper, self.helped)]


class RelationshipClosenessRated(Event):
    """``rater`` rated how close they feel to ``ratee`` from 1 (acquaintance) to 5 (very close).

    Self-reported closeness is the best single indicator of tie strength (Marsden & Campbell 1984).
    """

    type: Literal["relationship.closeness_rated"] = "relationship.closeness_rated"
    rater: PersonId
    ratee: PersonId
    rating: Annotated[int, Field(ge=1, le=5)]

    @model_validator(mode="after")
    def _two_people(self) -> RelationshipClosenessRated:
        if self.rater == self.ratee:
            raise ValueError("ratee must differ from rater")
        return self

    def people(self) -> tuple[str, ...]:
        return (self.rater, self.ratee)

    def pairs(self) -> list[tuple[str, str]]:
        return [_pair(self.rater, self.ratee)]


class EventRetracted(Event):
    """An earlier event was recorded by mistake. Events are never edited or deleted; projections
    honour a retraction by removing exactly that event's effect."""

    type: Literal["event.retracted"] = "event.retracted"
    retracted_event_id: UUID
    reason: Annotated[FreeText | None, Field(json_schema_extra=PERSONAL)] = None


#: Every current event class, in a stable order.
EVENT_CLASSES: tuple[type[Event], ...] = (
    PersonAdded,
    PersonUpdated,
    RelationshipMet,
    RelationshipFollowedUp,
    RelationshipIntroduced,
    RelationshipHelped,
    RelationshipClosenessRated,
    EventRetracted,
)


def event_type_of(cls: type[Event]) -> str:
    """The ``type`` literal of an event class."""
    default = cls.model_fields["type"].default
    assert isinstance(default, str)
    return default


__all__ = [
    "EVENT_CLASSES",
    "PERSONAL",
    "Event",
    "EventRetracted",
    "PersonAdded",
    "PersonId",
    "PersonUpdated",
    "RelationshipClosenessRated",
    "RelationshipFollowedUp",
    "RelationshipHelped",
    "RelationshipIntroduced",
    "RelationshipMet",
    "WorkspaceId",
    "datetime",
    "event_type_of",
]
