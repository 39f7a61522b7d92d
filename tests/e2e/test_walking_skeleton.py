"""End to end on real servers: HTTP/NATS/CLI write -> service -> JetStream -> worker ->
PostgreSQL -> HTTP read with min_seq."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import nats
import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack


def add_people(api: httpx.Client, ws: str, *ids: str) -> int:
    seq = 0
    for pid in ids:
        r = api.post(
            f"/v1/workspaces/{ws}/people", json={"person_id": pid, "display_name": pid.title()}
        )
        assert r.status_code == 201, r.text
        seq = r.json()["seq"]
    return seq


def stream_last_seq(api: httpx.Client) -> int:
    r = api.get("/readyz")
    return int(r.json()["checks"]["projection"]["stream_seq"])


def test_met_recorded_over_http_shows_in_strength_and_timeline(api: httpx.Client, ws: str) -> None:
    add_people(api, ws, "ada", "grace")
    r = api.post(
        f"/v1/workspaces/{ws}/events",
        json={
            "type": "relationship.met",
            "participants": ["grace", "ada"],
            "depth": "conversation",
            "duration_minutes": 45,
            "context": "PyCon hallway",
            "initiated_by": "ada",
        },
    )
    assert r.status_code == 201, r.text
    seq = r.json()["seq"]
    s = api.get(f"/v1/workspaces/{ws}/relationships/ada/grace", params={"min_seq": seq})
    assert s.status_code == 200, s.text
    body = s.json()
    assert body["meetings"] == 1 and body["score"] > 0
    assert body["person_a"] == "ada" and body["person_b"] == "grace"
    t = api.get(
        f"/v1/workspaces/{ws}/relationships/grace/ada/timeline", params={"min_seq": seq}
    ).json()
    assert [e["type"] for e in t["events"]] == ["relationship.met"]
    assert t["events"][0]["recorded_by"] == "token:tester"
    assert t["events"][0]["seq"] == seq


def test_follow_up_and_introduction_add_to_strength(api: httpx.Client, ws: str) -> None:
    add_people(api, ws, "ada", "grace", "linus")
    met = api.post(
        f"/v1/workspaces/{ws}/events",
        json={"type": "relationship.met", "participants": ["ada", "grace"], "depth": "brief_chat"},
    )
    seq0 = met.json()["seq"]
    before = api.get(
        f"/v1/workspaces/{ws}/relationships/ada/grace", params={"min_seq": seq0}
    ).json()["score"]
    fu = api.post(
        f"/v1/workspaces/{ws}/events",
        json={
            "type": "relationship.followed_up",
            "from_person": "ada",
            "to_person": "grace",
            "channel": "email",
            "replied": True,
        },
    )
    intro = api.post(
        f"/v1/workspaces/{ws}/events",
        json={
            "type": "relationship.introduced",
            "introducer": "ada",
            "person_a": "grace",
            "person_b": "linus",
            "reason": "compilers",
        },
    )
    assert fu.status_code == 201 and intro.status_code == 201
    seq = intro.json()["seq"]
    after = api.get(f"/v1/workspaces/{ws}/relationships/ada/grace", params={"min_seq": seq}).json()
    assert after["score"] > before
    assert after["follow_ups"] == 1 and after["introductions"] == 1
    ties = api.get(
        f"/v1/workspaces/{ws}/people/ada/relationships",
        params={"order": "strength", "min_seq": seq},
    ).json()["relationships"]
    assert [t["other"] for t in ties] == ["grace", "linus"]
    tl = api.get(f"/v1/workspaces/{ws}/relationships/ada/grace/timeline").json()["events"]
    assert [e["type"] for e in tl] == [
        "relationship.met",
        "relationship.followed_up",
        "relationship.introduced",
    ]
    assert {e["recorded_by"] for e in tl} == {"token:tester"}


async def test_met_recorded_over_nats_request_reply(
    stack: Stack, stack_settings: Settings, api: httpx.Client, ws: str
) -> None:
    add_people(api, ws, "ada", "grace")
    nc = await nats.connect(stack.nats_url)
    try:
        subject = f"{stack_settings.subject_prefix}.cmd.{ws}.interactions.record"
        cmd = {
            "actor": "nats-client",
            "items": [
                {
                    "type": "relationship.met",
                    "participants": ["ada", "grace"],
                    "depth": "meal_or_activity",
                    "duration_minutes": 120,
                }
            ],
        }
        reply = await nc.request(subject, json.dumps(cmd).encode(), timeout=10)
    finally:
        await nc.close()
    [result] = json.loads(reply.data)["results"]
    assert result["status"] == 201, result
    s = api.get(  # noqa: ASYNC212  (sync client in a test is fine)
        f"/v1/workspaces/{ws}/relationships/ada/grace", params={"min_seq": result["seq"]}
    ).json()
    assert s["meetings"] == 1
    tl = api.get(  # noqa: ASYNC212
        f"/v1/workspaces/{ws}/relationships/ada/grace/timeline"
    ).json()["events"]
    assert tl[0]["recorded_by"] == "nats-client"


def test_met_recorded_with_the_cli(stack: Stack, api: httpx.Client, ws: str, token: str) -> None:
    env = {
        **os.environ,
        "TIELINE_API_URL": stack.api_url,
        "TIELINE_WORKSPACE": ws,
        "TIELINE_TOKEN": token,
        "COLUMNS": "250",
    }

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tieline.services.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout

    cli("add-person", "ada", "--name", "Ada")
    cli("add-person", "grace", "--name", "Grace")
    cli("add-person", "linus", "--name", "Linus")
    cli("met", "ada", "grace", "--depth", "deep_conversation", "--minutes", "60")
    cli("follow-up", "grace", "ada", "--channel", "phone", "--replied")
    out = cli("introduce", "ada", "grace", "linus", "--reason", "kernels")
    seq = int(out.strip().rsplit("seq=", 1)[1].split()[0])
    s = api.get(f"/v1/workspaces/{ws}/relationships/ada/grace", params={"min_seq": seq}).json()
    assert (s["meetings"], s["follow_ups"], s["introductions"]) == (1, 1, 1)
    shown = cli("strength", "ada", "grace", "--json")
    assert json.loads(shown)["meetings"] == 1
    assert "relationship.met" in cli("timeline", "ada", "grace")


# -- bad input: exact status, and nothing published -----------------------------------------

BAD_EVENTS: list[tuple[str, dict[str, Any] | bytes, int, str]] = [
    (
        "unknown person",
        {"type": "relationship.met", "participants": ["ada", "nobody"], "depth": "brief_chat"},
        404,
        "participants.1",
    ),
    (
        "introduced to themselves",
        {
            "type": "relationship.introduced",
            "introducer": "ada",
            "person_a": "grace",
            "person_b": "grace",
        },
        422,
        "person_b",
    ),
    (
        "far future",
        {
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "brief_chat",
            "occurred_at": "2999-01-01T00:00:00Z",
        },
        422,
        "occurred_at",
    ),
    (
        "naive timestamp",
        {
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "brief_chat",
            "occurred_at": "2025-01-01T10:00:00",
        },
        422,
        "occurred_at",
    ),
    ("malformed json", b'{"type": "relationship.met", "participants": [', 422, "body"),
    ("unknown type", {"type": "relationship.stalked", "participants": ["ada"]}, 422, "type"),
    (
        "unknown field",
        {"type": "relationship.helped", "helper": "ada", "helped": "grace", "secret": 1},
        422,
        "secret",
    ),
    (
        "bad depth",
        {"type": "relationship.met", "participants": ["ada", "grace"], "depth": "telepathy"},
        422,
        "depth",
    ),
    (
        "other workspace in body",
        {
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "brief_chat",
            "workspace_id": "someone-else",
        },
        422,
        "workspace_id",
    ),
    (
        "client sets recorded_by",
        {
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "brief_chat",
            "recorded_by": "ceo",
        },
        422,
        "recorded_by",
    ),
    (
        "oversized body",
        {
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "brief_chat",
            "context": "x" * 70_000,
        },
        413,
        "body",
    ),
    (
        "oversized field",
        {
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "brief_chat",
            "context": "x" * 5000,
        },
        422,
        "context",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "field"), BAD_EVENTS, ids=[c[0] for c in BAD_EVENTS]
)
def test_bad_event_is_refused_naming_the_field_and_nothing_is_published(
    api: httpx.Client, ws: str, case: str, body: dict[str, Any] | bytes, status: int, field: str
) -> None:
    add_people(api, ws, "ada", "grace")
    before = stream_last_seq(api)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = api.post(
        f"/v1/workspaces/{ws}/events", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in r.json()["detail"], r.json()
    assert r.json()["status"] == status and r.json()["errors"], r.json()
    assert stream_last_seq(api) == before, f"{case}: something was published"


def test_adding_the_same_person_id_twice_is_a_conflict(api: httpx.Client, ws: str) -> None:
    add_people(api, ws, "ada")
    before = stream_last_seq(api)
    r = api.post(f"/v1/workspaces/{ws}/people", json={"person_id": "ada", "display_name": "Other"})
    assert r.status_code == 409 and "person_id" in r.json()["detail"]
    assert r.json()["type"] == "https://tieline.dev/problems/conflict"
    assert r.json()["errors"] == [{"loc": ["person_id"], "msg": "person 'ada' already exists"}]
    assert stream_last_seq(api) == before


def test_resending_an_event_id_returns_the_original_and_publishes_nothing(
    api: httpx.Client, ws: str
) -> None:
    add_people(api, ws, "ada", "grace")
    event = {
        "type": "relationship.met",
        "participants": ["ada", "grace"],
        "depth": "brief_chat",
        "event_id": str(uuid.uuid4()),
    }
    first = api.post(f"/v1/workspaces/{ws}/events", json=event)
    assert first.status_code == 201
    before = stream_last_seq(api)
    again = api.post(f"/v1/workspaces/{ws}/events", json=event)
    assert again.status_code == 200
    assert again.json()["seq"] == first.json()["seq"] and again.json()["duplicate"] is True
    assert stream_last_seq(api) == before
    s = api.get(
        f"/v1/workspaces/{ws}/relationships/ada/grace", params={"min_seq": first.json()["seq"]}
    ).json()
    assert s["meetings"] == 1


def test_reusing_an_event_id_for_a_different_event_is_a_conflict(
    api: httpx.Client, ws: str
) -> None:
    """An idempotency key reused with other content is a client bug, answered 409 (as Stripe
    and the IETF Idempotency-Key draft do), not swallowed as a duplicate."""
    add_people(api, ws, "ada", "grace", "alan")
    eid = str(uuid.uuid4())
    event = {"type": "relationship.met", "participants": ["ada", "grace"], "depth": "brief_chat"}
    first = api.post(f"/v1/workspaces/{ws}/events", json={**event, "event_id": eid})
    assert first.status_code == 201
    before = stream_last_seq(api)
    for other in (
        {**event, "depth": "deep_conversation"},
        {**event, "participants": ["ada", "alan"]},
    ):
        r = api.post(f"/v1/workspaces/{ws}/events", json={**other, "event_id": eid})
        assert r.status_code == 409, r.text
        assert r.json()["errors"][0]["loc"] == ["event_id"], r.json()
        assert "different event" in r.json()["detail"]
    batch = api.post(
        f"/v1/workspaces/{ws}/events/batch",
        content="\n".join(
            json.dumps({**e, "event_id": eid}) for e in (event, {**event, "depth": "conversation"})
        ),
        headers={"content-type": "application/x-ndjson"},
    )
    lines = batch.json()["results"]
    assert [r["status"] for r in lines] == [200, 409], lines
    assert lines[0]["duplicate"] is True and lines[0]["seq"] == first.json()["seq"]
    assert lines[1]["errors"][0]["loc"] == ["event_id"]
    assert stream_last_seq(api) == before
    again = api.post(f"/v1/workspaces/{ws}/events", json={**event, "event_id": eid})
    assert again.status_code == 200 and again.json()["duplicate"] is True


def test_concurrent_sends_of_one_event_id_publish_it_once(api: httpx.Client, ws: str) -> None:
    """Eight clients racing with the same id and body: one 201, seven 200 naming the same
    sequence, one message on the log."""
    add_people(api, ws, "ada", "grace")
    event = {
        "type": "relationship.met",
        "participants": ["ada", "grace"],
        "depth": "conversation",
        "event_id": str(uuid.uuid4()),
    }
    before = stream_last_seq(api)
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: api.post(f"/v1/workspaces/{ws}/events", json=event), range(8))
        )
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 7 + [201], [r.text for r in answers]
    assert len({r.json()["seq"] for r in answers}) == 1
    assert stream_last_seq(api) == before + 1


def test_two_retractions_of_one_event_publish_one(api: httpx.Client, ws: str) -> None:
    add_people(api, ws, "ada", "grace")
    met = api.post(
        f"/v1/workspaces/{ws}/events",
        json={
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "conversation",
        },
    ).json()
    retract = {"type": "event.retracted", "retracted_event_id": met["event_id"]}
    before = stream_last_seq(api)
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: api.post(f"/v1/workspaces/{ws}/events", json=retract), range(4))
        )
    codes = sorted(r.status_code for r in answers)
    assert codes == [201, 409, 409, 409], [r.text for r in answers]
    assert stream_last_seq(api) == before + 1


def test_batch_answers_per_line_and_publishes_only_good_lines(api: httpx.Client, ws: str) -> None:
    lines = [
        json.dumps({"type": "person.added", "person_id": "ada", "display_name": "Ada"}),
        json.dumps({"type": "person.added", "person_id": "grace", "display_name": "Grace"}),
        "{not json",
        json.dumps(
            {"type": "relationship.met", "participants": ["ada", "grace"], "depth": "conversation"}
        ),
        json.dumps(
            {"type": "relationship.met", "participants": ["ada", "ghost"], "depth": "conversation"}
        ),
    ]
    before = stream_last_seq(api)
    r = api.post(
        f"/v1/workspaces/{ws}/events/batch",
        content="\n".join(lines).encode(),
        headers={"content-type": "application/x-ndjson"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["status"] for x in body["results"]] == [201, 201, 422, 201, 404]
    assert body["accepted"] == 3 and body["rejected"] == 2
    assert "line 3" in body["results"][2]["error"]
    assert stream_last_seq(api) == before + 3
    s = api.get(
        f"/v1/workspaces/{ws}/relationships/ada/grace", params={"min_seq": body["last_seq"]}
    ).json()
    assert s["meetings"] == 1


def test_retraction_removes_exactly_that_event(api: httpx.Client, ws: str) -> None:
    add_people(api, ws, "ada", "grace")
    keep = api.post(
        f"/v1/workspaces/{ws}/events",
        json={
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "conversation",
        },
    )
    oops = api.post(
        f"/v1/workspaces/{ws}/events",
        json={"type": "relationship.helped", "helper": "ada", "helped": "grace"},
    )
    seq = oops.json()["seq"]
    with_help = api.get(
        f"/v1/workspaces/{ws}/relationships/ada/grace", params={"min_seq": seq}
    ).json()
    r = api.post(
        f"/v1/workspaces/{ws}/events",
        json={
            "type": "event.retracted",
            "retracted_event_id": oops.json()["event_id"],
            "reason": "wrong person",
        },
    )
    assert r.status_code == 201, r.text
    after = api.get(
        f"/v1/workspaces/{ws}/relationships/ada/grace", params={"min_seq": r.json()["seq"]}
    ).json()
    assert with_help["helps"] == 1 and after["helps"] == 0 and after["meetings"] == 1
    assert after["score"] < with_help["score"]
    only_met = api.get(f"/v1/workspaces/{ws}/relationships/ada/grace").json()
    assert only_met["event_count"] == 1 and keep.status_code == 201


def test_min_seq_beyond_the_log_is_refused_at_once_naming_the_last_seq(
    api: httpx.Client, ws: str
) -> None:
    """A min_seq the log has not reached can never be read: 422 at once (no wait), naming
    the log's last sequence; the seq a write just returned is always accepted."""
    written = add_people(api, ws, "ada")
    last = stream_last_seq(api)
    t0 = time.monotonic()
    r = api.get(f"/v1/workspaces/{ws}/people", params={"min_seq": 10**12}, timeout=30)
    took = time.monotonic() - t0
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == "https://tieline.dev/problems/min-seq-beyond-log"
    assert body["last_seq"] >= last and str(body["last_seq"]) in body["detail"]
    assert body["errors"] == [
        {"loc": ["query", "min_seq"], "msg": f"beyond the log's last sequence {body['last_seq']}"}
    ]
    assert took < 1.0, f"refusal took {took:.2f}s"
    ok = api.get(f"/v1/workspaces/{ws}/people", params={"min_seq": written})
    assert ok.status_code == 200 and [p["person_id"] for p in ok.json()["people"]] == ["ada"]


def test_health_and_readiness(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["nats"] == "ok" and ready.json()["checks"]["postgres"] == "ok"
    assert api.get("/openapi.json").json()["info"]["title"] == "tieline"
