"""Import events into a workspace from a file, through the HTTP batch endpoint.

Formats (by extension, or ``--format``):

- **JSON Lines** (``.jsonl``, ``.ndjson``): one event object per line, exactly what
  ``POST /v1/workspaces/{ws}/events/batch`` takes (``type`` plus the event's fields;
  ``event_id`` and ``occurred_at`` optional). Lines of an export (``tieline export events``)
  import as they are: the server-set fields ``recorded_at``, ``recorded_by``, ``workspace_id``
  and ``schema_version`` (after upcasting an older version) and the export's own ``seq``,
  ``retracted`` and ``retracted_by`` are dropped before sending.
- **CSV** (``.csv``): one event per row under a header row. Every column is an event field
  name (``type`` is required; the others as in ``events_schema/jsonschema/commands``), e.g.::

      type,occurred_at,person_id,display_name,email,participants,depth,duration_minutes,context
      person.added,2024-05-01,ada,Ada Lovelace,ada@example.com,,,,
      person.added,2024-05-01,grace,Grace Hopper,,,,,
      relationship.met,2024-05-02T18:30:00Z,,,,ada;grace,conversation,45,PyCon hallway

  An empty cell means "not set", so one file can mix event types: a row uses only the
  columns its type has (a value in a column its type lacks is an error). Lists
  (``participants``) are separated by ``;``. Booleans (``replied``): ``true/false``,
  ``yes/no``, ``1/0``. Integers as digits. ``occurred_at`` is ISO 8601 with a timezone; a bare
  date (``2024-05-02``) means midnight UTC. The export's CSV (``tieline export events
  --format csv``) uses the same layout and imports back.
- **vCard** (``.vcf``): each card becomes one ``person.added`` (FN, or N, as the name; the
  preferred EMAIL, TEL, ORG, TITLE and NOTE).
- **iCalendar** (``.ics``): every attendee and organizer becomes a person (``person.added``,
  once; a person who already exists in the workspace counts as already there), and every
  VEVENT becomes one ``relationship.met`` among its attendees: ``occurred_at`` from DTSTART,
  ``duration_minutes`` from DTEND or DURATION, ``context`` from SUMMARY, ``where`` from
  LOCATION, ``initiated_by`` the organizer, ``mode`` remote when the event carries a video
  call link, ``depth`` from ``--depth`` (default ``conversation``). Declined attendees, rooms
  and resources are left out. Cancelled events, events in the future, events with fewer than
  two people or more than 50 are skipped (and listed). Times without a timezone are taken as
  UTC; a recurring event counts once, at its DTSTART.

People from vCard and iCalendar get a deterministic ``person_id``: ``p-`` and 16 hex digits
of a hash of the workspace and the e-mail address (else the vCard UID, else the name), so the
same person in a vCard and in a calendar is the same person, and the id itself (which, unlike
names and addresses, is not encrypted on the log) shows nothing of the address.

How it runs:

1. Every record is parsed and turned into an event object, which is validated locally with the
   event models (envelope fields filled with placeholders). Bad records are reported with their
   line number; nothing from them is published.
2. The good ones are sent in chunks (``--chunk`` lines, default 500) with a bounded number of
   requests in flight (``--concurrency``, default 4), keeping the file's causal order: a line
   that names a person added by a chunk still in flight waits for it; retractions and the
   steps of a double opt-in introduction (checked against the read models) wait until the
   projection has applied everything before them; a ``person.forgotten`` waits for
   everything before it, and everything after it waits for it.
3. Idempotent: a record without ``event_id`` gets ``uuid5(workspace, canonical content)``
   (plus a counter for identical records of the same file), so importing the same file again
   publishes nothing new. ``--remap-ids`` (to import an export into another workspace) maps
   every event id to ``uuid5(target workspace, old id)``, and ``retracted_event_id``,
   ``correlation_id`` and ``causation_id`` the same way.

The summary counts events published new, already present, rejected (with line numbers) and
skipped.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
from tieline.events_schema.models import ENC_PREFIX, EVENT_CLASSES, event_type_of
from tieline.events_schema.registry import REGISTRY, EventDecodeError
from tieline.services.writeside import PERSON_REF_FIELDS

FORMATS = ("jsonl", "csv", "vcf", "ics")
EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".vcf": "vcf",
    ".vcard": "vcf",
    ".ics": "ics",
    ".ical": "ics",
    ".ifb": "ics",
}
#: Set by tieline, refused from clients: dropped from imported records.
SERVER_SET = ("recorded_at", "recorded_by", "workspace_id")
#: Added by ``tieline export events``: dropped from imported records.
EXPORT_ONLY = ("seq", "retracted", "retracted_by")
#: Namespace of import ids: a workspace's namespace is uuid5(IMPORT_NAMESPACE, workspace).
IMPORT_NAMESPACE = uuid.UUID("0b8f6d5e-3c2a-5e71-a4d9-7c1e2f3a4b5c")
WORKSPACE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_FUTURE_SKEW = timedelta(seconds=300)
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
MAX_CHUNK_BYTES = 4 * 1024 * 1024
DEPTHS = ("card_exchange", "brief_chat", "conversation", "deep_conversation", "meal_or_activity")
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


class ImportAborted(Exception):
    """The import cannot go on (authentication refused, API unreachable)."""


# -- records ------------------------------------------------------------------------------


@dataclass
class Record:
    """One source record: an event object, or why it is bad, or why it is skipped."""

    line: int
    obj: dict[str, Any] | None = None
    error: str | None = None
    skipped: str | None = None
    #: A stable key for the event id when the record has none (e.g. an iCalendar UID).
    id_key: str | None = None


@dataclass
class ImportSummary:
    """What an import did."""

    file: str
    format: str
    workspace: str
    records: int = 0
    valid: int = 0
    published: int = 0
    already_present: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    last_seq: int | None = None
    elapsed_s: float = 0.0
    publish_s: float = 0.0
    dry_run: bool = False

    @property
    def events_per_s(self) -> float:
        sent = self.published + self.already_present
        return sent / self.publish_s if self.publish_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "workspace": self.workspace,
            "records": self.records,
            "valid": self.valid,
            "published": self.published,
            "already_present": self.already_present,
            "rejected": [{"line": ln, "error": e} for ln, e in sorted(self.rejected)],
            "skipped": [{"line": ln, "reason": r} for ln, r in sorted(self.skipped)],
            "last_seq": self.last_seq,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1),
            "dry_run": self.dry_run,
        }


def detect_format(path: Path, given: str | None = None) -> str:
    if given:
        fmt = given.lower().lstrip(".")
        fmt = {"ndjson": "jsonl", "json": "jsonl", "vcard": "vcf", "ical": "ics"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise ValueError(f"format: {given!r} is not one of {', '.join(FORMATS)}")
        return fmt
    fmt_of = EXTENSIONS.get(path.suffix.lower())
    if fmt_of is None:
        raise ValueError(
            f"format: cannot tell the format of {path.name!r} from its extension; "
            f"pass --format ({', '.join(FORMATS)})"
        )
    return fmt_of


# -- ids ----------------------------------------------------------------------------------


def workspace_namespace(workspace: str) -> uuid.UUID:
    return uuid.uuid5(IMPORT_NAMESPACE, workspace)


def remap_id(workspace: str, old: str) -> str:
    """The id of an event copied into ``workspace`` from one whose id was ``old``."""
    return str(uuid.uuid5(workspace_namespace(workspace), f"remap:{str(old).lower()}"))


def canonical(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_id(workspace: str, key: str) -> str:
    return str(uuid.uuid5(workspace_namespace(workspace), f"content:{key}"))


def person_id_for(
    workspace: str, *, email: str | None = None, uid: str | None = None, name: str | None = None
) -> str | None:
    """A person's deterministic id from their e-mail (else vCard UID, else name)."""
    if email:
        basis = "email:" + normalize_email(email)
    elif uid:
        basis = "uid:" + uid.strip()
    elif name:
        basis = "name:" + " ".join(name.split()).casefold()
    else:
        return None
    digest = hashlib.sha256(f"tieline-person|{workspace}|{basis}".encode()).hexdigest()
    return f"p-{digest[:16]}"


