"""What one message from the log is, once classified, and the invariant that keeps a
projection gap-free: a batch is applied only if it continues the checkpoint without a hole.

Shared by the live worker (projections/worker.py), the store (projections/store.py) and the
bulk rebuild (projections/bulk_load.py), so all three apply exactly the same rule.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from tieline.events_schema.models import Event

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Decoded:
    """A message from the stream that decoded into a valid event."""

    seq: int
    subject: str
    event: Event


@dataclass(frozen=True)
class Poison:
    """A message that can never be applied as it is; it goes to the dead-letter subject."""

    seq: int
    subject: str
    raw: bytes
    reason: str
    detail: str
    dlq_seq: int | None = None


@dataclass(frozen=True)
class Skipped:
    """A message a bounded replay deliberately leaves out (it only advances the checkpoint)."""

    seq: int


@dataclass(frozen=True)
class Gap:
    """Stream sequences ``first..seq`` that hold no event for this projection, as the stream
    itself confirmed (messages an operator deleted). Only such a proven hole lets the
    checkpoint move over sequences no message was applied for."""

    first: int
    seq: int  # the last sequence of the hole


Item = Decoded | Poison | Skipped | Gap


class SequenceGapError(Exception):
    """A batch does not continue the committed checkpoint without a hole (a lost delivery, a
    batch that starts behind or ahead, out-of-order items). Nothing of it may be applied or
    acknowledged; the worker reads the log again from the checkpoint."""

    def __init__(self, expected: int, got: int, checkpoint: int) -> None:
        super().__init__(
            f"expected stream sequence {expected} after checkpoint {checkpoint}, got {got}"
        )
        self.expected, self.got, self.checkpoint = expected, got, checkpoint


def continuing(items: Sequence[Item], checkpoint: int) -> list[Item]:
    """The items after ``checkpoint``, proven to continue it without a hole.

    Items at or below the checkpoint are redeliveries of what a committed batch applied (a
    crash between commit and ack) and are dropped. The rest must cover every sequence from
    ``checkpoint + 1`` on, in order: each message's own sequence or a :class:`Gap` the stream
    confirmed. Anything else raises :class:`SequenceGapError`. Pure: no I/O.
    """
    expected = checkpoint + 1
    fresh: list[Item] = []
    for it in items:
        if it.seq < expected and not fresh:
            continue  # already applied before the checkpoint
        first = it.first if isinstance(it, Gap) else it.seq
        if not fresh and isinstance(it, Gap) and first <= expected <= it.seq:
            first = expected  # a proven hole that began before the checkpoint
        if first != expected or it.seq < first:
            raise SequenceGapError(expected, first, checkpoint)
        fresh.append(it)
        expected = it.seq + 1
    return fresh


#: The stream sequence of the first event message at or after a sequence (None: none).
FirstAtOrAfter = Callable[[int], Awaitable[int | None]]


async def in_sequence(
    items: Sequence[Item],
    checkpoint: int,
    first_at_or_after: FirstAtOrAfter,
    until: datetime | None = None,
) -> list[Item] | None:
    """``items`` with every hole before or between them proven empty by the stream (as
    :class:`Gap` items), or None when a hole holds events these items do not bring (a
    delivery was lost) or they start at or behind ``checkpoint`` or are out of order.

    A reader starts right after the checkpoint and the stream holds only events, so a hole
    is rare (an operator deleted messages); it is looked up (``first_at_or_after``), never
    assumed. With ``until``, events that occurred after it become :class:`Skipped` (a bounded
    replay leaves them out but still moves past them).
    """
    expected = checkpoint + 1
    out: list[Item] = []
    for it in items:
        if it.seq < expected:
            log.warning("worker.behind", expected=expected, got=it.seq)
            return None
        if it.seq > expected:
            present = await first_at_or_after(expected)
            if present != it.seq:
                log.warning(
                    "worker.sequence_gap",
                    expected=expected,
                    got=it.seq,
                    first_in_stream=present,
                )
                return None
            out.append(Gap(expected, it.seq - 1))
        if until is not None and isinstance(it, Decoded) and it.event.occurred_at > until:
            it = Skipped(it.seq)
        out.append(it)
        expected = it.seq + 1
    return out


def stored_detail(detail: str) -> str:
    """A dead letter's detail as PostgreSQL text can hold it: no NUL (a message's own bytes,
    quoted in a validation error, may carry one), at most 2,000 characters."""
    return detail.replace("\x00", "\\u0000")[:2000]


async def record_poison(conn: Any, projection: str, poison: Sequence[Poison]) -> None:
    """Park ``poison`` in ``dead_letters`` (in the batch's transaction, with its checkpoint)."""
    if not poison:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO dead_letters (projection, stream_seq, subject, reason, detail, "
            "dlq_seq) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                (projection, p.seq, p.subject, p.reason, stored_detail(p.detail), p.dlq_seq)
                for p in poison
            ],
        )
