"""Backup and restore of a stream (services/runtime/stream_backup.py) on real JetStream, with
a log that holds one Nats-Msg-Id twice (a dead letter replayed again after the dedupe window
does that): restored within milliseconds, the second copy was taken for a duplicate and the
restore stopped half-way ("message 3 was stored as 2"); and the write side's state after a
restore next to a state dump newer than the log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from uuid import uuid4

import nats
import pytest
from nats.js import api as js_api
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing.config import Settings
from tieline.plumbing.db import make_pool
from tieline.plumbing.jetstream import ensure_streams
from tieline.services.runtime.stream_backup import (
    backup_stream,
    backup_streams,
    restore_stream,
    restore_streams,
)
from tieline.services.service_app import INTERACTION_TYPES, PEOPLE_TYPES, start_write_side
from tieline.services.write_backfill import note_taken_ids, reconcile_with_log


async def test_a_log_with_a_repeated_message_id_restores_whole(
    settings: Settings, tmp_path: Path
) -> None:
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    name = f"{settings.stream_name}_R"
    subject = f"{settings.subject_prefix}.restoretest"
    config = js_api.StreamConfig(name=name, subjects=[subject], duplicate_window=0.5)
    try:
        await js.add_stream(config=config)
        for body in (b"a", b"b"):
            await js.publish(subject, body, headers={"Nats-Msg-Id": "same"})
            await asyncio.sleep(0.7)  # past the window: stored again
        await js.publish(subject, b"c", headers={"Nats-Msg-Id": "other"})
        assert (await js.stream_info(name)).state.messages == 3
        backup = await backup_stream(js, name, tmp_path)
        assert backup.path.stat().st_mode & 0o777 == 0o600  # every event's payload is in it
        await js.delete_stream(name)
        await js.add_stream(config=js_api.StreamConfig(name=name, subjects=[subject]))
        copy = await restore_stream(js, name, tmp_path)
        assert copy.messages == 3 and (await js.stream_info(name)).state.last_seq == 3
        assert [(await js.get_msg(name, seq)).data for seq in (1, 2, 3)] == [b"a", b"b", b"c"]
    finally:
        try:
            await js.delete_stream(name)
        finally:
            await nc.close()


async def test_a_state_newer_than_the_restored_log_forgets_what_the_log_lost(
    settings: Settings, tmp_path: Path
) -> None:
    """The documented backup takes the stream, then the state dump: the dump knows ids
    accepted in between. After the restore, a client re-sending such an id was answered
    "duplicate, seq N" for an event the log does not hold (accepted and lost), and a
    retraction of an event whose retraction was lost was refused as done already."""
    ws = "restore-newer-state"
    met: dict[str, Any] = {"type": "relationship.met", "participants": ["a", "b"]}
    pool = make_pool(settings)
    pnc, people = await start_write_side(settings, "people", PEOPLE_TYPES, pool)
    nc, side = await start_write_side(settings, "interactions", INTERACTION_TYPES, pool)
    try:
        added = [{"type": "person.added", "person_id": p, "display_name": p} for p in "ab"]
        assert {o.status for o in await people.record_many(ws, added, "t")} == {201}
        [kept] = await side.record_many(ws, [{**met, "depth": "conversation"}], "t")
        streams = [settings.stream_name, f"{settings.stream_name}_DLQ"]
        await backup_streams(side.js, streams, tmp_path)
        # Accepted after the stream backup, before the state dump:
        later = {**met, "depth": "brief_chat", "event_id": str(uuid4())}
        retraction = {"type": "event.retracted", "retracted_event_id": str(kept.event_id)}
        answers = await side.record_many(ws, [later, retraction], "t")
        assert [a.status for a in answers] == [201, 201]
    finally:
        await nc.close()
        await pnc.close()
    admin = await nats.connect(settings.nats_url)
    try:
        js = admin.jetstream()
        for name in streams:  # a fresh installation's empty streams, then the restore
            await js.delete_stream(name)
        await ensure_streams(js, settings)
        async with pool.connection() as conn:
            # The met event's row as a crash between publish and recording left it (its
            # sequence unknown, its digest kept).
            await conn.execute(
                "UPDATE write_events SET seq = NULL WHERE event_id = %s", (kept.event_id,)
            )
            # The dump came from a server whose clock ran a day ahead: ids are noted, not
            # compared by time (a cut-off by time kept this one).
            await conn.execute(
                "UPDATE write_events SET taken_at = now() + interval '1 day' WHERE event_id = %s",
                (later["event_id"],),
            )
            await note_taken_ids(conn)
            # An id a service still running takes during the restore: left alone.
            racing = uuid4()
            await conn.execute(
                "INSERT INTO write_events (event_id, workspace_id, type, digest, seq)"
                " VALUES (%s, %s, 'relationship.met', 'd', NULL)",
                (racing, ws),
            )
            await restore_streams(js, streams, tmp_path)
            found = await reconcile_with_log(conn, js, settings.stream_name, REGISTRY)
            assert found == (2, 0)
            rows = await conn.execute(
                "SELECT event_id, seq, digest IS NOT NULL AS digest FROM write_events "
                "WHERE event_id = ANY(%s::uuid[])",
                ([str(kept.event_id), str(racing)],),
            )
            state = {str(r["event_id"]): (r["seq"], r["digest"]) for r in await rows.fetchall()}
            assert state == {str(kept.event_id): (3, True), str(racing): (None, True)}
            await conn.execute("DELETE FROM write_events WHERE event_id = %s", (racing,))
    finally:
        await admin.close()
    nc, side = await start_write_side(settings, "interactions", INTERACTION_TYPES, pool)
    try:
        again = await side.record_many(
            ws,
            [later, retraction, {**met, "depth": "conversation", "event_id": str(kept.event_id)}],
            "t",
        )
        assert [(a.status, a.duplicate) for a in again] == [(201, False), (201, False), (200, True)]
        assert again[0].seq == 4 and again[1].seq == 5 and again[2].seq == kept.seq == 3
        info = await side.js.stream_info(settings.stream_name)
        assert info.state.last_seq == 5
    finally:
        await nc.close()
        await pool.close()


async def test_a_broken_backup_file_publishes_nothing(settings: Settings, tmp_path: Path) -> None:
    """Every file is checked before anything is published: a hole in the event stream's
    file used to be found after the dead-letter stream was restored, and the retry was then
    refused (the streams were no longer empty)."""
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    try:
        await ensure_streams(js, settings)
        streams = [settings.stream_name, f"{settings.stream_name}_DLQ"]
        line = {"subject": f"{settings.subject_prefix}.ev.x", "headers": {}, "data": "YQ=="}
        dead = {**line, "subject": f"{settings.subject_prefix}.dlq.x", "seq": 1}
        (tmp_path / f"{streams[1]}.jsonl").write_text(json.dumps(dead) + "\n")
        (tmp_path / f"{streams[0]}.jsonl").write_text(
            "".join(json.dumps({**line, "seq": seq}) + "\n" for seq in (1, 3))
        )
        with pytest.raises(ValueError, match="sequence 3 follows 1"):
            await restore_streams(js, streams, tmp_path)
        for name in streams:
            assert (await js.stream_info(name)).state.last_seq == 0
    finally:
        for name in (settings.stream_name, f"{settings.stream_name}_DLQ"):
            await js.delete_stream(name)
        await nc.close()
