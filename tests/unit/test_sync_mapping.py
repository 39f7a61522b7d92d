"""The calendar and address-book mapping of the sync service (pure functions, no servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tieline.services.sync.contacts import commands, parse_contact
from tieline.services.sync.directory import Directory, person_id_for_email
from tieline.services.sync.mapping import (
    Owner,
    depth_for,
    meeting_for,
    occurrences,
    retraction_for,
)
from tieline.services.tools.importer import person_id_for

NOW = datetime(2025, 3, 20, 12, 0, tzinfo=UTC)
OWNER = Owner("ada", frozenset({"ada@example.org"}))
PEOPLE = {"grace@example.org": "grace", "linus@example.org": "linus"}


def ics(*events: str) -> str:
    body = "".join(f"BEGIN:VEVENT\r\n{e.strip()}\r\nEND:VEVENT\r\n" for e in events)
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n{body}END:VCALENDAR\r\n"


def meetings(text: str, days: int = 30) -> list[dict[str, object]]:
    out = []
    for occ in occurrences(text, NOW - timedelta(days=days), NOW):
        m = meeting_for("src_1", occ, OWNER, PEOPLE.get, NOW)
        if m is not None:
            out.append(m)
    return out


COFFEE = """UID:c1
DTSTART:20250318T090000Z
DTEND:20250318T100000Z
SUMMARY:Coffee
ORGANIZER:mailto:grace@example.org
ATTENDEE;PARTSTAT=ACCEPTED:mailto:ada@example.org
ATTENDEE;PARTSTAT=ACCEPTED:mailto:grace@example.org"""


def test_a_past_meeting_with_a_person_is_one_met_event() -> None:
    [m] = meetings(ics(COFFEE))
    assert m["participants"] == ["ada", "grace"] and m["initiated_by"] == "grace"
    assert (m["duration_minutes"], m["depth"], m["mode"]) == (60, "deep_conversation", "in_person")
    assert m["occurred_at"] == "2025-03-18T09:00:00+00:00" and m["context"] == "Coffee"


def test_the_id_is_stable_and_changes_with_the_meeting() -> None:
    assert meetings(ics(COFFEE)) == meetings(ics(COFFEE))
    moved = COFFEE.replace("T090000Z", "T093000Z").replace("T100000Z", "T103000Z")
    assert meetings(ics(moved))[0]["event_id"] != meetings(ics(COFFEE))[0]["event_id"]
    bumped = COFFEE + "\nSEQUENCE:2"
    assert meetings(ics(bumped))[0]["event_id"] != meetings(ics(COFFEE))[0]["event_id"]
    r1, r2 = (retraction_for(str(meetings(ics(COFFEE))[0]["event_id"]), x) for x in "ab")
    assert r1["event_id"] == r2["event_id"]


def test_not_meetings_future_cancelled_declined_owner_and_strangers() -> None:
    future = COFFEE.replace("20250318", "20250321")
    ongoing = (
        COFFEE.replace("T100000Z", "T100000Z")
        .replace("20250318", "20250320")
        .replace("T090000Z", "T113000Z")
        .replace("T100000Z", "T123000Z")
    )
    cancelled = COFFEE + "\nSTATUS:CANCELLED"
    owner_declined = COFFEE.replace("PARTSTAT=ACCEPTED:mailto:ada", "PARTSTAT=DECLINED:mailto:ada")
    stranger = COFFEE.replace("grace@", "nobody@")
    all_day = COFFEE.replace("DTSTART:20250318T090000Z", "DTSTART;VALUE=DATE:20250318").replace(
        "DTEND:20250318T100000Z", "DTEND;VALUE=DATE:20250319"
    )
    for text in (future, ongoing, cancelled, owner_declined, stranger, all_day):
        assert meetings(ics(text)) == [], text


def test_declined_attendees_rooms_are_left_out_and_video_links_are_remote() -> None:
    text = COFFEE + (
        "\nATTENDEE;PARTSTAT=DECLINED:mailto:linus@example.org"
        "\nATTENDEE;CUTYPE=ROOM:mailto:room@example.org"
        "\nDESCRIPTION:Join https://meet.google.com/abc-defg-hij"
    )
    [m] = meetings(ics(text))
    assert m["participants"] == ["ada", "grace"] and m["mode"] == "remote"


def test_recurring_events_expand_inside_the_window_with_overrides() -> None:
    series = """UID:s1
