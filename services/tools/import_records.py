"""What an import reads: one record per source line or block, the ids it gives events and
people, and the readers of JSON Lines, CSV and vCard files (iCalendar: import_ics.py).

The formats are described in services/tools/importer.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tieline.events_schema.models import EVENT_CLASSES, event_type_of

#: Namespace of import ids: a workspace's namespace is uuid5(IMPORT_NAMESPACE, workspace).
IMPORT_NAMESPACE = uuid.UUID("0b8f6d5e-3c2a-5e71-a4d9-7c1e2f3a4b5c")


class ImportAborted(Exception):
    """The import cannot go on (authentication refused, API unreachable)."""


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


def blocks(text: str, name: str) -> Iterator[tuple[int, str]]:
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


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    for enc in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="replace")


def clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = " ".join(str(value).split()) if limit <= 200 else str(value).strip()
    if not value:
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def read_vcf(path: Path, workspace: str) -> Iterator[Record]:
    import vobject  # type: ignore[import-untyped]

    for line, block in blocks(read_text(path), "VCARD"):
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
            "display_name": clip(name, 200),
        }
        for key, value, limit in (
            ("email", email, 254),
            ("phone", first("tel"), 64),
            ("organization", org, 200),
            ("title", first("title"), 200),
            ("notes", first("note"), 2000),
        ):
            clipped = clip(value, limit) if isinstance(value, str) else None
            if clipped:
                obj[key] = clipped
        yield Record(line, obj)