def normalize_email(value: str) -> str:
    v = value.strip()
    if v.lower().startswith("mailto:"):
        v = v[7:]
    return v.strip().lower()


# -- sources ------------------------------------------------------------------------------


def read_jsonl(path: Path) -> Iterator[Record]:
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            text = raw.strip()
            if n == 1 and text.startswith(b"\xef\xbb\xbf"):
                text = text[3:]
            if not text:
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                yield Record(n, error=f"not valid JSON ({exc})")
                continue
            if not isinstance(obj, dict):
                yield Record(n, error="an event must be a JSON object")
                continue
            yield Record(n, obj)


def _field_kinds() -> dict[str, dict[str, str]]:
    """type -> field -> one of array, integer, boolean, string (from the JSON Schema)."""
    out: dict[str, dict[str, str]] = {}
    for cls in EVENT_CLASSES:
        props = cls.model_json_schema()["properties"]
        kinds: dict[str, str] = {}
        for name, schema in props.items():
            options = schema.get("anyOf", [schema])
            types = {o.get("type") for o in options} - {"null", None}
            kinds[name] = next(iter(types)) if len(types) == 1 else "string"
        out[event_type_of(cls)] = kinds
    return out


_KINDS: dict[str, dict[str, str]] | None = None
_TRUE = {"true", "yes", "y", "1", "t"}
_FALSE = {"false", "no", "n", "0", "f"}
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _csv_value(kind: str, column: str, cell: str) -> Any:
    if kind == "array":
        return [p.strip() for p in cell.split(";") if p.strip()]
    if kind == "integer":
        try:
            return int(cell)
        except ValueError:
            raise ValueError(f"{column}: {cell!r} is not an integer") from None
    if kind == "boolean":
        low = cell.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{column}: {cell!r} is not a boolean (true/false)")
    if column == "occurred_at" and _DATE_RE.match(cell):
        return f"{cell}T00:00:00Z"
    return cell


