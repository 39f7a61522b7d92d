"""Losing touch (record a follow-up with one click and see it leave the list) and the record
forms (the API's field errors next to the fields; a recorded event in the relationship)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Locator, Page, Route, expect

from tests.browser.conftest import Network, refusing, screenshot, sign_in


def recorded_seq(form: Locator) -> int:
    """The stream sequence the page reports for the event it just recorded."""
    status = form.get_by_text("Recorded (event")
    expect(status).to_be_visible()
    found = re.search(r"Recorded \(event (\d+)", status.text_content() or "")
    assert found, status.text_content()
    return int(found.group(1))


def test_followed_up_records_the_event_and_the_tie_leaves_the_list(
    watched: Page, network: Network, shots: Path
) -> None:
    page = watched
    me = network.most_overdue()
    due = network.get(f"/people/{me}/follow-ups")["due"]
    assert len(due) >= 2
    sign_in(page, network, me=me)
    expect(page.get_by_role("heading", name="Losing touch")).to_be_visible()
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(len(due))
    assert [r.get_attribute("data-other") for r in rows.all()] == [d["other"] for d in due]
    screenshot(page, shots, "losing-touch")

    other = due[0]["other"]
    page.locator(f'tr[data-other="{other}"]').get_by_role("button", name="Followed up").click()
    expect(page.locator(f'tr[data-other="{other}"]')).to_have_count(0)
    expect(rows).to_have_count(len(due) - 1)
    expect(page.get_by_text("Recorded a follow-up with")).to_be_visible()

    assert other not in {d["other"] for d in network.get(f"/people/{me}/follow-ups")["due"]}
    latest = network.get(f"/relationships/{me}/{other}/timeline")["events"][-1]
    assert latest["type"] == "relationship.followed_up"
    assert latest["detail"]["from"] == me and latest["detail"]["to"] == other
    assert latest["recorded_by"] == "token:browser-tests"


def test_record_form_shows_the_api_field_errors_next_to_the_fields(
    watched: Page, network: Network, shots: Path
) -> None:
    page = watched
    a, b = network.busiest_pair()
    sign_in(page, network)
    page.goto(network.app_url + f"#/record?a={a}")
    form = page.locator("form.record")
    form.get_by_label("Other person").fill("nobody-like-this")
    form.get_by_role("button", name="Record “met”").click()
    error = form.locator('[data-field="participants"] .field-error')
    expect(error).to_contain_text("unknown person 'nobody-like-this'")
    expect(form.get_by_label("Person", exact=True)).to_have_attribute("aria-invalid", "true")
    screenshot(page, shots, "record-field-error")

    before = len(network.get(f"/relationships/{a}/{b}/timeline")["events"])
    form.get_by_label("Other person").fill(b)
    form.get_by_label("Depth").select_option("deep_conversation")
    form.get_by_role("button", name="Record “met”").click()
    seq = recorded_seq(form)
    expect(error).to_be_hidden()
    events = network.get(f"/relationships/{a}/{b}/timeline", min_seq=seq)["events"]
    assert len(events) == before + 1
    assert any(e["detail"].get("depth") == "deep_conversation" for e in events[-3:])


#: The page's writes: POST /v1/workspaces/{ws}/events.
WRITES = re.compile(r".*/v1/workspaces/[^/]+/events$")


def helped_form(page: Page, network: Network, what: str) -> Locator:
    """Signed in, the "Helped" form of the busiest pair, with ``what`` typed in."""
    a, b = network.busiest_pair()
    sign_in(page, network)
    page.goto(network.app_url + f"#/record?a={a}&b={b}")
    page.get_by_label("Helped", exact=True).check()
    form = page.locator("form.record")
    form.get_by_label("What (optional)").fill(what)
    return form


def test_each_record_form_posts_its_event(watched: Page, network: Network) -> None:
    page = watched
    a, b = network.busiest_pair()
    people = [e["person_id"] for e in network.lines if e["type"] == "person.added"]
    third = next(p for p in people if p not in (a, b))
    sign_in(page, network)
    page.goto(network.app_url + f"#/record?a={a}&b={b}")
    fills = {
        "Followed up": {"Channel": "phone"},
        "Helped": {"What (optional)": "reviewed a talk"},
        "Introduced": {"Introducer": third},
    }
    for kind, values in fills.items():
        page.get_by_label(kind, exact=True).check()
        form = page.locator("form.record")
        for label, value in values.items():
            control = form.get_by_label(label)
            if label == "Channel":
                control.select_option(value)
            else:
                control.fill(value)
        form.locator("button[type=submit]").click()
        seq = recorded_seq(form)
    timeline = network.get(f"/relationships/{a}/{b}/timeline", min_seq=seq)
    types = [e["type"] for e in timeline["events"][-3:]]
    assert sorted(types) == sorted(
        ["relationship.followed_up", "relationship.helped", "relationship.introduced"]
    )


def test_a_failed_refresh_after_a_follow_up_does_not_invite_a_second_one(
    watched: Page, network: Network
) -> None:
    """The follow-up is recorded but the list's read-your-writes refresh fails (the server
    answers 503): the page says it was recorded and keeps the button disabled, instead of
    "could not record ... trying again", which would have recorded it twice."""
    page = watched
    me = network.most_overdue()
    due = network.get(f"/people/{me}/follow-ups")["due"]
    other = due[-1]["other"]
    before = len(network.get(f"/relationships/{me}/{other}/timeline")["events"])
    refresh = re.compile(r".*/v1/workspaces/[^/]+/people/[^/]+/follow-ups\?(.*&)?min_seq=.*")
    unavailable, failed = refusing()
    sign_in(page, network, me=me)
    row = page.locator(f'tr[data-other="{other}"]')
    expect(row).to_have_count(1)
    page.route(refresh, unavailable)
    button = row.get_by_role("button", name="Followed up")
    button.click()
    expect(page.get_by_text("The list could not be refreshed")).to_be_visible()
    expect(page.get_by_text("Recorded a follow-up with")).to_be_visible()
    expect(button).to_be_disabled()
    assert failed, "the refresh was answered 503"
    page.unroute(refresh, unavailable)
    events = network.get(f"/relationships/{me}/{other}/timeline")["events"]
    assert len(events) == before + 1
    assert events[-1]["type"] == "relationship.followed_up"


def test_choosing_who_i_am_on_losing_touch_shows_my_list(watched: Page, network: Network) -> None:
    """Signed in without a person id, Losing touch asks who you are; "Show" draws the list at
    once (the page is already at #/losing-touch, so setting that hash again changes nothing)."""
    page = watched
    me = network.most_overdue()
    sign_in(page, network)
    page.goto(network.app_url + "#/losing-touch")
    page.get_by_label("Your person id").fill(me)
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_text("whose time since the last contact is past")).to_be_visible()
    expect(page.locator("tbody tr").first).to_be_visible()


