"""Privacy on the running stack: authentication, workspace isolation by every route, and the
access log. Erasure has its own file (test_erasure.py)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fastapi.routing
import httpx
import nats
import pytest
from tieline.plumbing.config import Settings
from tieline.services.api.app import create_app
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
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json() == {
                "type": "https://tieline.dev/problems/unauthorized",
                "title": "Authentication required",
                "status": 401,
                "detail": "unauthorized: send Authorization: Bearer <token>",
                "instance": f"/v1/workspaces/{ws}/people",
                "errors": [],
            }
            assert r.headers["www-authenticate"] == "Bearer"


def test_roles_limit_what_a_token_may_do(stack: Stack, stack_settings: Settings, ws: str) -> None:
    reader = make_token(stack_settings, ws, "read", "reader")
    with httpx.Client(
        base_url=stack.api_url, timeout=10, headers={"Authorization": f"Bearer {reader}"}
    ) as client:
        assert client.get(f"/v1/workspaces/{ws}/people").status_code == 200
        r = client.post(f"/v1/workspaces/{ws}/people", json={"display_name": "X"})
        assert r.status_code == 403
        assert r.json()["type"] == "https://tieline.dev/problems/forbidden"
        assert client.get(f"/v1/workspaces/{ws}/access-log").status_code == 403
        assert (
            client.post(
                f"/v1/workspaces/{ws}/tokens", json={"role": "admin", "name": "x"}
            ).status_code
            == 403
        )


def test_a_write_token_cannot_forget_a_person_through_the_events_route(
    stack: Stack, api: httpx.Client, stack_settings: Settings, ws: str
) -> None:
    """Forgetting destroys a key for good: it takes an admin token on every route, not only
    on ``/forget`` (a write token posting ``person.forgotten`` to /events is refused)."""
    add_people(api, ws, "ada", "grace")
    writer = make_token(stack_settings, ws, "write", "writer")
    forget = {"type": "person.forgotten", "person_id": "ada"}
    with httpx.Client(
        base_url=stack.api_url, timeout=10, headers={"Authorization": f"Bearer {writer}"}
    ) as client:
        one = client.post(f"/v1/workspaces/{ws}/events", json=forget)
        assert one.status_code == 403 and one.json()["errors"][0]["loc"] == ["type"], one.text
        batch = client.post(
            f"/v1/workspaces/{ws}/events/batch",
            content=json.dumps(forget) + "\n",
            headers={"content-type": "application/x-ndjson"},
        )
        assert batch.status_code == 200, batch.text
        assert [r["status"] for r in batch.json()["results"]] == [403]
        met = {"type": "relationship.met", "participants": ["ada", "grace"], "depth": "brief_chat"}
        assert client.post(f"/v1/workspaces/{ws}/events", json=met).status_code == 201
    person = api.get(f"/v1/workspaces/{ws}/people/ada").json()
    assert person.get("display_name") == "Ada" and not person.get("forgotten"), person


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

#: Every route with ``{ws}`` that exists today. The attack list is built from the app's own
#: routes, not from this list; this floor only makes a route list that silently shrinks (a
#: router no longer included, a path renamed) fail instead of attacking less.
KNOWN_WS_ROUTES = {
    ("GET", "/v1/workspaces/{ws}/export/events"),
    ("GET", "/v1/workspaces/{ws}/export/people"),
    ("GET", "/v1/workspaces/{ws}/export/strength"),
    ("GET", "/v1/workspaces/{ws}/export/timeline"),
    ("POST", "/v1/workspaces/{ws}/people"),
    ("GET", "/v1/workspaces/{ws}/people"),
    ("GET", "/v1/workspaces/{ws}/people/{person}"),
    ("POST", "/v1/workspaces/{ws}/events"),
    ("POST", "/v1/workspaces/{ws}/events/batch"),
    ("GET", "/v1/workspaces/{ws}/relationships/{person_a}/{person_b}"),
    ("GET", "/v1/workspaces/{ws}/relationships/{person_a}/{person_b}/explain"),
    ("GET", "/v1/workspaces/{ws}/relationships/{person_a}/{person_b}/timeline"),
    ("GET", "/v1/workspaces/{ws}/people/{person}/relationships"),
    ("GET", "/v1/workspaces/{ws}/people/{person}/follow-ups"),
    ("GET", "/v1/workspaces/{ws}/people/{person}/give-and-take"),
    ("GET", "/v1/workspaces/{ws}/people/{person}/warm-paths"),
    ("GET", "/v1/workspaces/{ws}/introductions"),
    ("GET", "/v1/workspaces/{ws}/introductions/check"),
    ("POST", "/v1/workspaces/{ws}/people/{person}/forget"),
    ("GET", "/v1/workspaces/{ws}/access-log"),
    ("POST", "/v1/workspaces/{ws}/tokens"),
    ("GET", "/v1/workspaces/{ws}/tokens"),
    ("DELETE", "/v1/workspaces/{ws}/tokens/{token_id}"),
    ("GET", "/v1/workspaces/{ws}/stream"),
    ("POST", "/v1/workspaces/{ws}/webhooks"),
    ("GET", "/v1/workspaces/{ws}/webhooks"),
    ("GET", "/v1/workspaces/{ws}/webhooks/{endpoint_id}"),
    ("DELETE", "/v1/workspaces/{ws}/webhooks/{endpoint_id}"),
    ("POST", "/v1/workspaces/{ws}/webhooks/{endpoint_id}/enable"),
    ("POST", "/v1/workspaces/{ws}/webhooks/{endpoint_id}/rotate-secret"),
    ("GET", "/v1/workspaces/{ws}/webhooks/{endpoint_id}/deliveries"),
    ("POST", "/v1/workspaces/{ws}/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver"),
    ("GET", "/v1/workspaces/{ws}/people/duplicates"),
    ("POST", "/v1/workspaces/{ws}/sync-sources"),
    ("GET", "/v1/workspaces/{ws}/sync-sources"),
    ("GET", "/v1/workspaces/{ws}/sync-sources/{source_id}"),
    ("POST", "/v1/workspaces/{ws}/sync-sources/{source_id}/run"),
    ("DELETE", "/v1/workspaces/{ws}/sync-sources/{source_id}"),
}
#: The live stream never ends by itself: its positive control only checks that it opens.
STREAM_ROUTE = "/v1/workspaces/{ws}/stream"
#: Values of required query parameters, by name.
QUERY_VALUES = {"introducer": "vera", "a": "vera", "b": "victor", "target": "victor"}
#: A body for each route that needs one: (content type, body).
BODIES: dict[tuple[str, str], tuple[str, bytes]] = {
    ("POST", "/v1/workspaces/{ws}/people"): (
        "application/json",
        b'{"display_name": "Mallory"}',
    ),
    ("POST", "/v1/workspaces/{ws}/events"): (
        "application/json",
        b'{"type": "relationship.met", "participants": ["vera", "victor"], "depth": "brief_chat"}',
    ),
    ("POST", "/v1/workspaces/{ws}/events/batch"): (
        "application/x-ndjson",
        b'{"type": "person.added", "person_id": "mallory", "display_name": "Mallory"}\n',
    ),
    ("POST", "/v1/workspaces/{ws}/tokens"): (
        "application/json",
        b'{"role": "admin", "name": "mallory"}',
    ),
    # A private address: the positive control gets the SSRF refusal, nothing is ever sent.
    ("POST", "/v1/workspaces/{ws}/webhooks"): (
        "application/json",
        b'{"url": "https://10.0.0.1/hook"}',
    ),
    # The same for a sync source: refused (422), no source made, nothing ever pulled.
    ("POST", "/v1/workspaces/{ws}/sync-sources"): (
        "application/json",
        b'{"kind": "carddav", "url": "https://10.0.0.1/dav/", "username": "m", "password": "p"}',
    ),
}


@dataclass(frozen=True)
class Victim:
    """Another workspace with people, a meeting and tokens we are NOT given."""

    ws: str
    token: str
    met: dict[str, Any]
    spare_token_id: str  # a token of theirs that only the positive control may revoke


@pytest.fixture
def victim(stack: Stack, stack_settings: Settings) -> Victim:
    ws = f"victim-{uuid.uuid4().hex[:8]}"
    token = make_token(stack_settings, ws)
    spare = make_token(stack_settings, ws, "read", "spare")
    with httpx.Client(
        base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        add_people(client, ws, "vera", "victor", "temp")
        met = client.post(
            f"/v1/workspaces/{ws}/events",
            json={
                "type": "relationship.met",
                "participants": ["vera", "victor"],
                "depth": "conversation",
                "context": "secret merger talk",
            },
        ).json()
    return Victim(ws, token, met, spare.split("_")[1])


@dataclass(frozen=True)
class Case:
    """One request to one route: method, concrete path, query and body."""

    method: str
    route: str
    path: str
    params: dict[str, str]
    body: tuple[str, bytes] | None

    def send(self, client: httpx.Client, token: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        content = None
        if self.body is not None:
            headers["Content-Type"], content = self.body
        return client.request(
            self.method, self.path, params=self.params, content=content, headers=headers
        )


def ws_routes(settings: Settings) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path template, OpenAPI operation) of every route of the app whose path has
    ``{ws}``, enumerated from ``app.routes`` (flattening included routers)."""
    app = create_app(settings)  # builds only: nothing connects before the lifespan
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = list(flatten(app.routes)) if flatten is not None else list(app.routes)
    doc = app.openapi()
    out = []
    for route in routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if not path or "{ws}" not in path or not methods:
            continue
        for method in sorted(set(methods) - {"HEAD", "OPTIONS"}):
            operation = doc["paths"].get(path, {}).get(method.lower())
            assert operation is not None, f"{method} {path} is not in the OpenAPI document"
            out.append((method, path, operation))
    return out


