"""Write a workspace's export (``GET /v1/workspaces/{ws}/export/{kind}``, JSON Lines) to a file
as JSON Lines, CSV or Parquet, streaming: memory stays bounded whatever the size.

Columns (CSV and Parquet; JSON Lines has the same keys):

- ``events``: ``seq``, the envelope (``event_id``, ``type``, ``schema_version``,
  ``occurred_at``, ``recorded_at``, ``workspace_id``, ``recorded_by``, ``correlation_id``,
  ``causation_id``), then the union of every event type's fields (empty where a type has none),
  then ``retracted`` and ``retracted_by``. Lists (``participants``) are ``;``-separated in CSV,
  so the CSV imports back with ``tieline import``.
- ``people``: ``person_id``, the directory fields, ``added_at``, ``updated_at``,
  ``added_event_id``, ``retracted``, ``forgotten``.
- ``strength``: every column of the strength read model (its shape belongs to the strength
  model, so the columns and their types are taken from the rows: the first batch).
- ``timeline``: ``person_a``, ``person_b``, ``event_id``, ``seq``, ``type``, ``occurred_at``,
  ``recorded_at``, ``recorded_by``, ``detail`` (JSON), ``retracted`` (contributions and the
  strength after each event: the timeline endpoint, which evaluates the model).

Parquet needs pyarrow (``pip install 'tieline[analytics]'``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx
from tieline.events_schema.models import EVENT_CLASSES

KINDS = ("events", "people", "strength", "timeline")
FORMATS = ("jsonl", "csv", "parquet")
#: Column kinds: str, int, float, bool, time (ISO 8601 with timezone), list (of str), json.
Columns = list[tuple[str, str]]

PEOPLE_COLUMNS: Columns = [
    ("person_id", "str"),
    ("display_name", "str"),
    ("email", "str"),
    ("phone", "str"),
    ("organization", "str"),
    ("title", "str"),
    ("notes", "str"),
    ("added_at", "time"),
    ("updated_at", "time"),
    ("added_event_id", "str"),
    ("retracted", "bool"),
    ("forgotten", "bool"),
]
TIMELINE_COLUMNS: Columns = [
    ("person_a", "str"),
    ("person_b", "str"),
    ("event_id", "str"),
    ("seq", "int"),
    ("type", "str"),
    ("occurred_at", "time"),
    ("recorded_at", "time"),
    ("recorded_by", "str"),
    ("detail", "json"),
    ("retracted", "bool"),
]


def event_columns() -> Columns:
    """``seq``, then every field of every event type (envelope first), then the flags."""
    cols: dict[str, str] = {"seq": "int"}
    for cls in EVENT_CLASSES:
        props = cls.model_json_schema()["properties"]
        for name in cls.model_fields:
            if name in cols:
                continue
            options = props[name].get("anyOf", [props[name]])
            kinds = {(o.get("type"), o.get("format")) for o in options} - {("null", None)}
            kind = "str"
            if len(kinds) == 1:
                t, fmt = next(iter(kinds))
                kind = {
                    "integer": "int",
                    "boolean": "bool",
                    "array": "list",
                    "number": "float",
                }.get(t or "", "time" if fmt == "date-time" else "str")
            cols[name] = kind
    cols["retracted"] = "bool"
    cols["retracted_by"] = "str"
    return list(cols.items())


def columns_for(kind: str) -> Columns | None:
    """The columns of ``kind``; None: inferred from the rows."""
    if kind == "events":
        return event_columns()
    return {"people": PEOPLE_COLUMNS, "timeline": TIMELINE_COLUMNS}.get(kind)


def infer_columns(rows: list[dict[str, Any]]) -> Columns:
    """Columns in order of appearance, each typed by its values (first non-null wins, an
    int column with a float in it is float; unknown: str)."""
    kinds: dict[str, str | None] = {}
    for r in rows:
        for name, value in r.items():
            known = kinds.get(name)
            kind = _kind_of(name, value)
            if known is None or (known == "int" and kind == "float"):
                kinds[name] = kind if kind is not None else known
            elif name not in kinds:
                kinds[name] = None
    return [(name, kind or "str") for name, kind in kinds.items()]


def _kind_of(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "list"
    if isinstance(value, dict | list):
        return "json"
    if name.endswith("_at") and isinstance(value, str):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return "str"
        return "time"
    return "str"


@dataclass
class ExportSummary:
    kind: str
    format: str
    out: str
    rows: int
    bytes: int
    elapsed_s: float
    as_of_note: str | None = None


def format_for(out: Path | None, given: str | None) -> str:
    if given:
        fmt = given.lower().lstrip(".")
        fmt = {"ndjson": "jsonl", "pq": "parquet"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise ValueError(f"format: {given!r} is not one of {', '.join(FORMATS)}")
        return fmt
    if out is not None:
        suffix = out.suffix.lower().lstrip(".")
        fmt = {"ndjson": "jsonl", "pq": "parquet"}.get(suffix, suffix)
        if fmt in FORMATS:
            return fmt
    return "jsonl"


# -- writers ------------------------------------------------------------------------------


def _csv_cell(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind == "list" and isinstance(value, list):
        return ";".join(str(v) for v in value)
    if kind == "json" or isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class CsvWriter:
    def __init__(self, f: IO[str], columns: Columns) -> None:
        self.columns = columns
        self.writer = csv.writer(f, lineterminator="\n")
        self.writer.writerow([c for c, _ in columns])

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.writer.writerows(
            [_csv_cell(kind, r.get(name)) for name, kind in self.columns] for r in rows
        )

    def close(self) -> None:
        pass


def _pyarrow() -> Any:
    try:
        import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]
        import pyarrow.parquet  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ValueError("format parquet needs pyarrow: pip install 'tieline[analytics]'") from exc
    return pa


class ParquetWriter:
    def __init__(self, path: Path, columns: Columns) -> None:
        pa = _pyarrow()
        self.pa = pa
        self.columns = columns
        types = {
            "str": pa.string(),
            "int": pa.int64(),
            "float": pa.float64(),
            "bool": pa.bool_(),
            "time": pa.timestamp("us", tz="UTC"),
            "list": pa.list_(pa.string()),
            "json": pa.string(),
        }
        self.schema = pa.schema([(name, types[kind]) for name, kind in columns])
        self.writer = pa.parquet.ParquetWriter(str(path), self.schema, compression="zstd")

    @staticmethod
    def _value(kind: str, value: Any) -> Any:
        if value is None:
            return None
        if kind == "time":
            return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if kind == "json":
            return json.dumps(value, ensure_ascii=False, sort_keys=True)
        if kind == "str" and not isinstance(value, str):
            return json.dumps(value) if isinstance(value, dict | list) else str(value)
        if kind == "float":
            return float(value)
        return value

    def write(self, rows: list[dict[str, Any]]) -> None:
        data = {name: [self._value(kind, r.get(name)) for r in rows] for name, kind in self.columns}
        self.writer.write_batch(self.pa.record_batch(data, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


# -- the export ---------------------------------------------------------------------------


def _lines(resp: httpx.Response) -> Iterator[bytes]:
    pending = b""
    for chunk in resp.iter_bytes():
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (c for c in complete if c)
    if pending.strip():
        yield pending


def _check_answer(resp: httpx.Response) -> None:
    """Raise ExportFailed with the API's own detail for anything but 200."""
    if resp.status_code == 200:
        return
    resp.read()
    try:
        detail = resp.json().get("detail") or resp.text
    except ValueError:
        detail = resp.text
    raise ExportFailed(resp.status_code, str(detail)[:500])


