"""The write side shared by the services that emit events: validate a command completely,
then publish the event to JetStream with ``Nats-Msg-Id = event_id``.

Nothing is published for a command that fails any check. Re-sending an event_id returns the
original stream sequence and publishes nothing new, inside JetStream's dedupe window (the
server says ``duplicate``) and beyond it (the archive in PostgreSQL knows the id).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import structlog
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from tieline.events_schema.models import (
    ENC_PREFIX,
    Event,
    EventRetracted,
    IntroductionConsented,
    IntroductionOutcome,
    IntroductionRequested,
    PersonAdded,
    PersonForgotten,
    RelationshipIntroduced,
)
from tieline.events_schema.registry import EventDecodeError, EventRegistry
from tieline.plumbing.config import Settings
from tieline.plumbing.crypto import (
    WORKSPACE_KEY,
    KeyStore,
    PersonForgottenError,
    encrypt_event,
    key_people,
)
from tieline.plumbing.subjects import event_subject, person_added_subject

log = structlog.get_logger(__name__)

#: Fields only tieline sets; a client that sends them is told so.
SERVER_FIELDS = ("recorded_at", "recorded_by")
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
WRONG_LAST_SEQUENCE = 10071


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


@dataclass(frozen=True)
class Command:
    """What the lines of one command share (see :meth:`WriteSide.prepare`)."""

    known: set[str]  # people that exist (on the log, or added by this command)
    keys: dict[str, bytes | None]  # person -> key; None: forgotten (key destroyed)


class Rejected(Exception):
    """A command that must not be published; carries the HTTP-style status and field errors."""

    def __init__(self, status: int, loc: Sequence[str], msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.errors = [{"loc": list(loc), "msg": msg}]

    def outcome(self, event_id: str | None) -> Outcome:
        loc = ".".join(self.errors[0]["loc"]) or "(body)"
        text = str(self)
        error = text if text.startswith(f"{loc}:") else f"{loc}: {text}"
        return Outcome(self.status, event_id, error=error, errors=self.errors)


def _person_refs(obj: dict[str, Any]) -> list[tuple[list[str], str]]:
    """(location, person id) for every person an event object names."""
    refs: list[tuple[list[str], str]] = []
    for f in PERSON_REF_FIELDS:
        v = obj.get(f)
        if isinstance(v, str):
            refs.append(([f], v))
        elif isinstance(v, list):
            refs.extend(([f, str(i)], p) for i, p in enumerate(v) if isinstance(p, str))
    return refs


class WriteSide:
    """Validates and publishes the events one service owns (``types``)."""

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        pool: Any,
        registry: EventRegistry,
        types: Iterable[str],
        service: str,
        keystore: KeyStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.keystore = keystore
        self.settings = settings
        self.js = js
        self.pool = pool
        self.registry = registry
        self.types = frozenset(types)
        self.service = service
        self.clock = clock
        self._known_people: set[tuple[str, str]] = set()
        # As many publishes in flight as the raw reference keeps (fsync before ack amortises
        # over the writes waiting together).
        self._publish_slots = asyncio.Semaphore(4096)

    # -- validation (no side effects) -----------------------------------------------------

    def build(
        self, workspace_id: str, obj: Any, actor: str, correlation_id: str | None = None
    ) -> Event:
        """Turn a client's event object into a validated event, filling the envelope."""
        if not isinstance(obj, dict):
            raise Rejected(422, [], "an event must be a JSON object")
        for f in SERVER_FIELDS:
            if f in obj:
                raise Rejected(422, [f], "is set by tieline, not by clients")
        ws = obj.get("workspace_id", workspace_id)
        if ws != workspace_id:
            raise Rejected(422, ["workspace_id"], "must match the workspace in the path")
        event_type = obj.get("type")
        if not isinstance(event_type, str) or event_type not in self.types:
            if isinstance(event_type, str) and event_type in self.registry.classes:
                raise Rejected(
                    422, ["type"], f"{event_type!r} is not recorded by the {self.service} service"
                )
            raise Rejected(
                422,
                ["type"],
                f"unknown event type {event_type!r}; known: "
                f"{', '.join(sorted(self.registry.classes))}",
            )
        for f, v in obj.items():
            if isinstance(v, str) and v.startswith(ENC_PREFIX):
                raise Rejected(422, [f], "must be plaintext; tieline encrypts personal data")
        now = self.clock()
        data = dict(obj)
        data.setdefault("event_id", str(uuid4()))
        data.setdefault("schema_version", self.registry.current_version(event_type))
        data.setdefault("occurred_at", now.isoformat())
        if correlation_id and "correlation_id" not in data:
            data["correlation_id"] = correlation_id
        data.update(workspace_id=workspace_id, recorded_at=now.isoformat(), recorded_by=actor)
        try:
            event = self.registry.decode_obj(data)
        except EventDecodeError as exc:
            first = exc.errors[0] if exc.errors else {"loc": [], "msg": str(exc)}
            rej = Rejected(422, first["loc"], str(exc))
            rej.errors = exc.errors
            raise rej from exc
        if event.occurred_at > now + timedelta(seconds=self.settings.max_future_skew_s):
            raise Rejected(422, ["occurred_at"], "lies in the future")
        if event.occurred_at < EARLIEST:
            raise Rejected(422, ["occurred_at"], "lies before 1900")
        return event

    async def _on_log(self, subject: str) -> bool:
        try:
            await self.js.get_last_msg(self.settings.stream_name, subject)
        except NotFoundError:
            return False
        return True

    def _refs(self, event: Event, obj: dict[str, Any]) -> list[tuple[list[str], str]]:
        """(location, person id) of every existing person the event relies on."""
        if isinstance(event, PersonAdded):
            return []
        if event.type.startswith("person."):
            return [(["person_id"], getattr(event, "person_id"))]  # noqa: B009
        return _person_refs(obj)

    async def prepare(
        self, workspace_id: str, lines: Sequence[tuple[Event, dict[str, Any]]]
    ) -> Command:
        """The lookups every line of one command shares, done once for the whole command.

        * Who exists: a person is known once their ``person.added`` is on the log (asked of
          the log once per person, then remembered: a person once added stays added), or when
          this very command adds them (those lines are published first).
        * Who is forgotten, and everyone's key: one read of ``person_keys`` for all people
          named, never from a cache. Forgetting destroys the key *before* the
          ``person.forgotten`` event is published, so a destroyed key is the earliest and
          exact sign, the same for every service.
        """
        ws = workspace_id
        prefix = self.settings.subject_prefix
        adding = {e.person_id for e, _ in lines if isinstance(e, PersonAdded)}
        named = {pid for e, obj in lines for _, pid in self._refs(e, obj)}
        asked = sorted(p for p in named - adding if (ws, p) not in self._known_people)
        on_log = await asyncio.gather(
            *(self._on_log(person_added_subject(prefix, ws, p)) for p in asked)
        )
        self._known_people.update((ws, p) for p, ok in zip(asked, on_log, strict=True) if ok)
        known = adding | {p for p in named if (ws, p) in self._known_people}
        keyed = {p for e, _ in lines if not isinstance(e, PersonForgotten) for p in key_people(e)}
        wanted = sorted((named | keyed | adding) & (known | {WORKSPACE_KEY}))
        keys = await self.keystore.keys(ws, wanted, create=True, fresh=True) if wanted else {}
        return Command(known=known, keys=keys)

    async def check_references(self, event: Event, obj: dict[str, Any], cmd: Command) -> None:
        """Every person named must exist in this workspace and not be forgotten; a
        retraction's target and an introduction's earlier steps must exist too."""
        for loc, pid in self._refs(event, obj):
            if pid not in cmd.known:
                raise Rejected(
                    404, loc, f"unknown person {pid!r} in workspace {event.workspace_id!r}"
                )
            if cmd.keys.get(pid) is None and not isinstance(event, PersonForgotten):
                raise Rejected(410, loc, f"person {pid!r} was forgotten")
        if isinstance(event, EventRetracted):
            await self._check_retraction(event)
        intro_id = getattr(event, "introduction_id", None)
        if intro_id is not None and not isinstance(event, IntroductionRequested):
            await self._check_introduction(event, intro_id)

    async def _check_retraction(self, event: EventRetracted) -> None:
        row = await self._archived_event(event)
        if row is None:
            raise Rejected(404, ["retracted_event_id"], "no such event in this workspace")
        if row["type"] == "event.retracted":
            raise Rejected(422, ["retracted_event_id"], "a retraction cannot be retracted")
        if row["retracted_by"] is not None:
            raise Rejected(409, ["retracted_event_id"], "is already retracted")

    async def _archived_event(self, event: EventRetracted) -> Any:
        """The retraction's target as the archive knows it. An event written a moment ago may
        not be archived yet, so when it is missing and the projection is behind the log, wait
        (bounded by ``min_seq_wait_s``) until the projection has caught up with the log as it
        was when we asked: write-then-retract works without the client passing ``min_seq``."""
        query = "SELECT type, retracted_by FROM events WHERE event_id = %s AND workspace_id = %s"
        args = (event.retracted_event_id, event.workspace_id)
        target: int | None = None
        deadline = time.monotonic() + self.settings.min_seq_wait_s
        while True:
            async with self.pool.connection() as conn:
                row = await (await conn.execute(query, args)).fetchone()
                if row is not None:
                    return row
                cur = await conn.execute(
                    "SELECT last_seq FROM checkpoints WHERE projection = %s",
                    (self.pool.generation.consumer,),
                )
                seen_row = await cur.fetchone()
            seen = int(seen_row["last_seq"]) if seen_row else 0
            if target is None:
                info = await self.js.stream_info(self.settings.stream_name)
                target = int(info.state.last_seq)
            if seen >= target or time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.01)

    async def _check_introduction(self, event: Event, intro_id: UUID) -> None:
        """Double opt-in: consents come from the two sides, an introduction is made only when
        both said yes, and an outcome follows a made introduction."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT requester, introducer, target, requester_consent, target_consent, "
                "made_event_id FROM introductions_v1 WHERE workspace_id = %s "
                "AND introduction_id = %s",
                (event.workspace_id, intro_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise Rejected(404, ["introduction_id"], "no such introduction in this workspace")
        if isinstance(event, IntroductionConsented):
            if event.person not in (row["requester"], row["target"]):
                raise Rejected(422, ["person"], "must be the requester or the target")
        elif isinstance(event, RelationshipIntroduced):
            if {event.person_a, event.person_b} != {row["requester"], row["target"]} or (
                event.introducer != row["introducer"]
            ):
                raise Rejected(
                    422, ["introduction_id"], "introducer and people differ from the request"
                )
            if not (row["requester_consent"] and row["target_consent"]):
                raise Rejected(
                    409, ["introduction_id"], "both sides must consent first (double opt-in)"
                )
        elif isinstance(event, IntroductionOutcome) and row["made_event_id"] is None:
            raise Rejected(409, ["introduction_id"], "the introduction has not been made yet")

    async def archived_seqs(self, event_ids: list[UUID]) -> dict[UUID, tuple[int, str]]:
        """event_id -> (seq, workspace) for ids the projection has already archived."""
        if not event_ids:
            return {}
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT event_id, seq, workspace_id FROM events WHERE event_id = ANY(%s)",
                (event_ids,),
            )
            return {r["event_id"]: (int(r["seq"]), r["workspace_id"]) for r in await cur.fetchall()}

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, event: Event, cmd: Command) -> tuple[int, bool]:
        """Publish with Nats-Msg-Id; a person.added also asserts the person is new."""
        headers = {"Nats-Msg-Id": str(event.event_id)}
        if isinstance(event, PersonAdded):
            headers["Nats-Expected-Last-Subject-Sequence"] = "0"
        subject = event_subject(self.settings.subject_prefix, event)
        event = await self._protect(event, cmd)
        async with self._publish_slots:
            try:
                ack = await self.js.publish(
                    subject,
                    self.registry.encode(event),
                    headers=headers,
                    stream=self.settings.stream_name,
                    timeout=self.settings.command_timeout_s,
                )
            except APIError as exc:
                if isinstance(event, PersonAdded) and exc.err_code == WRONG_LAST_SEQUENCE:
                    return await self._existing_person(event)
                raise
        if isinstance(event, PersonAdded):
            self._known_people.add((event.workspace_id, event.person_id))
        return int(ack.seq), bool(ack.duplicate)

    async def _protect(self, event: Event, cmd: Command) -> Event:
        """Encrypt personal fields with the people's keys; forgetting destroys the key first."""
        if isinstance(event, PersonForgotten):
            await self.keystore.destroy(event.workspace_id, event.person_id)
            return event
        people = key_people(event)
        keys = (
            cmd.keys
            if all(p in cmd.keys for p in people)
            else await self.keystore.keys(event.workspace_id, people, create=True)
        )
        try:
            return encrypt_event(event, keys)
        except PersonForgottenError as exc:
            raise Rejected(410, ["person"], f"person {exc.person_id!r} was forgotten") from exc

    async def _existing_person(self, event: PersonAdded) -> tuple[int, bool]:
        """The person already exists: fine if it is this very event re-sent, else a conflict."""
        subject = person_added_subject(
            self.settings.subject_prefix, event.workspace_id, event.person_id
        )
        msg = await self.js.get_last_msg(self.settings.stream_name, subject)
        if msg.data and self.registry.decode(msg.data).event_id == event.event_id:
            return int(msg.seq or 0), True
        raise Rejected(409, ["person_id"], f"person {event.person_id!r} already exists")

    # -- the whole command ----------------------------------------------------------------

    async def record_many(
        self, workspace_id: str, objs: Sequence[Any], actor: str, correlation_id: str | None = None
    ) -> list[Outcome]:
        """Validate every line first, then publish the valid ones concurrently.

        A line's outcome never depends on a later line; nothing from a bad line is published.
        """
        outcomes: list[Outcome | None] = [None] * len(objs)
        events: list[tuple[int, Event]] = []
        for i, obj in enumerate(objs):
            eid = obj.get("event_id") if isinstance(obj, dict) else None
            try:
                event = self.build(workspace_id, obj, actor, correlation_id)
            except Rejected as rej:
                outcomes[i] = rej.outcome(str(eid) if eid is not None else None)
                continue
            events.append((i, event))
        # Only ids the client chose can have been recorded before; ours are fresh uuid4s.
        supplied = [
            e.event_id for i, e in events if isinstance(objs[i], dict) and "event_id" in objs[i]
        ]
        archived = await self.archived_seqs(supplied)
        for i, event in events:
            prior = archived.get(event.event_id)
            if prior is not None:
                outcomes[i] = (
                    Outcome(200, str(event.event_id), prior[0], duplicate=True)
                    if prior[1] == workspace_id
                    else Rejected(409, ["event_id"], "is already used").outcome(str(event.event_id))
                )
        events = [(i, e) for i, e in events if outcomes[i] is None]
        cmd = await self.prepare(workspace_id, [(e, objs[i]) for i, e in events])

        async def one(i: int, event: Event) -> None:
            eid = str(event.event_id)
            try:
                await self.check_references(event, objs[i], cmd)
                seq, dup = await self.publish(event, cmd)
            except Rejected as rej:
                outcomes[i] = rej.outcome(eid)
                return
            outcomes[i] = Outcome(200 if dup else 201, eid, seq, duplicate=dup)
            log.info(
                "event.recorded",
                event_id=eid,
                type=event.type,
                seq=seq,
                duplicate=dup,
                workspace_id=workspace_id,
                correlation_id=str(event.correlation_id),
                causation_id=str(event.causation_id),
            )

        # People added by this command go on the log before the lines that name them.
        await asyncio.gather(*(one(i, e) for i, e in events if isinstance(e, PersonAdded)))
        await asyncio.gather(*(one(i, e) for i, e in events if not isinstance(e, PersonAdded)))
        return [
            o if o is not None else Outcome(500, error="internal: no outcome") for o in outcomes
        ]