def case_for(
    method: str, route: str, operation: dict[str, Any], path_values: dict[str, str]
) -> Case:
    """The request for one route, or a failure naming what the test does not know how to
    fill in (so a new route can never go unattacked)."""
    names = re.findall(r"{(\w+)}", route)
    missing = [n for n in names if n not in path_values]
    assert not missing, f"no attack case for {method} {route}: no value for {missing}"
    path = route
    for n in names:
        path = path.replace("{" + n + "}", path_values[n])
    params = {}
    for p in operation.get("parameters", []):
        if p["in"] == "query" and p.get("required"):
            assert p["name"] in QUERY_VALUES, f"no attack case for {method} {route}: {p['name']}"
            params[p["name"]] = QUERY_VALUES[p["name"]]
    body = BODIES.get((method, route))
    if operation.get("requestBody", {}).get("required") and body is None:
        raise AssertionError(f"no attack case for {method} {route}: it needs a body")
    return Case(method, route, path, params, body)


def _routing_404(r: httpx.Response) -> bool:
    """A 404 from the router (no such path), not one a route answered."""
    return (
        r.status_code == 404
        and r.headers.get("content-type", "") == "application/problem+json"
        and r.json()["type"] == "https://tieline.dev/problems/no-such-route"
    )


def test_every_workspace_route_refuses_another_workspaces_token(
    api: httpx.Client, ws: str, victim: Victim, stack: Stack, stack_settings: Settings
) -> None:
    """Each route with {ws}, taken from the app itself, is called on the victim's workspace
    with our (admin) token: 401/403 only, never a 404 (a mistyped path is not a refusal).
    Each then gets a positive control with the victim's own token, which must get through,
    so a route that is broken or missing cannot pass as refusing."""
    add_people(api, ws, "ada", "grace")
    routes = ws_routes(stack_settings)
    enumerated = {(m, p) for m, p, _ in routes}
    assert enumerated >= KNOWN_WS_ROUTES, KNOWN_WS_ROUTES - enumerated
    attack_values = {
        "ws": victim.ws,
        "person": "vera",
        "person_a": "vera",
        "person_b": "victor",
        "token_id": victim.spare_token_id,
        "endpoint_id": "ep_0123456789abcdef",
        "delivery_id": "msg_0123456789abcdef",
        "source_id": "src_0123456789abcdef",
    }
    cases = [case_for(m, p, op, attack_values) for m, p, op in routes]
    assert {(c.method, c.route) for c in cases} == enumerated
    token = api.headers["Authorization"].removeprefix("Bearer ")
    escaped = []
    for case in cases:
        r = case.send(api, token)
        if r.status_code not in (401, 403):
            escaped.append(f"{case.method} {case.path}: {r.status_code} {r.text[:200]}")
        assert "secret merger talk" not in r.text and "Vera" not in r.text
    print(f"\ncross-workspace: {len(cases)} routes with {{ws}} attacked, {len(escaped)} escaped")
    assert escaped == []
    _victim_untouched(stack, victim)
    _positive_controls(stack, victim, routes, attack_values)


