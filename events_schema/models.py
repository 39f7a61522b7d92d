"""The events tieline records: immutable facts about people and the ties between them.

Every event is a frozen pydantic model with ``extra="forbid"`` and a ``type`` literal that
discriminates it. Names are past tense because an event states something that already
happened. Fields that hold personal data (names, contact details, free text) carry
``x-personal-data: true`` in their JSON Schema so that erasure (crypto-shredding) can find them.

Never edit a model that has been released: add a new ``schema_version`` and an upcaster in
:mod:`tieline.events_schema.registry` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

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
#: Personal-data values travel encrypted: ``enc:v1:`` + base64(nonce + AES-GCM ciphertext).
ENC_PREFIX = "enc:v1:"


def _personal(max_len: int, min_len: int = 0) -> Callable[[str], str]:
    """Validator of a personal-data string: plaintext of ``min_len``..``max_len`` characters
    (surrounding whitespace stripped) from clients, or its ciphertext on the log (longer, so it
    gets its own bound)."""

    def check(value: str) -> str:
        if value.startswith(ENC_PREFIX):
            if len(value) > 2 * max_len * 4 + 64:
                raise ValueError("ciphertext is longer than its plaintext can be")
            return value
        value = value.strip()
        if not min_len <= len(value) <= max_len:
            raise ValueError(f"must be {min_len} to {max_len} characters long (stripped)")
        return value

    return check


def _extra(max_len: int) -> dict[str, Any]:
    return {**PERSONAL, "x-max-plaintext-length": max_len}


Name = Annotated[str, AfterValidator(_personal(200, 1)), Field(json_schema_extra=_extra(200))]
ShortText = Annotated[str, AfterValidator(_personal(200)), Field(json_schema_extra=_extra(200))]
FreeText = Annotated[str, AfterValidator(_personal(2000)), Field(json_schema_extra=_extra(2000))]
Email = Annotated[str, AfterValidator(_personal(254)), Field(json_schema_extra=_extra(254))]
Phone = Annotated[str, AfterValidator(_personal(64)), Field(json_schema_extra=_extra(64))]


def _unlike(value: str, info: ValidationInfo, *others: str) -> str:
    """``value``, refused when another field validated before it (``others``) names the same
    person. Run as a field validator, so the error names the field."""
    for other in others:
        if other != info.field_name and value == info.data.get(other):
            raise ValueError(f"must differ from {other}")
    return value


def _to_utc(value: datetime) -> datetime:
    # Offsets with seconds (old local mean times) would be cut to minutes when encoded, so
    # every timestamp is held in UTC: the instant is what matters.
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00: not a ValueError, so not a 422 by itself
        raise ValueError("is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]

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
    schema_version: int = Field(ge=1, strict=True)
    occurred_at: UtcDatetime
    recorded_at: UtcDatetime
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
    display_name: Name
    email: Email | None = None
    phone: Phone | None = None
    organization: ShortText | None = None
    title: ShortText | None = None
    notes: FreeText | None = None

    def people(self) -> tuple[str, ...]:
        return (self.person_id,)


class PersonUpdated(Event):
    """Some of a person's directory fields changed; fields left out are unchanged."""

    type: Literal["person.updated"] = "person.updated"
    person_id: PersonId
    display_name: Name | None = None
    email: Email | None = None
    phone: Phone | None = None
    organization: ShortText | None = None
    title: ShortText | None = None
    notes: FreeText | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> PersonUpdated:
        fields = ("display_name", "email", "phone", "organization", "title", "notes")
        if all(getattr(self, f) is None for f in fields):
            raise ValueError("person.updated must change at least one field")
        return self

    def people(self) -> tuple[str, ...]:
        return (self.person_id,)


class PersonForgotten(Event):
    """The person asked to be forgotten: their key was destroyed, so every encrypted value of
    theirs on the log is unreadable, and projections purge what they hold of them."""

    type: Literal["person.forgotten"] = "person.forgotten"
    person_id: PersonId

    def people(self) -> tuple[str, ...]:
        return (self.person_id,)


class PersonMerged(Event):
    """``person_id`` and ``survivor`` are the same human recorded twice (a duplicate contact):
    every read model counts the merged person's history as the survivor's, and lists one
    person. Reversible: retracting this event (``event.retracted``) separates them again
    exactly as before. The merged person's own events stay on the log unchanged."""

    type: Literal["person.merged"] = "person.merged"
    #: The duplicate that is folded into ``survivor`` (and no longer listed).
    person_id: PersonId
    #: The person who stays.
    survivor: PersonId

    @field_validator("survivor")
    @classmethod
    def _another_person(cls, survivor: str, info: ValidationInfo) -> str:
        # A field validator (not a model one) so the error names ``survivor``.
        if survivor == info.data.get("person_id"):
            raise ValueError("a person cannot be merged into itself")
        return survivor

    def people(self) -> tuple[str, ...]:
        return (self.person_id, self.survivor)


