"""The page against the API's contract: every route it calls is documented in /openapi.json,
the live updates over the event stream (GET /v1/workspaces/{ws}/stream), the stream client's
reconnect banner and resume, the closed-form decay the page carries, and a phone-width
layout."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect
from tieline.projections.strength_model import PARAMS, PairEvent, strength
from tieline.services.api.webapp import STATIC_DIR

from tests.browser.conftest import Network, holding, screenshot, sign_in, wait_until_held
from tests.browser.test_relationship_page import chart_of
from tests.fake_http import FakeApi

STREAM = "/v1/workspaces/{ws}/stream"
#: Routes the page is written against that are not on main yet, and why. The lead empties
#: this when issue 12's event stream lands; the tests below then hold the page to it.
AWAITING: dict[str, str] = {}


def documented(api_url: str) -> dict[str, set[str]]:
    """path template -> methods, from the running API's /openapi.json."""
    spec = httpx.get(f"{api_url}/openapi.json", timeout=10).json()
    return {p: {m.upper() for m in ops} for p, ops in spec["paths"].items()}


def routes_in_source() -> set[str]:
    """Every API path written in the page's JavaScript."""
    found: set[str] = set()
    for path in (STATIC_DIR / "js").rglob("*.js"):
        found.update(re.findall(r"""["'`](/v1/[^"'`?]+)["'`]""", path.read_text()))
    return found


def template_of(path: str, templates: dict[str, set[str]]) -> str | None:
    for t in templates:
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", t), path):
            return t
    return None


def stream_is_served(network: Network) -> bool:
    return STREAM in documented(network.api_url)


def test_the_page_calls_only_documented_routes(network: Network) -> None:
    """Every API path written in the page's source is in /openapi.json."""
    spec = documented(network.api_url)
    written = routes_in_source()
    assert len(written) >= 12, written
    undocumented = {r for r in written if r not in spec} - set(AWAITING)
    assert not undocumented, (
        f"routes in the page's source missing from /openapi.json: {undocumented}"
    )


VIEWS = (
    "#/people",
    "#/person/{a}",
    "#/rel/{a}/{b}",
    "#/losing-touch",
    "#/introductions",
    "#/record",
)


def test_a_tour_of_every_view_uses_documented_routes_and_passes_axe(
    browser: Browser, network: Network
) -> None:
    """Every view, in a real browser: each request it makes is a documented route and method
    (with the requests of this session's other tests), and axe-core (vendored from npm in
    tests/browser/vendor/) finds no WCAG 2.1 A or AA violation. The page's CSP forbids
    injected scripts, so this context bypasses it to inject the checker."""
    spec = documented(network.api_url)
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("request", lambda r: network.requests.append((r.method, httpx.URL(r.url).path)))
    a, b = network.busiest_pair()
    violations: dict[str, Any] = {}
    try:
        page.goto(network.app_url + "#/signin")
        expect(page.get_by_role("heading", name="Sign in to tieline")).to_be_visible()
        violations["#/signin"] = axe(page)
        sign_in(page, network, me=a)
        for view in (v.format(a=a, b=b) for v in VIEWS):
            page.goto(network.app_url + view)
            expect(page.locator("#main")).to_have_attribute("data-rendered", view, timeout=20_000)
            violations[view] = axe(page)
    finally:
        context.close()
    assert not {v: found for v, found in violations.items() if found}, violations

    seen = {(m, p) for m, p in network.requests if p.startswith("/v1/")}
    assert len({p for _, p in seen}) >= 10
    for method, path in sorted(seen):
        template = template_of(path, spec)
        if template is None and template_of(path, {p: {"GET"} for p in AWAITING}):
            continue
        assert template is not None, f"{method} {path}: not a documented route"
        assert method in spec[template], f"{method} {path}: {template} has only {spec[template]}"


AXE = Path(__file__).parent / "vendor" / "axe.min.js"
#: WCAG 2.1 A and AA rules; only violations are worked out in full (axe is much faster so).
AXE_OPTIONS = {
    "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
    "resultTypes": ["violations"],
}


def axe(page: Page) -> list[dict[str, Any]]:
    """axe's violations on the page as it is: rule, impact, and the first offending nodes."""
    page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = page.evaluate("(o) => axe.run(document, o)", AXE_OPTIONS)
    return [
        {
            "rule": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"][:3]],
        }
        for v in result["violations"]
    ]


