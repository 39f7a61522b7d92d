"""Erasure of a person by crypto-shredding, with a report that proves it.

Before the key is destroyed, the person's personal values are decrypted one last time (held in
memory only, never logged or returned); after the ``person.forgotten`` event is projected, the
workspace's raw stream messages and its rows of every table of the state schema and of every
read-model generation (live, building, retired, scratch: enumerated from the catalog, not
listed by hand) are searched for those values. Only the workspace's own data is searched:
counts over other workspaces' data would let an admin of this one ask whether another holds
a string (plant it as a value here, forget, read the counts).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from nats.js.errors import NotFoundError
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing.crypto import decrypt_payload, fields_of, key_people
from tieline.plumbing.subjects import workspace_of_subject
from tieline.projections.queries.erasure import events_about, like_escaped, rows_containing
from tieline.services.api.observe import correlation_id
from tieline.services.api.runtime import Runtime

#: Values shorter than this are not searched for (they would match unrelated data).
MIN_SEARCH_LEN = 4
STREAM_SCAN_LIMIT = 1_000_000


async def _former_values(rt: Runtime, ws: str, person: str) -> tuple[set[str], int]:
    """Plaintext personal values of events that the person's key protects, and their count."""
    async with rt.connections.connection() as conn:
        rows = await events_about(conn, ws, person)
    values: set[str] = set()
    for row in rows:
        cls = REGISTRY.classes.get(row["type"])
        if cls is None:
            continue
        event = REGISTRY.decode_obj(row["payload"])
        people = key_people(event)
        keys = await rt.decryption.keystore.keys(ws, people)
        plain = decrypt_payload(row["payload"], cls, people, keys)
        for f in fields_of(cls):
            v = plain.get(f)
            if isinstance(v, str) and len(v) >= MIN_SEARCH_LEN and not v.startswith("enc:"):
                values.add(v)
    return values, len(rows)


def _needles(values: set[str]) -> list[bytes]:
    """Each value as raw UTF-8 and as it appears inside JSON (escaped)."""
    out: set[bytes] = set()
    for v in values:
        out.add(v.encode())
        out.add(json.dumps(v)[1:-1].encode())
    return sorted(out)


async def scan_tables(rt: Runtime, ws: str, values: set[str]) -> tuple[dict[str, int], list[str]]:
    """The workspace's rows per table (``schema.table``, over the state schema and every
    read-model generation) whose text contains any of ``values``; and the tables whose rows
    belong to no workspace, not searched."""
    if not values:
        return {}, []
    patterns = ["%" + like_escaped(n.decode()) + "%" for n in _needles(values)]
    # Every table, the api role's or not (the proof must not miss a copy), but only this
    # workspace's rows of it. Only counts come back.
    async with rt.connections.system() as conn:
        return await rows_containing(
            conn, rt.settings.database_schema, patterns, ws, rt.settings.subject_prefix
        )


async def scan_stream(rt: Runtime, ws: str, values: set[str]) -> tuple[int, int]:
    """(messages scanned, messages containing any value) over the raw bytes of the
    workspace's messages on the stream."""
    js = rt.connections.nc.jetstream()
    info = await js.stream_info(rt.settings.stream_name)
    first, last = int(info.state.first_seq), int(info.state.last_seq)
    needles = _needles(values)
    scanned = hits = 0
    seq = first
    while seq <= min(last, first + STREAM_SCAN_LIMIT):
        batch = range(seq, min(seq + 200, last + 1))
        msgs = await asyncio.gather(
            *(js.get_msg(rt.settings.stream_name, s) for s in batch), return_exceptions=True
        )
        for m in msgs:
            if isinstance(m, NotFoundError):
                continue  # a deleted sequence
            if isinstance(m, BaseException):
                raise RuntimeError(f"stream scan failed: {m!r}") from m
            if workspace_of_subject(rt.settings.subject_prefix, m.subject or "") != ws:
                continue  # another workspace's: not ours to search
            scanned += 1
            data = m.data or b""
            if any(n in data for n in needles):
                hits += 1
        seq += 200
    return scanned, hits


async def forget_person(
    rt: Runtime, ws: str, person: str, actor: str, merged: Sequence[str] = ()
) -> dict[str, Any]:
    """Destroy the person's key and those of the people ``merged`` into them (through the
    people service, in one command: the write side refuses to erase a survivor without its
    duplicates), wait for the projection, and report what was removed and what a search for
    their former values found."""
    everyone = [person, *merged]
    values: set[str] = set()
    protected = 0
    for p in everyone:
        former, count = await _former_values(rt, ws, p)
        values |= former
        protected += count
    lines = [{"type": "person.forgotten", "person_id": p} for p in everyone]
    results = await rt.bus.command(ws, "people", lines, actor, correlation_id())
    refused = next((r for r in results if r["status"] >= 300), None)
    if refused is not None:
        return {
            "person_id": person,
            "erased": False,
            "status": refused["status"],
            "error": refused.get("error"),
            "errors": refused.get("errors") or [],
        }
    await rt.waiter.wait(max(r["seq"] for r in results))
    for p in everyone:
        rt.decryption.drop_cached(ws, p)
    tables, skipped = await scan_tables(rt, ws, values)
    scanned, stream_hits = await scan_stream(rt, ws, values)
    clean = stream_hits == 0 and not any(tables.values())
    return {
        "person_id": person,
        "erased": True,
        "forgotten_event_id": results[0]["event_id"],
        "forgotten_seq": results[0]["seq"],
        "merged_people_forgotten": list(merged),
        "removed": {
            "key": "destroyed",
            "people_v1": "personal fields purged",
            "archived_events_now_unreadable": protected,
        },
        "search": {
            "values_searched": len(values),
            "stream_messages_scanned": scanned,
            "stream_messages_with_plaintext": stream_hits,
            "table_rows_with_plaintext": tables,
            "tables_not_searched": skipped,
        },
        "clean": clean,
    }