def _victim_untouched(stack: Stack, victim: Victim) -> None:
    """Nothing the attacks sent was written: same people, one meeting, vera not forgotten."""
    with httpx.Client(
        base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {victim.token}"}
    ) as client:
        seq = {"min_seq": victim.met["seq"]}
        people = client.get(f"/v1/workspaces/{victim.ws}/people", params=seq).json()["people"]
        assert [(p["person_id"], p["forgotten"]) for p in people] == [
            ("temp", False),
            ("vera", False),
            ("victor", False),
        ]
        timeline = client.get(f"/v1/workspaces/{victim.ws}/relationships/vera/victor/timeline")
        assert [e["event_id"] for e in timeline.json()["events"]] == [victim.met["event_id"]]


def _positive_controls(
    stack: Stack,
    victim: Victim,
    routes: list[tuple[str, str, dict[str, Any]]],
    attack_values: dict[str, str],
) -> None:
    """The same routes with the victim's own token get through (not 401/403, not a routing
    404 or 405, no server error); the two destructive ones act on throwaway targets."""
    safe = {"/v1/workspaces/{ws}/people/{person}/forget": {**attack_values, "person": "temp"}}
    failed = []
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        for method, route, operation in routes:
            case = case_for(method, route, operation, safe.get(route, attack_values))
            if route == STREAM_ROUTE:
                headers = {"Authorization": f"Bearer {victim.token}"}
                with client.stream("GET", case.path, headers=headers) as r:
                    if r.status_code != 200:
                        failed.append(f"{method} {case.path}: {r.status_code}")
                continue
            r = case.send(client, victim.token)
            if r.status_code in (401, 403, 405) or _routing_404(r) or r.status_code >= 500:
                failed.append(f"{method} {case.path}: {r.status_code} {r.text[:200]}")
            elif route.endswith("/forget"):
                assert r.status_code == 200 and r.json()["erased"] is True, r.text
            elif route.endswith("/tokens/{token_id}"):  # the attack did not revoke it: this does
                assert r.json() == {"revoked": True}, r.text
    assert failed == [], failed


