"""Decide what one message from the log is: a valid event for this projection, or poison
(and why). Pure: no I/O."""

from __future__ import annotations

from tieline.events_schema.registry import EventDecodeError, EventRegistry
from tieline.plumbing.config import Settings
from tieline.plumbing.subjects import event_subject, workspace_of_subject
from tieline.projections.store import Decoded, Item, Poison


def classify(
    registry: EventRegistry, settings: Settings, seq: int, subject: str, data: bytes
) -> Item:
    """Decode one message from the log, or say why it is poison. Pure: no I/O."""
    if len(data) > settings.max_event_bytes:
        return Poison(
            seq,
            subject,
            data,
            "too_large",
            f"{len(data)} bytes exceeds the {settings.max_event_bytes}-byte event limit",
        )
    try:
        event = registry.decode(data)
    except EventDecodeError as exc:
        return Poison(seq, subject, data, exc.reason, str(exc))
    if workspace_of_subject(settings.subject_prefix, subject) != event.workspace_id:
        return Poison(
            seq,
            subject,
            data,
            "workspace_mismatch",
            f"workspace_id {event.workspace_id!r} does not match subject {subject!r}",
        )
    expected = event_subject(settings.subject_prefix, event)
    if subject != expected:
        return Poison(
            seq,
            subject,
            data,
            "subject_mismatch",
            f"a {event.type} event belongs on {expected!r}, not {subject!r}",
        )
    return Decoded(seq, subject, event)