def _copy_jsonl(
    resp: httpx.Response, tmp: Path | None, stdout: IO[bytes] | None
) -> tuple[int, int]:
    """Copy the JSON Lines body as it arrives into ``tmp`` (else ``stdout``, else file
    descriptor 1); return (rows, bytes)."""
    rows = size = 0
    sink: IO[bytes] = (
        tmp.open("wb")
        if tmp is not None
        else stdout or io.BufferedWriter(io.FileIO(1, "w", closefd=False))
    )
    try:
        for chunk in resp.iter_bytes():
            sink.write(chunk)
            size += len(chunk)
            rows += chunk.count(b"\n")
    finally:
        sink.flush()
        if tmp is not None:
            sink.close()
    return rows, size


def _write_answer(
    resp: httpx.Response,
    fmt: str,
    tmp: Path | None,
    columns: Columns | None,
    stdout: IO[bytes] | None,
    batch_rows: int,
) -> tuple[int, int]:
    """Write the answer in ``fmt``; a partial file is removed when anything goes wrong."""
    try:
        if fmt == "jsonl":
            return _copy_jsonl(resp, tmp, stdout)
        assert tmp is not None
        rows = _write_table(fmt, tmp, columns, _lines(resp), batch_rows)
        return rows, tmp.stat().st_size
    except BaseException:
        if tmp is not None and tmp.exists():
            tmp.unlink()
        raise


