"""Pure functions: what one event changes in the read models. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from tieline.events_schema.models import (
    Event,
    EventRetracted,
    IntroductionConsented,
    IntroductionOutcome,
    IntroductionRequested,
    PersonAdded,
    PersonForgotten,
    PersonMerged,
    PersonUpdated,
    RelationshipClosenessRated,
    RelationshipFollowedUp,
    RelationshipHelped,
    RelationshipIntroduced,
    RelationshipMet,
)

PERSON_FIELDS = ("display_name", "email", "phone", "organization", "title", "notes")


@dataclass(frozen=True)
class PairEventRow:
    """One event on one relationship's timeline."""

    person_a: str
    person_b: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class Changes:
    """Everything one event changes; the store applies many of these in one transaction."""

    person_added: dict[str, Any] | None = None
    person_updated: dict[str, Any] | None = None
    pair_rows: list[PairEventRow] = field(default_factory=list)
    retracts: UUID | None = None
    #: Erasure: purge this person's personal data from every read model.
    forgets: str | None = None
    #: A merge: (merged person, survivor) (projections/merges.py).
    merges: tuple[str, str] | None = None
    #: Introduction flow: (introduction_id, what changed).
    introduction: tuple[UUID, dict[str, Any]] | None = None


def _detail(event: Event, pair: tuple[str, str]) -> dict[str, Any]:
    """Non-personal facts of the event as they concern ``pair`` (no free text: that stays in
    the archive, where erasure can find it)."""
    if isinstance(event, RelationshipMet):
        return {
            "depth": event.depth,
            "mode": event.mode,
            "duration_minutes": event.duration_minutes,
            "initiated_by": event.initiated_by,
            "group_size": len(event.participants),
        }
    if isinstance(event, RelationshipFollowedUp):
        return {
            "from": event.from_person,
            "to": event.to_person,
            "channel": event.channel,
            "replied": event.replied,
        }
    if isinstance(event, RelationshipIntroduced):
        role = "introduced" if set(pair) == {event.person_a, event.person_b} else "introducer"
        return {
            "introducer": event.introducer,
            "person_a": event.person_a,
            "person_b": event.person_b,
            "role": role,
        }
    if isinstance(event, RelationshipHelped):
        return {"helper": event.helper, "helped": event.helped}
    if isinstance(event, RelationshipClosenessRated):
        return {"rater": event.rater, "ratee": event.ratee, "rating": event.rating}
    return {}


def changes_for(event: Event) -> Changes:
    """The read-model changes ``event`` causes."""
    if isinstance(event, PersonAdded):
        return Changes(person_added={f: getattr(event, f) for f in ("person_id", *PERSON_FIELDS)})
    if isinstance(event, PersonUpdated):
        values = {f: getattr(event, f) for f in PERSON_FIELDS if getattr(event, f) is not None}
        return Changes(person_updated={"person_id": event.person_id, **values})
    if isinstance(event, IntroductionRequested):
        return Changes(
            introduction=(
                event.introduction_id,
                {
                    "new": True,
                    "requester": event.requester,
                    "introducer": event.introducer,
                    "target": event.target,
                },
            )
        )
    if isinstance(event, IntroductionConsented):
        return Changes(
            introduction=(
                event.introduction_id,
                {"person": event.person, "consented": event.consented},
            )
        )
    if isinstance(event, IntroductionOutcome):
        return Changes(introduction=(event.introduction_id, {"outcome": event.outcome}))
    if isinstance(event, PersonForgotten):
        return Changes(forgets=event.person_id)
    if isinstance(event, EventRetracted):
        return Changes(retracts=event.retracted_event_id)
    if isinstance(event, PersonMerged):
        return Changes(merges=(event.person_id, event.survivor))
    rows = [PairEventRow(a, b, _detail(event, (a, b))) for a, b in event.pairs()]
    intro = None
    if isinstance(event, RelationshipIntroduced) and event.introduction_id is not None:
        intro = (event.introduction_id, {"made": event.event_id})
    return Changes(pair_rows=rows, introduction=intro)
