"""Privacy on the running stack: authentication, workspace isolation by every route, the
access log, and erasure by crypto-shredding."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import nats
import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack

from tests.e2e.conftest import make_token
from tests.e2e.test_walking_skeleton import add_people


def test_requests_without_a_valid_token_get_401_and_nothing_else(stack: Stack, ws: str) -> None:
    with httpx.Client(base_url=stack.api_url, timeout=10) as anon:
        for headers in (
            {},
            {"Authorization": "Bearer nope"},
            {"Authorization": "Bearer tl_000000000000_" + "x" * 32},
            {"Authorization": "Basic abc"},
        ):
            r = anon.get(f"/v1/workspaces/{ws}/people", headers=headers)
            assert r.status_code == 401
            assert r.json() == {"error": "unauthorized", "detail": []}
            assert r.headers["www-authenticate"] == "Bearer"


def test_roles_limit_what_a_token_may_do(stack: Stack, stack_settings: Settings, ws: str) -> None:
    reader = make_token(stack_settings, ws, "read", "reader")
    with httpx.Client(
        base_url=stack.api_url, timeout=10, headers={"Authorization": f"Bearer {reader}"}
    ) as client:
        assert client.get(f"/v1/workspaces/{ws}/people").status_code == 200
        r = client.post(f"/v1/workspaces/{ws}/people", json={"display_name": "X"})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        assert client.get(f"/v1/workspaces/{ws}/access-log").status_code == 403
        assert (
            client.post(
                f"/v1/workspaces/{ws}/tokens", json={"role": "admin", "name": "x"}
            ).status_code
            == 403
        )


def test_revoked_token_stops_working(stack: Stack, api: httpx.Client, ws: str) -> None:
    made = api.post(f"/v1/workspaces/{ws}/tokens", json={"role": "read", "name": "temp"}).json()
    with httpx.Client(
        base_url=stack.api_url, timeout=10, headers={"Authorization": f"Bearer {made['token']}"}
    ) as client:
        assert client.get(f"/v1/workspaces/{ws}/people").status_code == 200
        assert api.delete(f"/v1/workspaces/{ws}/tokens/{made['token_id']}").json() == {
            "revoked": True
        }
        # The API caches a verified token for up to 5 s; the revoking instance drops its cache.
        assert client.get(f"/v1/workspaces/{ws}/people").status_code == 401
    listed = api.get(f"/v1/workspaces/{ws}/tokens").json()["tokens"]
    assert all("secret" not in json.dumps(t) and made["token"] not in json.dumps(t) for t in listed)


# -- isolation: try to cross workspaces by every route -------------------------------------


@pytest.fixture
def victim(stack: Stack, stack_settings: Settings) -> tuple[str, str, dict[str, Any]]:
    """Another workspace with a person, a meeting and a token we are NOT given."""
    ws = f"victim-{uuid.uuid4().hex[:8]}"
    token = make_token(stack_settings, ws)
    with httpx.Client(
        base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        add_people(client, ws, "vera", "victor")
        met = client.post(
            f"/v1/workspaces/{ws}/events",
            json={
                "type": "relationship.met",
                "participants": ["vera", "victor"],
                "depth": "conversation",
                "context": "secret merger talk",
            },
        ).json()
    return ws, token, met


def test_no_route_crosses_into_another_workspace(
    api: httpx.Client,
    ws: str,
    victim: tuple[str, str, dict[str, Any]],
    stack: Stack,
    stack_settings: Settings,
) -> None:
    other, _, met = victim
    add_people(api, ws, "ada", "grace")
    attempts: list[tuple[str, Callable[[], httpx.Response], Callable[[httpx.Response], bool]]] = []

    def refused(r: httpx.Response) -> bool:
        return r.status_code in (401, 403, 404, 422)

    def add(
        name: str,
        call: Callable[[], httpx.Response],
        ok: Callable[[httpx.Response], bool] = refused,
    ) -> None:
        attempts.append((name, call, ok))

    # Path tampering: our token, their workspace, on every route.
    for method, path, body in [
        ("GET", f"/v1/workspaces/{other}/people", None),
        ("GET", f"/v1/workspaces/{other}/people/vera", None),
        ("GET", f"/v1/workspaces/{other}/relationships/vera/victor", None),
        ("GET", f"/v1/workspaces/{other}/relationships/vera/victor/timeline", None),
        ("GET", f"/v1/workspaces/{other}/people/vera/relationships", None),
        ("GET", f"/v1/workspaces/{other}/access-log", None),
        ("GET", f"/v1/workspaces/{other}/tokens", None),
        ("POST", f"/v1/workspaces/{other}/tokens", {"role": "admin", "name": "x"}),
        ("POST", f"/v1/workspaces/{other}/people", {"display_name": "Mallory"}),
        (
            "POST",
            f"/v1/workspaces/{other}/events",
            {"type": "relationship.met", "participants": ["vera", "victor"], "depth": "brief_chat"},
        ),
        ("POST", f"/v1/workspaces/{other}/people/vera/forget", None),
        ("GET", f"/v1/workspaces/{other}/people?min_seq=1", None),
        ("GET", f"/v1/workspaces/{other.upper()}/people", None),
        ("GET", f"/v1/workspaces/{ws}%2F..%2F{other}/people", None),
        ("GET", f"/v1/workspaces/{ws}/../{other}/people", None),
    ]:
        add(f"{method} {path}", lambda m=method, p=path, b=body: api.request(m, p, json=b))
    add(
        "batch to their workspace",
        lambda: api.post(
            f"/v1/workspaces/{other}/events/batch",
            content=b'{"type":"person.added","person_id":"x","display_name":"x"}',
        ),
    )
    # Their person ids in our workspace: they do not exist here.
    add(
        "their person in our met",
        lambda: api.post(
            f"/v1/workspaces/{ws}/events",
            json={
                "type": "relationship.met",
                "participants": ["ada", "vera"],
                "depth": "brief_chat",
            },
        ),
    )
    add("their pair in our read", lambda: api.get(f"/v1/workspaces/{ws}/relationships/vera/victor"))
    add("their person in our directory", lambda: api.get(f"/v1/workspaces/{ws}/people/vera"))
    add(
        "their ties in our workspace",
        lambda: api.get(f"/v1/workspaces/{ws}/people/vera/relationships"),
        lambda r: r.status_code == 200 and r.json()["relationships"] == [],
    )
    add(
        "their timeline in our workspace",
        lambda: api.get(f"/v1/workspaces/{ws}/relationships/vera/victor/timeline"),
        lambda r: r.status_code == 200 and r.json()["events"] == [],
    )
    # A body naming their workspace.
    add(
        "workspace_id in body",
        lambda: api.post(
            f"/v1/workspaces/{ws}/events",
            json={
                "type": "relationship.met",
                "participants": ["ada", "grace"],
                "depth": "brief_chat",
                "workspace_id": other,
            },
        ),
    )
    add(
        "batch line naming their workspace",
        lambda: api.post(
            f"/v1/workspaces/{ws}/events/batch",
            content=json.dumps(
                {
                    "type": "relationship.met",
                    "participants": ["ada", "grace"],
                    "depth": "brief_chat",
                    "workspace_id": other,
                }
            ).encode(),
        ),
        lambda r: r.status_code == 200 and r.json()["results"][0]["status"] == 422,
    )
    # Their event ids: retract it, or re-use its id.
    add(
        "retract their event",
        lambda: api.post(
            f"/v1/workspaces/{ws}/events",
            json={"type": "event.retracted", "retracted_event_id": met["event_id"]},
        ),
    )
    add(
        "reuse their event_id",
        lambda: api.post(
            f"/v1/workspaces/{ws}/events",
            json={
                "type": "relationship.met",
                "participants": ["ada", "grace"],
                "depth": "brief_chat",
                "event_id": met["event_id"],
            },
        ),
        lambda r: r.status_code == 409,
    )
    # min_seq / as_of tricks: a seq from their workspace reveals nothing of theirs.
    add(
        "min_seq of their write",
        lambda: api.get(f"/v1/workspaces/{ws}/people", params={"min_seq": met["seq"]}),
        lambda r: r.status_code == 200 and "vera" not in r.text and "victor" not in r.text,
    )

    escaped = []
    for name, call, ok in attempts:
        r = call()
        if not ok(r) or ("vera" in r.text and r.status_code == 200 and "people" in name):
            escaped.append(f"{name}: {r.status_code} {r.text[:200]}")
        assert "secret merger talk" not in r.text
    print(
        f"\ncross-workspace: {len(attempts)} escape attempts over HTTP, "
        f"{len(attempts) - len(escaped)} refused"
    )
    assert escaped == []


async def test_a_nats_wildcard_subscription_sees_only_ciphertext_of_personal_data(
    stack: Stack, stack_settings: Settings, api: httpx.Client, ws: str
) -> None:
    """Even a party that can read the log sees no personal plaintext (least-privilege NATS
    users keep front ends off the stream entirely; see test_nats_permissions)."""
    js_nc = await nats.connect(stack.nats_url, **_admin(stack))
    try:
        js = js_nc.jetstream()
        marker = f"planted-{uuid.uuid4().hex}"
        add_people(api, ws, "ada")
        r = api.post(  # noqa: ASYNC212
            f"/v1/workspaces/{ws}/people",
            json={"person_id": "p1", "display_name": marker},
        )
        msg = await js.get_msg(stack_settings.stream_name, r.json()["seq"])
        assert msg.data is not None and marker.encode() not in msg.data
        assert b'"display_name":"enc:v1:' in msg.data
    finally:
        await js_nc.close()


def _admin(stack: Stack) -> dict[str, str]:
    creds = stack.nats_credentials("admin") if hasattr(stack, "nats_credentials") else None
    return {"user": creds[0], "password": creds[1]} if creds else {}


def test_access_log_records_who_read_whose_data(api: httpx.Client, ws: str) -> None:
    seq = add_people(api, ws, "ada", "grace")
    assert api.get(f"/v1/workspaces/{ws}/people/ada", params={"min_seq": seq}).status_code == 200
    api.get(f"/v1/workspaces/{ws}/people/ada/relationships")
    entries = api.get(f"/v1/workspaces/{ws}/access-log", params={"person": "ada"}).json()["entries"]
    assert [e["endpoint"] for e in entries[:2]] == ["GET person relationships", "GET person"]
    assert {e["actor"] for e in entries} == {"token:tester"}


# -- erasure ---------------------------------------------------------------------------------


def test_forget_erases_every_trace_of_the_person_and_keeps_other_ties(
    api: httpx.Client, ws: str, stack: Stack
) -> None:
    tag = uuid.uuid4().hex
    planted = {
        "name": f"Zelda Plantedname {tag}",
        "email": f"zelda.{tag}@example.org",
        "notes": f"Allergic to peanuts {tag}",
        "context": f"Talked about her divorce {tag}",
        "note": f"Sent condolences {tag}",
    }
    r = api.post(
        f"/v1/workspaces/{ws}/people",
        json={
            "person_id": "zelda",
            "display_name": planted["name"],
            "email": planted["email"],
            "notes": planted["notes"],
        },
    )
    assert r.status_code == 201, r.text
    add_people(api, ws, "ada", "grace")
    api.post(
        f"/v1/workspaces/{ws}/events",
        json={
            "type": "relationship.met",
            "participants": ["zelda", "ada"],
            "depth": "conversation",
            "context": planted["context"],
        },
    )
    api.post(
        f"/v1/workspaces/{ws}/events",
        json={
            "type": "relationship.followed_up",
            "from_person": "ada",
            "to_person": "zelda",
            "channel": "email",
            "note": planted["note"],
        },
    )
    other = api.post(
        f"/v1/workspaces/{ws}/events",
        json={
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "meal_or_activity",
            "context": "unrelated dinner",
        },
    ).json()
    seen = api.get(f"/v1/workspaces/{ws}/people/zelda", params={"min_seq": other["seq"]}).json()
    assert seen["display_name"] == planted["name"]  # readable before
    fixed = {"as_of": "2099-01-01T00:00:00Z"}  # the same instant before and after
    before = api.get(f"/v1/workspaces/{ws}/relationships/ada/grace", params=fixed).json()

    report = api.post(f"/v1/workspaces/{ws}/people/zelda/forget").json()
    print("\nerasure report:", json.dumps(report, default=str))
    assert report["erased"] is True and report["clean"] is True
    assert report["search"]["values_searched"] >= len(planted)
    assert report["search"]["stream_messages_with_plaintext"] == 0
    assert report["search"]["stream_messages_scanned"] > 0
    assert set(report["search"]["table_rows_with_plaintext"].values()) == {0}
    assert tag not in json.dumps(report)  # the report never repeats the values

    after = api.get(f"/v1/workspaces/{ws}/people/zelda").json()
    assert after["display_name"] == "forgotten person" and after["email"] is None
    listing = api.get(f"/v1/workspaces/{ws}/people").text
    assert tag not in listing
    assert api.get(f"/v1/workspaces/{ws}/relationships/ada/grace", params=fixed).json() == before
    # New events naming the forgotten person are refused.
    again = api.post(
        f"/v1/workspaces/{ws}/events",
        json={"type": "relationship.met", "participants": ["zelda", "ada"], "depth": "brief_chat"},
    )
    assert again.status_code == 410