#: (name, method, path, request keywords, what the answer must be)
Attempt = tuple[str, str, str, dict[str, Any], Callable[[httpx.Response], bool]]
MET = {"type": "relationship.met", "participants": ["ada", "grace"], "depth": "brief_chat"}


def _status(code: int) -> Callable[[httpx.Response], bool]:
    return lambda r: r.status_code == code


def _answered_404(r: httpx.Response) -> bool:
    """A 404 that a route answered (an unknown id), not the router's "no such path"."""
    return r.status_code == 404 and not _routing_404(r)


def _tampered_paths(ws: str, other: str) -> list[Attempt]:
    """Their workspace reached through an odd spelling of the path, with our token."""
    base = f"/v1/workspaces/{ws}"
    batch = b'{"type":"person.added","person_id":"x","display_name":"x"}'
    upper = f"/v1/workspaces/{other.upper()}/people"
    return [
        ("upper-cased workspace", "GET", upper, {}, _status(422)),
        ("encoded ../ in the path", "GET", f"{base}%2F..%2F{other}/people", {}, _routing_404),
        ("../ in the path", "GET", f"{base}/../{other}/people", {}, _status(403)),
        ("min_seq on their directory", "GET", f"/v1/workspaces/{other}/people?min_seq=1", {},
         _status(403)),
        ("batch to their workspace", "POST", f"/v1/workspaces/{other}/events/batch",
         {"content": batch}, _status(403)),
    ]  # fmt: skip


def _their_ids_in_ours(ws: str, other: str, met: dict[str, Any]) -> list[Attempt]:
    """Their person ids, event ids, seqs and workspace name used inside our workspace."""
    base = f"/v1/workspaces/{ws}"
    retract = {"type": "event.retracted", "retracted_event_id": met["event_id"]}
    return [
        ("their person in our met", "POST", f"{base}/events",
         {"json": {**MET, "participants": ["ada", "vera"]}}, _status(404)),
        ("their pair in our read", "GET", f"{base}/relationships/vera/victor", {}, _answered_404),
        ("their person in our directory", "GET", f"{base}/people/vera", {}, _answered_404),
        ("their ties in our workspace", "GET", f"{base}/people/vera/relationships", {},
         lambda r: r.status_code == 200 and r.json()["relationships"] == []),
        ("their timeline in our workspace", "GET", f"{base}/relationships/vera/victor/timeline",
         {}, lambda r: r.status_code == 200 and r.json()["events"] == []),
        ("workspace_id in body", "POST", f"{base}/events",
         {"json": {**MET, "workspace_id": other}}, _status(422)),
        ("batch line naming their workspace", "POST", f"{base}/events/batch",
         {"content": json.dumps({**MET, "workspace_id": other})},
         lambda r: r.status_code == 200 and r.json()["results"][0]["status"] == 422),
        ("retract their event", "POST", f"{base}/events", {"json": retract}, _status(404)),
        # Ids are per workspace: their id here is our own event, and says nothing of theirs.
        ("reuse their event_id", "POST", f"{base}/events",
         {"json": {**MET, "event_id": met["event_id"]}}, _status(201)),
        ("min_seq of their write", "GET", f"{base}/people", {"params": {"min_seq": met["seq"]}},
         lambda r: r.status_code == 200 and "vera" not in r.text and "victor" not in r.text),
    ]  # fmt: skip


def test_ids_and_paths_from_another_workspace_reveal_nothing(
    api: httpx.Client, ws: str, victim: Victim
) -> None:
    """Tampered paths, and the victim's ids used inside our own workspace: each gets exactly
    the answer that shows it reached nothing of theirs (a routing 404 counts only where no
    route can match)."""
    add_people(api, ws, "ada", "grace")
    attempts = _tampered_paths(ws, victim.ws) + _their_ids_in_ours(ws, victim.ws, victim.met)
    escaped = []
    for name, method, path, kwargs, ok in attempts:
        r = api.request(method, path, **kwargs)
        if not ok(r):
            escaped.append(f"{name}: {r.status_code} {r.text[:200]}")
        assert "secret merger talk" not in r.text and "Vera" not in r.text
    print(f"\nids and paths: {len(attempts)} attempts, {len(escaped)} escaped")
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
