"""Live updates: one change feed per API process fans the change log out to every SSE client.

The feed holds no database connection of its own: the API's one ``LISTEN tieline_checkpoint``
(:class:`~tieline.services.api.runtime.ReadYourWrites`) wakes it when a projection batch or a
follow-up scan commits; it then reads the new change-log rows once, through the read pool, and
hands each row, encoded once, to the subscribers of that workspace whose filters match. A poll
every ``sse_poll_s`` covers notifications lost while the listener reconnects.

Each subscriber has a bounded queue. A client that does not keep up is cut off once its queue
is full, with an ``overflow`` message that names its resume position, instead of buffering
without bound; it reconnects with ``Last-Event-ID`` and the rows it missed are replayed from the
change log. A resume position from before the log's trim point (or not from this log at all)
gets a ``reset`` message: the client reloads what it shows, and the stream goes on from now.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from tieline.plumbing.config import Settings
from tieline.projections.changelog import FORGOTTEN, SCAN_SUB
from tieline.projections.queries.live import (
    Position,
    changes_after,
    format_position,
    latest_position,
    resume_bounds,
)
from tieline.projections.queries.live import payload as live_payload

log = structlog.get_logger(__name__)

_POSITION = re.compile(r"^(\d{1,18})-(\d{1,9})$")
#: Rows read per query (the feed and a replay page through larger backlogs).
PAGE = 1000


def parse_position(text: str | None) -> Position | None:
    """A position from ``Last-Event-ID``; None when absent or not one of ours."""
    if not text:
        return None
    m = _POSITION.match(text.strip())
    return None if m is None else (int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True)
class Message:
    """One change, encoded once as an SSE message and shared by every subscriber."""

    position: Position
    workspace_id: str
    kind: str
    people: frozenset[str]
    wire: bytes

    @classmethod
    def of(cls, row: dict[str, Any]) -> Message:
        payload = live_payload(row)
        wire = b"id: %s\nevent: %s\ndata: %s\n\n" % (
            payload["position"].encode(),
            row["kind"].encode(),
            orjson.dumps(payload),
        )
        people = frozenset(row["data"].get("people") or ())
        position = (int(row["seq"]), int(row["sub"]))
        return cls(position, row["workspace_id"], row["kind"], people, wire)


def control(kind: str, position: Position, **data: Any) -> bytes:
    """A message of the stream itself (``reset``, ``overflow``) at ``position``."""
    body = orjson.dumps({"resume_from": format_position(position), **data})
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        format_position(position).encode(),
        kind.encode(),
        body,
    )


@dataclass(frozen=True)
class Filter:
    """What a client asked for: kinds (None: all), the changes naming one person, or the
    changes of one pair (a person.forgotten of either side included)."""

    kinds: frozenset[str] | None = None
    person: str | None = None
    pair: tuple[str, str] | None = None

    def matches(self, m: Message) -> bool:
        if self.kinds is not None and m.kind not in self.kinds:
            return False
        if self.person is not None and self.person not in m.people:
            return False
        if self.pair is not None:
            if m.kind == FORGOTTEN:
                return not m.people.isdisjoint(self.pair)
            return self.pair[0] in m.people and self.pair[1] in m.people
        return True


@dataclass(eq=False)
class Subscriber:
    """One SSE client: its workspace, filter, and a bounded queue of matching messages."""

    workspace_id: str
    filter: Filter
    limit: int
    #: The feed's position when the client registered: live messages start after it.
    start: Position = (0, -1)
    queue: deque[Message] = field(default_factory=deque)
    overflowed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, m: Message) -> None:
        if self.overflowed or not self.filter.matches(m):
            return
        if len(self.queue) >= self.limit:
            self.overflowed = True  # cut off: the client resumes from what it received
        else:
            self.queue.append(m)
        self.wake.set()

    def take(self) -> list[Message]:
        out = list(self.queue)
        self.queue.clear()
        self.wake.clear()
        return out


def disclosed(position: Position) -> Position:
    """The feed's position as a stream may show it to any workspace: its ``seq`` (public, as
    in every write answer) without its ``sub``, which counts the change rows of whichever
    workspace wrote last (one per pair a meeting moved, one per follow-up a scan found due).
    Rows below :data:`SCAN_SUB` at that ``seq`` are one event's, committed together before
    the client came; a later follow-up scan's rows at that ``seq`` stay above the position.
    (So a client that resumes from a reset at this position is sent its own workspace's
    follow-ups of a scan at that ``seq`` again.)"""
    return (position[0], SCAN_SUB - 1)


class ChangeFeed:
    """The API process's single reader of the change log (see the module docstring)."""

    def __init__(self, settings: Settings, connections: Any) -> None:
        self.settings = settings
        self.connections = connections
        self.position: Position = (0, -1)
        self._subs: dict[str, set[Subscriber]] = defaultdict(set)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def clients(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def start(self) -> None:
        async with self.connections.connection() as conn:
            self.position = await latest_position(conn, self._bound())
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def committed(self, schema: str, seq: int) -> None:
        """A projection batch or a follow-up scan committed (NOTIFY): read what is new."""
        del schema, seq  # whatever committed, rows after our position are what is new
        self._wake.set()

    def register(self, ws: str, flt: Filter) -> Subscriber:
        sub = Subscriber(ws, flt, self.settings.sse_queue_limit, start=disclosed(self.position))
        self._subs[ws].add(sub)
        return sub

    def unregister(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.workspace_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.workspace_id]

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.sse_poll_s)
            self._wake.clear()
            try:
                await self._read_new()
            except Exception as exc:  # database restarting: the next wake or poll retries
                log.warning("live.feed_read_failed", error=str(exc))
                await asyncio.sleep(0.5)

    async def _read_new(self) -> None:
        while True:
            async with self.connections.connection() as conn:
                rows = await changes_after(conn, self.position, None, PAGE, self._bound())
            for row in rows:
                m = Message.of(row)
                self.position = m.position
                for sub in self._subs.get(m.workspace_id, ()):
                    sub.offer(m)
            if len(rows) < PAGE:
                return

    def _bound(self) -> str | None:
        """The consumer whose checkpoint bounds the rows read, for a generation fed by
        partitioned workers (rows beyond the slowest partition are not final yet)."""
        generation = self.connections.pool.generation
        return generation.consumer if generation.partitions > 1 else None

    async def resume_check(self, position: Position) -> str | None:
        """Why ``position`` cannot be resumed from (the client must reload), or None."""
        async with self.connections.connection() as conn:
            trimmed, seen = await resume_bounds(conn, self.connections.pool.generation.consumer)
        if trimmed and position[0] <= trimmed:
            return "the position is older than the change log keeps"
        if position[0] > seen:
            return "the position is not from this change log"
        return None

    async def replay(
        self, ws: str, after: Position, flt: Filter
    ) -> AsyncIterator[tuple[Position, bytes]]:
        """The workspace's rows after ``after`` that match ``flt``, page by page, as
        (last position of the page, encoded messages)."""
        while True:
            async with self.connections.connection() as conn:
                rows = await changes_after(conn, after, ws, PAGE, self._bound())
            if not rows:
                return
            msgs = [Message.of(r) for r in rows]
            after = msgs[-1].position
            yield after, b"".join(m.wire for m in msgs if flt.matches(m))
            if len(rows) < PAGE:
                return