def read_csv(path: Path) -> Iterator[Record]:
    global _KINDS
    if _KINDS is None:
        _KINDS = _field_kinds()
    kinds = _KINDS
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            return
        if "type" not in header:
            yield Record(1, error="CSV header: a 'type' column is required")
            return
        dupes = {h for h in header if header.count(h) > 1 and h}
        if dupes:
            yield Record(1, error=f"CSV header: duplicate columns {sorted(dupes)}")
            return
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                yield Record(line, error=f"{len(row)} cells but {len(header)} columns")
                continue
            cells = {h: c.strip() for h, c in zip(header, row, strict=False) if h and c.strip()}
            event_type = cells.get("type", "")
            type_kinds = kinds.get(event_type, {})
            obj: dict[str, Any] = {}
            try:
                for column, cell in cells.items():
                    obj[column] = _csv_value(type_kinds.get(column, "string"), column, cell)
            except ValueError as exc:
                yield Record(line, error=str(exc))
                continue
            yield Record(line, obj)


def _blocks(text: str, name: str) -> Iterator[tuple[int, str]]:
    """(first line, text) of each ``BEGIN:name`` .. ``END:name`` block, at any depth."""
    begin, end = f"BEGIN:{name}", f"END:{name}"
    start: int | None = None
    buf: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        upper = line.strip().upper()
        if upper == begin:
            start, buf = n, [line]
            continue
        if start is not None:
            buf.append(line)
            if upper == end:
                yield start, "\r\n".join(buf) + "\r\n"
                start, buf = None, []
    if start is not None:
        yield start, ""  # unterminated


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    for enc in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="replace")


