"""Signing in (and the clear messages for a wrong token or workspace), the people directory
(paged, searchable, forgotten people shown as such) and a person's page (ties by strength with
tier badges; give and take with one-sided ties flagged)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from playwright.sync_api import Page, expect
from tieline.plumbing.config import Settings

from tests.browser.conftest import (
    Network,
    holding,
    refusing,
    screenshot,
    sign_in,
    token_for,
    wait_until_held,
)


def test_sign_in_keeps_the_token_in_session_storage(watched: Page, network: Network) -> None:
    page = watched
    sign_in(page, network)
    expect(page.get_by_role("heading", name="People")).to_be_visible()
    stored = page.evaluate("() => sessionStorage.getItem('tieline.token')")
    assert stored == network.token
    assert page.evaluate("() => localStorage.length") == 0
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to tieline")).to_be_visible()
    assert page.evaluate("() => sessionStorage.getItem('tieline.token')") is None


def test_a_wrong_token_gets_the_sign_in_message(
    watched: Page, network: Network, shots: Path
) -> None:
    page = watched
    sign_in(page, network, token="tl_not_a_real_token")
    message = page.locator("#signin-message")
    expect(message).to_contain_text("did not accept this token (401 Unauthorized)")
    expect(page.get_by_label("API token")).to_be_focused()
    screenshot(page, shots, "sign-in-refused")
    assert page.evaluate("() => sessionStorage.getItem('tieline.token')") is None


def test_a_token_of_another_workspace_gets_the_403_message(
    watched: Page, network: Network, stack_settings: Settings
) -> None:
    other = token_for(stack_settings, f"other-{uuid.uuid4().hex[:8]}", "read")
    sign_in(watched, network, token=other)
    expect(watched.locator("#signin-message")).to_contain_text(
        f'not for workspace "{network.ws}" (403 Forbidden)'
    )


def test_directory_is_paged_and_searchable_and_opens_a_person(
    watched: Page, network: Network, shots: Path
) -> None:
    page = watched
    people = [e for e in network.lines if e["type"] == "person.added"]
    sign_in(page, network)
    rows = page.locator("#people-results tbody tr")
    expect(rows).to_have_count(25)
    page.get_by_role("button", name="Next →").click()
    expect(rows).to_have_count(len(people) - 25)
    page.get_by_role("button", name="← Previous").click()
    expect(rows).to_have_count(25)
    screenshot(page, shots, "people")

    someone = people[7]
    last_name = someone["display_name"].split()[-1]
    page.get_by_label("Search people").fill(last_name)
    directory = network.get("/people", limit=1000)["people"]
    expected = [p for p in directory if last_name.lower() in p["display_name"].lower()]
    expect(rows).to_have_count(len(expected))
    page.get_by_role("link", name=someone["display_name"]).first.click()

    pid = someone["person_id"]
    expect(page.get_by_role("heading", level=1)).to_have_text(someone["display_name"])
    ties = network.get(f"/people/{pid}/relationships", order="strength", limit=50)["relationships"]
    tie_rows = page.locator("section[aria-labelledby=ties-h] tbody tr")
    expect(tie_rows).to_have_count(len(ties))
    badges = tie_rows.locator(".badge[class*=tier-]")
    assert badges.all_text_contents() == [t["tier"] for t in ties]
    shown = [float(x) for x in tie_rows.locator(".score-value").all_text_contents()]
    assert shown == sorted(shown, reverse=True)
    screenshot(page, shots, "person")


def test_give_and_take_flags_one_sided_ties(watched: Page, network: Network) -> None:
    page = watched
    people = [e["person_id"] for e in network.lines if e["type"] == "person.added"]
    flagged = {
        p: [t for t in network.get(f"/people/{p}/give-and-take")["ties"] if t["one_sided"]]
        for p in people
    }
    person = max(flagged, key=lambda p: len(flagged[p]))
    assert flagged[person], "the simulation has sellers, so some tie is one-sided"
    sign_in(page, network)
    page.goto(network.app_url + f"#/person/{person}")
    give = page.locator("section[aria-labelledby=give-h]")
    expect(give.locator("tbody tr")).to_have_count(
        len(network.get(f"/people/{person}/give-and-take")["ties"])
    )
    expect(give.locator("tbody tr.flagged")).to_have_count(len(flagged[person]))
    give.get_by_label("Only one-sided ties").check()
    expect(give.locator("tbody tr")).to_have_count(len(flagged[person]))


def test_forgotten_people_are_shown_as_such(watched: Page, network: Network) -> None:
    page = watched
    quiet = min(
        (e["person_id"] for e in network.lines if e["type"] == "person.added"),
        key=lambda p: sum(p in str(e) for e in network.lines),
    )
    r = network.api.post(f"/v1/workspaces/{network.ws}/people/{quiet}/forget")
    assert r.status_code == 200, r.text
    sign_in(page, network)
    page.get_by_label("Search people").fill(quiet)
    row = page.locator("#people-results tbody tr", has=page.locator(f"code:text-is('{quiet}')"))
    expect(row.locator(".badge.forgotten")).to_have_text("forgotten")
    row.get_by_role("link").click()
    expect(page.get_by_text("asked to be forgotten")).to_be_visible()


def test_a_search_answered_late_does_not_replace_the_list_shown_after_it(
    watched: Page, network: Network
) -> None:
    """Typing a search reads the whole directory; clearing the box before that answer is in
    shows the first page again, and the search's late answer must not be drawn over it."""
    page = watched
    sign_in(page, network)
    rows = page.locator("#people-results tbody tr")
    expect(rows).to_have_count(25)
    directory_read = re.compile(r".*/v1/workspaces/[^/]+/people\?(.*&)?limit=1000(&.*)?$")
    hold, held = holding()
    page.route(directory_read, hold)
    page.get_by_label("Search people").fill("no such person anywhere")
    expect(page.get_by_text("Searching the directory")).to_be_visible()
    wait_until_held(page, held, "the search asks for the directory")
    page.get_by_label("Search people").fill("")
    expect(rows).to_have_count(25)
    page.unroute(directory_read, hold)  # continues the held read: its answer comes in now
    expect(page.get_by_text("people match")).to_have_count(0)
    page.wait_for_timeout(1000)  # room for the late answer to be drawn, were it drawn
    expect(page.get_by_text("people match")).to_have_count(0)
    expect(rows).to_have_count(25)


