"""Introductions: warm paths with each hop's strength, the vouch check, and the double opt-in
flow (request, both consents, the introduction, its outcome) clicked through in the page."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import APIResponse, Page, Route, expect

from tests.browser.conftest import (
    Network,
    holding,
    request_introduction,
    screenshot,
    sign_in,
    wait_until_held,
)


def a_warm_path(network: Network) -> tuple[str, str, list[dict[str, Any]]]:
    """A source, a target it does not know, and the warm paths between them (at least one
    through someone)."""
    people = [e["person_id"] for e in network.lines if e["type"] == "person.added"]
    found = None
    for source in people:
        mine = {
            t["other"]: t for t in network.get(f"/people/{source}/relationships")["relationships"]
        }
        friends = [o for o, t in mine.items() if t["tier"] in ("intimate", "close", "friend")]
        for via in friends:
            theirs = network.get(f"/people/{via}/relationships")["relationships"]
            for target in (t["other"] for t in theirs if t["other"] not in mine):
                if target == source:
                    continue
                paths = network.get(f"/people/{source}/warm-paths", target=target)["paths"]
                if any(len(p["path"]) > 2 for p in paths):
                    found = (source, target, paths)
                    break
            if found:
                break
        if found:
            break
    assert found, "the simulated network has a warm path through someone"
    return found


def test_warm_paths_and_vouch_check(watched: Page, network: Network) -> None:
    page = watched
    source, target, paths = a_warm_path(network)
    sign_in(page, network)
    page.goto(network.app_url + f"#/introductions?from={source}")
    section = page.locator("section[aria-labelledby=paths-h]")
    section.get_by_label("To").fill(target)
    section.get_by_role("button", name="Find warm paths").click()
    items = section.locator("ol.paths > li")
    expect(items).to_have_count(len(paths))
    hops = items.first.locator(".hop").all_text_contents()
    assert [h.strip(" —→") for h in hops] == [f"{s:.1f}" for s in paths[0]["link_scores"]]

    via = next(p for p in paths if len(p["path"]) > 2)["path"][1]
    check = network.get("/introductions/check", introducer=via, a=source, b=target)
    vouch = page.locator("section[aria-labelledby=vouch-h]")
    vouch.get_by_label("Introducer").fill(via)
    vouch.get_by_label("Other person").fill(target)
    vouch.get_by_role("button", name="Check").click()
    verdict = "can vouch for both" if check["can_introduce"] else "cannot vouch for both"
    expect(vouch.get_by_text(verdict)).to_be_visible()


def test_double_opt_in_flow(watched: Page, network: Network, shots: Path) -> None:
    page = watched
    people = [e for e in network.lines if e["type"] == "person.added"]
    requester, introducer, target = (p["person_id"] for p in people[10:13])
    name = {p["person_id"]: p["display_name"] for p in people}
    flow = request_introduction(page, network, requester, introducer, target)
    row = flow.locator("tbody tr").first
    expect(row.locator(".badge")).to_have_text("awaiting consent")
    row.get_by_role("button", name=f"{name[requester]} agrees").click()
    expect(row.get_by_role("button", name=f"{name[requester]} agrees")).to_have_count(0)
    row.get_by_role("button", name=f"{name[target]} agrees").click()
    expect(row.locator(".badge")).to_have_text("ready")
    row.get_by_role("button", name="Make the introduction").click()
    expect(row.locator(".badge")).to_have_text("made")
    screenshot(page, shots, "introductions")
    row.get_by_role("button", name="Outcome: met").click()
    expect(row.locator(".badge")).to_have_text("outcome: met")
    [intro] = [
        i
        for i in network.get("/introductions", person=requester)["introductions"]
        if i["introducer"] == introducer and i["target"] == target
    ]
    assert intro["status"] == "outcome: met"
    assert intro["requester_consent"] and intro["target_consent"]


LISTING = re.compile(r".*/v1/workspaces/[^/]+/introductions(\?.*)?$")


def open_with_the_list_held(
    page: Page, network: Network, n: int
) -> tuple[str, Callable[[Route], None], list[Route]]:
    """Signed in as the ``n``th simulated person, Introductions opened with its list's read
    held (not answered yet); (the ``n+1``th person, the handler, the held reads)."""
    people = [e["person_id"] for e in network.lines if e["type"] == "person.added"]
    hold, held = holding()
    page.route(LISTING, hold)
    sign_in(page, network, me=people[n])
    page.goto(network.app_url + "#/introductions")
    wait_until_held(page, held, "the introductions view asks for its list")
    return people[n + 1], hold, held


def test_a_field_clicked_while_the_view_loads_keeps_the_focus(
    watched: Page, network: Network
) -> None:
    """A view takes the focus to its heading once its data is in, but not from a field the user
    is already typing in (the text would go to the heading and be lost). The list's answer is
    held until the user has filled a field, then let through."""
    page = watched
    introducer, hold, _ = open_with_the_list_held(page, network, 20)
    field = page.locator("section[aria-labelledby=flow-h]").get_by_label("Introducer")
    field.fill(introducer)
    expect(page.locator("#main")).to_have_attribute("aria-busy", "true")
    page.unroute(LISTING, hold)  # lets the held reads through
    expect(page.locator("#main")).to_have_attribute("data-rendered", "#/introductions")
    expect(field).to_be_focused()
    page.keyboard.type("x")
    expect(field).to_have_value(introducer + "x")

    page.goto(network.app_url + "#/people")  # untouched, a view still takes the focus
    expect(page.locator("#main")).to_have_attribute("data-rendered", "#/people")
    expect(page.get_by_role("heading", level=1)).to_be_focused()


def test_an_older_answer_arriving_late_does_not_replace_a_newer_one(
    watched: Page, network: Network
) -> None:
    """After a request the view reads its list again (read-your-writes); if its first read is
    answered only after that, the older list must not replace the newer one. The first read's
    real answer is fetched at once and delivered after the new row is shown."""
    page = watched
    people = [e["person_id"] for e in network.lines if e["type"] == "person.added"]
    requester, introducer, target = people[30:33]
    listing = re.compile(r".*/v1/workspaces/[^/]+/introductions(\?.*)?$")
    late: list[tuple[Route, APIResponse]] = []

    def first_answer_late(route: Route) -> None:
        if late:
            route.continue_()
        else:
            late.append((route, route.fetch()))

    page.route(listing, first_answer_late)
    flow = request_introduction(page, network, requester, introducer, target)
    badge = flow.locator("tbody tr").first.locator(".badge")
    expect(badge).to_have_text("awaiting consent")
    assert late, "the view's first read was held"
    route, answer = late[0]
    assert answer.json()["introductions"] == [], "the held answer is from before the request"
    with page.expect_response(listing) as delivered:
        route.fulfill(response=answer)
    delivered.value.finished()
    page.wait_for_timeout(1000)  # room for the old answer to be drawn, were it drawn
    expect(badge).to_have_text("awaiting consent")
    expect(flow.get_by_text("No introductions yet.")).to_have_count(0)


def test_a_step_clicked_again_on_a_redrawn_row_records_it_once(
    watched: Page, network: Network
) -> None:
    """While a consent is being recorded, a live update redraws the list with the step's
    button enabled again; clicking it sends the same event id, so the step is recorded once."""
    page = watched
    people = [e["person_id"] for e in network.lines if e["type"] == "person.added"]
    requester, introducer, target, other = people[34:38]
    name = {p["person_id"]: p["display_name"] for p in network.lines if p["type"] == "person.added"}
    flow = request_introduction(page, network, requester, introducer, target)
    agree = flow.locator("tbody tr").first.get_by_role("button", name=f"{name[requester]} agrees")
    expect(agree).to_be_enabled()

    writes = re.compile(r".*/v1/workspaces/[^/]+/events$")
    held: list[Route] = []
    sent: list[dict[str, object]] = []

    def consent(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        if route.request.method != "POST" or body.get("type") != "introduction.consented":
            route.continue_()
            return
        sent.append(body)
        if held:
            route.continue_()
        else:
            held.append(route)  # the first click's write, answered late

    page.route(writes, consent)
    agree.click()
    expect(agree).to_be_disabled()
    r = network.api.post(  # someone else's request: a live update that redraws the list
        f"/v1/workspaces/{network.ws}/events",
        json={
            "type": "introduction.requested",
            "introduction_id": str(uuid.uuid4()),
            "requester": requester,
            "introducer": introducer,
            "target": other,
        },
    )
    assert r.status_code in (200, 201, 202), r.text
    expect(flow.locator("tbody tr")).to_have_count(2)
    again = flow.locator("tbody tr").nth(1).get_by_role("button", name=f"{name[requester]} agrees")
    expect(again).to_be_enabled()
    again.click()
    expect(flow.get_by_text(f"{name[requester]} agrees: recorded.")).to_be_visible()
    wait_until_held(page, held, "the first click's consent")
    held[0].continue_()
    page.unroute(writes, consent)
    assert len(sent) == 2
    assert sent[0]["event_id"] == sent[1]["event_id"], "the redrawn button sent another event id"


def test_an_earlier_search_answered_late_does_not_replace_the_later_one(
    watched: Page, network: Network
) -> None:
    """Warm paths to one person, then (before that answer is in) to another: the first answer,
    delivered last, is not drawn over the second's paths."""
    page = watched
    source, target, paths = a_warm_path(network)
    search = re.compile(r".*/warm-paths\?(.*&)?target=nobody-known-here.*")
    hold, held = holding()
    page.route(search, hold)
    sign_in(page, network)
    page.goto(network.app_url + f"#/introductions?from={source}")
    section = page.locator("section[aria-labelledby=paths-h]")
    section.get_by_label("To").fill("nobody-known-here")
    section.get_by_role("button", name="Find warm paths").click()
    expect(section.get_by_text("Looking for paths")).to_be_visible()
    section.get_by_label("To").fill(target)
    section.get_by_role("button", name="Find warm paths").click()
    items = section.locator("ol.paths > li")
    expect(items).to_have_count(len(paths))
    wait_until_held(page, held, "the first search")
    with page.expect_response(search) as late:
        page.unroute(search, hold)  # the first search's answer comes in now
    late.value.finished()
    page.wait_for_timeout(1000)  # room for the late answer to be drawn, were it drawn
    expect(items).to_have_count(len(paths))
    expect(section.locator(".notice")).to_have_count(0)


def test_a_token_refused_while_the_view_loads_keeps_the_page_and_what_was_typed(
    watched: Page, network: Network
) -> None:
    """The token expired: the introductions view's first read is refused (401) while the user
    is already typing a request. The page goes to sign in; after signing in again it is back
    on Introductions with the field as typed. (The view that met the 401 used to finish
    drawing after it, and took the kept draft and the page to return to with it.)"""
    page = watched
    introducer, hold, held = open_with_the_list_held(page, network, 22)
    flow = page.locator("section[aria-labelledby=flow-h]")
    flow.get_by_label("Introducer").fill(introducer)
    held[0].fulfill(
        status=401,
        headers={"content-type": "application/problem+json"},
        body='{"type": "about:blank", "title": "Unauthorized", "status": 401}',
    )
    expect(page.get_by_role("heading", name="Sign in to tieline")).to_be_visible()
    page.unroute(LISTING, hold)
    page.get_by_label("API token").fill(network.token)
    page.get_by_label("Workspace").fill(network.ws)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#main")).to_have_attribute("data-rendered", "#/introductions")
    expect(flow.get_by_label("Introducer")).to_have_value(introducer)
    expect(flow.get_by_text("Nothing was recorded")).to_be_visible()