DTSTART:20250301T080000Z
DTEND:20250301T081500Z
RRULE:FREQ=WEEKLY;COUNT=8
SUMMARY:Standup
ATTENDEE;PARTSTAT=ACCEPTED:mailto:grace@example.org
ATTENDEE;PARTSTAT=ACCEPTED:mailto:linus@example.org"""
    moved = """UID:s1
RECURRENCE-ID:20250308T080000Z
DTSTART:20250308T090000Z
DTEND:20250308T093000Z
SUMMARY:Standup (long)
ATTENDEE;PARTSTAT=ACCEPTED:mailto:grace@example.org"""
    got = meetings(ics(series, moved), days=15)  # from March 5th: the 8th, 15th (not the 22nd)
    assert [(m["occurred_at"], m["context"]) for m in got] == [
        ("2025-03-08T09:00:00+00:00", "Standup (long)"),
        ("2025-03-15T08:00:00+00:00", "Standup"),
    ]
    assert got[0]["participants"] == ["ada", "grace"]
    assert len({m["event_id"] for m in meetings(ics(series, moved), days=30)}) == 3


def test_depth_from_duration_and_size() -> None:
    assert depth_for(10, 2) == "brief_chat"
    assert depth_for(30, 2) == "conversation"
    assert depth_for(60, 2) == "deep_conversation"
    assert depth_for(60, 4) == "conversation"
    assert depth_for(150, 4) == "meal_or_activity"
    assert depth_for(45, 12) == "brief_chat" and depth_for(90, 12) == "conversation"


def test_person_ids_agree_with_tieline_import() -> None:
    assert person_id_for_email("ws", "Mailto:Grace@Example.org") == person_id_for(
        "ws", email="grace@example.org"
    )


def test_cards_fold_by_address_and_update_only_what_changed() -> None:
    grace_id = person_id_for_email("ws", "grace@example.org")
    d = Directory(
        "ws",
        {"ada", grace_id},
        {"ada@example.org": "ada", "grace@example.org": grace_id},
        {"ada": {"display_name": "Ada", "email": "ada@example.org", "phone": "+44 20 7946 0000"}},
    )
    cards = [
        parse_contact(
            "/b/1.vcf",
            "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:1\r\nFN:Ada King\r\n"
            "TEL:+44 (20) 7946-0000\r\nEND:VCARD\r\n",
        ),
        parse_contact(
            "/b/2.vcf",
            "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:2\r\nFN:Linus\r\n"
            "EMAIL:linus@example.org\r\nEND:VCARD\r\n",
        ),
        parse_contact(
            "/b/3.vcf",
            "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:3\r\nFN:L. T.\r\n"
            "EMAIL:LINUS@example.org\r\nORG:Linux\r\nEND:VCARD\r\n",
        ),
    ]
    todo, uids = commands("src", [c for c in cards if c], d, {})
    linus = person_id_for_email("ws", "linus@example.org")
    assert uids == {"1": "ada", "2": linus, "3": linus}
    [upd, add] = sorted(todo, key=lambda t: t["type"], reverse=True)
    assert upd == {**upd, "type": "person.updated", "person_id": "ada", "display_name": "Ada King"}
    assert "phone" not in upd  # the same number, written differently
    assert (add["person_id"], add["display_name"], add["organization"]) == (linus, "Linus", "Linux")
    again, _ = commands("src", [c for c in cards if c], d, {})
    assert again == todo
