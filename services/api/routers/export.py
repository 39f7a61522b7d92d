"""Admin-only exports of a workspace, streamed as JSON Lines (one object per line).

- ``GET /v1/workspaces/{ws}/export/events``: the archive (every event the projection
  accepted) in stream order, personal fields decrypted with the people's keys. A forgotten
  person's key is destroyed, so their fields come out as ``[erased]``: an export never holds
  their plaintext. Each line is the event (envelope and fields) plus ``seq``, ``retracted``
  and ``retracted_by``. ``tieline import`` imports it into another workspace (``--remap-ids``
  gives the copy ids of its own).
- ``GET .../export/people``: the directory, decrypted; a forgotten person shows only as such.
- ``GET .../export/strength``: strength per pair: every column of ``strength_v1``.
- ``GET .../export/timeline``: every (pair, event) row of ``pair_events_v1``, by pair and time.

``?min_seq=N`` waits (bounded) until the projection has applied stream seq N, as every read
does. ``?as_of=TIMESTAMP`` (with a timezone): events and timeline rows that occurred at or before it
(an event counts as retracted only if its retraction occurred by then too); people added by
then, with their current values. Strength ignores ``as_of`` for now and says so in the
``X-Tieline-As-Of`` response header: the rows are the current ones.

Each export reads one consistent snapshot (a repeatable-read transaction) through a server-side
cursor, so memory stays bounded whatever the size. The people whose data an export reveals are
recorded in the access log as it goes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing.crypto import (
    FORGOTTEN,
    WORKSPACE_KEY,
    decrypt_payload,
    decrypt_value,
    key_people,
)
from tieline.projections.queries import export as queries
from tieline.services.api.deps import RT, WS, Admin, MinSeq
from tieline.services.api.errors import ApiError
from tieline.services.api.openapi import READ
from tieline.services.api.runtime import PERSON_FIELDS, Runtime
from tieline.services.auth import Principal

router = APIRouter(tags=["export"])

NDJSON = "application/x-ndjson"

AsOf = Annotated[
    datetime | None,
    Query(
        description="Only what occurred at or before this instant (ISO 8601 with a "
        "timezone, e.g. 2024-06-30T23:59:59Z)."
    ),
]
Row = dict[str, Any]
Render = Callable[[Runtime, str, list[Row]], Awaitable[tuple[list[bytes], set[str]]]]


def _cutoff(as_of: datetime | None) -> datetime | None:
    if as_of is not None and as_of.tzinfo is None:
        raise ApiError(
            422,
            "as_of: must carry a timezone (e.g. 2024-06-30T23:59:59Z)",
            [{"loc": ["query", "as_of"], "msg": "must carry a timezone"}],
        )
    return as_of


def _default(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _line(obj: dict[str, Any]) -> bytes:
    return (
        json.dumps(obj, default=_default, ensure_ascii=False, separators=(",", ":")).encode()
        + b"\n"
    )


async def _render_events(rt: Runtime, ws: str, rows: list[Row]) -> tuple[list[bytes], set[str]]:
    plans: list[tuple[Row, Any, list[str]]] = []
    needed: set[str] = set()
    for row in rows:
        cls = REGISTRY.classes.get(row["type"])
        payload = row["payload"]
        people = key_people(cls.model_construct(**payload)) if cls is not None else []
        plans.append((row, cls, people))
        needed.update(people)
    keys = await rt.decryption.keys(ws, needed) if needed else {}
    lines: list[bytes] = []
    for row, cls, people in plans:
        payload = row["payload"]
        plain = decrypt_payload(payload, cls, people, keys) if cls is not None else payload
        out: dict[str, Any] = {"seq": row["seq"]}
        for name in cls.model_fields if cls is not None else ():
            if name in plain:
                out[name] = plain[name]
        for name, value in plain.items():
            out.setdefault(name, value)
        out["retracted"] = bool(row["retracted"])
        out["retracted_by"] = row["retracted_by"] if row["retracted"] else None
        lines.append(_line(out))
    return lines, needed - {WORKSPACE_KEY}


async def _render_people(rt: Runtime, ws: str, rows: list[Row]) -> tuple[list[bytes], set[str]]:
    ids = {r["person_id"] for r in rows}
    keys = await rt.decryption.keys(ws, ids) if ids else {}
    lines = []
    for r in rows:
        out = dict(r)
        key = keys.get(r["person_id"])
        for f in PERSON_FIELDS:
            out[f] = None if r["forgotten"] else decrypt_value(key, ws, f, r[f])
        if r["forgotten"]:
            out["display_name"] = FORGOTTEN
        lines.append(_line(out))
    return lines, ids


async def _render_pairs(rt: Runtime, ws: str, rows: list[Row]) -> tuple[list[bytes], set[str]]:
    people: set[str] = set()
    lines = []
    for r in rows:
        people.add(r["person_a"])
        people.add(r["person_b"])
        lines.append(_line(queries.pair_row(r)))
    return lines, people


async def _stream(
    rt: Runtime,
    ws: str,
    who: Principal,
    kind: queries.Kind,
    cutoff: datetime | None,
    render: Render,
) -> AsyncIterator[bytes]:
    """The export's lines block by block, recording in the access log each person whose data
    a block reveals (once per export)."""
    audited: set[str] = set()
    async with rt.connections.connection() as conn:
        async for rows in queries.blocks(conn, kind, ws, cutoff):
            lines, people = await render(rt, ws, rows)
            fresh = sorted(people - audited)
            if fresh:
                await rt.audit.record(ws, who, f"GET export/{kind}", fresh)
                audited.update(fresh)
            yield b"".join(lines)


def _response(
    body: AsyncIterator[bytes], kind: str, as_of: datetime | None, note: str | None = None
) -> StreamingResponse:
    headers = {
        "Content-Disposition": f'attachment; filename="{kind}.jsonl"',
        "Cache-Control": "no-store",
    }
    if note is not None:
        headers["X-Tieline-As-Of"] = note
    elif as_of is not None:
        headers["X-Tieline-As-Of"] = as_of.isoformat()
    return StreamingResponse(body, media_type=NDJSON, headers=headers)


_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {NDJSON: {"schema": {"type": "string"}}},
        "description": "JSON Lines, one object per line.",
    },
}
_STREAM_DOC = _STREAMED | READ


@router.get(
    "/v1/workspaces/{ws}/export/events", responses=_STREAM_DOC, response_class=StreamingResponse
)
async def export_events(
    ws: WS, rt: RT, who: Admin, as_of: AsOf = None, min_seq: MinSeq = None
) -> StreamingResponse:
    """Every archived event of the workspace in stream order, decrypted (a forgotten
    person's fields read ``[erased]``), with ``seq``, ``retracted`` and ``retracted_by``."""
    cutoff = _cutoff(as_of)
    await rt.waiter.wait(min_seq)
    body = _stream(rt, ws, who, "events", cutoff, _render_events)
    return _response(body, "events", cutoff)


@router.get(
    "/v1/workspaces/{ws}/export/people", responses=_STREAM_DOC, response_class=StreamingResponse
)
async def export_people(
    ws: WS, rt: RT, who: Admin, as_of: AsOf = None, min_seq: MinSeq = None
) -> StreamingResponse:
    """The directory, decrypted. ``as_of``: people added by then, with current values."""
    cutoff = _cutoff(as_of)
    await rt.waiter.wait(min_seq)
    body = _stream(rt, ws, who, "people", cutoff, _render_people)
    note = (
        None
        if cutoff is None
        else (f"{cutoff.isoformat()}; people added by then, with their current values")
    )
    return _response(body, "people", cutoff, note)


@router.get(
    "/v1/workspaces/{ws}/export/strength", responses=_STREAM_DOC, response_class=StreamingResponse
)
async def export_strength(
    ws: WS, rt: RT, who: Admin, as_of: AsOf = None, min_seq: MinSeq = None
) -> StreamingResponse:
    """Strength per pair. ``as_of`` is not applied yet (the rows are the current ones; the
    ``X-Tieline-As-Of`` header says so): the strength model is being replaced."""
    cutoff = _cutoff(as_of)
    await rt.waiter.wait(min_seq)
    body = _stream(rt, ws, who, "strength", cutoff, _render_pairs)
    note = None if cutoff is None else "not applied: strength rows are the current ones"
    return _response(body, "strength", cutoff, note)


@router.get(
    "/v1/workspaces/{ws}/export/timeline", responses=_STREAM_DOC, response_class=StreamingResponse
)
async def export_timeline(
    ws: WS, rt: RT, who: Admin, as_of: AsOf = None, min_seq: MinSeq = None
) -> StreamingResponse:
    """Every (pair, event) row of the relationship timelines, by pair and time."""
    cutoff = _cutoff(as_of)
    await rt.waiter.wait(min_seq)
    body = _stream(rt, ws, who, "timeline", cutoff, _render_pairs)
    return _response(body, "timeline", cutoff)