def test_a_filter_after_a_live_update_reads_at_least_what_was_shown(
    watched: Page, network: Network
) -> None:
    """A live update makes a person's page read its lists again at that event's sequence; a
    read the page starts later without one (the one-sided filter) still asks for at least that
    sequence, so it cannot show the lists from before the update."""
    page = watched
    people = [e["person_id"] for e in network.lines if e["type"] == "person.added"]
    person, other = people[5], people[6]
    sign_in(page, network)
    page.goto(network.app_url + f"#/person/{person}")
    expect(page.locator("#main")).to_have_attribute("data-rendered", f"#/person/{person}")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "open")
    reread = re.compile(rf".*/people/{person}/give-and-take\?(.*&)?min_seq=(\d+).*")
    with page.expect_request(reread, timeout=20_000) as live_reload:
        r = network.api.post(
            f"/v1/workspaces/{network.ws}/events",
            json={
                "type": "relationship.followed_up",
                "from_person": person,
                "to_person": other,
                "channel": "email",
            },
        )
        assert r.status_code in (200, 201, 202), r.text
    seq = r.json()["seq"]
    found = reread.match(live_reload.value.url)
    assert found and int(found.group(2)) >= seq
    with page.expect_request(re.compile(r".*/give-and-take\?.*one_sided=true.*")) as filtered:
        page.get_by_label("Only one-sided ties").check()
    again = reread.match(filtered.value.url)
    assert again, f"the filtered read named no min_seq: {filtered.value.url}"
    assert int(again.group(2)) >= seq


def test_next_pressed_twice_moves_one_page(watched: Page, network: Network) -> None:
    """The pager is off while a page loads, and the paging state moves only once it is in:
    Enter pressed twice on "Next" (a keyboard user's double press; a mouse's second click
    misses, as the pager moves up while the page loads) shows page 2 as page 2, and
    "Previous" goes back to page 1."""
    page = watched
    people = [e for e in network.lines if e["type"] == "person.added"]
    sign_in(page, network)
    rows = page.locator("#people-results tbody tr")
    expect(rows).to_have_count(25)
    next_page = re.compile(r".*/v1/workspaces/[^/]+/people\?(.*&)?(cursor|after)=.*")
    hold, _ = holding()
    page.route(next_page, hold)  # page 2 arrives only after both presses
    page.get_by_role("button", name="Next →").focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Enter")
    page.unroute(next_page, hold)  # lets the held reads through
    expect(rows).to_have_count(len(people) - 25)
    expect(page.get_by_text("Page 2", exact=True)).to_be_visible()
    page.get_by_role("button", name="← Previous").click()
    expect(rows).to_have_count(25)
    expect(page.get_by_text("Page 1", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="← Previous")).to_be_disabled()


def test_a_page_that_fails_to_load_says_so_and_can_be_tried_again(
    watched: Page, network: Network
) -> None:
    """A failed read of the directory's first page shows the error with "Try again" (not a
    spinner left next to a general error), and trying again shows the page."""
    page = watched
    first_page = re.compile(r".*/v1/workspaces/[^/]+/people\?(.*&)?limit=25(&.*)?$")
    unavailable_once, refused = refusing(times=1)
    page.route(first_page, unavailable_once)
    sign_in(page, network)
    expect(page.get_by_text("Could not load people")).to_be_visible()
    expect(page.get_by_text("Loading people")).to_have_count(0)
    page.get_by_role("button", name="Try again").click()
    expect(page.locator("#people-results tbody tr")).to_have_count(25)
    assert len(refused) == 1


def test_a_name_that_cannot_be_read_shows_the_id_not_an_error_page(
    watched: Page, network: Network
) -> None:
    """One tie's name cannot be read (its person route answers 503): the person's page still
    shows every tie, that one by its id, instead of failing as a whole."""
    page = watched
    first_page = {p["person_id"] for p in network.get("/people", limit=25)["people"]}
    people = [e["person_id"] for e in network.lines if e["type"] == "person.added"]
    person, other, count = next(
        (p, t["other"], len(ties["relationships"]))
        for p in people
        for ties in [network.get(f"/people/{p}/relationships", order="strength", limit=50)]
        for t in ties["relationships"]
        if t["other"] not in first_page
    )
    unreadable = re.compile(rf".*/v1/workspaces/[^/]+/people/{re.escape(other)}$")
    busy, refused = refusing()
    page.route(unreadable, busy)
    sign_in(page, network)
    page.goto(network.app_url + f"#/person/{person}")
    tie_rows = page.locator("section[aria-labelledby=ties-h] tbody tr")
    expect(tie_rows).to_have_count(count)
    expect(tie_rows.get_by_role("link", name=other, exact=True).first).to_be_visible()
    expect(page.get_by_text("Could not load")).to_have_count(0)
    assert refused, "the name was asked for, and refused"
