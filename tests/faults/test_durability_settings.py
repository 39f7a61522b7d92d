"""Scenario 7: the durability settings the other scenarios rely on, checked on the running
servers (not only in configuration files), so that a regression fails loudly.

* The embedded nats-server fsyncs every write before acknowledging it: ``/varz`` reports
  ``jetstream.config.sync_always: true`` (and a server started with lazy fsync reports false,
  so the check can fail).
* deploy/nats/single.conf (the compose deployment) sets ``sync_interval: always`` inside its
  ``jetstream`` block.
* The event and dead-letter streams use file storage.
* The embedded PostgreSQL runs with fsync and synchronous_commit on.
"""

from __future__ import annotations

import re
from pathlib import Path

from nats.js.api import StorageType
from tieline.services.runtime.embedded import EmbeddedNats

from tests.faults.conftest import Shared
from tests.faults.support import REPO_ROOT, http_json, nats_admin, pg_connect, scalar, summary


def _sync_always(monitor_url: str) -> object:
    status, varz = http_json(f"{monitor_url}/varz")
    assert status == 200, f"/varz answered {status}"
    return varz["jetstream"]["config"].get("sync_always")


def _jetstream_block(conf: str) -> str:
    """The text of the top-level ``jetstream { ... }`` block, comments removed."""
    text = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    match = re.search(r"^\s*jetstream\s*[:=]?\s*\{(.*?)^\s*\}", text, re.S | re.M)
    assert match, "no jetstream block"
    return match.group(1)


async def test_running_servers_and_deploy_config_are_durable(
    shared: Shared, tmp_path: Path
) -> None:
    assert shared.stack.nats is not None
    assert _sync_always(shared.stack.nats.monitor_url) is True

    # The check can fail: a server with lazy fsync says so.
    with EmbeddedNats(tmp_path / "lazy", sync_always=False) as lazy:
        assert _sync_always(lazy.monitor_url) in (False, None)

    single = (REPO_ROOT / "deploy" / "nats" / "single.conf").read_text()
    block = _jetstream_block(single)
    assert re.search(r"^\s*sync_interval\s*[:=]\s*\"?always\"?\s*$", block, re.M), block

    async with nats_admin(shared.admin) as (_, js):
        streams = {}
        for name in (shared.settings.stream_name, f"{shared.settings.stream_name}_DLQ"):
            info = await js.stream_info(name)
            streams[name] = info.config.storage
    assert all(s == StorageType.FILE for s in streams.values()), streams

    conn = await pg_connect(shared.admin)
    try:
        fsync = await scalar(conn, "SHOW fsync")
        commit = await scalar(conn, "SHOW synchronous_commit")
    finally:
        await conn.close()
    assert (fsync, commit) == ("on", "on")
    summary(
        "durability_settings",
        sent=0,
        acked=0,
        in_stream=0,
        projected=0,
        lost=0,
        double_counted=0,
        crashes=0,
        recover_s=0,
    )