class RelationshipMet(Event):
    """Two or more people met. ``depth`` says how much of a meeting it was.

    A card exchange at a conference is a ``card_exchange``; an hour-long one-to-one talk is a
    ``conversation`` or ``deep_conversation``; a shared meal or activity is ``meal_or_activity``.
    """

    type: Literal["relationship.met"] = "relationship.met"
    participants: Annotated[tuple[PersonId, ...], Field(min_length=2, max_length=50)]
    depth: Depth
    mode: Mode = "in_person"
    duration_minutes: Annotated[int, Field(ge=0, le=24 * 60)] = 0
    initiated_by: PersonId | None = None
    where: ShortText | None = None
    context: FreeText | None = None

    # Field validators (not a model one), so each error names its field.
    @field_validator("participants")
    @classmethod
    def _distinct(cls, participants: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(participants)) != len(participants):
            raise ValueError("must be distinct people")
        return participants

    @field_validator("initiated_by")
    @classmethod
    def _a_participant(cls, initiated_by: str | None, info: ValidationInfo) -> str | None:
        if "participants" not in info.data:  # refused already: nothing to compare with
            return initiated_by
        if initiated_by is not None and initiated_by not in info.data["participants"]:
            raise ValueError("must be one of the participants")
        return initiated_by

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
    note: FreeText | None = None

    @field_validator("to_person")
    @classmethod
    def _two_people(cls, value: str, info: ValidationInfo) -> str:
        return _unlike(value, info, "from_person")

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
    reason: FreeText | None = None
    #: Set when the introduction completes a double opt-in flow (introduction.requested).
    introduction_id: UUID | None = None

    @field_validator("person_a", "person_b")
    @classmethod
    def _three_people(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "person_b" and value == info.data.get("person_a"):
            raise ValueError("a person cannot be introduced to themselves")
        return _unlike(value, info, "introducer")

    def people(self) -> tuple[str, ...]:
        return (self.introducer, self.person_a, self.person_b)

    def pairs(self) -> list[tuple[str, str]]:
        return [
            _pair(self.introducer, self.person_a),
            _pair(self.introducer, self.person_b),
            _pair(self.person_a, self.person_b),
        ]


class IntroductionRequested(Event):
    """``requester`` asked ``introducer`` to introduce them to ``target``: the start of a
    double opt-in introduction (both sides consent before the introducer makes it)."""

    type: Literal["introduction.requested"] = "introduction.requested"
    introduction_id: UUID
    requester: PersonId
    introducer: PersonId
    target: PersonId
    reason: FreeText | None = None

    @field_validator("introducer", "target")
    @classmethod
    def _three_people(cls, value: str, info: ValidationInfo) -> str:
        return _unlike(value, info, "requester", "introducer")

    def people(self) -> tuple[str, ...]:
        return (self.requester, self.introducer, self.target)


class IntroductionConsented(Event):
    """One side of a requested introduction said yes (or no)."""

    type: Literal["introduction.consented"] = "introduction.consented"
    introduction_id: UUID
    person: PersonId
    consented: bool = True
    note: FreeText | None = None

    def people(self) -> tuple[str, ...]:
        return (self.person,)


# Version 1, released (frozen: its docstring is its schema's description). It names nobody,
# so its note was encrypted with the workspace's key, which no erasure destroys; version 2
# names the introduction's two people.
class IntroductionOutcomeV1(Event):
    """What came of an introduction that was made."""

    type: Literal["introduction.outcome"] = "introduction.outcome"
    introduction_id: UUID
    outcome: Literal["met", "talking", "no_response", "declined"]
    note: FreeText | None = None


class IntroductionOutcome(IntroductionOutcomeV1):
    """What came of an introduction that was made, naming its two people: the request's
    ``requester`` and ``target``, filled in by the write side from the request (a client may
    leave them out). The ``note`` is encrypted with both people's keys, so forgetting either
    erases it. An outcome upcast from version 1 names nobody (its note stays under the
    workspace's key)."""

    version: ClassVar[int] = 2
    requester: PersonId | None = None
    target: PersonId | None = None

    @model_validator(mode="after")
    def _both_people(self) -> IntroductionOutcome:
        if (self.requester is None) != (self.target is None):
            raise ValueError("requester and target are given together, or neither")
        return self

    @field_validator("target")
    @classmethod
    def _another_person(cls, target: str | None, info: ValidationInfo) -> str | None:
        return None if target is None else _unlike(target, info, "requester")

    def people(self) -> tuple[str, ...]:
        if self.requester is None or self.target is None:
            return ()
        return (self.requester, self.target)


class RelationshipHelped(Event):
    """``helper`` did something for ``helped`` (advice, a referral, a favour)."""

    type: Literal["relationship.helped"] = "relationship.helped"
    helper: PersonId
    helped: PersonId
    what: FreeText | None = None

    @field_validator("helped")
    @classmethod
    def _two_people(cls, value: str, info: ValidationInfo) -> str:
        return _unlike(value, info, "helper")

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

    @field_validator("ratee")
    @classmethod
    def _two_people(cls, value: str, info: ValidationInfo) -> str:
        return _unlike(value, info, "rater")

    def people(self) -> tuple[str, ...]:
        return (self.rater, self.ratee)

    def pairs(self) -> list[tuple[str, str]]:
        return [_pair(self.rater, self.ratee)]


class EventRetractedV1(Event):
    """An earlier event was recorded by mistake. Events are never edited or deleted; projections
    honour a retraction by removing exactly that event's effect. An effect that cannot be
    removed is not retractable: a retraction, a person's add or erasure (``person.added``,
    ``person.forgotten``: merge a duplicate instead) or an introduction step (send the step
    again with the right answer instead)."""

    type: Literal["event.retracted"] = "event.retracted"
    retracted_event_id: UUID
    reason: FreeText | None = None


class EventRetracted(EventRetractedV1):
    """An earlier event was recorded by mistake (see version 1). ``about``: the people the
    retracted event names who are not forgotten, filled in by the write side (a client may
    leave them out; given, they must be those). The ``reason`` is encrypted with their keys,
    so forgetting any of them erases it. A retraction upcast from version 1, or of an event
    that names nobody, whose people the write side cannot know or who are all forgotten,
    leaves ``about`` out (its reason stays under the workspace's key)."""

    version: ClassVar[int] = 2
    about: Annotated[tuple[PersonId, ...], Field(min_length=1, max_length=64)] | None = None

    def people(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.about or ())))


