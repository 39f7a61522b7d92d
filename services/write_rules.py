"""The write side's rules, as pure decisions: given a client's event object and the state the
write side owns, either an event to publish or a refusal (:class:`Rejected`) naming the field.

Nothing here does I/O; the adapters in ``writeside`` and ``write_state`` gather the state and
publish. That is what lets every rule be unit-tested without a server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from tieline.events_schema.models import (
    ENC_PREFIX,
    Event,
    EventRetracted,
    IntroductionConsented,
    IntroductionOutcome,
    IntroductionRequested,
    PersonAdded,
    PersonForgotten,
    PersonMerged,
    RelationshipIntroduced,
)
from tieline.events_schema.registry import EventDecodeError, EventRegistry

#: Fields only tieline sets; a client that sends them is told so.
SERVER_FIELDS = ("recorded_at", "recorded_by")
#: Every field of any event type that names a person.
PERSON_REF_FIELDS = (
    "participants",
    "initiated_by",
    "from_person",
    "to_person",
    "introducer",
    "person_a",
    "person_b",
    "helper",
    "helped",
    "rater",
    "ratee",
    "requester",
    "target",
    "person",
)
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)


@dataclass
class Outcome:
    """The result of one command line, as the API returns it."""

    status: int
    event_id: str | None = None
    seq: int | None = None
    duplicate: bool = False
    error: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status}
        if self.event_id is not None:
            d["event_id"] = self.event_id
        if self.seq is not None:
            d["seq"] = self.seq
            d["duplicate"] = self.duplicate
        if self.error is not None:
            d["error"] = self.error
            d["errors"] = self.errors
        return d


#: Event types only an admin token may record, or retract: forgetting destroys a person's key
#: for good (the same role as ``POST .../people/{person}/forget``); adopting a workspace's
#: model parameters (``tieline calibrate --apply``) changes every score of the workspace, and
#: so does retracting the adoption.
ADMIN_ONLY_TYPES = frozenset({"person.forgotten", "workspace.model_calibrated"})


@dataclass(frozen=True)
class Command:
    """What the lines of one command share: who exists, everyone's key, and whether an admin
    sent it (the API says so; anything else, the sync service included, is not one)."""

    known: set[str]  # people that exist (on the log, or added by this command)
    keys: dict[str, bytes | None]  # person -> key; None: forgotten (key destroyed)
    forgetting: frozenset[str] = frozenset()  # people this command forgets
    admin: bool = False


@dataclass(frozen=True)
class Recorded:
    """What the write side remembers of an event id it has taken (see ``write_state``)."""

    workspace_id: str
    type: str
    digest: str | None  # None: learnt from the log by the backfill, the body is not known
    seq: int | None  # None: taken, publish not confirmed yet
    retracted_by: str | None = None
    people: tuple[str, ...] | None = None  # whom the event names; None: not known (0008)


@dataclass(frozen=True)
class Introduction:
    """The write side's view of one double opt-in introduction."""

    requester: str
    introducer: str
    target: str
    requester_consent: bool | None
    target_consent: bool | None
    made_event_id: str | None