def _clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = " ".join(str(value).split()) if limit <= 200 else str(value).strip()
    if not value:
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def read_vcf(path: Path, workspace: str) -> Iterator[Record]:
    import vobject  # type: ignore[import-untyped]

    for line, block in _blocks(_read_text(path), "VCARD"):
        if not block:
            yield Record(line, error="vCard: BEGIN:VCARD without END:VCARD")
            continue
        try:
            card = vobject.readOne(block)
        except Exception as exc:  # vobject raises many kinds
            yield Record(line, error=f"vCard: cannot parse ({type(exc).__name__}: {exc})")
            continue
        contents: dict[str, list[Any]] = card.contents

        def first(key: str, contents: dict[str, list[Any]] = contents) -> Any:
            items = contents.get(key) or []
            for it in items:  # the preferred one first
                types = {str(t).lower() for t in it.params.get("TYPE", [])}
                if "pref" in types or it.params.get("PREF"):
                    return it.value
            return items[0].value if items else None

        name = first("fn")
        if not (isinstance(name, str) and name.strip()):
            n = first("n")
            parts = [getattr(n, a, "") for a in ("prefix", "given", "additional", "family")]
            name = " ".join(" ".join(p) if isinstance(p, list) else str(p or "") for p in parts)
        email = first("email")
        email = normalize_email(email) if isinstance(email, str) and email.strip() else None
        uid = first("uid")
        if not (isinstance(name, str) and name.strip()):
            name = email
        pid = person_id_for(
            workspace,
            email=email,
            uid=uid if isinstance(uid, str) else None,
            name=name if isinstance(name, str) else None,
        )
        if pid is None or not name:
            yield Record(line, error="vCard: no FN, N, EMAIL or UID to name the person by")
            continue
        org = first("org")
        if isinstance(org, list):
            org = " / ".join(str(o) for o in org if str(o).strip())
        obj: dict[str, Any] = {
            "type": "person.added",
            "person_id": pid,
            "display_name": _clip(name, 200),
        }
        for key, value, limit in (
            ("email", email, 254),
            ("phone", first("tel"), 64),
            ("organization", org, 200),
            ("title", first("title"), 200),
            ("notes", first("note"), 2000),
        ):
            clipped = _clip(value, limit) if isinstance(value, str) else None
            if clipped:
                obj[key] = clipped
        yield Record(line, obj)


