"""Backup and restore of a stream (services/runtime/stream_backup.py) on real JetStream, with
a log that holds one Nats-Msg-Id twice (a dead letter replayed again after the dedupe window
does that): restored within milliseconds, the second copy was taken for a duplicate and the
restore stopped half-way ("message 3 was stored as 2")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from nats.js import api as js_api
from tieline.plumbing.config import Settings
from tieline.services.runtime.stream_backup import backup_stream, restore_stream


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
        await backup_stream(js, name, tmp_path)
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
