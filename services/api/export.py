"""Admin-only exports of a workspace, streamed as JSON Lines (one object per line).

- ``GET /v1/workspaces/{ws}/export/events``: the archive (every event the projection
  accepted) in stream order, personal fields decrypted with the people's keys. A forgotten
  person's key is destroyed, so their fields come out as ``[erased]``: an export never holds
  their plaintext. Each line is the event (envelope and fields) plus ``seq``, ``retracted``
  and ``retracted_by``. ``tieline import --remap-ids`` imports it into another workspace.
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

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from psycopg import AsyncConnection
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing.crypto import (
    FORGOTTEN,
    WORKSPACE_KEY,
    decrypt_payload,
    decrypt_value,
    key_people,
)
from tieline.services.api.app import WS, Admin, ApiError, MinSeq, Runtime
from tieline.services.auth import Principal

router = APIRouter(tags=["export"])

#: Rows fetched from the server-side cursor, decrypted and sent at a time.
BLOCK = 1000
NDJSON = "application/x-ndjson"
PERSON_FIELDS = ("display_name", "email", "phone", "organization", "title", "notes")

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


async def _keys(rt: Runtime, ws: str, people: set[str]) -> dict[str, bytes | None]:
    """The people's keys; a key destroyed in the database counts as gone even if another API
    instance's cache still held it a moment ago (never decrypt a forgotten person)."""
    wanted = sorted(people)
    keys = await rt.keystore.keys(ws, wanted)
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT person_id FROM person_keys WHERE workspace_id = %s "
            "AND person_id = ANY(%s) AND key IS NULL",
            (ws, wanted),
        )
        for row in await cur.fetchall():
            keys[row["person_id"]] = None
    return keys


async def _render_events(rt: Runtime, ws: str, rows: list[Row]) -> tuple[list[bytes], set[str]]:
    plans: list[tuple[Row, Any, list[str]]] = []
    needed: set[str] = set()
    for row in rows:
        cls = REGISTRY.classes.get(row["type"])
        payload = row["payload"]
        people = key_people(cls.model_construct(**payload)) if cls is not None else []
        plans.append((row, cls, people))
        needed.update(people)
    keys = await _keys(rt, ws, needed) if needed else {}
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
    keys = await _keys(rt, ws, ids) if ids else {}
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
        lines.append(_line({k: v for k, v in r.items() if k not in NOT_EXPORTED}))
    return lines, people


async def _stream(
    rt: Runtime,
    ws: str,
    who: Principal,
    endpoint: str,
    query: str,
    params: dict[str, Any],
    render: Render,
) -> AsyncIterator[bytes]:
    audited: set[str] = set()
    async with rt.pool.connection() as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        async with _named_cursor(conn) as cur:
            await cur.execute(query.encode(), params)
            while True:
                rows = await cur.fetchmany(BLOCK)
                if not rows:
                    break
                lines, people = await render(rt, ws, rows)
                fresh = sorted(people - audited)
                if fresh:
                    await rt.audit(ws, who, endpoint, fresh)
                    audited.update(fresh)
                yield b"".join(lines)


def _named_cursor(conn: AsyncConnection[Any]) -> Any:
    return conn.cursor(name="tieline_export")


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


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {NDJSON: {"schema": {"type": "string"}}},
        "description": "JSON Lines, one object per line.",
    },
    422: {},
}

EVENTS_SQL = """
SELECT e.seq, e.type, e.payload, e.retracted_by,
       (e.retracted_by IS NOT NULL
        AND (%(as_of)s::timestamptz IS NULL OR r.occurred_at <= %(as_of)s)) AS retracted
FROM events e LEFT JOIN events r ON r.event_id = e.retracted_by
WHERE e.workspace_id = %(ws)s
  AND (%(as_of)s::timestamptz IS NULL OR e.occurred_at <= %(as_of)s)
ORDER BY e.seq
"""

PEOPLE_SQL = """
SELECT person_id, display_name, email, phone, organization, title, notes, added_at,
       updated_at, added_event_id, retracted, forgotten
FROM people_v1
WHERE workspace_id = %(ws)s AND (%(as_of)s::timestamptz IS NULL OR added_at <= %(as_of)s)
ORDER BY person_id
"""