def _as_utc(value: Any) -> tuple[datetime, bool]:
    """(UTC datetime, is a whole day) of a DTSTART/DTEND value; floating times are UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC), False
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC), True
    raise ValueError(f"not a date or time: {value!r}")


def read_ics(
    path: Path, workspace: str, depth: str = "conversation", now: datetime | None = None
) -> Iterator[Record]:
    """People first (every attendee, once), then one relationship.met per VEVENT."""
    import icalendar

    now = now or datetime.now(UTC)
    text = _read_text(path)
    zones = "".join(block for _, block in _blocks(text, "VTIMEZONE") if block)
    people: dict[str, dict[str, Any]] = {}
    people_line: dict[str, int] = {}
    meetings: list[Record] = []
    for line, block in _blocks(text, "VEVENT"):
        if not block:
            meetings.append(Record(line, error="iCalendar: BEGIN:VEVENT without END:VEVENT"))
            continue
        try:
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
        except Exception as exc:  # icalendar raises many kinds
            meetings.append(Record(line, error=f"iCalendar: cannot parse the event ({exc})"))
            continue
        status = str(ev.get("STATUS", "")).upper()
        if status == "CANCELLED":
            meetings.append(Record(line, skipped="cancelled"))
            continue
        if start > now:
            meetings.append(Record(line, skipped="in the future (has not happened yet)"))
            continue
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
        participants: list[str] = []
        for email, cn in attendees:
            if not email or "@" not in email:
                continue
            pid = person_id_for(workspace, email=email)
            assert pid is not None
            if pid in participants:
                continue
            participants.append(pid)
            if pid not in people:
                name = _clip(str(cn), 200) if cn else email.split("@")[0]
                people[pid] = {
                    "type": "person.added",
                    "person_id": pid,
                    "display_name": name,
                    "email": email,
                }
                people_line[pid] = line
        if len(participants) < 2:
            meetings.append(Record(line, skipped="fewer than two people"))
            continue
        if len(participants) > 50:
            meetings.append(Record(line, skipped=f"{len(participants)} people (at most 50)"))
            continue
        minutes = 0 if whole_day else round((end - start).total_seconds() / 60)
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
        if organizer_email:
            organizer = person_id_for(workspace, email=organizer_email)
            if organizer in participants:
                obj["initiated_by"] = organizer
        if location and "://" not in location and _clip(location, 200):
            obj["where"] = _clip(location, 200)
        summary = _clip(str(ev.get("SUMMARY", "") or ""), 2000)
        if summary:
            obj["context"] = summary
        uid = str(ev.get("UID", "") or "")
        rid = ev.get("RECURRENCE-ID")
        key = f"ics:{uid}|{rid.to_ical().decode() if rid is not None else ''}" if uid else None
        meetings.append(Record(line, obj, id_key=key))
    for pid, person in people.items():
        yield Record(people_line[pid], person)
    yield from meetings


def read_records(
    path: Path, fmt: str, workspace: str, depth: str = "conversation"
) -> Iterator[Record]:
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "csv":
        return read_csv(path)
    if fmt == "vcf":
        return read_vcf(path, workspace)
    if fmt == "ics":
        return read_ics(path, workspace, depth)
    raise ValueError(f"format: unknown {fmt!r}")


# -- preparing and validating -------------------------------------------------------------


class Preparer:
    """Turns records into the exact lines to send, validating each locally."""

    def __init__(self, workspace: str, remap_ids: bool, now: datetime | None = None) -> None:
        self.workspace = workspace
        self.remap = remap_ids
        self.now = now or datetime.now(UTC)
        self.now_iso = self.now.isoformat()
        self.placeholder = str(uuid.uuid4())
        self._seen: dict[bytes, int] = {}

    def _id(self, key: str, old: Any) -> Any:
        if old is None:
            return None
        try:
            parsed = uuid.UUID(str(old))
        except ValueError:
            raise ValueError(f"{key}: {old!r} is not a UUID") from None
        return remap_id(self.workspace, str(parsed))

    def prepare(self, rec: Record) -> dict[str, Any]:
        """The event object to send; raises ValueError naming the problem."""
        assert rec.obj is not None
        obj = {k: v for k, v in rec.obj.items() if k not in SERVER_SET and k not in EXPORT_ONLY}
        event_type = obj.get("type")
        if not isinstance(event_type, str) or event_type not in REGISTRY.classes:
            known = ", ".join(sorted(REGISTRY.classes))
            raise ValueError(f"type: unknown event type {event_type!r} (known: {known})")
        if "schema_version" in obj:
            version = obj.pop("schema_version")
            current = REGISTRY.current_version(event_type)
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise ValueError("schema_version: must be a positive integer")
            if version > current:
                raise ValueError(
                    f"schema_version: {event_type} v{version} is newer than "
                    f"this tieline knows (v{current})"
                )
            if version < current:
                try:
                    obj = REGISTRY.upcast(event_type, version, {**obj, "type": event_type})
                except EventDecodeError as exc:
                    raise ValueError(str(exc)) from exc
                obj.pop("schema_version", None)
        for key, value in obj.items():
            if isinstance(value, str) and value.startswith(ENC_PREFIX):
                raise ValueError(f"{key}: must be plaintext; tieline encrypts personal data")
        if self.remap:
            for key in ("event_id", "retracted_event_id", "correlation_id", "causation_id"):
                if key in obj:
                    obj[key] = self._id(key, obj[key])
        if "event_id" not in obj:
            id_key = rec.id_key
            if id_key is None:
                id_key = canonical(obj)
                digest = hashlib.sha1(id_key.encode()).digest()
                seen = self._seen.get(digest, 0)
                self._seen[digest] = seen + 1
                if seen:
                    id_key = f"{id_key}#{seen}"
            obj = {"event_id": content_id(self.workspace, id_key), **obj}
        self.validate(obj)
        return obj

    def validate(self, obj: dict[str, Any]) -> None:
        """Validate with the event models, as the write side will (but for references)."""
        data = dict(obj)
        data.setdefault("occurred_at", self.now_iso)
        data.setdefault("event_id", self.placeholder)
        data.setdefault("schema_version", REGISTRY.current_version(str(obj.get("type"))))
        data.update(
            workspace_id=self.workspace, recorded_at=self.now_iso, recorded_by="tieline-import"
        )
        try:
            event = REGISTRY.decode_obj(data)
        except EventDecodeError as exc:
            raise ValueError(str(exc)) from exc
        if event.occurred_at > self.now + MAX_FUTURE_SKEW:
            raise ValueError("occurred_at: lies in the future")
        if event.occurred_at < EARLIEST:
            raise ValueError("occurred_at: lies before 1900")


# -- publishing ---------------------------------------------------------------------------


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def stop(self) -> None: ...


class LogProgress:
    """Plain log lines (for a log file or CI): at most one every ``every_s`` seconds."""

    def __init__(self, out: IO[str] | None = None, every_s: float = 2.0) -> None:
        self.out = out or sys.stderr
        self.every_s = every_s
        self.total = self.done = 0
        self.t0 = self.last = 0.0

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self.t0 = self.last = time.monotonic()
        print(f"import: publishing {total} events", file=self.out, flush=True)

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            print(
                f"import: {self.done}/{self.total} events, {rate:,.0f} events/s, ETA {eta:,.0f}s",
                file=self.out,
                flush=True,
            )

    def stop(self) -> None:
        pass


class RichProgress:
    """A rich progress bar: events done/total, events/s, ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]import"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events"),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task: Any = None
        self._t0 = 0.0
        self._done = 0

    def start(self, total: int) -> None:
        self._t0 = time.monotonic()
        self._progress.start()
        self._task = self._progress.add_task("import", total=total, rate="")

    def advance(self, n: int) -> None:
        self._done += n
        rate = self._done / max(time.monotonic() - self._t0, 1e-9)
        self._progress.update(self._task, advance=n, rate=f"{rate:,.0f} events/s")

    def stop(self) -> None:
        self._progress.stop()


