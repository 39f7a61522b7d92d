"""Retractions through the api: one removes exactly its event's effect, and one whose effect
cannot be removed is refused with the field named, instead of being accepted to change
nothing."""

from __future__ import annotations

import uuid

import httpx

from tests.e2e.test_walking_skeleton import add_people


def post(api: httpx.Client, ws: str, body: dict[str, object]) -> httpx.Response:
    r = api.post(f"/v1/workspaces/{ws}/events", json=body)
    assert r.status_code in (201, 422), r.text
    return r


def retract(api: httpx.Client, ws: str, event_id: str) -> httpx.Response:
    return post(api, ws, {"type": "event.retracted", "retracted_event_id": event_id})


def test_retracting_a_person_update_brings_back_the_value_it_replaced(
    api: httpx.Client, ws: str
) -> None:
    add_people(api, ws, "ada")
    update = {"type": "person.updated", "person_id": "ada"}
    cto = post(api, ws, {**update, "title": "CTO", "occurred_at": "2026-05-01T09:00:00Z"})
    ceo = post(api, ws, {**update, "title": "CEO", "occurred_at": "2026-06-01T09:00:00Z"})
    seen = api.get(f"/v1/workspaces/{ws}/people/ada", params={"min_seq": ceo.json()["seq"]})
    assert seen.json()["title"] == "CEO"
    r = retract(api, ws, ceo.json()["event_id"])
    assert r.status_code == 201, r.text
    seen = api.get(f"/v1/workspaces/{ws}/people/ada", params={"min_seq": r.json()["seq"]})
    assert seen.json()["title"] == "CTO" and cto.status_code == 201
    r = retract(api, ws, cto.json()["event_id"])
    seen = api.get(f"/v1/workspaces/{ws}/people/ada", params={"min_seq": r.json()["seq"]})
    assert seen.json()["title"] is None  # as she was added


def test_a_retraction_that_could_not_remove_its_events_effect_is_refused(
    api: httpx.Client, ws: str
) -> None:
    add_people(api, ws, "ada", "grace", "linus", "zelda")
    intro = str(uuid.uuid4())
    steps = [
        {"type": "introduction.requested", "introduction_id": intro, "requester": "ada",
         "introducer": "grace", "target": "linus"},
        {"type": "introduction.consented", "introduction_id": intro, "person": "ada"},
    ]  # fmt: skip
    ids = [post(api, ws, step).json()["event_id"] for step in steps]
    forget = api.post(f"/v1/workspaces/{ws}/people/zelda/forget")
    assert forget.status_code == 200, forget.text
    ids.append(forget.json()["forgotten_event_id"])
    for event_id in ids:
        r = retract(api, ws, event_id)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["errors"][0]["loc"] == ["retracted_event_id"], r.json()
    # The consent still stands, as the refusal said: linus's yes makes the introduction ready.
    r = post(
        api, ws, {"type": "introduction.consented", "introduction_id": intro, "person": "linus"}
    )
    rows = api.get(f"/v1/workspaces/{ws}/introductions", params={"min_seq": r.json()["seq"]})
    assert rows.json()["introductions"][0]["status"] == "ready"


def test_retracting_the_event_that_made_an_introduction_unmakes_it(
    api: httpx.Client, ws: str
) -> None:
    add_people(api, ws, "ada", "grace", "linus")
    intro = str(uuid.uuid4())
    steps = [
        {"type": "introduction.requested", "introduction_id": intro, "requester": "ada",
         "introducer": "grace", "target": "linus"},
        {"type": "introduction.consented", "introduction_id": intro, "person": "ada"},
        {"type": "introduction.consented", "introduction_id": intro, "person": "linus"},
    ]  # fmt: skip
    for step in steps:
        post(api, ws, step)
    made = {"type": "relationship.introduced", "introducer": "grace", "person_a": "ada",
            "person_b": "linus", "introduction_id": intro}  # fmt: skip
    first = post(api, ws, made).json()
    resent = api.post(f"/v1/workspaces/{ws}/events", json={**made, "event_id": first["event_id"]})
    assert resent.status_code == 200 and resent.json()["duplicate"], resent.text
    twice = api.post(f"/v1/workspaces/{ws}/events", json=made)
    assert twice.status_code == 409 and first["event_id"] in twice.json()["detail"], twice.text
    post(api, ws, {"type": "introduction.outcome", "introduction_id": intro, "outcome": "met"})

    def status(seq: int) -> str:
        rows = api.get(f"/v1/workspaces/{ws}/introductions", params={"min_seq": seq}).json()
        return str(rows["introductions"][0]["status"])

    r = retract(api, ws, first["event_id"])
    assert r.status_code == 201, r.text
    assert status(r.json()["seq"]) == "ready"  # its outcome no longer shows
    tie = api.get(f"/v1/workspaces/{ws}/relationships/ada/linus")
    assert tie.status_code == 404 or tie.json()["introductions"] == 0, tie.text
    late = api.post(
        f"/v1/workspaces/{ws}/events",
        json={"type": "introduction.outcome", "introduction_id": intro, "outcome": "talking"},
    )
    assert late.status_code == 409, late.text  # the write side knows it is not made
    again = post(api, ws, made).json()
    assert status(again["seq"]) == "outcome: met"  # made again: the outcome that holds shows


def test_a_person_cannot_be_un_added(api: httpx.Client, ws: str) -> None:
    """Retracting a ``person.added`` is refused: events may name the person, and hiding them
    from the directory while their ties still counted was not removing the add's effect."""
    add_people(api, ws, "ada")
    added = api.post(f"/v1/workspaces/{ws}/people", json={"person_id": "mal", "display_name": "M"})
    assert added.status_code == 201, added.text
    met = {"type": "relationship.met", "participants": ["ada", "mal"], "depth": "conversation"}
    seq = post(api, ws, met).json()["seq"]
    r = retract(api, ws, added.json()["event_id"])
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["retracted_event_id"], r.json()
    assert "person.merged" in r.json()["errors"][0]["msg"], r.json()
    person = api.get(f"/v1/workspaces/{ws}/people/mal", params={"min_seq": seq})
    assert person.status_code == 200, person.text  # still there, as the refusal says
