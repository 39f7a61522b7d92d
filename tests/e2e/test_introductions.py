"""Double opt-in introductions as events: requested, consented by each side, made, outcome."""

from __future__ import annotations

import uuid

import httpx

from tests.e2e.test_walking_skeleton import add_people


def post(api: httpx.Client, ws: str, body: dict[str, object]) -> httpx.Response:
    return api.post(f"/v1/workspaces/{ws}/events", json=body)


def status_of(api: httpx.Client, ws: str, seq: int) -> str:
    rows = api.get(f"/v1/workspaces/{ws}/introductions", params={"min_seq": seq}).json()
    return str(rows["introductions"][0]["status"])


def test_introduction_is_made_only_after_both_sides_consent(api: httpx.Client, ws: str) -> None:
    add_people(api, ws, "ada", "grace", "linus", "mallory")
    intro = str(uuid.uuid4())
    r = post(
        api,
        ws,
        {
            "type": "introduction.requested",
            "introduction_id": intro,
            "requester": "ada",
            "introducer": "grace",
            "target": "linus",
            "reason": "compilers",
        },
    )
    assert r.status_code == 201, r.text
    assert status_of(api, ws, r.json()["seq"]) == "awaiting consent"
    made = {
        "type": "relationship.introduced",
        "introducer": "grace",
        "person_a": "ada",
        "person_b": "linus",
        "introduction_id": intro,
    }
    early = post(api, ws, made)
    assert early.status_code == 409 and "double opt-in" in early.json()["detail"]
    stranger = post(
        api, ws, {"type": "introduction.consented", "introduction_id": intro, "person": "mallory"}
    )
    assert stranger.status_code == 422 and "person" in stranger.json()["detail"]
    post(api, ws, {"type": "introduction.consented", "introduction_id": intro, "person": "ada"})
    r = post(
        api, ws, {"type": "introduction.consented", "introduction_id": intro, "person": "linus"}
    )
    assert status_of(api, ws, r.json()["seq"]) == "ready"
    r = post(api, ws, made)
    assert r.status_code == 201, r.text
    assert status_of(api, ws, r.json()["seq"]) == "made"
    r = post(api, ws, {"type": "introduction.outcome", "introduction_id": intro, "outcome": "met"})
    assert r.status_code == 201
    assert status_of(api, ws, r.json()["seq"]) == "outcome: met"


def test_outcome_before_the_introduction_is_made_is_refused(api: httpx.Client, ws: str) -> None:
    add_people(api, ws, "ada", "grace", "linus")
    intro = str(uuid.uuid4())
    r = post(
        api,
        ws,
        {
            "type": "introduction.requested",
            "introduction_id": intro,
            "requester": "ada",
            "introducer": "grace",
            "target": "linus",
        },
    )
    api.get(f"/v1/workspaces/{ws}/introductions", params={"min_seq": r.json()["seq"]})
    r = post(api, ws, {"type": "introduction.outcome", "introduction_id": intro, "outcome": "met"})
    assert r.status_code == 409
    unknown = post(
        api,
        ws,
        {"type": "introduction.consented", "introduction_id": str(uuid.uuid4()), "person": "ada"},
    )
    assert unknown.status_code == 404
