"""``tieline stream backup DIR`` / ``tieline stream restore DIR``: the log of record, as files.

The JetStream streams are the only state tieline cannot rebuild (besides the state tables in
PostgreSQL, which ``pg_dump`` backs up: docs/operations.md). ``backup`` reads every message of
the event stream and of its dead-letter stream with an ordered consumer and writes one JSON
line per message: stream sequence, subject, headers (``Nats-Msg-Id`` included) and the exact
bytes (base64). Personal data in them is still encrypted under the per-person keys, so a
backup is no more readable than the stream itself.

``restore`` publishes the messages, in order, into streams that exist but are empty (after
``tieline bootstrap`` on a fresh installation), each with ``Nats-Expected-Last-Sequence`` so
the restored stream holds them under the same sequence numbers, and nothing can interleave;
a backup whose sequences have holes is refused (sequences would shift). The projection
workers then rebuild every read model from the restored log (restore by replay).

Both need the NATS ``admin`` user: no process user may read or write whole streams.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js import api as js_api
from tieline.plumbing.files import sync_directory

__all__ = ["StreamCopy", "backup_streams", "restore_streams"]


@dataclass(frozen=True)
class StreamCopy:
    """One stream's backup file and how many messages it holds."""

    stream: str
    path: Path
    messages: int
    last_seq: int


def _file(directory: Path, stream: str) -> Path:
    return directory / f"{stream}.jsonl"


async def backup_stream(js: JetStreamContext, stream: str, directory: Path) -> StreamCopy:
    """Every message of ``stream`` up to its last sequence at the start, in order."""
    info = await js.stream_info(stream)
    last = int(info.state.last_seq)
    path = _file(directory, stream)
    tmp = path.with_suffix(".jsonl.partial")
    count = 0
    tmp.unlink(missing_ok=True)  # a partial file left by a run that was killed
    # 0600 (every event's payload is in it), fsynced before the rename, and the directory
    # after: a crash left a world-readable, possibly truncated file under the final name,
    # which a restore took for a whole backup (a reviewer's finding).
    with os.fdopen(
        os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600),
        "w",
    ) as out:
        if info.state.messages:
            subjects = info.config.subjects or [">"]
            sub = await js.subscribe(
                subjects[0] if len(subjects) == 1 else ">",
                stream=stream,
                ordered_consumer=True,
                deliver_policy=js_api.DeliverPolicy.ALL,
            )
            try:
                while True:
                    msg = await sub.next_msg(timeout=10)
                    seq = int(msg.metadata.sequence.stream)
                    line = {
                        "seq": seq,
                        "subject": msg.subject,
                        "headers": dict(msg.headers or {}),
                        "data": base64.b64encode(msg.data).decode(),
                    }
                    out.write(json.dumps(line, separators=(",", ":")) + "\n")
                    count += 1
                    if seq >= last:
                        break
            finally:
                await sub.unsubscribe()
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    sync_directory(directory)
    return StreamCopy(stream, path, count, last)


async def backup_streams(
    js: JetStreamContext, streams: list[str], directory: Path
) -> list[StreamCopy]:
    """Back up each of ``streams`` into the existing ``directory``."""
    return [await backup_stream(js, stream, directory) for stream in streams]


def _lines(path: Path) -> list[dict[str, Any]]:
    """The messages of a backup file, checked whole before anything is published: JSON
    objects with the fields a restore needs, their sequences 1, 2, 3, ... without a hole."""
    out: list[dict[str, Any]] = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            base64.b64decode(line["data"], validate=True)
            subject, seq = line["subject"], line["seq"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} line {number}: not a backed-up message ({exc})") from None
        if not isinstance(subject, str) or not isinstance(line.get("headers") or {}, dict):
            raise ValueError(f"{path} line {number}: not a backed-up message")
        if seq != len(out) + 1:
            raise ValueError(
                f"{path}: sequence {seq} follows {len(out)}; a backup with holes cannot keep "
                "its sequence numbers"
            )
        out.append(line)
    return out


async def restore_stream(js: JetStreamContext, stream: str, directory: Path) -> StreamCopy:
    """Publish a backup into the empty ``stream``, keeping every sequence number."""
    path = _file(directory, stream)
    lines = _lines(path)
    info = await js.stream_info(stream)
    if info.state.messages or info.state.last_seq:
        raise ValueError(
            f"stream {stream} already holds {info.state.messages} message(s) (last seq "
            f"{info.state.last_seq}); restore only into the empty streams of a fresh bootstrap"
        )
    expected = 0
    for line in lines:  # sequences 1, 2, 3, ... (checked by _lines)
        # Without Nats-Msg-Id: the log may hold one id twice (a dead letter replayed again
        # after the dedupe window), and restored within milliseconds the second copy was
        # dropped as a duplicate and the restore stopped half-way. The expected last sequence
        # keeps the order and refuses anything interleaved.
        headers = {
            k: v
            for k, v in (line.get("headers") or {}).items()
            if not k.startswith("Nats-Expected") and k != "Nats-Msg-Id"
        }
        headers["Nats-Expected-Last-Sequence"] = str(expected)
        ack = await js.publish(
            line["subject"], base64.b64decode(line["data"]), stream=stream, headers=headers
        )
        if ack.duplicate or ack.seq != line["seq"]:
            raise ValueError(f"{stream}: message {line['seq']} was stored as {ack.seq}")
        expected = line["seq"]
    return StreamCopy(stream, path, len(lines), expected)


async def restore_streams(
    js: JetStreamContext, streams: list[str], directory: Path
) -> list[StreamCopy]:
    """Restore every stream of ``streams`` from ``directory``, checking first that each has
    its file and exists empty, so nothing is published unless all of them can be restored.
    The streams are restored in reverse order: the dead-letter stream before the event
    stream, which a running worker may dead-letter into while it is restored."""
    for stream in streams:
        if not _file(directory, stream).exists():
            raise ValueError(f"{_file(directory, stream)} is missing; not a tieline backup?")
        _lines(_file(directory, stream))  # every file is whole before anything is published
        info = await js.stream_info(stream)
        if info.state.messages or info.state.last_seq:
            raise ValueError(
                f"stream {stream} already holds {info.state.messages} message(s) (last seq "
                f"{info.state.last_seq}); restore only into the empty streams of a fresh "
                "bootstrap"
            )
    copies = [await restore_stream(js, stream, directory) for stream in reversed(streams)]
    return copies[::-1]