ParamName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
#: A number JSON can carry: the registry encodes NaN and infinities as null, which it then
#: cannot decode.
Finite = Annotated[float, Field(allow_inf_nan=False)]


class ParameterSet(BaseModel):
    """One versioned parameter set of a model: its version and the values that differ from
    the model's default set (the rest are the default's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # No NUL: PostgreSQL text cannot hold it, and the projection stores the version as text.
    version: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
    values: dict[ParamName, Finite] = Field(default_factory=dict, max_length=64)


class WorkspaceModelCalibrated(Event):
    """An admin adopted parameter sets of the strength and/or momentum models for this
    workspace only (``tieline calibrate --apply``), after they beat the default on the
    workspace's held-out recent history. From then on the workspace's read models are those
    parameters applied to its whole history (the latest such event wins); a model left out
    keeps its current set. The evidence is the held-out validation that justified it."""

    type: Literal["workspace.model_calibrated"] = "workspace.model_calibrated"
    strength: ParameterSet | None = None
    momentum: ParameterSet | None = None
    holdout_share: Annotated[float, Field(gt=0, lt=1)]
    validated_at: UtcDatetime = Field(description="The held-out cut-off the sets beat it at.")
    evidence: dict[ParamName, Finite] = Field(
        default_factory=dict,
        max_length=64,
        description="Held-out AUC and precision@10 of the baseline (the set the workspace used "
        "before: the default, or its earlier adoption) and the adopted set, and the 95% interval "
        "of the gain, per model (e.g. strength_auc_baseline; strength_auc_default in events "
        "recorded before the baseline could be an adoption).",
    )

    @model_validator(mode="after")
    def _adopts_something(self) -> WorkspaceModelCalibrated:
        if self.strength is None and self.momentum is None:
            raise ValueError("workspace.model_calibrated must adopt a strength or momentum set")
        return self


#: Every current event class, in a stable order.
EVENT_CLASSES: tuple[type[Event], ...] = (
    PersonAdded,
    PersonUpdated,
    PersonForgotten,
    PersonMerged,
    RelationshipMet,
    RelationshipFollowedUp,
    RelationshipIntroduced,
    RelationshipHelped,
    RelationshipClosenessRated,
    IntroductionRequested,
    IntroductionConsented,
    IntroductionOutcome,
    EventRetracted,
    WorkspaceModelCalibrated,
)


def event_type_of(cls: type[Event]) -> str:
    """The ``type`` literal of an event class."""
    default = cls.model_fields["type"].default
    assert isinstance(default, str)
    return default


__all__ = [
    "ENC_PREFIX",
    "EVENT_CLASSES",
    "PERSONAL",
    "Event",
    "EventRetracted",
    "EventRetractedV1",
    "IntroductionConsented",
    "IntroductionOutcome",
    "IntroductionOutcomeV1",
    "IntroductionRequested",
    "ParameterSet",
    "PersonAdded",
    "PersonForgotten",
    "PersonId",
    "PersonMerged",
    "PersonUpdated",
    "RelationshipClosenessRated",
    "RelationshipFollowedUp",
    "RelationshipHelped",
    "RelationshipIntroduced",
    "RelationshipMet",
    "WorkspaceId",
    "WorkspaceModelCalibrated",
    "event_type_of",
]