#: Every column of the strength read model as it is (its shape belongs to the strength model),
#: except ``fold``: the model's running state keyed by stream positions, bookkeeping that means
#: nothing outside this projection.
STRENGTH_SQL = """
SELECT * FROM strength_v1 WHERE workspace_id = %(ws)s ORDER BY person_a, person_b
"""
#: Columns a pair export leaves out (see STRENGTH_SQL).
NOT_EXPORTED = frozenset({"workspace_id", "fold"})

TIMELINE_SQL = """
SELECT t.person_a, t.person_b, t.event_id, t.seq, t.type, t.occurred_at, t.recorded_at,
       t.recorded_by, t.detail,
       COALESCE(t.retracted AND (%(as_of)s::timestamptz IS NULL OR r.occurred_at <= %(as_of)s),
                false) AS retracted
FROM pair_events_v1 t
LEFT JOIN events e ON e.event_id = t.event_id
LEFT JOIN events r ON r.event_id = e.retracted_by
WHERE t.workspace_id = %(ws)s
  AND (%(as_of)s::timestamptz IS NULL OR t.occurred_at <= %(as_of)s)
ORDER BY t.person_a, t.person_b, t.occurred_at, t.seq
"""


def _params(ws: str, cutoff: datetime | None) -> dict[str, Any]:
    return {"ws": ws, "as_of": cutoff}


@router.get(
    "/v1/workspaces/{ws}/export/events", responses=_STREAM_DOC, response_class=StreamingResponse
)
async def export_events(
    ws: WS, request: Request, who: Admin, as_of: AsOf = None, min_seq: MinSeq = None
) -> StreamingResponse:
    """Every archived event of the workspace in stream order, decrypted (a forgotten
    person's fields read ``[erased]``), with ``seq``, ``retracted`` and ``retracted_by``."""
    cutoff = _cutoff(as_of)
    rt = _runtime(request)
    await rt.wait_for_seq(min_seq)
    body = _stream(
        rt, ws, who, "GET export/events", EVENTS_SQL, _params(ws, cutoff), _render_events
    )
    return _response(body, "events", cutoff)


@router.get(
    "/v1/workspaces/{ws}/export/people", responses=_STREAM_DOC, response_class=StreamingResponse
)
async def export_people(
    ws: WS, request: Request, who: Admin, as_of: AsOf = None, min_seq: MinSeq = None
) -> StreamingResponse:
    """The directory, decrypted. ``as_of``: people added by then, with current values."""
    cutoff = _cutoff(as_of)
    rt = _runtime(request)
    await rt.wait_for_seq(min_seq)
    body = _stream(
        rt, ws, who, "GET export/people", PEOPLE_SQL, _params(ws, cutoff), _render_people
    )
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
    ws: WS, request: Request, who: Admin, as_of: AsOf = None, min_seq: MinSeq = None
) -> StreamingResponse:
    """Strength per pair. ``as_of`` is not applied yet (the rows are the current ones; the
    ``X-Tieline-As-Of`` header says so): the strength model is being replaced."""
    cutoff = _cutoff(as_of)
    rt = _runtime(request)
    await rt.wait_for_seq(min_seq)
    body = _stream(
        rt, ws, who, "GET export/strength", STRENGTH_SQL, _params(ws, cutoff), _render_pairs
    )
    note = None if cutoff is None else "not applied: strength rows are the current ones"
    return _response(body, "strength", cutoff, note)


@router.get(
    "/v1/workspaces/{ws}/export/timeline", responses=_STREAM_DOC, response_class=StreamingResponse
)
async def export_timeline(
    ws: WS, request: Request, who: Admin, as_of: AsOf = None, min_seq: MinSeq = None
) -> StreamingResponse:
    """Every (pair, event) row of the relationship timelines, by pair and time."""
    cutoff = _cutoff(as_of)
    rt = _runtime(request)
    await rt.wait_for_seq(min_seq)
    body = _stream(
        rt, ws, who, "GET export/timeline", TIMELINE_SQL, _params(ws, cutoff), _render_pairs
    )
    return _response(body, "timeline", cutoff)
