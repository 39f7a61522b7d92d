"""Two sync processes running the same source at the same moment (what the lease normally
prevents, forced here) record every meeting once: the ids come from the calendar data."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack
from tieline.services.sync import state
from tieline.services.sync.app import SyncService
from tieline.services.sync.engine import RunStats

from tests.sync.conftest import Dav
from tests.sync.helpers import add_person, calendar, meetings, vevent, wait_until

pytestmark = pytest.mark.integration

N = 30


async def both_at_once(settings: Settings, ws: str, dav: Dav) -> tuple[str, list[RunStats]]:
    """Add the source straight in PostgreSQL, not due (so the stack's own sync process leaves
    it alone), then run it in two sync services at once."""
    services = [SyncService(settings), SyncService(settings)]
    for s in services:
        await s.start()
    try:
        async with services[0].state.connection() as conn, conn.transaction():
            row = await state.create_source(
                conn, ws, kind="caldav", url=f"{dav.url}{dav.user}/{ws}/", username=dav.user,
                password=dav.password, owner="ada", window_days=N + 10, interval_s=86400,
                master_key=services[0].master_key or b"", actor="test",
            )  # fmt: skip
            sid = row["source_id"]
            await conn.execute(
                "UPDATE sync_sources SET next_run_at = now() + interval '1 day' "
                "WHERE source_id = %s",
                (sid,),
            )
            cur = await conn.execute(
                f"SELECT {state.SOURCE_COLS}, secret, tokens FROM sync_sources "
                "WHERE source_id = %s",
                (sid,),
            )
            full = await cur.fetchone()
        assert full is not None
        stats = await asyncio.gather(*(s.run_row(dict(full)) for s in services))
        assert all(st is not None for st in stats), stats
        return sid, [st for st in stats if st is not None]
    finally:
        for s in services:
            await s.close()


def test_two_processes_on_one_source_record_each_meeting_once(
    api: httpx.Client, ws: str, radicale: Dav, sync_stack: tuple[Stack, Settings]
) -> None:
    stack, _ = sync_stack
    seq = max(
        add_person(api, ws, "ada", "Ada", "alice@example.org"),
        add_person(api, ws, "grace", "Grace", "grace@example.org"),
    )
    assert api.get(f"/v1/workspaces/{ws}/people/grace", params={"min_seq": seq}).status_code == 200
    cal = calendar(radicale, ws)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=N + 1)
    for i in range(N):
        cal.add_event(
            vevent(
                f"m{i}", start + timedelta(days=i), 30, f"M{i}", [("grace@example.org", "ACCEPTED")]
            )
        )
    user, password = stack.nats_credentials("sync") or (None, None)
    settings = stack.settings(
        nats_url=stack.nats_url,
        nats_user=user,
        nats_password=password,
        database_url=stack.database_url,
        master_key=stack.master_key(),
    )
    _, stats = asyncio.run(both_at_once(settings, ws, radicale))
    # Between them they recorded each meeting once; whatever the second sent again was a
    # duplicate the write side answered with the first one's sequence.
    assert sum(s.recorded for s in stats) == N, stats
    print("already recorded (sent twice):", [s.already_recorded for s in stats])
    wait_until(lambda: len(meetings(api, ws)) >= N, 30, "every meeting")
    got = meetings(api, ws, live_only=False)
    assert len(got) == N and len({e["event_id"] for e in got}) == N
