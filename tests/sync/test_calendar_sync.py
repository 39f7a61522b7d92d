"""Calendar sync against a real CalDAV server (Radicale): meetings become relationship.met,
edits and deletions retractions, re-runs record nothing twice, a wrong password shows as the
source's error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack

from tests.sync.conftest import Dav
from tests.sync.helpers import (
    add_person,
    add_source,
    calendar,
    events,
    settle,
    source,
    sync_now,
    vevent,
)

pytestmark = pytest.mark.integration

ALICE, GRACE, LINUS = "alice@example.org", "grace@example.org", "linus@example.org"


def people(api: httpx.Client, ws: str) -> None:
    """ada owns the calendar (alice@...); grace and linus are people; nobody@ is not."""
    seq = max(
        add_person(api, ws, "ada", "Ada Lovelace", ALICE),
        add_person(api, ws, "grace", "Grace Hopper", GRACE),
        add_person(api, ws, "linus", "Linus Torvalds", LINUS),
    )
    r = api.get(f"/v1/workspaces/{ws}/people/linus", params={"min_seq": seq})
    assert r.status_code == 200, r.text


def by_context(evs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in evs:
        if e["type"] == "relationship.met" and not e["retracted"]:
            out.setdefault(e["context"], []).append(e)
    return out


def test_calendar_events_become_meetings_and_follow_edits(
    api: httpx.Client, ws: str, radicale: Dav
) -> None:
    people(api, ws)
    cal = calendar(radicale, ws)
    now = datetime.now(UTC).replace(microsecond=0)
    day = now - timedelta(days=2)
    zoom = "LOCATION:https://zoom.us/j/123456"
    cal.add_event(vevent("coffee", day, 60, "Coffee", [(ALICE, "ACCEPTED"), (GRACE, "ACCEPTED")]))
    cal.add_event(
        vevent("call", day + timedelta(hours=3), 30, "Call", [(LINUS, "ACCEPTED")], extra=zoom)
    )
    cal.add_event(vevent("stranger", day, 30, "Stranger", [("nobody@example.org", "ACCEPTED")]))
    cal.add_event(vevent("future", now + timedelta(days=1), 30, "Future", [(GRACE, "ACCEPTED")]))
    cal.add_event(
        vevent(
            "declined",
            day + timedelta(hours=5),
            10,
            "Declined",
            [(GRACE, "ACCEPTED"), (LINUS, "DECLINED")],
        )
    )
    cal.add_event(
        vevent("cancelled", day, 30, "Cancelled", [(GRACE, "ACCEPTED")], extra="STATUS:CANCELLED")
    )
    weekly = now - timedelta(days=20, hours=1)
    cal.add_event(
        vevent(
            "standup",
            weekly,
            15,
            "Standup",
            [(GRACE, "ACCEPTED"), (LINUS, "ACCEPTED")],
            extra="RRULE:FREQ=WEEKLY;COUNT=10",
        )
    )
    sid = add_source(
        api,
        ws,
        radicale.url + f"{radicale.user}/{ws}/",
        radicale.user,
        radicale.password,
        owner="ada",
        window_days=30,
    )
    s = sync_now(api, ws, sid)
    assert s["status"]["last_error"] is None, s
    assert s["status"]["items_seen"] == 7

    # 1 coffee + 1 call + 1 declined-attendee meeting + 3 past standups (days -20, -13, -6).
    evs = settle(api, ws, lambda e: len([x for x in e if x["type"] == "relationship.met"]) >= 6)
    got = by_context(evs)
    assert set(got) == {"Coffee", "Call", "Declined", "Standup"}
    [coffee] = got["Coffee"]
    assert sorted(coffee["participants"]) == ["ada", "grace"]
    assert (coffee["duration_minutes"], coffee["mode"]) == (60, "in_person")
    assert coffee["depth"] == "deep_conversation" and coffee["initiated_by"] == "ada"
    assert coffee["occurred_at"].startswith(day.strftime("%Y-%m-%dT%H:%M"))
    assert coffee["recorded_by"] == f"sync:{sid}"
    [call] = got["Call"]
    assert call["mode"] == "remote" and sorted(call["participants"]) == ["ada", "linus"]
    [declined] = got["Declined"]
    assert sorted(declined["participants"]) == ["ada", "grace"]
    assert declined["depth"] == "brief_chat"
    assert len(got["Standup"]) == 3
    assert all(sorted(e["participants"]) == ["ada", "grace", "linus"] for e in got["Standup"])

    # A second run (nothing changed) records nothing.
    before = events(api, ws)
    s = sync_now(api, ws, sid)
    assert s["status"]["last_run"]["recorded"] == 0 and s["status"]["last_run"]["retracted"] == 0
    assert len(events(api, ws)) == len(before)

    # Move the coffee an hour later, delete the call, cancel the declined-attendee meeting.
    moved = cal.event_by_uid("coffee")
    moved.data = vevent(
        "coffee",
        day + timedelta(hours=1),
        60,
        "Coffee",
        [(ALICE, "ACCEPTED"), (GRACE, "ACCEPTED")],
        extra="SEQUENCE:1",
    )
    moved.save()
    cal.event_by_uid("call").delete()
    cancelled = cal.event_by_uid("declined")
    cancelled.data = vevent(
        "declined",
        day + timedelta(hours=5),
        10,
        "Declined",
        [(GRACE, "ACCEPTED")],
        extra="STATUS:CANCELLED\nSEQUENCE:1",
    )
    cancelled.save()
    s = sync_now(api, ws, sid)
    assert s["status"]["last_run"]["retracted"] == 3 and s["status"]["last_run"]["recorded"] == 1

    # The retractions are sent first, then the moved meeting: wait for all of them.
    evs = settle(
        api,
        ws,
        lambda e: (
            len([x for x in e if x["type"] == "event.retracted"]) >= 3
            and len(by_context(e).get("Coffee", [])) == 1
        ),
    )
    got = by_context(evs)
    assert set(got) == {"Coffee", "Standup"}
    [coffee2] = got["Coffee"]
    assert coffee2["event_id"] != coffee["event_id"]
    assert coffee2["occurred_at"].startswith((day + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    retracted = {e["retracted_event_id"] for e in evs if e["type"] == "event.retracted"}
    assert retracted == {coffee["event_id"], call["event_id"], declined["event_id"]}

    # And once more: nothing new.
    n = len(events(api, ws))
    s = sync_now(api, ws, sid)
    assert s["status"]["last_run"]["recorded"] == 0 and s["status"]["last_run"]["retracted"] == 0
    assert len(events(api, ws)) == n


def sync_metrics(stack: Stack) -> str:
    return httpx.get(stack.metrics_urls()["sync"], timeout=10).text


def test_a_wrong_password_is_the_source_error_and_other_sources_go_on(
    api: httpx.Client, ws: str, radicale: Dav, sync_stack: tuple[Stack, Settings]
) -> None:
    people(api, ws)
    cal = calendar(radicale, ws)
    day = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    cal.add_event(vevent("lunch", day, 90, "Lunch", [(GRACE, "ACCEPTED")]))
    url = radicale.url + f"{radicale.user}/{ws}/"
    bad = add_source(api, ws, url, radicale.user, "not-the-password", owner="ada")
    good = add_source(api, ws, url, radicale.user, radicale.password, owner="ada")
    s = sync_now(api, ws, bad)
    assert "authentication refused" in s["status"]["last_error"]
    assert s["status"]["failures"] >= 1 and s["status"]["last_success_at"] is None
    s = sync_now(api, ws, good)
    assert s["status"]["last_error"] is None
    settle(api, ws, lambda e: any(x.get("context") == "Lunch" for x in e))
    listed = api.get(f"/v1/workspaces/{ws}/sync-sources").json()["sources"]
    assert {x["source_id"] for x in listed} == {bad, good}
    assert "not-the-password" not in str(listed) and radicale.password not in str(listed)
    # The failing source backs off and tries again by itself (failures keeps counting).
    first = source(api, ws, bad)["status"]["failures"]
    from tests.sync.helpers import wait_until

    wait_until(lambda: source(api, ws, bad)["status"]["failures"] > first, 20, "a retry")
    ready = httpx.get(str(api.base_url) + "/readyz").json()
    assert ready["checks"]["sync"]["failing"] >= 1
    # The sync process's /metrics: each source's status, labelled by source id and kind only.
    text = sync_metrics(sync_stack[0])
    assert f'tieline_sync_source_failing{{kind="caldav",source_id="{bad}"}} 1.0' in text
    assert f'tieline_sync_source_failing{{kind="caldav",source_id="{good}"}} 0.0' in text
    assert f'tieline_sync_items_seen{{kind="caldav",source_id="{good}"}} 1.0' in text
    assert (
        f'tieline_sync_last_success_timestamp_seconds{{kind="caldav",source_id="{bad}"}} 0.0'
        in text
    )
    assert f'tieline_sync_next_run_timestamp_seconds{{kind="caldav",source_id="{good}"}}' in text
    assert ws not in text and radicale.user not in text
    # A source on a private address is refused (the sync must not reach the installation's
    # own network unless TIELINE_SYNC_ALLOW_PRIVATE says so).
    r = api.post(
        f"/v1/workspaces/{ws}/sync-sources",
        json={"url": "https://10.0.0.1/dav/", "username": "u", "password": "p", "owner": "ada"},
    )
    assert r.status_code == 422 and "url" in r.text, r.text
    # Removing a source forgets it.
    assert api.delete(f"/v1/workspaces/{ws}/sync-sources/{bad}").status_code == 200
    assert api.get(f"/v1/workspaces/{ws}/sync-sources/{bad}").status_code == 404
    assert bad not in sync_metrics(sync_stack[0])