def test_a_changed_form_after_a_lost_answer_is_not_locked_out(
    watched: Page, network: Network
) -> None:
    """A write lands but its answer is lost; the user changes a value and submits again. The
    server refuses the reused event id (409: same id, other content). The page says the earlier
    attempt was recorded and takes a new id, so the next submit records the new values instead
    of failing with 409 until the page is reloaded."""
    page = watched
    a, b = network.busiest_pair()
    before = len(network.get(f"/relationships/{a}/{b}/timeline")["events"])
    lost: list[int] = []

    def answer_lost(route: Route) -> None:
        if lost:
            route.continue_()
            return
        lost.append(route.fetch().status)  # the server records it ...
        route.abort()  # ... and the page never hears back

    form = helped_form(page, network, "lent a book")
    page.route(WRITES, answer_lost)
    form.locator("button[type=submit]").click()
    expect(form.get_by_text("Submitting again records the event once")).to_be_visible()
    assert lost and lost[0] in (200, 201), lost
    form.get_by_label("What (optional)").fill("lent two books")
    form.locator("button[type=submit]").click()
    expect(form.get_by_text("An earlier attempt was recorded")).to_be_visible()
    form.locator("button[type=submit]").click()
    seq = recorded_seq(form)
    page.unroute(WRITES, answer_lost)
    events = network.get(f"/relationships/{a}/{b}/timeline", min_seq=seq)["events"]
    assert len(events) == before + 2


def test_follow_ups_that_fail_to_load_say_so_and_can_be_tried_again(
    watched: Page, network: Network
) -> None:
    """The first read of the follow-ups fails (503): the list says so with "Try again" (not a
    spinner left next to a general error), and trying again shows the list."""
    page = watched
    me = network.most_overdue()
    due = network.get(f"/people/{me}/follow-ups")["due"]
    reads = re.compile(r".*/v1/workspaces/[^/]+/people/[^/]+/follow-ups(\?.*)?$")
    unavailable_once, refused = refusing(times=1)
    page.route(reads, unavailable_once)
    sign_in(page, network, me=me)
    expect(page.get_by_text("Could not load the follow-ups")).to_be_visible()
    expect(page.get_by_text("Loading follow-ups")).to_have_count(0)
    page.get_by_role("button", name="Try again").click()
    expect(page.locator("tbody tr")).to_have_count(len(due))
    assert len(refused) == 1


#: How the API refuses a token that expired or was revoked.
UNAUTHORIZED = '{"type": "about:blank", "title": "Unauthorized", "status": 401}'


def test_what_was_typed_survives_a_refused_token_and_signing_in_again(
    watched: Page, network: Network
) -> None:
    """The token is refused (401: it expired or was revoked) when the user submits a record
    form. The page sends them to sign in, as before; after signing in again it is back on
    that form with what they had typed, says nothing was recorded, and submitting records it
    once. Before, the form and what was in it were gone."""
    page = watched
    a, b = network.busiest_pair()
    before = len(network.get(f"/relationships/{a}/{b}/timeline")["events"])
    refused: list[str] = []

    def expired(route: Route) -> None:
        refused.append(route.request.method)
        route.fulfill(
            status=401, headers={"content-type": "application/problem+json"}, body=UNAUTHORIZED
        )

    form = helped_form(page, network, "read the draft of a talk")
    page.route(WRITES, expired)
    form.locator("button[type=submit]").click()
    expect(page.get_by_role("heading", name="Sign in to tieline")).to_be_visible()
    expect(page.get_by_text("did not accept this token (401")).to_be_visible()
    page.unroute(WRITES, expired)
    assert refused == ["POST"]
    page.get_by_label("API token").fill(network.token)
    page.get_by_label("Workspace").fill(network.ws)
    page.get_by_role("button", name="Sign in").click()

    form = page.locator("form.record")
    expect(form).to_have_attribute("data-type", "relationship.helped")
    expect(form.get_by_label("What (optional)")).to_have_value("read the draft of a talk")
    expect(form.get_by_label("Helper")).to_have_value(a)
    expect(form.get_by_text("Nothing was recorded")).to_be_visible()
    form.locator("button[type=submit]").click()
    seq = recorded_seq(form)
    events = network.get(f"/relationships/{a}/{b}/timeline", min_seq=seq)["events"]
    assert len(events) == before + 1
    assert events[-1]["type"] == "relationship.helped"
