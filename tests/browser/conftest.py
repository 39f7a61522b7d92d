"""Browser tests of the web page at /app: Playwright (pytest-playwright) driving Debian's
Chromium against a real stack (api, people, interactions, worker on real NATS JetStream and
PostgreSQL) holding a network made by ``tieline simulate``.

Playwright never downloads a browser here: it launches the system Chromium
(``TIELINE_CHROMIUM``, else ``chromium`` on PATH, else /usr/bin/chromium; `.ci/run` installs
Debian's package when it is missing) with flags that keep it off the network.
Screenshots of every page go to a temporary directory (printed at the end of the session),
and also to ``TIELINE_SCREENSHOT_DIR`` when it is set (how docs/img/ was made).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Locator, Page, Request, Route, expect
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack

from tests.e2e.conftest import make_token

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

#: Chromium flags: headless, no sandbox (root in CI), and no background connections (the
#: machines' closed network refuses them, which otherwise stalls start-up).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for candidate in (
        os.environ.get("TIELINE_CHROMIUM"),
        shutil.which("chromium"),
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch arguments, pointed at the system Chromium."""
    path = chromium_path()
    if path is None:
        message = "no Chromium: apt-get install chromium (Debian), or set TIELINE_CHROMIUM"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it (.ci/run): a missing browser is a failure
        pytest.skip(message)
    return {**browser_type_launch_args, "executable_path": path, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": {"width": 1280, "height": 900}}


@dataclass
class Network:
    """A simulated network loaded into its own workspace through the HTTP API."""

    api_url: str
    ws: str
    token: str
    lines: list[dict[str, Any]]
    last_seq: int
    api: httpx.Client
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) seen

    @property
    def app_url(self) -> str:
        return f"{self.api_url}/app/"

    def get(self, path: str, **params: Any) -> Any:
        r = self.api.get(f"/v1/workspaces/{self.ws}{path}", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def busiest_pair(self) -> tuple[str, str]:
        """The pair with the most events of its own (two-person meetings, follow-ups, help)."""
        counts: Counter[tuple[str, str]] = Counter()
        for e in self.lines:
            people = _pair_of(e)
            if people:
                counts[people] += 1
        (a, b), _ = counts.most_common(1)[0]
        return a, b

    def most_overdue(self) -> str:
        """The person with the most follow-ups due now (over the simulated people)."""
        people = [e["person_id"] for e in self.lines if e["type"] == "person.added"]
        due = {p: len(self.get(f"/people/{p}/follow-ups")["due"]) for p in people[:25]}
        return max(due, key=lambda p: (due[p], p))


def token_for(settings: Settings, ws: str, role: str = "admin") -> str:
    """A token made straight in the database, in a thread of its own: once Playwright's sync
    API runs, this thread has an event loop running and asyncio.run() refuses to start."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(make_token, settings, ws, role, "browser-tests").result()


def _pair_of(e: dict[str, Any]) -> tuple[str, str] | None:
    if e["type"] == "relationship.met" and len(e["participants"]) == 2:
        a, b = e["participants"]
    elif e["type"] == "relationship.followed_up":
        a, b = e["from_person"], e["to_person"]
    elif e["type"] == "relationship.helped":
        a, b = e["helper"], e["helped"]
    else:
        return None
    return (a, b) if a < b else (b, a)


def simulated(tmp: Path) -> list[dict[str, Any]]:
    """A small network from the real `tieline simulate` command, ending a month ago."""
    start = (datetime.now(UTC) - timedelta(days=700)).date().isoformat()
    out = tmp / "network.jsonl"
    args = ["--seed", "5", "--people", "40", "--events", "1500", "--start", start]
    cmd = [sys.executable, "-m", "tieline.services.cli.main", "simulate", *args]
    done = subprocess.run(
        [*cmd, "--years", "1.8", "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="session")
def network(
    stack: Stack,
    stack_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Network]:
    ws = f"web-{uuid.uuid4().hex[:10]}"
    token = token_for(stack_settings, ws)
    lines = simulated(tmp_path_factory.mktemp("sim"))
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as client:
        last = 0
        for i in range(0, len(lines), 500):
            chunk = "\n".join(json.dumps(x) for x in lines[i : i + 500])
            r = client.post(f"/v1/workspaces/{ws}/events/batch", content=chunk.encode())
            body = r.json()
            assert r.status_code == 200 and body["rejected"] == 0, r.text[:500]
            last = max(last, body["last_seq"] or 0)
        r = client.get(f"/v1/workspaces/{ws}/people", params={"limit": 1, "min_seq": last})
        assert r.status_code == 200, r.text
        yield Network(stack.api_url, ws, token, lines, last, client)


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where screenshots go (a temporary directory; also TIELINE_SCREENSHOT_DIR if set)."""
    path = tmp_path_factory.mktemp("screenshots")
    yield path
    print(f"\nbrowser screenshots: {path}")


def screenshot(page: Page, shots: Path, name: str, full_page: bool = True) -> Path:
    out = shots / f"{name}.png"
    page.screenshot(path=str(out), full_page=full_page)
    extra = os.environ.get("TIELINE_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(extra) / out.name)
    return out


@pytest.fixture
def watched(page: Page, network: Network) -> Iterator[Page]:
    """The test's page, with every API request it makes recorded on the network (for the
    routes test) and page errors failing the test."""
    errors: list[str] = []

    def seen(request: Request) -> None:
        url = httpx.URL(request.url)
        if url.path.startswith("/v1/"):
            network.requests.append((request.method, url.path))

    page.on("request", seen)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    assert not errors, f"errors in the page: {errors}"


def sign_in(page: Page, network: Network, me: str = "", token: str | None = None) -> None:
    """The sign-in form, as a user fills it."""
    page.goto(network.app_url + "#/signin")
    page.get_by_label("API token").fill(token or network.token)
    page.get_by_label("Workspace").fill(network.ws)
    page.get_by_label("Your person id (optional)").fill(me)
    page.get_by_role("button", name="Sign in").click()
    if token is None:
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()


#: An overloaded server's answer, as the API's problem documents look.
UNAVAILABLE = '{"type": "about:blank", "title": "Service Unavailable", "status": 503}'


def refusing(times: int | None = None) -> tuple[Callable[[Route], None], list[str]]:
    """A route handler answering 503 to the first ``times`` requests it sees (every one when
    None) and letting the rest through, with the list of the URLs it refused."""
    refused: list[str] = []

    def handler(route: Route) -> None:
        if times is not None and len(refused) >= times:
            route.continue_()
            return
        refused.append(route.request.url)
        route.fulfill(status=503, content_type="application/problem+json", body=UNAVAILABLE)

    return handler, refused


def request_introduction(
    page: Page, network: Network, me: str, introducer: str, target: str
) -> Locator:
    """Signs in as ``me``, opens Introductions and requests one through the double opt-in
    form; returns the form's section."""
    sign_in(page, network, me=me)
    page.goto(network.app_url + "#/introductions")
    flow = page.locator("section[aria-labelledby=flow-h]")
    flow.get_by_label("Introducer").fill(introducer)
    flow.get_by_label("Target").fill(target)
    flow.get_by_role("button", name="Request an introduction").click()
    return flow


def holding() -> tuple[Callable[[Route], None], list[Route]]:
    """A route handler that keeps every request waiting (no answer yet), with the list of the
    held routes: continue them, or ``page.unroute`` the handler to let them all through."""
    held: list[Route] = []

    def handler(route: Route) -> None:
        held.append(route)

    return handler, held


def wait_until_held(page: Page, held: list[Route], what: str) -> None:
    """Waits (up to 10 s) until a held request has reached its handler: the browser holds an
    intercepted request at once, but the handler runs only when this client dispatches it."""
    for _ in range(200):
        if held:
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"{what}: no request reached the handler")
