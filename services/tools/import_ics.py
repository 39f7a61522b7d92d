"""The iCalendar reader of ``tieline import``: people from attendees, one ``relationship.met``
per VEVENT (the rules are in services/tools/importer.py's docstring)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from tieline.services.tools.import_records import (
    Record,
    blocks,
    clip,
    normalize_email,
    person_id_for,
    read_text,
)

VIDEO_HINTS = (
    "zoom.us",
    "meet.google.com",
    "teams.microsoft.com",
    "webex.com",
    "whereby.com",
    "meet.jit.si",
    "jitsi",
    "gotomeeting",
    "bluejeans",
)


def _as_utc(value: Any) -> tuple[datetime, bool]:
    """(UTC datetime, is a whole day) of a DTSTART/DTEND value; floating times are UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC), False
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC), True
    raise ValueError(f"not a date or time: {value!r}")


def _parse_event(zones: str, block: str) -> tuple[Any, datetime, datetime, bool]:
    """(event, start, end, whole day) of one VEVENT block with the file's time zones."""
    import icalendar

    cal = icalendar.Calendar.from_ical(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//tieline//import//EN\r\n"
        + zones
        + block
        + "END:VCALENDAR\r\n"
    )
    [ev] = cal.walk("VEVENT")
    start, whole_day = _as_utc(ev.decoded("DTSTART"))
    if ev.get("DTEND") is not None:
        end, _ = _as_utc(ev.decoded("DTEND"))
    elif ev.get("DURATION") is not None:
        end = start + ev.decoded("DURATION")
    else:
        end = start
    return ev, start, end, whole_day


def _attendees(ev: Any) -> tuple[list[tuple[str, str | None]], str | None]:
    """(e-mail, common name) of the organizer and of every attendee who takes part (not
    declined, not a room or resource, not a non-participant); and the organizer's e-mail."""
    attendees: list[tuple[str, str | None]] = []
    organizer_email: str | None = None
    org = ev.get("ORGANIZER")
    if org is not None:
        organizer_email = normalize_email(str(org))
        attendees.append((organizer_email, org.params.get("CN")))
    raw = ev.get("ATTENDEE")
    for att in raw if isinstance(raw, list) else [raw] if raw is not None else []:
        params = att.params
        if str(params.get("PARTSTAT", "")).upper() == "DECLINED":
            continue
        if str(params.get("CUTYPE", "")).upper() in ("ROOM", "RESOURCE"):
            continue
        if str(params.get("ROLE", "")).upper() == "NON-PARTICIPANT":
            continue
        attendees.append((normalize_email(str(att)), params.get("CN")))
    return attendees, organizer_email


class _People:
    """Everyone the calendar names, once each, with the line that first named them."""

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace
        self.added: dict[str, dict[str, Any]] = {}
        self.first_line: dict[str, int] = {}

    def participants(self, line: int, attendees: list[tuple[str, str | None]]) -> list[str]:
        """The person ids of ``attendees`` with an e-mail address, in order, without repeats;
        each new one becomes a ``person.added``."""
        participants: list[str] = []
        for email, cn in attendees:
            if not email or "@" not in email:
                continue
            pid = person_id_for(self.workspace, email=email)
            assert pid is not None
            if pid in participants:
                continue
            participants.append(pid)
            if pid not in self.added:
                name = clip(str(cn), 200) if cn else email.split("@")[0]
                self.added[pid] = {
                    "type": "person.added",
                    "person_id": pid,
                    "display_name": name,
                    "email": email,
                }
                self.first_line[pid] = line
        return participants

    def records(self) -> Iterator[Record]:
        for pid, person in self.added.items():
            yield Record(self.first_line[pid], person)


def _met(
    ev: Any, participants: list[str], minutes: int, start: datetime, depth: str
) -> dict[str, Any]:
    """The ``relationship.met`` object of one event (``initiated_by`` is set by the caller)."""
    obj: dict[str, Any] = {
        "type": "relationship.met",
        "occurred_at": start.isoformat().replace("+00:00", "Z"),
        "participants": participants,
        "depth": depth,
        "duration_minutes": max(0, min(minutes, 24 * 60)),
    }
    location = str(ev.get("LOCATION", "") or "")
    hay = " ".join(str(ev.get(k, "") or "") for k in ("LOCATION", "DESCRIPTION", "URL"))
    remote = any(h in hay.lower() for h in VIDEO_HINTS) or any(
        k in ev for k in ("X-GOOGLE-CONFERENCE", "X-MICROSOFT-SKYPETEAMSMEETINGURL")
    )
    if remote:
        obj["mode"] = "remote"
    if location and "://" not in location and clip(location, 200):
        obj["where"] = clip(location, 200)
    summary = clip(str(ev.get("SUMMARY", "") or ""), 2000)
    if summary:
        obj["context"] = summary
    return obj


def _id_key(ev: Any) -> str | None:
    """A stable key for the event id: the UID and, for one instance of a series, its
    RECURRENCE-ID; None without a UID (the content then names the event)."""
    uid = str(ev.get("UID", "") or "")
    rid = ev.get("RECURRENCE-ID")
    return f"ics:{uid}|{rid.to_ical().decode() if rid is not None else ''}" if uid else None


def _meeting(
    line: int, block: str, zones: str, people: _People, depth: str, now: datetime
) -> Record:
    """The record of one VEVENT block: a ``relationship.met``, or why it is bad or skipped."""
    if not block:
        return Record(line, error="iCalendar: BEGIN:VEVENT without END:VEVENT")
    try:
        ev, start, end, whole_day = _parse_event(zones, block)
    except Exception as exc:  # icalendar raises many kinds
        return Record(line, error=f"iCalendar: cannot parse the event ({exc})")
    if str(ev.get("STATUS", "")).upper() == "CANCELLED":
        return Record(line, skipped="cancelled")
    if start > now:
        return Record(line, skipped="in the future (has not happened yet)")
    attendees, organizer_email = _attendees(ev)
    participants = people.participants(line, attendees)
    if len(participants) < 2:
        return Record(line, skipped="fewer than two people")
    if len(participants) > 50:
        return Record(line, skipped=f"{len(participants)} people (at most 50)")
    minutes = 0 if whole_day else round((end - start).total_seconds() / 60)
    obj = _met(ev, participants, minutes, start, depth)
    if organizer_email:
        organizer = person_id_for(people.workspace, email=organizer_email)
        if organizer in participants:
            obj["initiated_by"] = organizer
    return Record(line, obj, id_key=_id_key(ev))


def read_ics(
    path: Path, workspace: str, depth: str = "conversation", now: datetime | None = None
) -> Iterator[Record]:
    """People first (every attendee, once), then one relationship.met per VEVENT."""
    now = now or datetime.now(UTC)
    text = read_text(path)
    zones = "".join(block for _, block in blocks(text, "VTIMEZONE") if block)
    people = _People(workspace)
    meetings = [
        _meeting(line, block, zones, people, depth, now) for line, block in blocks(text, "VEVENT")
    ]
    yield from people.records()
    yield from meetings