def export_to(
    kind: str,
    out: Path | None,
    *,
    api_url: str,
    workspace: str,
    token: str | None,
    fmt: str | None = None,
    as_of: str | None = None,
    min_seq: int | None = None,
    stdout: IO[bytes] | None = None,
    transport: httpx.BaseTransport | None = None,
    batch_rows: int = 10_000,
) -> ExportSummary:
    """Stream the export of ``kind`` into ``out`` (JSON Lines to ``stdout`` when ``out`` is
    None). The file appears only when complete (written aside, then renamed)."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    fmt = format_for(out, fmt)
    if out is None and fmt != "jsonl":
        raise ValueError(f"--out is needed for format {fmt}")
    if fmt == "parquet":
        _pyarrow()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params: dict[str, str | int] = {"as_of": as_of} if as_of else {}
    if min_seq:
        params["min_seq"] = min_seq
    t0 = time.monotonic()
    tmp = out.with_name(f".{out.name}.partial") if out is not None else None
    with (
        httpx.Client(
            base_url=api_url.rstrip("/"),
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(300.0, connect=10.0),
        ) as client,
        client.stream("GET", f"/v1/workspaces/{workspace}/export/{kind}", params=params) as resp,
    ):
        _check_answer(resp)
        note = resp.headers.get("x-tieline-as-of")
        rows, size = _write_answer(resp, fmt, tmp, columns_for(kind), stdout, batch_rows)
    if tmp is not None and out is not None:
        os.replace(tmp, out)
    return ExportSummary(
        kind, fmt, str(out) if out else "-", rows, size, time.monotonic() - t0, note
    )


def _batches(lines: Iterator[bytes], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for line in lines:
        batch.append(json.loads(line))
        if len(batch) >= size:
            yield batch
            batch = []
    yield batch  # possibly empty: a file with only the header / schema


def _write_table(
    fmt: str, path: Path, columns: Columns | None, lines: Iterator[bytes], batch_rows: int
) -> int:
    rows = 0
    batches = _batches(lines, batch_rows)
    first = next(batches)
    cols = columns if columns is not None else infer_columns(first)
    if fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer: CsvWriter | ParquetWriter = CsvWriter(f, cols)
            for batch in _chain(first, batches):
                writer.write(batch)
                rows += len(batch)
        return rows
    writer = ParquetWriter(path, cols)
    try:
        for batch in _chain(first, batches):
            if batch or rows == 0:
                writer.write(batch)
                rows += len(batch)
    finally:
        writer.close()
    return rows


def _chain(
    first: list[dict[str, Any]], rest: Iterator[list[dict[str, Any]]]
) -> Iterator[list[dict[str, Any]]]:
    yield first
    yield from rest


class ExportFailed(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"the API answered {status}: {detail}")
        self.status = status
