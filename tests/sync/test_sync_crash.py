"""kill -9 of the sync process in the middle of a run: after its lease runs out a new process
takes the source over, and every meeting is on the log exactly once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack

from tests.sync.conftest import Dav
from tests.sync.helpers import (
    add_person,
    add_source,
    calendar,
    meetings,
    source,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

N = 360  # 36 commands of 10: a send phase long enough for the kill to land inside it


def test_kill_9_mid_sync_records_every_meeting_once(
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
    ics = [
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:m{i}\r\nDTSTAMP:20240101T000000Z\r\n"
        f"DTSTART:{(start + timedelta(days=i)).strftime('%Y%m%dT%H%M%SZ')}\r\n"
        f"DURATION:PT30M\r\nSUMMARY:Meeting {i}\r\nORGANIZER:mailto:alice@example.org\r\n"
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:grace@example.org\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        for i in range(N)
    ]
    for body in ics:
        cal.add_event(body)
    url = radicale.url + f"{radicale.user}/{ws}/"
    sid = add_source(
        api, ws, url, radicale.user, radicale.password, owner="ada", window_days=N + 10
    )

    # The run sends its meetings in commands of 10 (TIELINE_SYNC_CHUNK): kill the process as
    # soon as the first ones reach the log, while the rest are still to be sent.
    wait_until(lambda: meetings(api, ws), 60, "the first meetings")
    stack.kill_role("sync")
    seen_at_kill = len(meetings(api, ws))
    status_at_kill = source(api, ws, sid)["status"]
    stack.supervise_once()  # starts a new sync process
    s = wait_until(
        lambda: (lambda x: x if x["status"]["last_success_at"] else None)(source(api, ws, sid)),
        90,
        "the new process to finish the source",
    )
    assert s["status"]["last_error"] is None
    wait_until(lambda: len(meetings(api, ws)) >= N, 30, "every meeting on the log")
    time.sleep(1)  # anything recorded twice would show by now
    got = meetings(api, ws, live_only=False)
    assert len(got) == N and len({e["event_id"] for e in got}) == N
    assert not any(e["retracted"] for e in got)
    assert {e["context"] for e in got} == {f"Meeting {i}" for i in range(N)}
    print(f"killed with {seen_at_kill}/{N} meetings on the log; status then: {status_at_kill}")
    assert status_at_kill["last_success_at"] is None, "the kill came after the run finished"
