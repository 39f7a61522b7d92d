"""From calendar data to ``relationship.met`` commands: the pure part of the calendar sync.

A calendar object (one iCalendar resource: a series, its overrides) is expanded into the
occurrences that lie inside the sync window and have already ended. An occurrence becomes a
meeting when the calendar's owner and at least one other attendee who is a person in the
workspace took part (declined attendees, rooms and resources are left out). Everything the
mapping reads is in :class:`Occurrence`, and :func:`meeting_for` is deterministic: the same
calendar data, people and clock give the same command with the same ``event_id``, in every
process, which is what makes re-runs, crashes and concurrent syncs record nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import icalendar
import recurring_ical_events

#: Namespace of every id the sync derives (events, retractions, people).
SYNC_NAMESPACE = uuid.UUID("5f0c2b7e-9d4a-5c31-8e6f-2a7b1c9d0e43")
#: Hosts of video-call links: a meeting at one of them is ``remote``.
VIDEO_HINTS = (
    "zoom.us",
    "meet.google.com",
    "teams.microsoft.com",
    "teams.live.com",
    "webex.com",
    "whereby.com",
    "meet.jit.si",
    "jitsi",
    "gotomeeting",
    "bluejeans",
    "facetime.apple.com",
)
#: Attendee types that are not people (RFC 5545 CUTYPE).
NOT_PEOPLE = frozenset({"ROOM", "RESOURCE", "UNKNOWN"})
#: The event model's limit on participants.
MAX_PARTICIPANTS = 50
#: The event model's limit on a meeting's length.
MAX_MINUTES = 24 * 60


@dataclass(frozen=True)
class Attendee:
    """One ATTENDEE (or the ORGANIZER) of an occurrence."""

    email: str
    partstat: str
    cutype: str


@dataclass(frozen=True)
class Occurrence:
    """One instance of a calendar event (a single event, or one instance of a series)."""

    uid: str
    #: The instance's RECURRENCE-ID (its original start, UTC ISO) for a series, else "".
    recurrence_id: str
    sequence: int
    start: datetime
    end: datetime
    status: str
    summary: str
    location: str
    description: str
    organizer: str | None
    attendees: tuple[Attendee, ...]
    video: bool


def normalize_email(value: str) -> str:
    """``mailto:Ada@Example.org`` -> ``ada@example.org``."""
    v = value.strip()
    if v.lower().startswith("mailto:"):
        v = v[7:]
    return v.strip().lower()


def _utc(value: datetime | date) -> datetime:
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    # A floating time (no TZID) is taken as UTC: the server gives us nothing better.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _attendee(prop: Any) -> Attendee | None:
    email = normalize_email(str(prop))
    if "@" not in email:
        return None
    params = getattr(prop, "params", {})
    return Attendee(
        email=email,
        partstat=str(params.get("PARTSTAT", "NEEDS-ACTION")).upper(),
        cutype=str(params.get("CUTYPE", "INDIVIDUAL")).upper(),
    )


def _has_video(ev: Any, location: str, description: str) -> bool:
    hay = " ".join((location, description, str(ev.get("URL", "") or ""))).lower()
    if any(h in hay for h in VIDEO_HINTS):
        return True
    return any(k in ev for k in ("X-GOOGLE-CONFERENCE", "X-MICROSOFT-SKYPETEAMSMEETINGURL")) or (
        "CONFERENCE" in ev
    )


def _occurrence(ev: Any, series: bool) -> Occurrence | None:
    start_prop = ev.get("DTSTART")
    if start_prop is None or not isinstance(start_prop.dt, datetime):
        return None  # all-day entries (holidays, trips) are not meetings
    start = _utc(start_prop.dt)
    end_prop = ev.get("DTEND")
    if end_prop is not None:
        end = _utc(end_prop.dt)
    elif ev.get("DURATION") is not None:
        end = start + ev["DURATION"].dt
    else:
        end = start
    rid = ev.get("RECURRENCE-ID")
    recurrence_id = _utc(rid.dt).isoformat() if rid is not None else ""
    if series and not recurrence_id:
        recurrence_id = start.isoformat()
    attendees = tuple(a for a in map(_attendee, _as_list(ev.get("ATTENDEE"))) if a is not None)
    organizer = ev.get("ORGANIZER")
    location = str(ev.get("LOCATION", "") or "")
    description = str(ev.get("DESCRIPTION", "") or "")
    return Occurrence(
        uid=str(ev.get("UID", "")),
        recurrence_id=recurrence_id,
        sequence=int(ev.get("SEQUENCE", 0) or 0),
        start=start,
        end=max(end, start),
        status=str(ev.get("STATUS", "CONFIRMED")).upper(),
        summary=str(ev.get("SUMMARY", "") or ""),
        location=location,
        description=description,
        organizer=normalize_email(str(organizer)) if organizer is not None else None,
        attendees=attendees,
        video=_has_video(ev, location, description),
    )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def occurrences(ics: str, since: datetime, until: datetime) -> Iterator[Occurrence]:
    """Every VEVENT instance of ``ics`` that starts inside ``[since, until)``; a recurring
    series is expanded (RRULE, RDATE, EXDATE, overrides) by ``recurring_ical_events``."""
    cal = icalendar.Calendar.from_ical(ics)
    series = any(
        c.get("RRULE") is not None or c.get("RDATE") is not None or c.get("RECURRENCE-ID")
        for c in cal.walk("VEVENT")
    )
    for ev in recurring_ical_events.of(cal).between(since, until):
        occ = _occurrence(ev, series)
        if occ is not None:
            yield occ


def depth_for(minutes: int, people: int) -> str:
    """How much of a meeting it was, from its length and its size (docs/sync.md).

    Short slots are brief chats whatever their size; in large groups each pair gets little of
    the time, so they never count as more than a conversation; two people for 45 minutes or
    more had a deep conversation; a long slot among a few people is a shared activity.
    """
    if minutes < 15:
        return "brief_chat"
    if people > 8:
        return "brief_chat" if minutes < 60 else "conversation"
    if minutes >= 120:
        return "meal_or_activity"
    if people == 2 and minutes >= 45:
        return "deep_conversation"
    return "conversation"


def _clip(value: str, limit: int) -> str | None:
    value = " ".join(value.split()) if limit <= 200 else value.strip()
    if not value:
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


@dataclass(frozen=True)
class Owner:
    """Whose calendar it is: their person id and their own addresses (to find their reply)."""

    person_id: str
    emails: frozenset[str]


def participants_of(
    occ: Occurrence, owner: Owner, person_of: Callable[[str], str | None]
) -> list[str] | None:
    """The people who took part (owner first), or None when the owner declined."""
    people = [owner.person_id]
    for att in occ.attendees:
        pid = person_of(att.email)
        if att.email in owner.emails or pid == owner.person_id:
            if att.partstat == "DECLINED":
                return None
            continue
        if att.partstat == "DECLINED" or att.cutype in NOT_PEOPLE or pid is None:
            continue
        if pid not in people:
            people.append(pid)
    if occ.organizer and occ.organizer not in owner.emails:
        pid = person_of(occ.organizer)
        declined = any(a.email == occ.organizer and a.partstat == "DECLINED" for a in occ.attendees)
        if pid is not None and pid not in people and not declined:
            people.append(pid)
    return people


def meeting_for(
    source_id: str,
    occ: Occurrence,
    owner: Owner,
    person_of: Callable[[str], str | None],
    now: datetime,
) -> dict[str, Any] | None:
    """The ``relationship.met`` command of an occurrence, or None when it is not a meeting
    (yet): cancelled, not ended, the owner declined, or no other attendee is a person."""
    if occ.status == "CANCELLED" or occ.end > now:
        return None
    people = participants_of(occ, owner, person_of)
    if people is None or len(people) < 2 or len(people) > MAX_PARTICIPANTS:
        return None
    minutes = min(int((occ.end - occ.start).total_seconds() // 60), MAX_MINUTES)
    obj: dict[str, Any] = {
        "type": "relationship.met",
        "occurred_at": occ.start.isoformat(),
        "participants": people,
        "depth": depth_for(minutes, len(people)),
        "mode": "remote" if occ.video else "in_person",
        "duration_minutes": minutes,
    }
    if occ.organizer:
        initiator = owner.person_id if occ.organizer in owner.emails else person_of(occ.organizer)
        if initiator in people:
            obj["initiated_by"] = initiator
    where = _clip(occ.location, 200)
    if where and "://" not in where:
        obj["where"] = where
    context = _clip(occ.summary, 2000)
    if context:
        obj["context"] = context
    obj["event_id"] = meeting_id(source_id, occ, obj)
    return obj


def meeting_id(source_id: str, occ: Occurrence, obj: dict[str, Any]) -> str:
    """uuid5 of the source, UID, RECURRENCE-ID, SEQUENCE and a digest of what the meeting
    says: an edit that changes the meeting (even one that does not bump SEQUENCE, as many
    clients do not) gives a new id, and the same data always the same one."""
    digest = hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:32]
    key = f"met|{source_id}|{occ.uid}|{occ.recurrence_id}|{occ.sequence}|{digest}"
    return str(uuid.uuid5(SYNC_NAMESPACE, key))


def retraction_for(event_id: str, reason: str) -> dict[str, Any]:
    """The retraction of a meeting the calendar no longer has; its id derives from the
    retracted event's, so sending it twice records it once."""
    return {
        "type": "event.retracted",
        "event_id": str(uuid.uuid5(SYNC_NAMESPACE, f"retract|{event_id}")),
        "retracted_event_id": event_id,
        "reason": reason,
    }


def window(now: datetime, days: int) -> tuple[datetime, datetime]:
    """The range of occurrences a sync looks at: ``days`` back from now, up to now."""
    return now - timedelta(days=days), now + timedelta(seconds=1)
