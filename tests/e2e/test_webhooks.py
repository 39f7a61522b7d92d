"""Signed webhooks end to end: the running stack's webhooks process delivers changes to a real
HTTP receiver that verifies every signature with the Standard Webhooks reference
implementation; failures are retried with growing waits, a receiver that goes away gets its
endpoint disabled with the reason (its changes are held meanwhile), and once it is back a manual
redelivery from the log succeeds and enabling the endpoint sends what was held. URLs that point
into private networks are refused at registration."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from tieline.plumbing.config import Settings
from tieline.projections.changelog import cadence_bands
from tieline.services.runtime.supervisor import Stack
from tieline.services.webhooks.signing import new_secret

from tests.e2e.conftest import LIVE_ENV, make_token
from tests.e2e.receiver import Received, Receiver
from tests.e2e.sse import open_stream

BACKOFF = float(LIVE_ENV["TIELINE_WEBHOOK_BACKOFF_S"])
DISABLE_AFTER = int(LIVE_ENV["TIELINE_WEBHOOK_DISABLE_AFTER"])


class Admin:
    """The workspace's admin over HTTP."""

    def __init__(self, client: httpx.AsyncClient, ws: str, token: str) -> None:
        self.client, self.ws, self.token = client, ws, token
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.client.request(
            method, f"/v1/workspaces/{self.ws}{path}", headers=self.headers, **kw
        )

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        r = await self.call(method, path, **kw)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    async def people(self, *ids: str) -> None:
        for pid in ids:
            await self.ok("POST", "/people", json={"person_id": pid, "display_name": pid.title()})

    async def met(self, a: str, b: str, **extra: Any) -> dict[str, Any]:
        body = {"type": "relationship.met", "participants": [a, b], "depth": "conversation"}
        out: dict[str, Any] = await self.ok("POST", "/events", json={**body, **extra})
        return out

    async def log(self, endpoint: str) -> list[dict[str, Any]]:
        page = await self.ok("GET", f"/webhooks/{endpoint}/deliveries")
        deliveries: list[dict[str, Any]] = page["deliveries"]
        return deliveries

    async def until(self, check: Any, what: str, wait_s: float = 30.0) -> Any:
        """Poll ``check()`` (an awaitable factory) until it returns something truthy."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            got = await check()
            if got:
                return got
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.1)


@pytest.fixture
async def admin(live_stack: tuple[Stack, Settings]) -> AsyncIterator[Admin]:
    stack, settings = live_stack
    ws = f"ws-{uuid.uuid4().hex[:12]}"
    token = await asyncio.to_thread(make_token, settings, ws)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        yield Admin(client, ws, token)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def test_signed_deliveries_retry_disable_and_redeliver(
    admin: Admin, receiver: Receiver, live_stack: tuple[Stack, Settings]
) -> None:
    await admin.people("ada", "grace", "linus")
    made = await admin.ok(
        "POST", "/webhooks", json={"url": receiver.url, "kinds": ["relationship.changed"]}
    )
    endpoint, receiver.secret = made["endpoint_id"], made["secret"]
    assert made["secret"].startswith("whsec_")
    for shown in (
        await admin.ok("GET", "/webhooks"),
        await admin.ok("GET", f"/webhooks/{endpoint}"),
    ):
        assert made["secret"] not in str(shown) and "'secret'" not in str(shown)
    await _secret_is_sealed(live_stack[1], made["secret"])

    # Three failures on purpose, then success: four attempts of one message.
    receiver.fail_next = 3
    first = await admin.met("ada", "grace")
    got = await receiver.wait_for(4)
    assert [r.answered for r in got] == [500, 500, 500, 204]
    assert len({r.webhook_id for r in got}) == 1 and got[0].webhook_id.startswith("msg_")
    assert all(r.verified is not None for r in got), "every attempt is signed correctly"
    stamps = [int(r.headers["webhook-timestamp"]) for r in got]  # each attempt's own time
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= int(got[-1].at - got[0].at) - 1
    payload = got[-1].verified
    assert payload["type"] == "relationship.changed"
    assert payload["data"]["pair"] == ["ada", "grace"]
    assert payload["data"]["cause"]["event_id"] == first["event_id"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    for n, gap in enumerate(gaps, start=1):  # exponential backoff: at least base * 2^(n-1)
        assert gap >= BACKOFF * 2 ** (n - 1) * 0.95, gaps

    async def recorded() -> dict[str, Any] | None:
        [d] = await admin.log(endpoint)
        return d if d["status"] != "pending" else None

    done = await admin.until(recorded, "the delivery log to record the success")
    assert done["status"] == "succeeded" and done["attempts"] == 4
    assert [a["status_code"] for a in done["attempt_log"]] == [500, 500, 500, 204]
    assert done["delivery_id"] == got[0].webhook_id

    # The receiver goes away: attempts fail until the endpoint is disabled, with the reason.
    await receiver.stop()
    lost = await admin.met("grace", "linus")

    async def disabled() -> dict[str, Any] | None:
        ep: dict[str, Any] = await admin.ok("GET", f"/webhooks/{endpoint}")
        return ep if ep["disabled_at"] else None

    ep = await admin.until(disabled, "the endpoint to be disabled", wait_s=60)
    assert f"{DISABLE_AFTER} consecutive failed attempts" in ep["disabled_reason"]
    failed = (await admin.log(endpoint))[0]
    assert failed["status"] == "pending" and failed["attempts"] == DISABLE_AFTER  # held
    assert "endpoint disabled" in failed["last_error"]
    assert all(a["status_code"] is None and a["error"] for a in failed["attempt_log"])
    assert lost["event_id"] in failed["body"]
    waiting = await admin.met("ada", "linus")  # while disabled: recorded, held, not sent

    async def held() -> list[dict[str, Any]] | None:
        log = await admin.log(endpoint)
        return log if len(log) == 3 else None

    newest = (await admin.until(held, "the change to be held for the disabled endpoint"))[0]
    assert newest["status"] == "pending" and newest["attempts"] == 0
    assert waiting["event_id"] in newest["body"]

    # Back again: a manual redelivery from the log reaches it, same message id, signed.
    await receiver.start()
    before = len(receiver.requests)
    again = await admin.ok(
        "POST", f"/webhooks/{endpoint}/deliveries/{failed['delivery_id']}/redeliver"
    )
    assert again["status"] == "pending"
    [arrived] = (await receiver.wait_for(before + 1))[before:]
    assert arrived.webhook_id == failed["delivery_id"] and arrived.verified is not None
    assert arrived.verified["data"]["cause"]["event_id"] == lost["event_id"]

    async def redelivered() -> dict[str, Any] | None:
        d = next(x for x in await admin.log(endpoint) if x["delivery_id"] == failed["delivery_id"])
        return d if d["status"] == "succeeded" else None

    d = await admin.until(redelivered, "the redelivery to succeed")
    assert d["attempt_log"][-1]["manual"] is True and d["attempt_log"][-1]["status_code"] == 204
    assert len(receiver.requests) == before + 1, "the held change waits for the endpoint"
    # Enabled again: what was held is sent, and new changes flow again.
    assert (await admin.ok("POST", f"/webhooks/{endpoint}/enable"))["disabled_at"] is None
    later = await admin.met("ada", "grace")
    got = (await receiver.wait_for(before + 3))[before + 1 :]
    causes = {r.verified["data"]["cause"]["event_id"] for r in got}
    assert causes == {waiting["event_id"], later["event_id"]}


async def _secret_is_sealed(settings: Settings, secret: str) -> None:
    """No table holds the secret in plaintext (it is sealed under the master key)."""
    conn = await AsyncConnection.connect(settings.database_url, autocommit=True)
    try:
        cur = await conn.execute(
            f'SELECT count(*) FROM "{settings.database_schema}".webhook_endpoints '
            "WHERE position(%s in secret) > 0 OR position(%s in secret) > 0 "
            "OR position(%s in coalesce(previous_secret, '')) > 0 "
            "OR position(%s in coalesce(previous_secret, '')) > 0",
            (secret.encode(), secret.removeprefix("whsec_").encode()) * 2,
        )
        row = await cur.fetchone()
        assert row is not None and row[0] == 0
    finally:
        await conn.close()


async def test_follow_up_due_reaches_stream_and_webhook(admin: Admin, receiver: Receiver) -> None:
    await admin.people("ada", "grace", "linus")
    made = await admin.ok(
        "POST", "/webhooks", json={"url": receiver.url, "kinds": ["follow_up.due"]}
    )
    receiver.secret = made["secret"]
    stream = await open_stream(
        admin.client, admin.ws, admin.token, {"kinds": "relationship.changed,follow_up.due"}
    )
    await admin.met("ada", "grace")
    tier = (await stream.next()).json()["tier_after"]  # a conversation's tier, for its cadence
    [days] = [b[3] for b in cadence_bands() if b[0] == tier]
    contact = datetime.now(UTC) - timedelta(days=days) + timedelta(seconds=3)
    await admin.met("ada", "linus", occurred_at=contact.isoformat())
    changed = await stream.next()
    assert changed.event == "relationship.changed"
    due = await stream.next(wait_s=20)
    assert due.event == "follow_up.due"
    data = due.json()
    assert data["pair"] == ["ada", "linus"] and data["tier_at_last_contact"] == tier
    assert data["cadence_days"] == days
    assert datetime.fromisoformat(data["due_at"]) <= datetime.now(UTC)
    [hook] = await receiver.wait_for(1)
    assert hook.verified is not None and hook.verified["type"] == "follow_up.due"
    assert hook.verified["data"]["position"] == due.id
    await stream.aclose()


def _signed_by(got: Received, *secrets: str) -> list[bool]:
    """Whether the reference implementation verifies ``got`` with each of ``secrets``."""
    out = []
    for secret in secrets:
        try:
            Webhook(secret).verify(got.body, got.headers)
            out.append(True)
        except WebhookVerificationError:
            out.append(False)
    return out


async def _arrival(receiver: Receiver, event: dict[str, Any]) -> Received:
    """The first request that carries the change ``event`` caused (other changes, and a
    retry of an earlier one, may arrive in between on a slow machine)."""
    async with asyncio.timeout(30):
        while True:
            for got in list(receiver.requests):
                cause = json.loads(got.body).get("data", {}).get("cause", {})
                if cause.get("event_id") == event["event_id"]:
                    return got
            await receiver.wait_for(len(receiver.requests) + 1)


async def test_a_rotated_secret_signs_beside_the_old_one_until_it_is_dropped(
    admin: Admin, receiver: Receiver, live_stack: tuple[Stack, Settings]
) -> None:
    await admin.people("ada", "grace", "linus")
    made = await admin.ok(
        "POST", "/webhooks", json={"url": receiver.url, "kinds": ["relationship.changed"]}
    )
    endpoint, old = made["endpoint_id"], made["secret"]
    rotate = f"/webhooks/{endpoint}/rotate-secret"
    assert made["secret_rotated_at"] is None and made["previous_secret_until"] is None
    before = await _arrival(receiver, await admin.met("ada", "grace"))
    assert _signed_by(before, old) == [True]

    # Two rotations at once: one wins, the other is refused (it would drop the old secret).
    both = await asyncio.gather(admin.call("POST", rotate), admin.call("POST", rotate))
    assert sorted(r.status_code for r in both) == [200, 409], [r.text for r in both]
    rotated = next(r.json() for r in both if r.status_code == 200)
    refused = next(r for r in both if r.status_code == 409)
    assert "rotation is in progress" in refused.text and "replace_new" in refused.text
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old
    kept = datetime.fromisoformat(rotated["previous_secret_until"])
    assert timedelta(hours=23) < kept - datetime.now(UTC) <= timedelta(days=1)
    shown = await admin.ok("GET", f"/webhooks/{endpoint}")
    assert shown["previous_secret_until"] == rotated["previous_secret_until"]
    assert shown["secret_rotated_at"] and "secret" not in shown and new not in str(shown)
    await _secret_is_sealed(live_stack[1], old)
    await _secret_is_sealed(live_stack[1], new)
    during = await _arrival(receiver, await admin.met("ada", "linus"))
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert _signed_by(during, new, old, new_secret()) == [True, True, False]

    # The new secret's answer was lost: replace it; the old one keeps signing as before.
    again = await admin.ok("POST", rotate, json={"replace_new": True})
    assert again["previous_secret_until"] == rotated["previous_secret_until"]
    replaced = await _arrival(receiver, await admin.met("grace", "linus"))
    assert _signed_by(replaced, again["secret"], old, new) == [True, True, False]

    # Two replacements at once both succeed, one after the other: the later one's secret
    # signs, and its answer's secret_rotated_at is the one shown (docs/frontends.md).
    pair = await asyncio.gather(
        *(admin.ok("POST", rotate, json={"replace_new": True}) for _ in range(2))
    )
    now_shown = await admin.ok("GET", f"/webhooks/{endpoint}")
    [winner] = [a for a in pair if a["secret_rotated_at"] == now_shown["secret_rotated_at"]]
    [loser] = [a for a in pair if a is not winner]
    raced = await _arrival(receiver, await admin.met("grace", "ada"))
    assert _signed_by(raced, winner["secret"], old, loser["secret"]) == [True, True, False]

    # A leaked secret: rotated again without keeping any other. Neither old secret signs.
    leaked = await admin.ok("POST", rotate, json={"keep_previous_s": 0})
    assert leaked["previous_secret_until"] is None
    after = await _arrival(receiver, await admin.met("ada", "grace"))
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert _signed_by(after, leaked["secret"], again["secret"], old) == [True, False, False]
    r = await admin.call("POST", rotate, json={"replace_new": True})
    assert r.status_code == 409 and "no rotation is in progress" in r.text, r.text

    for bad in (
        {"keep_previous_s": -1},
        {"keep_previous_s": 8 * 86400},
        {"keep_previous_s": True},  # not 1 s
        {"keep_previous_s": "3600"},
        {"replace_new": True, "keep_previous_s": 60},
        {"keep": 5},
    ):
        r = await admin.call("POST", rotate, json=bad)
        assert r.status_code == 422 and "keep" in r.text, (bad, r.text)
    other = Admin(admin.client, f"ws-{uuid.uuid4().hex[:12]}", admin.token)
    r = await other.call("POST", rotate)
    assert r.status_code in (401, 403, 404), r.text  # another workspace's endpoint
    mine = await admin.ok("GET", f"/webhooks/{endpoint}")
    assert mine["secret_rotated_at"] == leaked["secret_rotated_at"]  # not rotated by it


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.org/hook", "https"),
        ("ftp://example.org/hook", "https"),
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.10/hook", "private"),
        ("https://172.16.5.4:8443/hook", "private"),
        ("https://100.64.0.1/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[fd00::1]/hook", "private"),
        ("https://[::ffff:10.0.0.1]/hook", "private"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://localhost/hook", "loopback"),
        ("http://127.0.0.1:9/hook", "https"),
        ("https://user:pw@example.org/hook", "credentials"),
    ],
)
def test_private_and_plain_http_targets_are_refused(
    api: httpx.Client, ws: str, url: str, why: str
) -> None:
    """On a default installation (loopback receivers not allowed), checked before anything is
    sent: a refused URL never receives a request."""
    r = api.post(f"/v1/workspaces/{ws}/webhooks", json={"url": url})
    assert r.status_code == 422, r.text
    assert why in r.text and "url" in r.text
    assert api.get(f"/v1/workspaces/{ws}/webhooks").json()["endpoints"] == []