def default_progress() -> Progress:
    return RichProgress() if sys.stderr.isatty() else LogProgress()


@dataclass
class _Line:
    line: int
    type: str
    raw: bytes


class Publisher:
    """Sends prepared lines in chunks, concurrently, keeping causal order (see the module
    docstring), and tallies the per-line answers."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        workspace: str,
        summary: ImportSummary,
        progress: Progress | None,
        chunk_lines: int,
        concurrency: int,
        retries: int = 5,
        projection_timeout_s: float = 120.0,
    ) -> None:
        self.client = client
        self.ws = workspace
        self.summary = summary
        self.progress = progress
        self.chunk_lines = max(1, min(chunk_lines, 10_000))
        self.slots = asyncio.Semaphore(max(1, concurrency))
        self.retries = retries
        self.projection_timeout_s = projection_timeout_s
        self.tasks: set[asyncio.Task[None]] = set()
        self.max_seq = 0
        self.failure: BaseException | None = None

    async def run(self, lines: Iterator[_Line]) -> None:
        chunk: list[_Line] = []
        size = 0
        in_flight_people: set[str] = set()  # added by chunks that may still be in flight
        chunk_people: set[str] = set()  # added in the chunk being built
        synced = False  # the projection has caught up since the last independent line

        async def flush() -> None:
            nonlocal chunk, size, chunk_people
            if chunk:
                await self._launch(chunk)
                in_flight_people.update(chunk_people)
            chunk, size, chunk_people = [], 0, set()

        async def barrier(sync: bool = False) -> None:
            nonlocal synced
            await flush()
            await self.drain()
            in_flight_people.clear()
            if sync:
                await self.wait_projection()
                synced = True

        for ln in lines:
            if self.failure is not None:
                break
            obj = json.loads(ln.raw)
            t = ln.type
            dependent = needs_projection(obj)
            if dependent:
                if not synced:
                    await barrier(sync=True)
            elif t == "person.forgotten":
                await barrier()
            elif t.startswith("person."):
                if t != "person.added" and obj.get("person_id") in (
                    in_flight_people | chunk_people
                ):
                    await barrier()
            elif in_flight_people and any(p in in_flight_people for p in _named(obj)):
                await barrier()
            if not dependent:
                synced = False
            chunk.append(ln)
            size += len(ln.raw) + 1
            if t == "person.added":
                chunk_people.add(str(obj.get("person_id")))
            if t == "person.forgotten":
                await barrier()
            elif len(chunk) >= self.chunk_lines or size >= MAX_CHUNK_BYTES:
                await flush()
        await flush()
        await self.drain()
        if self.failure is not None:
            raise self.failure

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def _launch(self, chunk: list[_Line]) -> None:
        await self.slots.acquire()
        task = asyncio.create_task(self._send(chunk))
        self.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            self.slots.release()
            if not t.cancelled() and t.exception() is not None and self.failure is None:
                self.failure = t.exception()

        task.add_done_callback(done)

    async def _send(self, chunk: list[_Line]) -> None:
        body = b"\n".join(ln.raw for ln in chunk)
        url = f"/v1/workspaces/{self.ws}/events/batch"
        error = "no answer"
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
            try:
                resp = await self.client.post(
                    url, content=body, headers={"content-type": "application/x-ndjson"}
                )
            except httpx.TransportError as exc:
                error = f"cannot reach the API: {exc!r}"
                continue
            if resp.status_code in (401, 403):
                raise ImportAborted(
                    f"the API answered {resp.status_code} "
                    f"({_error_text(resp)}): check the token and its role "
                    f"(write) for workspace {self.ws!r}"
                )
            if resp.status_code in (429, 502, 503, 504):
                error = f"HTTP {resp.status_code}: {_error_text(resp)}"
                continue
            if resp.status_code != 200:
                error = f"HTTP {resp.status_code}: {_error_text(resp)}"
                break
            results = resp.json().get("results", [])
            if len(results) != len(chunk):
                error = f"the API answered {len(results)} results for {len(chunk)} lines"
                break
            self._tally(chunk, results)
            return
        for ln in chunk:
            self.summary.rejected.append((ln.line, error))
        if self.progress is not None:
            self.progress.advance(len(chunk))

    def _tally(self, chunk: list[_Line], results: list[dict[str, Any]]) -> None:
        s = self.summary
        for ln, r in zip(chunk, results, strict=True):
            status = int(r.get("status", 500))
            seq = r.get("seq")
            if isinstance(seq, int):
                self.max_seq = max(self.max_seq, seq)
                s.last_seq = max(s.last_seq or 0, seq)
            error = str(r.get("error") or f"status {status}")
            exists = status == 409 and ln.type == "person.added" and "already exists" in error
            if status == 201:
                s.published += 1
            elif status == 200 or exists:
                s.already_present += 1
            else:
                if status == 409 and "event_id" in error:
                    error += " (used in another workspace: import with --remap-ids)"
                s.rejected.append((ln.line, f"{status} {error}"))
        if self.progress is not None:
            self.progress.advance(len(chunk))

    async def wait_projection(self) -> None:
        """Wait until the projection has applied everything published so far (retractions
        are checked against the archive it writes)."""
        if not self.max_seq:
            return
        deadline = time.monotonic() + self.projection_timeout_s
        while time.monotonic() < deadline:
            try:
                resp = await self.client.get("/readyz")
                checkpoint = int(resp.json()["checks"]["projection"]["checkpoint"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                await asyncio.sleep(1.0)
                continue
            if checkpoint >= self.max_seq:
                return
            await asyncio.sleep(0.05)


def needs_projection(obj: dict[str, Any]) -> bool:
    """Whether the write side checks this event against the read models (a retraction's
    target in the archive, an introduction's state), so what precedes it must be projected."""
    if obj.get("type") == "event.retracted":
        return True
    return "introduction_id" in obj and obj.get("type") != "introduction.requested"


def _named(obj: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for f in PERSON_REF_FIELDS:
        v = obj.get(f)
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            out.extend(p for p in v if isinstance(p, str))
    return out


def _error_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(data, dict):
        return str(data.get("detail") or data.get("error") or data)[:500]
    return str(data)[:500]


# -- the whole import ---------------------------------------------------------------------


def _spool_lines(spool: IO[bytes]) -> Iterator[_Line]:
    spool.seek(0)
    for raw in spool:
        line, event_type, body = raw.rstrip(b"\n").split(b"\t", 2)
        yield _Line(int(line), event_type.decode(), body)


def validate_file(
    path: Path,
    spool: IO[bytes],
    *,
    workspace: str,
    fmt: str | None = None,
    remap_ids: bool = False,
    depth: str = "conversation",
    dry_run: bool = False,
    on_bad: Callable[[int, str], None] | None = None,
) -> ImportSummary:
    """Step 1: read, prepare and validate every record of ``path`` locally; write the good
    ones to ``spool`` (``line<TAB>type<TAB>json``). Raises ValueError for a bad argument."""
    if not WORKSPACE_RE.match(workspace):
        raise ValueError(f"workspace: {workspace!r} is not a workspace id")
    if depth not in DEPTHS:
        raise ValueError(f"depth: {depth!r} is not one of {', '.join(DEPTHS)}")
    fmt = detect_format(path, fmt)
    if not path.is_file():
        raise ValueError(f"file: {path} does not exist")
    t0 = time.monotonic()
    summary = ImportSummary(file=str(path), format=fmt, workspace=workspace, dry_run=dry_run)
    preparer = Preparer(workspace, remap_ids)
    for rec in read_records(path, fmt, workspace, depth):
        summary.records += 1
        if rec.skipped is not None:
            summary.skipped.append((rec.line, rec.skipped))
            continue
        error = rec.error
        obj: dict[str, Any] | None = None
        if error is None:
            try:
                obj = preparer.prepare(rec)
            except ValueError as exc:
                error = str(exc)
        if error is not None or obj is None:
            summary.rejected.append((rec.line, error or "invalid"))
            if on_bad is not None:
                on_bad(rec.line, error or "invalid")
            continue
        summary.valid += 1
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        spool.write(f"{rec.line}\t{obj['type']}\t{body}\n".encode())
    spool.flush()
    summary.elapsed_s = time.monotonic() - t0
    return summary


async def publish_spool(
    spool: IO[bytes],
    summary: ImportSummary,
    *,
    api_url: str,
    token: str | None,
    chunk_lines: int = 500,
    concurrency: int = 4,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ImportSummary:
    """Step 2: publish the validated lines of ``spool`` through the batch endpoint and tally
    the answers into ``summary``. Raises ImportAborted when the API refuses or is gone."""
    if summary.valid == 0 or summary.dry_run:
        return summary
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    t1 = time.monotonic()
    async with httpx.AsyncClient(
        base_url=api_url.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(120.0, connect=10.0),
        transport=transport,
    ) as client:
        await _check_access(client, summary.workspace)
        publisher = Publisher(
            client, summary.workspace, summary, progress, chunk_lines, concurrency
        )
        if progress is not None:
            progress.start(summary.valid)
        try:
            await publisher.run(_spool_lines(spool))
        finally:
            if progress is not None:
                progress.stop()
    summary.publish_s = time.monotonic() - t1
    summary.elapsed_s += summary.publish_s
    return summary


async def _check_access(client: httpx.AsyncClient, workspace: str) -> None:
    """Fail fast (before sending anything) on a wrong URL or token."""
    try:
        resp = await client.post(
            f"/v1/workspaces/{workspace}/events/batch",
            content=b"",
            headers={"content-type": "application/x-ndjson"},
        )
    except httpx.TransportError as exc:
        raise ImportAborted(f"cannot reach tieline at {client.base_url}: {exc!r}") from exc
    if resp.status_code in (401, 403, 429):
        raise ImportAborted(
            f"the API answered {resp.status_code} ({_error_text(resp)}): "
            f"check the token and its role (write) for workspace {workspace!r}"
        )
    if resp.status_code >= 400:
        raise ImportAborted(f"the API answered {resp.status_code}: {_error_text(resp)}")


def import_file(
    path: Path | str,
    *,
    api_url: str,
    workspace: str,
    token: str | None,
    fmt: str | None = None,
    remap_ids: bool = False,
    depth: str = "conversation",
    chunk_lines: int = 500,
    concurrency: int = 4,
    dry_run: bool = False,
    progress: Progress | None = None,
    on_bad: Callable[[int, str], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ImportSummary:
    """Import ``path`` into ``workspace``: validate every record locally (bad ones are listed
    by line number and nothing from them is published), then publish the good ones. Raises
    ValueError for a bad argument, ImportAborted when the API refuses or cannot be reached."""
    with tempfile.TemporaryFile(prefix="tieline-import-") as spool:
        summary = validate_file(
            Path(path),
            spool,
            workspace=workspace,
            fmt=fmt,
            remap_ids=remap_ids,
            depth=depth,
            dry_run=dry_run,
            on_bad=on_bad,
        )
        return asyncio.run(
            publish_spool(
                spool,
                summary,
                api_url=api_url,
                token=token,
                chunk_lines=chunk_lines,
                concurrency=concurrency,
                progress=progress,
                transport=transport,
            )
        )


def token_from_env() -> str | None:
    return os.environ.get("TIELINE_TOKEN")