def test_open_relationship_page_updates_live_from_the_stream(
    watched: Page, network: Network
) -> None:
    if not stream_is_served(network):
        pytest.skip(f"GET {STREAM} is not served yet ({AWAITING[STREAM]})")
    page = watched
    a, b = network.busiest_pair()
    sign_in(page, network)
    page.goto(network.app_url + f"#/rel/{a}/{b}")
    before = len(chart_of(page)["events"])
    expect(page.locator("#live-state")).to_have_attribute("data-state", "open")
    rows = page.locator("section[aria-labelledby=timeline-h] tbody tr")
    count = rows.count()
    r = network.api.post(
        f"/v1/workspaces/{network.ws}/events",
        json={"type": "relationship.met", "participants": [a, b], "depth": "conversation"},
    )
    assert r.status_code == 201, r.text
    acked = time.monotonic()
    expect(rows).to_have_count(count + 1, timeout=2_000)
    page.wait_for_function(
        "n => Chart.getChart(document.getElementById('strength-chart'))"
        ".data.datasets[0].data.length === n",
        arg=before + 1,
        timeout=2_000,
    )
    assert time.monotonic() - acked < 2.0


#: Records what the banner says over time (it changes faster than a test can look), and the
#: live indicator's explanations (its title).
BANNER_LOG = """
window.bannerLog = [];
window.liveTitles = [];
document.addEventListener("DOMContentLoaded", () => {
  const banner = document.getElementById("banner");
  new MutationObserver(() => window.bannerLog.push(banner.textContent)).observe(
    banner, { childList: true, characterData: true, subtree: true });
  const live = document.getElementById("live-state");
  new MutationObserver(() => window.liveTitles.push(live.title)).observe(
    live, { attributes: true, attributeFilter: ["title"] });
});
"""


def test_stream_client_shows_a_banner_and_resumes_from_the_last_id(
    watched: Page, network: Network
) -> None:
    """The page's stream client against the text/event-stream format (here served by the
    test through Playwright's routing, so it runs before the server's route exists): a
    message with an id, the stream ending, the reconnect banner, Last-Event-ID on the next
    request, and the banner saying the updates are back."""
    page = watched
    a, b = network.busiest_pair()
    asked: list[dict[str, str]] = []

    def serve(route: Route) -> None:
        asked.append(route.request.headers)
        if len(asked) > 2:  # then let the page wait
            route.abort()
            return
        body = (
            f"retry: 200\n\n: heartbeat\n\nid: {40 + len(asked)}\nevent: event.recorded\n"
            f"data: {json.dumps({'type': 'relationship.met', 'people': [a, b], 'seq': 1})}\n\n"
        )
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    page.route(re.compile(r".*/v1/workspaces/[^/]+/stream.*"), serve)
    page.add_init_script(BANNER_LOG)
    sign_in(page, network)
    page.goto(network.app_url + f"#/person/{a}")
    page.wait_for_function("() => window.bannerLog.some((t) => t.includes('reconnected'))")
    log: list[str] = page.evaluate("() => window.bannerLog")
    first_drop = next(i for i, t in enumerate(log) if "interrupted; reconnecting" in t)
    assert "Live updates reconnected." in log[first_drop:], log
    assert "last-event-id" not in asked[0]
    assert asked[1]["last-event-id"] == "41"
    assert asked[1]["authorization"] == f"Bearer {network.token}"
    assert f"person={a}" in page.evaluate(
        "() => performance.getEntriesByType('resource')"
        ".map(e => e.name).find(n => n.includes('/stream'))"
    )


