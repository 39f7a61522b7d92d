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
   everything before it, and everything after it waits for it (adjacent erasures go in one
   request: a survivor and the people merged into it are forgotten together).
3. Idempotent: a record without ``event_id`` gets ``uuid5(workspace, canonical content)``
   (plus a counter for identical records of the same file), so importing the same file again
   publishes nothing new. ``--remap-ids`` (the copy gets ids of its own; an export imports
   into another workspace without it, as ids are unique per workspace) maps every event id
   to ``uuid5(target workspace, old id)``, and ``retracted_event_id``, ``correlation_id``
   and ``causation_id`` the same way.

The summary counts events published new, already present, rejected (with line numbers) and
skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import httpx
from tieline.events_schema.models import ENC_PREFIX
from tieline.events_schema.registry import REGISTRY, EventDecodeError
from tieline.services.tools.import_ics import read_ics
from tieline.services.tools.import_publish import (
    Line,
    Progress,
    Publisher,
    check_access,
    default_progress,
)
from tieline.services.tools.import_records import (
    ImportAborted,
    ImportSummary,
    Record,
    canonical,
    content_id,
    person_id_for,
    read_csv,
    read_jsonl,
    read_vcf,
    remap_id,
)

# Re-exported: the CLI and the tests know them from here.
__all__ = [
    "ImportAborted",
    "ImportSummary",
    "Progress",
    "default_progress",
    "import_file",
    "person_id_for",
    "publish_spool",
    "validate_file",
]

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
WORKSPACE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_FUTURE_SKEW = timedelta(seconds=300)
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
DEPTHS = ("card_exchange", "brief_chat", "conversation", "deep_conversation", "meal_or_activity")


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


# -- the whole import ---------------------------------------------------------------------


def _spool_lines(spool: IO[bytes]) -> Iterator[Line]:
    spool.seek(0)
    for raw in spool:
        line, event_type, body = raw.rstrip(b"\n").split(b"\t", 2)
        yield Line(int(line), event_type.decode(), body)


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
        await check_access(client, summary.workspace)
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