class Rejected(Exception):
    """A command line that must not be published: an HTTP-style status and field errors."""

    def __init__(self, status: int, loc: Sequence[str], msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.errors: list[dict[str, Any]] = [{"loc": list(loc), "msg": msg}]

    def outcome(self, event_id: str | None) -> Outcome:
        loc = ".".join(str(p) for p in self.errors[0]["loc"]) or "(body)"
        text = str(self)
        error = text if text.startswith(f"{loc}:") else f"{loc}: {text}"
        return Outcome(self.status, event_id, error=error, errors=self.errors)


#: Envelope fields left out of a body's digest: set by the server, or tracing metadata that
#: a retry may carry differently without being another event.
DIGEST_EXCLUDES = frozenset(
    {"event_id", "schema_version", "recorded_at", "recorded_by", "correlation_id", "causation_id"}
)


def body_digest(event: Event, supplied: Iterable[str]) -> str:
    """A fingerprint of the event a client asked to record: the validated event in its current
    schema version (so ``"2024-01-01T10:00:00+01:00"`` and ``"2024-01-01T09:00:00Z"`` are the
    same time, key order and defaults do not matter), without the envelope fields above.

    Two sends of one ``event_id`` are the same request when their digests are equal. An
    ``occurred_at`` the client left out (the server fills in *now*) is not part of it, so an
    honest retry always matches, and an export imported back matches its original.
    """
    exclude = set(DIGEST_EXCLUDES)
    if "occurred_at" not in supplied:
        exclude.add("occurred_at")
    if isinstance(event, IntroductionOutcome):
        # Filled in by the write side from the request (and checked against it when given):
        # they add nothing, and leaving them out keeps the digests of outcomes recorded as
        # version 1 and of an export's outcomes (which carry them) equal to the original's.
        exclude |= {"requester", "target"}
    if isinstance(event, EventRetracted):
        exclude.add("about")  # likewise filled in by the write side, from the retracted event
    content = event.model_dump(mode="json", exclude=exclude)
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_envelope(
    workspace_id: str, obj: Any, types: frozenset[str], service: str, registry: EventRegistry
) -> str:
    if not isinstance(obj, dict):
        raise Rejected(422, [], "an event must be a JSON object")
    for f in SERVER_FIELDS:
        if f in obj:
            raise Rejected(422, [f], "is set by tieline, not by clients")
    if obj.get("workspace_id", workspace_id) != workspace_id:
        raise Rejected(422, ["workspace_id"], "must match the workspace in the path")
    event_type = obj.get("type")
    if not isinstance(event_type, str) or event_type not in types:
        if isinstance(event_type, str) and event_type in registry.classes:
            raise Rejected(
                422, ["type"], f"{event_type!r} is not recorded by the {service} service"
            )
        known = ", ".join(sorted(registry.classes))
        raise Rejected(422, ["type"], f"unknown event type {event_type!r}; known: {known}")
    for f, v in obj.items():
        if isinstance(v, str) and v.startswith(ENC_PREFIX):
            raise Rejected(422, [f], "must be plaintext; tieline encrypts personal data")
    return event_type


def build(
    workspace_id: str,
    obj: Any,
    *,
    actor: str,
    now: datetime,
    types: frozenset[str],
    service: str,
    registry: EventRegistry,
    max_future_skew_s: float,
    correlation_id: str | None = None,
) -> Event:
    """Turn a client's event object into a validated event, filling the envelope."""
    event_type = _check_envelope(workspace_id, obj, types, service, registry)
    data = dict(obj)
    data.setdefault("event_id", str(uuid4()))
    data.setdefault("schema_version", registry.current_version(event_type))
    data.setdefault("occurred_at", now.isoformat())
    if correlation_id and "correlation_id" not in data:
        data["correlation_id"] = correlation_id
    data.update(workspace_id=workspace_id, recorded_at=now.isoformat(), recorded_by=actor)
    try:
        event = registry.decode_obj(data)
    except EventDecodeError as exc:
        first = exc.errors[0] if exc.errors else {"loc": [], "msg": str(exc)}
        rej = Rejected(422, first["loc"], str(exc))
        rej.errors = exc.errors
        raise rej from exc
    if event.occurred_at > now + timedelta(seconds=max_future_skew_s):
        raise Rejected(422, ["occurred_at"], "lies in the future")
    if event.occurred_at < EARLIEST:
        raise Rejected(422, ["occurred_at"], "lies before 1900")
    return event


def repeated_ids(
    lines: list[tuple[int, Event, str]], outcomes: list[Outcome | None]
) -> tuple[list[tuple[int, Event, str]], dict[int, int]]:
    """The lines of one command without those that repeat an earlier line's ``event_id``, and
    for each repeat with the same body, the line it repeats (it is answered as that line is:
    :func:`as_repeat`). A repeat with another body is refused 409 in ``outcomes``, as a
    re-send would be: both used to be published at once, and which body won was a race."""
    first: dict[UUID, tuple[int, str]] = {}
    kept: list[tuple[int, Event, str]] = []
    copies: dict[int, int] = {}
    for i, event, digest in lines:
        seen = first.setdefault(event.event_id, (i, digest))
        if seen[0] == i:
            kept.append((i, event, digest))
        elif seen[1] == digest:
            copies[i] = seen[0]
        else:
            msg = f"was already used for a different event on line {seen[0] + 1} of this command"
            outcomes[i] = Rejected(409, ["event_id"], msg).outcome(str(event.event_id))
    return kept, copies


def as_repeat(first: Outcome | None) -> Outcome:
    """The answer to a line that repeats ``first``'s line: a duplicate of what it recorded."""
    if first is None:
        return Outcome(500, error="internal: no outcome")
    if first.status < 300:
        return dataclasses.replace(first, status=200, duplicate=True)
    return first


def unsettled(event: Event, failure: Exception) -> Outcome:
    """A line not published because of ``failure`` (its own publish timed out, or an earlier
    line's failure stopped the command): it may be on the log (its id stays taken), so the
    answer is to send it again with the same ``event_id``, which is published once."""
    msg = f"not recorded ({type(failure).__name__}); send it again with the same event_id"
    return Outcome(
        503,
        str(event.event_id),
        error=f"event_id: {msg}",
        errors=[{"loc": ["event_id"], "msg": msg}],
    )


def prior_outcome(prior: Recorded, digest: str, event_id: str) -> Outcome | None:
    """What a re-sent ``event_id`` gets, or None when it must (still) be published (``prior``
    is the workspace's own: ids are unique per workspace, and another workspace may use the
    same one for its own event).

    * the same id with a different body: 409 — a client bug that reuses ids is not swallowed;
    * the same request, already on the log: 200 with the original sequence, nothing new;
    * the same request, publish not confirmed yet (in flight, or the service died between
      publish and record): publish again with the same ``Nats-Msg-Id`` (JetStream dedupes).
    """
    if prior.digest is not None and prior.digest != digest:
        return Rejected(
            409, ["event_id"], "was already used for a different event (same id, other content)"
        ).outcome(event_id)
    if prior.seq is not None:
        return Outcome(200, event_id, prior.seq, duplicate=True)
    return None


def person_refs(obj: dict[str, Any]) -> list[tuple[list[str], str]]:
    """(location, person id) for every person an event object names."""
    refs: list[tuple[list[str], str]] = []
    for f in PERSON_REF_FIELDS:
        v = obj.get(f)
        if isinstance(v, str):
            refs.append(([f], v))
        elif isinstance(v, list):
            refs.extend(([f, str(i)], p) for i, p in enumerate(v) if isinstance(p, str))
    return refs


def refs(event: Event, obj: dict[str, Any]) -> list[tuple[list[str], str]]:
    """(location, person id) of every existing person the event relies on."""
    if isinstance(event, PersonAdded):
        return []
    if isinstance(event, PersonMerged):
        return [(["person_id"], event.person_id), (["survivor"], event.survivor)]
    if event.type.startswith("person."):
        return [(["person_id"], getattr(event, "person_id"))]  # noqa: B009
    return person_refs(obj)


def check_people(event: Event, obj: dict[str, Any], cmd: Command) -> None:
    """Every person named must exist in this workspace and not be forgotten."""
    for loc, pid in refs(event, obj):
        if pid not in cmd.known:
            raise Rejected(404, loc, f"unknown person {pid!r} in workspace {event.workspace_id!r}")
        if cmd.keys.get(pid) is None and not isinstance(event, PersonForgotten):
            raise Rejected(410, loc, f"person {pid!r} was forgotten")


#: Events whose effect a retraction cannot remove, and what to send instead. A retraction
#: promises to remove exactly its event's effect: these were accepted and changed nothing
#: (an erasure destroyed the person's key; the double opt-in state of an introduction would
#: keep a consent the read side no longer showed; a person's add only left the directory while
#: the events naming them still counted and more could be recorded).
NOT_RETRACTABLE = {
    "event.retracted": "a retraction cannot be retracted",
    "person.added": (
        "a person cannot be un-added (events may name them); fold a duplicate into the right "
        "person with person.merged, or erase them with person.forgotten"
    ),
    "person.forgotten": "an erasure cannot be undone: the person's key is destroyed",
    "introduction.requested": (
        "an introduction request cannot be retracted; withdraw it with introduction.consented "
        "(consented: false) from the requester"
    ),
    "introduction.consented": (
        "a consent cannot be retracted; send introduction.consented again with the new answer"
    ),
    "introduction.outcome": (
        "an outcome cannot be retracted; send introduction.outcome again with the right one"
    ),
}


def check_retraction(event: EventRetracted, target: Recorded | None, admin: bool = False) -> None:
    """A retraction names a recorded event of its own workspace whose effect can be removed
    (not a retraction, a person's add or erasure, or an introduction step:
    :data:`NOT_RETRACTABLE`), not retracted already (by another retraction); retracting an
    admin-only event (:data:`ADMIN_ONLY_TYPES`) takes an admin too (a write token undid a
    calibration that only an admin may make: a reviewer's finding)."""
    if target is None or target.workspace_id != event.workspace_id or target.seq is None:
        raise Rejected(404, ["retracted_event_id"], "no such event in this workspace")
    if target.type in NOT_RETRACTABLE:
        raise Rejected(422, ["retracted_event_id"], NOT_RETRACTABLE[target.type])
    if target.type in ADMIN_ONLY_TYPES and not admin:
        raise Rejected(
            403, ["retracted_event_id"], f"retracting a {target.type!r} needs an admin token"
        )
    if target.retracted_by is not None and target.retracted_by != str(event.event_id):
        raise Rejected(409, ["retracted_event_id"], "is already retracted")


def with_retracted_people(event: EventRetracted, living: Sequence[str] | None) -> EventRetracted:
    """A retraction as published: naming (``about``) the people of the retracted event who
    are not forgotten (``living``), so its reason is encrypted with their keys and forgetting
    any of them erases it. A client may leave ``about`` out; given, it must be those. None
    (the write side does not know the event's people, or all are forgotten): it names
    nobody, and its reason is under the workspace's key."""
    people = tuple(sorted(set(living))) if living else None
    given = tuple(sorted(set(event.about))) if event.about is not None else None
    if given is not None and given != people:
        expected = "left out" if people is None else f"{list(people)!r}"
        raise Rejected(
            422,
            ["about"],
            f"must be the retracted event's people who are not forgotten: {expected}",
        )
    return event.model_copy(update={"about": people})


@dataclass(frozen=True)
class Merge:
    """A merge that holds (its ``person.merged`` is not retracted): ``merged`` -> ``survivor``."""

    merged: str
    survivor: str


def check_merge(event: PersonMerged, holding: Sequence[Merge]) -> None:
    """A merge folds one person into another exactly once and never into a chain, so that
    retracting it restores exactly the two people it joined: refused (409) when the person is
    merged already, when the survivor is itself merged, or when people were merged into the
    person (retract those merges first, or merge into this person instead). ``holding``: the
    merges that hold and name either person."""
    for m in holding:
        if m.merged == event.person_id:
            raise Rejected(
                409, ["person_id"], f"person {m.merged!r} is already merged into {m.survivor!r}"
            )
        if m.merged == event.survivor:
            raise Rejected(
                409,
                ["survivor"],
                f"person {m.merged!r} was merged into {m.survivor!r}; merge into "
                f"{m.survivor!r} instead",
            )
        if m.survivor == event.person_id:
            raise Rejected(
                409,
                ["person_id"],
                f"person {m.merged!r} was merged into {event.person_id!r}; retract that "
                f"merge first, or merge into {event.person_id!r} instead",
            )


def check_forget(
    event: PersonForgotten,
    holding: Sequence[Merge],
    forgetting: Collection[str],
    forgotten: Collection[str],
) -> None:
    """A person is erased together with the people merged into them: a merge says two ids are
    one human recorded twice, so erasing the survivor alone would leave the duplicate's name
    and contact details readable, and events naming the duplicate would still be accepted and
    count as the erased survivor's. So forgetting a survivor needs the people merged into it
    (by the merges that hold, ``holding``) forgotten in the same command (``forgetting``) or
    before (``forgotten``); and a merged person is forgotten only with their survivor, never
    alone (the admin meant the human; to erase only the duplicate, retract the merge first)."""
    gone = set(forgetting) | set(forgotten)
    p = event.person_id
    for m in holding:
        if m.merged == p and m.survivor not in gone:
            raise Rejected(
                409,
                ["person_id"],
                f"person {p!r} is merged into {m.survivor!r}: forget {m.survivor!r} (the "
                f"people merged into it are forgotten with it), or retract the merge to "
                f"forget {p!r} alone",
            )
    left = sorted(m.merged for m in holding if m.survivor == p and m.merged not in gone)
    if left:
        raise Rejected(
            409,
            ["person_id"],
            f"the people merged into {p!r} must be forgotten with it, in the same command: "
            f"{', '.join(map(repr, left))} (POST .../people/{p}/forget sends them all)",
        )


def with_introduction_people(event: Event, intro: Introduction | None) -> Event:
    """An outcome as published: naming the introduction's requester and target (a client
    may leave them out; given, they must be the request's), so its note is encrypted with
    both people's keys and forgetting either erases it. Other events are returned as is."""
    if not isinstance(event, IntroductionOutcome) or intro is None:
        return event
    for field_name, person in (("requester", intro.requester), ("target", intro.target)):
        if getattr(event, field_name) not in (None, person):
            raise Rejected(
                422, [field_name], f"must be the introduction's {field_name}, {person!r}"
            )
    return event.model_copy(update={"requester": intro.requester, "target": intro.target})


def is_introduction_step(event: Event) -> bool:
    """A step of a double opt-in introduction: its request, a consent, the make (a
    ``relationship.introduced`` naming the introduction) or an outcome. Each is decided,
    published and recorded under its introduction's lock, one after another."""
    if isinstance(event, RelationshipIntroduced):
        return event.introduction_id is not None
    return isinstance(event, IntroductionRequested | IntroductionConsented | IntroductionOutcome)


def check_introduction(event: Event, intro: Introduction | None) -> None:
    """Double opt-in: consents come from the two sides, an introduction is made only when
    both said yes, and an outcome follows a made introduction."""
    if intro is None:
        raise Rejected(404, ["introduction_id"], "no such introduction in this workspace")
    if isinstance(event, IntroductionConsented):
        if event.person not in (intro.requester, intro.target):
            raise Rejected(422, ["person"], "must be the requester or the target")
    elif isinstance(event, RelationshipIntroduced):
        if {event.person_a, event.person_b} != {intro.requester, intro.target} or (
            event.introducer != intro.introducer
        ):
            raise Rejected(
                422, ["introduction_id"], "introducer and people differ from the request"
            )
        if intro.made_event_id == str(event.event_id):
            return  # this very make, sent again (a retry): published again, deduped
        if not (intro.requester_consent and intro.target_consent):
            raise Rejected(
                409, ["introduction_id"], "both sides must consent first (double opt-in)"
            )
        if intro.made_event_id is not None:
            raise Rejected(
                409,
                ["introduction_id"],
                f"is made already (event {intro.made_event_id}); retract that to make it again",
            )
    elif isinstance(event, IntroductionOutcome) and intro.made_event_id is None:
        raise Rejected(409, ["introduction_id"], "the introduction has not been made yet")