def test_closed_form_decay_in_the_page_equals_the_model(watched: Page, network: Network) -> None:
    """decay.js's scoreAt is DecayState.score_at: same state, same parameters, same score."""
    page = watched
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    events = [
        PairEvent("e1", "relationship.met", t0, 1, "a", "b", {"depth": "meal_or_activity"}),
        PairEvent(
            "e2",
            "relationship.followed_up",
            t0 + timedelta(days=3),
            2,
            "a",
            "b",
            {"from": "a", "to": "b", "channel": "email", "replied": True},
        ),
        PairEvent(
            "e3",
            "relationship.closeness_rated",
            t0 + timedelta(days=9),
            3,
            "a",
            "b",
            {"rater": "b", "ratee": "a", "rating": 4},
        ),
    ]
    state = strength(events, PARAMS).state
    later = [state.at + timedelta(days=d) for d in (0, 0.5, 7, 45, 400, 3000)]  # type: ignore[operator]
    page.goto(network.app_url + "#/signin")
    got: list[float] = page.evaluate(
        """async ([state, params, times]) => {
             const m = await import("./js/decay.js");
             return times.map((t) => m.scoreAt(state, params, t));
           }""",
        [state.to_dict(), PARAMS.to_dict(), [t.timestamp() * 1000 for t in later]],
    )
    want = [state.score_at(t) for t in later]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert want[0] > want[-1] > 0


