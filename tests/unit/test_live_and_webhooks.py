"""The pure parts of live updates and webhooks: change-log rows of a batch, SSE positions and
filters, Standard Webhooks signatures (checked against the reference implementation), the
retry schedule, and the SSRF guard with a given name resolution."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing.config import Settings
from tieline.projections.changelog import HORIZON, Cause, ChangeLog
from tieline.services.api.live import Filter, Message, parse_position
from tieline.services.webhooks.sender import retry_wait
from tieline.services.webhooks.signing import headers, new_secret, signature
from tieline.services.webhooks.ssrf import Policy, UrlRefused, check_url


def event(seq: int, kind: str = "relationship.met", recorded: datetime | None = None, **f: object):
    now = (recorded or datetime.now(UTC)).isoformat()
    data = {
        "event_id": f"00000000-0000-4000-8000-{seq:012d}",
        "schema_version": 1,
        "occurred_at": now,
        "recorded_at": now,
        "workspace_id": "w",
        "recorded_by": "t",
        "type": kind,
        **f,
    }
    return REGISTRY.decode_obj(data)


def test_batch_rows_coalesce_a_pairs_changes_at_its_latest_event() -> None:
    log = ChangeLog()
    e1 = event(7, participants=["a", "b"], depth="conversation")
    e2 = event(9, participants=["a", "b", "c"], depth="conversation")
    for seq, e in ((7, e1), (9, e2)):
        log.recorded(seq, e)
    ab, ac, bc = ("w", "a", "b"), ("w", "a", "c"), ("w", "b", "c")
    log.before({ab: (10.0, "contact"), bc: (20.0, "acquaintance")}, [ab, ac, bc])
    log.caused(ab, Cause(9, str(e2.event_id), e2.type), 2)
    log.caused(ac, Cause(9, str(e2.event_id), e2.type), 1)
    log.caused(bc, Cause(9, str(e2.event_id), e2.type), 1)
    log.after(ab, 30.0, "acquaintance")
    log.after(ac, 12.0, "contact")
    log.after(bc, None, None)  # e.g. every event of the pair retracted: its row is gone
    rows, skipped = log.rows()
    assert skipped == 0
    assert [(seq, sub, kind) for seq, sub, _, kind, _ in rows] == [
        (7, 0, "event.recorded"),
        (9, 0, "event.recorded"),
        (9, 1, "relationship.changed"),
        (9, 2, "relationship.changed"),
        (9, 3, "relationship.changed"),
    ]
    changed = [json.loads(r[4]) for r in rows if r[3] == "relationship.changed"]
    assert [c["pair"] for c in changed] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert changed[0]["score_before"] == 10.0 and changed[0]["tier_changed"] is True
    assert changed[0]["events"] == 2 and changed[0]["cause"]["seq"] == 9
    assert changed[2]["score_after"] is None and changed[2]["tier_after"] is None


def test_events_older_than_the_horizon_get_no_rows() -> None:
    log = ChangeLog()
    old = event(
        3,
        recorded=datetime.now(UTC) - HORIZON - timedelta(minutes=1),
        participants=["a", "b"],
        depth="brief_chat",
    )
    log.recorded(3, old)
    log.recorded(4, event(4, participants=["a", "c"], depth="brief_chat"))
    rows, skipped = log.rows()
    assert [r[0] for r in rows] == [4] and skipped == 3


def test_positions_and_filters() -> None:
    assert parse_position("12-3") == (12, 3)
    for bad in (None, "", "12", "12-x", "-1-0", "1-2-3", "9" * 19 + "-0"):
        assert parse_position(bad) is None
    row = {
        "seq": 5,
        "sub": 1,
        "workspace_id": "w",
        "kind": "relationship.changed",
        "data": {"pair": ["a", "b"], "people": ["a", "b"]},
    }
    m = Message.of(row)
    assert m.wire.startswith(b"id: 5-1\nevent: relationship.changed\ndata: {")
    assert m.wire.endswith(b"\n\n") and json.loads(m.wire.split(b"data: ")[1])["position"] == "5-1"
    gone = Message.of({**row, "kind": "person.forgotten", "data": {"people": ["b"]}})
    assert Filter().matches(m)
    assert Filter(kinds=frozenset({"relationship.changed"})).matches(m)
    assert not Filter(kinds=frozenset({"event.recorded"})).matches(m)
    assert Filter(person="a").matches(m) and not Filter(person="c").matches(m)
    assert Filter(pair=("a", "b")).matches(m) and not Filter(pair=("a", "c")).matches(m)
    assert Filter(pair=("a", "b")).matches(gone) and not Filter(pair=("a", "c")).matches(gone)


def test_signatures_verify_with_the_reference_implementation() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    body = b'{"type":"relationship.changed","timestamp":"2026-01-01T00:00:00Z","data":{}}'
    now = int(datetime.now(UTC).timestamp())
    sent = headers([secret], "msg_abc", now, body)
    assert Webhook(secret).verify(body, sent) == json.loads(body)
    ref = Webhook(secret).sign("msg_abc", datetime.fromtimestamp(now, UTC), body.decode())
    assert sent["webhook-signature"] == ref == signature(secret, "msg_abc", now, body)
    assert signature(new_secret(), "msg_abc", now, body) != ref


def test_during_a_rotation_either_secret_verifies_and_no_other() -> None:
    new, old, other = new_secret(), new_secret(), new_secret()
    body = b'{"type":"event.recorded","timestamp":"2026-01-01T00:00:00Z","data":{}}'
    now = int(datetime.now(UTC).timestamp())
    sent = headers([new, old], "msg_rot", now, body)
    first, second = sent["webhook-signature"].split(" ")
    assert first == signature(new, "msg_rot", now, body)  # the current secret's first
    assert second == signature(old, "msg_rot", now, body)
    for secret in (new, old):  # the reference receiver tries each signature of the list
        assert Webhook(secret).verify(body, sent) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, sent)
    for wrong in ([], new):  # a bare str would be signed letter by letter
        with pytest.raises(ValueError, match="list of one or more secrets"):
            headers(wrong, "msg_rot", now, body)


def test_retry_waits_grow_exponentially_with_bounded_jitter() -> None:
    s = Settings(webhook_backoff_s=5, webhook_backoff_max_s=600)
    for n in range(1, 12):
        low = min(5 * 2 ** (n - 1), 600)
        for _ in range(20):
            assert low <= retry_wait(s, n) <= min(low + 5, 600)


def resolver(table: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        del port
        if host not in table:
            raise OSError("unknown host")
        return table[host]

    return resolve


async def test_ssrf_guard_checks_every_address_and_pins_the_checked_one() -> None:
    names = resolver(
        {
            "hooks.example.org": ["93.184.216.34"],
            "mixed.example.org": ["93.184.216.34", "10.0.0.7"],
            "rebind.example.org": ["127.0.0.1"],
            "v6.example.org": ["2606:4700::1111"],
        }
    )
    strict = Policy()
    t = await check_url("https://hooks.example.org:8443/in?x=1", strict, names)
    assert (t.url, t.host, t.address) == (
        "https://93.184.216.34:8443/in?x=1",
        "hooks.example.org",
        "93.184.216.34",
    )
    assert (await check_url("https://v6.example.org/", strict, names)).url == (
        "https://[2606:4700::1111]/"
    )
    with pytest.raises(UrlRefused, match=r"10\.0\.0\.7, a private address"):
        await check_url("https://mixed.example.org/", strict, names)
    with pytest.raises(UrlRefused, match="loopback"):
        await check_url("https://rebind.example.org/", strict, names)
    with pytest.raises(UrlRefused, match="does not resolve"):
        await check_url("https://nowhere.example.org/", strict, names)
    loop_ok = Policy(allow_loopback=True)
    assert (await check_url("http://rebind.example.org:9/h", loop_ok, names)).address == "127.0.0.1"
    with pytest.raises(UrlRefused, match="only to loopback"):
        await check_url("http://hooks.example.org/", loop_ok, names)
    with pytest.raises(UrlRefused, match="private"):
        await check_url("https://mixed.example.org/", loop_ok, names)
    private_ok = Policy(allow_private=True)
    assert (await check_url("https://mixed.example.org/", private_ok, names)).address


def test_retry_after_reads_seconds_and_http_dates() -> None:
    import httpx
    from tieline.services.webhooks.sender import retry_after

    def answer(value: str) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value})

    assert retry_after(answer("120")) == 120.0
    later = datetime.now(UTC) + timedelta(seconds=600)
    assert 590 <= (retry_after(answer(later.strftime("%a, %d %b %Y %H:%M:%S GMT"))) or 0) <= 600
    assert retry_after(answer("Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0  # in the past
    assert retry_after(answer("soon")) is None and retry_after(httpx.Response(503)) is None
    for odd in ("\u00b2", "\u0663"):  # a superscript two, an Arabic-Indic three: no delays
        sent = httpx.Response(200, headers=[(b"Retry-After", odd.encode())])
        assert retry_after(sent) is None, odd


def test_an_endpoint_is_disabled_no_sooner_than_one_deliverys_retries_take() -> None:
    from tieline.services.webhooks.sender import disable_span_s

    s = Settings(webhook_backoff_s=0.2, webhook_backoff_max_s=2, webhook_disable_after=6)
    assert disable_span_s(s) == pytest.approx(0.2 + 0.4 + 0.8 + 1.6 + 2)
    defaults = Settings()  # 50 after 10 attempts a delivery gives up: its 9 waits, ~43 min
    assert disable_span_s(defaults) == pytest.approx(5 * (2**9 - 1))


async def test_one_dns_lookup_per_host_runs_at_a_time() -> None:
    """Attempts to a host whose lookup is running share it (one thread, one answer) instead
    of each starting one; a waiter that gives up does not cancel it for the others; other
    hosts resolve meanwhile. The first version refused the second attempt ("still running"),
    which burnt an attempt of every delivery sent alongside another to the same host."""
    import asyncio
    import threading

    from tieline.services.webhooks.lookups import Lookups

    stuck = threading.Event()
    calls: list[str] = []

    def lookup(host: str, port: int) -> list[str]:
        calls.append(host)
        if host == "stuck.test":
            stuck.wait(5)
        return ["192.0.2.1"]

    lookups = Lookups(lookup, threads=2)
    try:
        waiting = [asyncio.create_task(lookups.resolve(h, 443)) for h in ("stuck.test",) * 3]
        impatient = asyncio.create_task(lookups.resolve("Stuck.test", 443))
        await asyncio.sleep(0.05)
        impatient.cancel()
        assert await lookups.resolve("other.test", 443) == ["192.0.2.1"]
        stuck.set()
        assert await asyncio.gather(*waiting) == [["192.0.2.1"]] * 3
        assert calls.count("stuck.test") == 1
        await asyncio.sleep(0)
        assert await lookups.resolve("stuck.test", 443) == ["192.0.2.1"]
        assert calls.count("stuck.test") == 2  # no answer is kept after the lookup ends
    finally:
        stuck.set()
        lookups.close()
