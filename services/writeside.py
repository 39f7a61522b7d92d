"""The write side shared by the services that emit events: decide each command line with the
pure rules of ``write_rules`` over the state the write side owns (``write_state``, the log and
the key store), then publish the event to JetStream with ``Nats-Msg-Id = workspace/event_id``.

Nothing is published for a line that fails any check. Event ids are unique per workspace: two
workspaces may use the same id for their own events. Re-sending an event_id with the same body
returns the original stream sequence and publishes nothing new; re-sending it with a different
body is a 409 conflict. The write side never reads a read model.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from tieline.events_schema.models import (
    Event,
    EventRetracted,
    IntroductionOutcome,
    PersonAdded,
    PersonForgotten,
    PersonMerged,
)
from tieline.events_schema.registry import EventRegistry
from tieline.plumbing.config import Settings
from tieline.plumbing.crypto import (
    WORKSPACE_KEY,
    KeyStore,
    PersonForgottenError,
    encrypt_event,
    key_people,
)
from tieline.plumbing.subjects import event_subject, msg_id, person_added_subject
from tieline.services import write_rules as rules
from tieline.services.write_backfill import event_on_log
from tieline.services.write_rules import (
    PERSON_REF_FIELDS,
    Command,
    Outcome,
    Rejected,
)
from tieline.services.write_state import WriteState

log = structlog.get_logger(__name__)

WRONG_LAST_SEQUENCE = 10071


class WriteSide:
    """Decides and publishes the events one service owns (``types``)."""

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        state: WriteState,
        registry: EventRegistry,
        types: Iterable[str],
        service: str,
        keystore: KeyStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.keystore = keystore
        self.settings = settings
        self.js = js
        self.state = state
        self.registry = registry
        self.types = frozenset(types)
        self.service = service
        self.clock = clock
        self._known_people: set[tuple[str, str]] = set()
        # As many publishes in flight as the raw reference keeps (fsync before ack amortises
        # over the writes waiting together).
        self._publish_slots = asyncio.Semaphore(4096)
        # Commands deciding erasures at once: each holds a pool connection (its merge locks)
        # while it needs another for the checks, so they must not be able to take them all.
        self._erasure_slots = asyncio.Semaphore(2)

    def build(
        self, workspace_id: str, obj: Any, actor: str, correlation_id: str | None = None
    ) -> Event:
        """Turn a client's event object into a validated event (see ``write_rules.build``)."""
        return rules.build(
            workspace_id,
            obj,
            actor=actor,
            now=self.clock(),
            types=self.types,
            service=self.service,
            registry=self.registry,
            max_future_skew_s=self.settings.max_future_skew_s,
            correlation_id=correlation_id,
        )

    # -- state the rules need -------------------------------------------------------------

    async def _on_log(self, subject: str) -> bool:
        try:
            await self.js.get_last_msg(self.settings.stream_name, subject)
        except NotFoundError:
            return False
        return True

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
        named = {pid for e, obj in lines for _, pid in rules.refs(e, obj)}
        asked = sorted(p for p in named - adding if (ws, p) not in self._known_people)
        on_log = await asyncio.gather(
            *(self._on_log(person_added_subject(prefix, ws, p)) for p in asked)
        )
        self._known_people.update((ws, p) for p, ok in zip(asked, on_log, strict=True) if ok)
        known = adding | {p for p in named if (ws, p) in self._known_people}
        keyed = {p for e, _ in lines if not isinstance(e, PersonForgotten) for p in key_people(e)}
        wanted = sorted((named | keyed | adding) & (known | {WORKSPACE_KEY}))
        keys = await self.keystore.keys(ws, wanted, create=True, fresh=True) if wanted else {}
        forgetting = frozenset(e.person_id for e, _ in lines if isinstance(e, PersonForgotten))
        return Command(known=known, keys=keys, forgetting=forgetting)

    async def check(self, event: Event, obj: dict[str, Any], cmd: Command) -> None:
        """Apply the rules that need state: people, retraction target. (A merge is decided
        when it claims its people, an erasure under its person's merge lock, and an
        introduction step under its introduction's lock, just before publishing: see
        :meth:`publish`.)"""
        rules.check_people(event, obj, cmd)
        if isinstance(event, EventRetracted):
            rules.check_retraction(
                event,
                await self.state.event(event.workspace_id, event.retracted_event_id),
                cmd.admin,
            )

    async def _decide_erasures(
        self,
        todo: list[tuple[int, Event]],
        objs: Sequence[Any],
        cmd: Command,
        outcomes: list[Outcome | None],
        refused: list[UUID],
    ) -> list[tuple[int, Event]]:
        """Decide the command's erasures together and destroy the keys of those accepted,
        under one hold of their people's merge locks: a merge claimed before is seen here,
        one claimed after finds the key gone (:meth:`_publish_merge`). A survivor and the
        people merged into it are erased together or not at all: when one of them is
        refused, so are the others of this command (unrelated erasures go on). Returns the
        lines left to publish."""
        erasures = [(i, e) for i, e in todo if isinstance(e, PersonForgotten)]
        if not erasures:
            return todo
        ws = erasures[0][1].workspace_id
        people = [e.person_id for _, e in erasures]
        async with self._erasure_slots, self.state.merge_locked(ws, people):
            refusals: dict[int, Rejected] = {}
            partners: dict[int, set[str]] = {}
            for i, e in erasures:
                try:
                    rules.check_people(e, objs[i], cmd)
                    partners[i] = await self._check_forget(e, cmd)
                except Rejected as refusal:
                    refusals[i] = refusal
            _refuse_linked(erasures, partners, refusals)
            erased = [e.person_id for i, e in erasures if i not in refusals]
            for person in erased:
                await self.keystore.destroy(ws, person)
            if erased:
                cleared = await self.state.forget_digests(ws, erased)
                log.info("erasure.digests_cleared", workspace_id=ws, rows=cleared)
        for i, e in erasures:
            if i in refusals:
                outcomes[i] = refusals[i].outcome(str(e.event_id))
                refused.append(e.event_id)
        return [(i, e) for i, e in todo if i not in refusals]

    async def _check_forget(self, event: PersonForgotten, cmd: Command) -> set[str]:
        """An erasure takes the people merged into the person along (:func:`check_forget`);
        whether those are forgotten already is read from the key store, fresh. Returns the
        person's merge partners (the people merged into them, or their survivor)."""
        ws = event.workspace_id
        holding = await self.state.merges_naming(ws, event.person_id)
        others = {p for m in holding for p in (m.merged, m.survivor)} - {event.person_id}
        keys = await self.keystore.keys(ws, sorted(others), fresh=True) if others else {}
        forgotten = {p for p, key in keys.items() if key is None}
        rules.check_forget(event, holding, cmd.forgetting, forgotten)
        return others

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, event: Event, cmd: Command) -> tuple[int, bool]:
        """Publish one decided event. A retraction first claims its target, so of two
        concurrent retractions of one event exactly one is published; a merge first claims
        its two people, so of merges that would make a double merge or a chain only one is;
        an introduction step is decided, published and recorded under its introduction's
        lock, so of two makes of one introduction only one is.

        A claim is given back when the line is refused while publishing; when the publish
        fails otherwise (a timeout: it may be on the log) it is kept, and a retry with the
        same event id publishes it again (JetStream dedupes)."""
        if isinstance(event, PersonMerged):
            return await self._publish_merge(event, cmd)
        if rules.is_introduction_step(event):
            if isinstance(event, IntroductionOutcome):
                await self._outcome_keys(event, cmd)
            return await self.state.step(event, lambda stamped: self._publish(stamped, cmd))
        if not isinstance(event, EventRetracted):
            return await self._publish(event, cmd)
        stamped = await self._retraction_people(event, cmd)  # refused before the claim
        if not await self.state.claim_retraction(event):
            raise Rejected(409, ["retracted_event_id"], "is already retracted")
        try:
            return await self._publish(stamped, cmd)
        except Rejected:
            await self.state.unclaim_retraction(event)
            raise

    async def _publish_merge(self, event: PersonMerged, cmd: Command) -> tuple[int, bool]:
        claimed = await self.state.claim_merge(event)  # raises Rejected: the merge conflicts
        try:
            await self._not_forgotten_since(event)
            return await self._publish(event, cmd)
        except Rejected:
            if claimed:  # (not a claim an earlier send of this id made: that may be on the log)
                await self.state.unclaim_merge(event)
            raise

    async def _outcome_keys(self, event: IntroductionOutcome, cmd: Command) -> None:
        """An outcome's note is encrypted with the keys of the introduction's two people
        (named when it is published, under the step's lock): read them before taking it, so
        the step holds one pool connection, not two. (An introduction's people never change.)"""
        intro = await self.state.introduction(event.workspace_id, event.introduction_id)
        if intro is not None:
            people = [intro.requester, intro.target]
            # Named before the keys are read: an erasure that destroys one after the read
            # clears this outcome's digest (see WriteState.forget_digests).
            await self.state.name_people(rules.with_introduction_people(event, intro))
            cmd.keys.update(await self.keystore.keys(event.workspace_id, people, fresh=True))

    async def _retraction_people(self, event: EventRetracted, cmd: Command) -> EventRetracted:
        """A retraction names the retracted event's people who are not forgotten, so its
        reason goes under their keys: its row names them all before their keys are read, as
        an outcome's. (A reason sent after one of them was forgotten is new text about the
        others, like a note on any event between them.)"""
        ws = event.workspace_id
        people = await self._target_people(event)
        if not people:
            return rules.with_retracted_people(event, None)
        await self.state.name_people(event, people)
        keys = await self.keystore.keys(ws, people, create=True, fresh=True)
        cmd.keys.update(keys)
        living = [p for p in people if keys.get(p) is not None]
        if living != people:  # the row names those whose erasure must clear its digest
            await self.state.name_people(event, living)
        return rules.with_retracted_people(event, living)

    async def _target_people(self, event: EventRetracted) -> list[str] | None:
        """Whom the retracted event names: from its row, or, for a row that does not know
        (taken by a release before revision 0008 after the one-time backfill), from the log."""
        ws, target_id = event.workspace_id, event.retracted_event_id
        target = await self.state.event(ws, target_id)
        if target is None:
            return None
        if target.people is not None:
            return list(target.people)
        if target.seq is None:
            return None
        try:
            msg = await self.js.get_msg(self.settings.stream_name, seq=target.seq)
        except NotFoundError:
            return None  # gone from the log: it names nobody
        found = event_on_log(msg.data or b"", self.registry, ws, target_id)
        return None if found is None else sorted(set(found.people()))

    async def _not_forgotten_since(self, event: PersonMerged) -> None:
        """After the claim, the two people's keys again, fresh: an erasure that destroyed one
        since the command read them (in :meth:`prepare`) refuses the merge (410)."""
        ws = event.workspace_id
        keys = await self.keystore.keys(ws, [event.person_id, event.survivor], fresh=True)
        for loc, p in (("person_id", event.person_id), ("survivor", event.survivor)):
            if keys.get(p) is None:
                raise Rejected(410, [loc], f"person {p!r} was forgotten")

    async def _publish(self, event: Event, cmd: Command) -> tuple[int, bool]:
        """Publish with Nats-Msg-Id; a person.added also asserts the person is new."""
        headers = {"Nats-Msg-Id": msg_id(event)}
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
        self,
        workspace_id: str,
        objs: Sequence[Any],
        actor: str,
        correlation_id: str | None = None,
        *,
        admin: bool = False,
    ) -> list[Outcome]:
        """Decide every line, then publish the accepted ones concurrently and record them.

        A line's outcome never depends on a later line; nothing from a refused line is
        published. After a failure that is not a refusal (a publish timeout, a database
        error) the lines published are still recorded and answered; the failed line and those
        not tried get 503 (:func:`~tieline.services.write_rules.unsettled`). The command's
        answer is sent only after its events are recorded in the write-side state, so the
        next command (a retraction, a consent) sees them.
        """
        outcomes: list[Outcome | None] = [None] * len(objs)
        lines: list[tuple[int, Event, str]] = []
        for i, obj in enumerate(objs):
            eid = obj.get("event_id") if isinstance(obj, dict) else None
            try:
                event = self.build(workspace_id, obj, actor, correlation_id)
            except Rejected as rej:
                outcomes[i] = rej.outcome(str(eid) if eid is not None else None)
                continue
            lines.append((i, event, rules.body_digest(event, obj)))
        lines, copies = rules.repeated_ids(lines, outcomes)
        held = await self.state.take([(e, d) for _, e, d in lines])
        todo: list[tuple[int, Event]] = []
        again: list[tuple[Event, str]] = []
        for i, event, digest in lines:
            prior = held.get(event.event_id)
            if prior is not None:
                outcomes[i] = rules.prior_outcome(prior, digest, str(event.event_id))
                again += [(event, digest)] if outcomes[i] is None else []
            if outcomes[i] is None:
                todo.append((i, event))
        # A re-send of an id taken and not confirmed is taken again now (and again if its first
        # sender gave it back meanwhile: then it is this command's own), before this command
        # reads the keys: an erasure waits for it (see _after_in_flight).
        own = await self.state.retake(again)
        failure = await self._publish_all(
            workspace_id, objs, todo, outcomes, set(held) - own, admin=admin
        )
        if failure is not None:  # the lines without an outcome failed or were not tried
            for i, event in todo:
                outcomes[i] = outcomes[i] or rules.unsettled(event, failure)
        for i, first in copies.items():
            outcomes[i] = rules.as_repeat(outcomes[first])
        return [
            o if o is not None else Outcome(500, error="internal: no outcome") for o in outcomes
        ]

    async def _publish_all(
        self,
        workspace_id: str,
        objs: Sequence[Any],
        todo: list[tuple[int, Event]],
        outcomes: list[Outcome | None],
        held: set[UUID],
        *,
        admin: bool = False,
    ) -> Exception | None:
        """Check and publish the lines in ``todo``, fill ``outcomes`` and record what was
        published; give back the ids of the lines refused or never tried (``held``: ids an
        earlier send took, kept). Returns the first failure other than a refusal (a publish
        timeout, a database error), if any: after one, no further line is started, the lines
        already started finish, and whatever was published is still recorded (a line on the
        log but not recorded could not be retracted, 404, nor count for the double opt-in).
        Erasures go last, once the other lines are recorded (:meth:`_after_in_flight`)."""
        cmd = await self.prepare(workspace_id, [(e, objs[i]) for i, e in todo])
        cmd = dataclasses.replace(cmd, admin=admin)
        run = _Run(objs, cmd, outcomes)
        todo = await self._decide_erasures(todo, objs, cmd, outcomes, run.refused)
        erasures = [(i, e) for i, e in todo if isinstance(e, PersonForgotten)]
        others = [(i, e) for i, e in todo if not isinstance(e, PersonForgotten)]
        await self._in_line_order(others, lambda i, e: self._line(run, i, e))
        if erasures:
            try:
                await self._settle(workspace_id, run, held)
            except Exception as exc:  # the erasures, keys destroyed, are published all the same
                run.failures.append(exc)
                log.warning("command.record_failed", workspace_id=workspace_id, error=repr(exc))
            await self._after_in_flight(workspace_id, erasures, [e.event_id for _, e in todo])
            await asyncio.gather(*(self._line(run, i, e) for i, e in erasures))
        await self._settle(workspace_id, run, held)
        return run.failures[0] if run.failures else None

    async def _settle(self, workspace_id: str, run: _Run, held: set[UUID]) -> None:
        """Record what ``run`` published and give back what it refused, since the last call
        that succeeded (what is left stays to be done by the next call)."""
        await self.state.recorded(run.published)
        run.published = []
        await self.state.release(workspace_id, [e for e in run.refused if e not in held])
        run.refused = []

    async def _line(self, run: _Run, i: int, event: Event) -> None:
        """Check and publish one line of ``run``, noting its outcome."""
        eid = str(event.event_id)
        if run.failures and not isinstance(event, PersonForgotten):
            # Not tried: its id is given back, a retry decides it afresh. (An erasure was
            # decided and its key destroyed: it is always tried.)
            run.refused.append(event.event_id)
            return
        try:
            await self.check(event, run.objs[i], run.cmd)
            seq, dup = await self.publish(event, run.cmd)
        except Rejected as rej:
            run.outcomes[i] = rej.outcome(eid)
            run.refused.append(event.event_id)
            return
        except Exception as exc:  # it may be on the log: its id stays taken (a retry
            run.failures.append(exc)  # with the same id publishes again, deduped)
            log.warning("event.publish_failed", event_id=eid, type=event.type, error=repr(exc))
            return
        run.published.append((event, seq))
        run.outcomes[i] = Outcome(200 if dup else 201, eid, seq, duplicate=dup)
        _log_recorded(event, seq, dup)

    async def _in_line_order(
        self, todo: list[tuple[int, Event]], one: Callable[[int, Event], Awaitable[None]]
    ) -> None:
        """Run ``one`` on every line: people added by the command first (they go on the log
        before the lines that name them); then, concurrently, the other lines, except that
        merges and introduction steps go one after another in line order (each decided
        against the earlier accepted ones; a line never depends on a later one)."""

        def in_order(e: Event) -> bool:
            return isinstance(e, PersonMerged) or rules.is_introduction_step(e)

        async def one_after_another() -> None:
            for i, e in todo:
                if in_order(e):
                    await one(i, e)

        await asyncio.gather(*(one(i, e) for i, e in todo if isinstance(e, PersonAdded)))
        await asyncio.gather(
            one_after_another(),
            *(one(i, e) for i, e in todo if not (isinstance(e, PersonAdded) or in_order(e))),
        )

    async def _after_in_flight(
        self,
        workspace_id: str,
        erasures: Sequence[tuple[int, PersonForgotten]],
        own: Sequence[UUID],
    ) -> None:
        """Wait until no other command has a line naming an erased person in flight that was
        taken before the person's key was destroyed. A line's id is taken (a re-send's taken
        again) before its command reads the keys, so one that read a key before the destroy
        is seen here and goes on the log before ``person.forgotten``; one that reads it after
        is refused (410). Bounded: a line whose publish failed keeps its row taken (as does a
        crashed service's), so rows taken more than twice the command timeout ago no longer
        count (a line slower than that from take to publish is not waited for), and the wait
        gives up after that long (logged). A database error ends the wait (logged): the
        erasure, its key destroyed, is always published."""
        people = sorted({e.person_id for _, e in erasures})
        bound = 2 * self.settings.command_timeout_s
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + bound, IN_FLIGHT_POLL_S
        try:
            while await self.state.in_flight(workspace_id, people, own, bound):
                if loop.time() > deadline:
                    log.warning("erasure.in_flight_timeout", workspace_id=workspace_id)
                    return
                await asyncio.sleep(pause)
                # Each ask reads the index entries of the people's events (tens of ms for
                # one named in 200k of them): ask less often the longer a line takes.
                pause = min(2 * pause, IN_FLIGHT_POLL_MAX_S)
        except Exception as exc:
            log.warning("erasure.in_flight_unknown", workspace_id=workspace_id, error=repr(exc))


