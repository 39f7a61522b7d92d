"""Helpers of the sync tests: calendars on the real server, people and sources through the
API, the log read back through the export."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import caldav
import httpx

from tests.sync.conftest import Dav


def stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def vevent(
    uid: str,
    start: datetime,
    minutes: int,
    summary: str,
    attendees: list[tuple[str, str]],
    *,
    organizer: str | None = "alice@example.org",
    extra: str = "",
) -> str:
    """One VCALENDAR with one VEVENT; ``attendees`` are (address, PARTSTAT)."""
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//tieline tests//EN",
        "BEGIN:VEVENT",
        f"UID:{uid}",
        f"DTSTAMP:{stamp(datetime.now(UTC))}",
        f"DTSTART:{stamp(start)}",
        f"DTEND:{stamp(start + timedelta(minutes=minutes))}",
        f"SUMMARY:{summary}",
    ]
    if organizer:
        lines.append(f"ORGANIZER:mailto:{organizer}")
    lines += [f"ATTENDEE;PARTSTAT={p}:mailto:{a}" for a, p in attendees]
    lines += [x for x in extra.splitlines() if x]
    lines += ["END:VEVENT", "END:VCALENDAR", ""]
    return "\r\n".join(lines)


def calendar(dav: Dav, name: str) -> Any:
    """A new calendar of the Radicale user, made with MKCALENDAR."""
    client = caldav.DAVClient(url=dav.url, username=dav.user, password=dav.password)
    return client.principal().make_calendar(name=name, cal_id=name)


def add_person(api: httpx.Client, ws: str, pid: str, name: str, email: str | None) -> int:
    body: dict[str, Any] = {"person_id": pid, "display_name": name}
    if email:
        body["email"] = email
    r = api.post(f"/v1/workspaces/{ws}/people", json=body)
    assert r.status_code in (200, 201), r.text
    seq: int = r.json()["seq"]
    return seq


def add_source(api: httpx.Client, ws: str, url: str, user: str, password: str, **kw: Any) -> str:
    body = {"kind": "caldav", "url": url, "username": user, "password": password, **kw}
    r = api.post(f"/v1/workspaces/{ws}/sync-sources", json=body)
    assert r.status_code == 201, r.text
    assert "password" not in r.text and password not in r.text
    sid: str = r.json()["source_id"]
    return sid


def source(api: httpx.Client, ws: str, sid: str) -> dict[str, Any]:
    r = api.get(f"/v1/workspaces/{ws}/sync-sources/{sid}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def sync_now(api: httpx.Client, ws: str, sid: str, timeout: float = 60.0) -> dict[str, Any]:
    """Ask for a run and wait for its outcome (a new success or a new error)."""
    before = source(api, ws, sid)["status"]
    r = api.post(f"/v1/workspaces/{ws}/sync-sources/{sid}/run")
    assert r.status_code == 202, r.text

    def done() -> dict[str, Any] | None:
        s = source(api, ws, sid)
        st = s["status"]
        changed = (st["last_success_at"], st["last_error_at"]) != (
            before["last_success_at"],
            before["last_error_at"],
        )
        return s if changed else None

    result: dict[str, Any] = wait_until(done, timeout, f"a run of {sid}")
    return result


def events(api: httpx.Client, ws: str) -> list[dict[str, Any]]:
    r = api.get(f"/v1/workspaces/{ws}/export/events")
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line]


def meetings(api: httpx.Client, ws: str, live_only: bool = True) -> list[dict[str, Any]]:
    return [
        e
        for e in events(api, ws)
        if e["type"] == "relationship.met" and (not live_only or not e["retracted"])
    ]


def settle(
    api: httpx.Client, ws: str, expect: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """The workspace's events once ``expect`` holds (the projection applies them shortly after
    the write side answered the sync)."""
    result: list[dict[str, Any]] = wait_until(
        lambda: (lambda evs: evs if expect(evs) else None)(events(api, ws)), 30, "the projection"
    )
    return result