def test_pages_fit_a_phone_screen(browser: Browser, network: Network, shots: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        a, b = network.busiest_pair()
        sign_in(page, network, me=a)
        for name, hash_ in (
            ("relationship-phone", f"#/rel/{a}/{b}"),
            ("losing-touch-phone", "#/losing-touch"),
        ):
            page.goto(network.app_url + hash_)
            # Not "networkidle": the page keeps its event stream open.
            expect(page.locator("#main")).to_have_attribute("data-rendered", hash_)
            overflow: Any = page.evaluate(
                "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{hash_}: {overflow}px wider than the screen"
            screenshot(page, shots, name, full_page=False)
    finally:
        context.close()


def test_a_stream_that_opens_and_drops_at_once_backs_off(watched: Page, network: Network) -> None:
    """A stream that answers and ends before delivering a message (an overloaded server, a
    proxy) is retried after 1 s, then 2 s, then 4 s: opening, or the server's first "retry:"
    line, does not reset the backoff, or the page would reconnect every second for ever."""
    page = watched
    a, _ = network.busiest_pair()
    opened: list[str] = []

    def empty(route: Route) -> None:
        opened.append(route.request.url)
        # What the server sends first on every connection, then the end: no message.
        body = "retry: 1000\n\n"
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    page.route(re.compile(r".*/v1/workspaces/[^/]+/stream.*"), empty)
    page.add_init_script(BANNER_LOG)
    sign_in(page, network)
    page.goto(network.app_url + f"#/person/{a}")
    page.wait_for_function(
        "() => window.bannerLog.some((t) => t.includes('reconnecting in 4 s'))", timeout=20_000
    )
    log: list[str] = page.evaluate("() => window.bannerLog")
    waits = [t for t in log if "interrupted; reconnecting" in t]
    assert "in 1 s" in waits[0] and any("in 2 s" in t for t in waits), waits
    assert len(opened) >= 3


STREAM_URL = re.compile(r".*/v1/workspaces/[^/]+/stream.*")


def logged(page: Page, text: str, times: int = 1, within_s: float = 15.0) -> list[str]:
    """Waits until the banner has said ``text`` ``times`` times; the banner's log. Polled
    from here, not with the page's timers, which these tests' fake clock holds."""
    log: list[str] = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        log = page.evaluate("() => window.bannerLog")
        if sum(text in t for t in log) >= times:
            return log
        page.wait_for_timeout(50)
    raise AssertionError(f"the banner did not say {text!r} {times} time(s): {log}")


def test_a_silent_stream_is_taken_for_stalled_and_reopened(watched: Page, network: Network) -> None:
    """A stream that stays open but goes silent (a proxy or a NAT that dropped it without
    closing it, a server that hangs) used to show "live" for ever. The server says how often
    it sends a heartbeat (Tieline-Heartbeat-Seconds, 15 s here); after three intervals with
    nothing heard the page drops the connection, says so, and reconnects. The page's clock is
    Playwright's, moved on by the test; the real server's heartbeat does not come meanwhile."""
    page = watched
    a, _ = network.busiest_pair()
    opened: list[str] = []
    page.on("request", lambda r: opened.append(r.url) if STREAM_URL.match(r.url) else None)
    page.clock.install()
    page.add_init_script(BANNER_LOG)
    sign_in(page, network)
    page.goto(network.app_url + f"#/person/{a}")
    live = page.locator("#live-state")
    expect(live).to_have_attribute("data-state", "open")
    page.clock.run_for(40_000)  # under three heartbeats: still trusted
    assert not any("interrupted" in t for t in page.evaluate("() => window.bannerLog"))
    assert len(opened) == 1, opened
    page.clock.run_for(10_000)
    logged(page, "interrupted; reconnecting")
    titles: list[str] = page.evaluate("() => window.liveTitles")
    assert any("nothing heard for 45 s" in t for t in titles), titles
    logged(page, "Live updates reconnected.")
    expect(live).to_have_attribute("data-state", "open")
    assert len(opened) == 2, opened


def test_the_stall_watchdog_is_timed_by_the_servers_heartbeat(
    watched: Page, network: Network
) -> None:
    """A server that says it sends a heartbeat every 2 s (Tieline-Heartbeat-Seconds) and then
    goes silent is taken for stalled after 6 s, not after the default's 45 s. The page's
    stream is routed to a stand-in server that sends that header and its first line, then
    nothing."""
    page = watched
    a, _ = network.busiest_pair()
    quiet = threading.Event()

    def silent(h: BaseHTTPRequestHandler, _: int) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Tieline-Heartbeat-Seconds", "2")
        h.end_headers()
        with contextlib.suppress(OSError):
            h.wfile.write(b"retry: 1000\n\n")
            h.wfile.flush()
            quiet.wait(60)  # then nothing, until the test is over

    with FakeApi(silent) as fake:
        page.route(STREAM_URL, lambda route: route.continue_(url=fake.url + "/stream"))
        page.clock.install()
        page.add_init_script(BANNER_LOG)
        try:
            sign_in(page, network)
            page.goto(network.app_url + f"#/person/{a}")
            expect(page.locator("#live-state")).to_have_attribute("data-state", "open")
            page.clock.run_for(5_000)
            assert not any("interrupted" in t for t in page.evaluate("() => window.bannerLog"))
            page.clock.run_for(2_000)
            log = logged(page, "interrupted; reconnecting")
        finally:
            quiet.set()
            page.unroute(STREAM_URL)
    assert any("nothing heard for 6 s" in t for t in log), log
    assert len(fake.seen) >= 1


def test_a_live_reload_still_waiting_is_dropped_when_the_view_is_left(
    watched: Page, network: Network
) -> None:
    """A live message schedules a reload (debounced, so a burst costs one); when the user
    leaves the view before it runs, it must not run: it cost requests drawing into a page no
    one sees. The test serves the stream and holds the page's clock, so the reload waits."""
    page = watched
    a, _ = network.busiest_pair()
    ties = re.compile(rf".*/v1/workspaces/[^/]+/people/{re.escape(a)}/relationships.*")
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if ties.match(r.url) else None)
    hold, streams = holding()
    page.route(STREAM_URL, hold)
    page.clock.install()
    page.add_init_script(BANNER_LOG)
    sign_in(page, network)
    page.goto(network.app_url + f"#/person/{a}")
    expect(page.locator("#main")).to_have_attribute("data-rendered", f"#/person/{a}")
    wait_until_held(page, streams, "the person's stream")
    # In seconds; a whole second ahead, as the fake clock may have moved on meanwhile.
    page.clock.pause_at(page.evaluate("() => Date.now() / 1000") + 1)
    message = json.dumps({"type": "relationship.met", "people": [a, "x"], "seq": 1})
    body = f"id: 1-0\nevent: event.recorded\ndata: {message}\n\n"  # then the stream ends

    def deliver(n: int) -> int:
        for _ in range(200):
            if len(streams) > n:
                break
            page.wait_for_timeout(50)
        streams[n].fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)
        logged(page, "interrupted; reconnecting", times=n + 1)  # the message was read
        return len(asked)

    # While the view is shown, the reload runs once its wait is over (the test's control).
    before = deliver(0)
    page.clock.run_for(500)
    for _ in range(100):
        if len(asked) > before:
            break
        page.wait_for_timeout(50)
    assert len(asked) > before, "the live reload did not run while the view was shown"
    page.clock.run_for(2_000)  # the reconnect's wait
    before = deliver(1)
    page.evaluate("() => { location.hash = '#/people'; }")
    expect(page.locator("#main")).to_have_attribute("data-rendered", "#/people")
    page.clock.run_for(2_000)
    page.clock.resume()
    page.wait_for_timeout(1_000)
    page.unroute(STREAM_URL, hold)
    assert len(asked) == before, asked[before:]