#: How soon an erasure looks again for other commands' lines in flight naming its people:
#: first after 50 ms, then after twice as long each time, at most every half second.
IN_FLIGHT_POLL_S = 0.05
IN_FLIGHT_POLL_MAX_S = 0.5


@dataclass
class _Run:
    """One command's lines as they are published: outcomes, and what is left to record or
    give back (:meth:`WriteSide._settle`)."""

    objs: Sequence[Any]
    cmd: Command
    outcomes: list[Outcome | None]
    published: list[tuple[Event, int]] = field(default_factory=list)
    refused: list[UUID] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)


def _refuse_linked(
    erasures: Sequence[tuple[int, PersonForgotten]],
    partners: dict[int, set[str]],
    refusals: dict[int, Rejected],
) -> None:
    """Refuse (in ``refusals``) every erasure linked by a merge to a refused one, so that a
    survivor and the people merged into it are never split (to a fixpoint: a refused
    duplicate refuses its survivor, which refuses the survivor's other duplicates)."""
    person = {i: e.person_id for i, e in erasures}

    def linked(i: int, r: int) -> bool:
        return person[i] in partners.get(r, set()) or person[r] in partners.get(i, set())

    changed = True
    while changed:
        changed = False
        for i, _ in erasures:
            by = (
                None if i in refusals else next((r for r in sorted(refusals) if linked(i, r)), None)
            )
            if by is None:
                continue
            refusals[i] = Rejected(
                409,
                ["person_id"],
                f"not erased: merged with {person[by]!r}, whose erasure (index {by}) was "
                "refused; a survivor and the people merged into it are erased together",
            )
            changed = True


def _log_recorded(event: Event, seq: int, duplicate: bool) -> None:
    log.info(
        "event.recorded",
        event_id=str(event.event_id),
        type=event.type,
        seq=seq,
        duplicate=duplicate,
        workspace_id=event.workspace_id,
        correlation_id=str(event.correlation_id),
        causation_id=str(event.causation_id),
    )


__all__ = ["PERSON_REF_FIELDS", "Command", "Outcome", "Rejected", "WriteSide"]
