"""Merging duplicate people (person.merged) through the API, on the running stack (separate
api, people, interactions and worker processes; real NATS and PostgreSQL): the merged
person's history counts as the survivor's in every read, and retracting the merge restores
exactly what was there before."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.e2e.test_walking_skeleton import add_people


def post(api: httpx.Client, ws: str, body: dict[str, Any]) -> httpx.Response:
    return api.post(f"/v1/workspaces/{ws}/events", json=body)


def recorded(api: httpx.Client, ws: str, body: dict[str, Any]) -> dict[str, Any]:
    r = post(api, ws, body)
    assert r.status_code == 201, r.text
    answer: dict[str, Any] = r.json()
    return answer


def snapshot(api: httpx.Client, ws: str, seq: int) -> dict[str, Any]:
    """Everything the merge touches, as the API answers it after ``seq``."""
    at = {"min_seq": seq}
    out: dict[str, Any] = {}
    people = api.get(f"/v1/workspaces/{ws}/people", params=at).json()["people"]
    out["people"] = sorted(p["person_id"] for p in people)
    groups = api.get(f"/v1/workspaces/{ws}/people/duplicates", params=at).json()["groups"]
    out["duplicates"] = sorted(sorted(p["person_id"] for p in g["people"]) for g in groups)
    for a, b in (("ada", "xena"), ("ada2", "xena"), ("ada", "ada2")):
        r = api.get(f"/v1/workspaces/{ws}/relationships/{a}/{b}", params=at)
        pair = r.json() if r.status_code == 200 else None
        fields = ("person_a", "person_b", "meetings", "follow_ups")
        out[f"{a}-{b}"] = None if pair is None else tuple(pair[k] for k in fields)
        t = api.get(f"/v1/workspaces/{ws}/relationships/{a}/{b}/timeline", params=at)
        out[f"{a}-{b} timeline"] = sorted(e["event_id"] for e in t.json()["events"])
    ties = api.get(f"/v1/workspaces/{ws}/people/xena/relationships", params=at).json()
    out["xena ties"] = sorted((t["other"], t["event_count"]) for t in ties["relationships"])
    intros = api.get(f"/v1/workspaces/{ws}/introductions", params={**at, "person": "ada"}).json()
    roles = ("requester", "introducer", "target")
    out["ada intros"] = [tuple(i[r] for r in roles) for i in intros["introductions"]]
    return out


def test_merge_folds_history_into_the_survivor_and_its_retraction_restores_it(
    api: httpx.Client, ws: str
) -> None:
    add_people(api, ws, "xena", "yuri")
    for pid, name in (("ada", "Ada Lovelace"), ("ada2", "Ada L.")):  # one woman, added twice
        r = api.post(
            f"/v1/workspaces/{ws}/people",
            json={"person_id": pid, "display_name": name, "email": "ada@example.org"},
        )
        assert r.status_code == 201, r.text
    met = {"type": "relationship.met", "depth": "conversation", "duration_minutes": 60}
    m1 = recorded(api, ws, {**met, "participants": ["ada", "xena"]})
    m2 = recorded(api, ws, {**met, "participants": ["ada2", "xena"]})
    f = recorded(
        api,
        ws,
        {
            "type": "relationship.followed_up",
            "from_person": "xena",
            "to_person": "ada2",
            "channel": "email",
            "replied": True,
        },
    )
    recorded(
        api,
        ws,
        {
            "type": "introduction.requested",
            "introduction_id": str(uuid.uuid4()),
            "requester": "ada2",
            "introducer": "xena",
            "target": "yuri",
        },
    )
    own = recorded(api, ws, {**met, "participants": ["ada", "ada2"]})
    before = snapshot(api, ws, own["seq"])
    assert before["people"] == ["ada", "ada2", "xena", "yuri"]
    assert ["ada", "ada2"] in before["duplicates"]
    assert before["ada-xena"] == ("ada", "xena", 1, 0)
    assert before["ada2-xena"] == ("ada2", "xena", 1, 1)
    assert before["ada-ada2"] == ("ada", "ada2", 1, 0)
    assert before["ada intros"] == []

    merge = recorded(api, ws, {"type": "person.merged", "person_id": "ada2", "survivor": "ada"})
    after = snapshot(api, ws, merge["seq"])
    assert after["people"] == ["ada", "xena", "yuri"]
    assert after["duplicates"] == []
    # (ada2, xena) is read as (ada, xena): both meetings and the follow-up count once.
    assert after["ada-xena"] == after["ada2-xena"] == ("ada", "xena", 2, 1)
    both = sorted(str(e["event_id"]) for e in (m1, m2, f))
    assert after["ada-xena timeline"] == after["ada2-xena timeline"] == both
    # The two were one person all along: their own meeting is no tie of anyone.
    assert after["ada-ada2"] is None and after["ada-ada2 timeline"] == []
    assert after["xena ties"] == [("ada", 3)]
    assert after["ada intros"] == [("ada", "xena", "yuri")]  # requested as ada2
    ada2 = api.get(f"/v1/workspaces/{ws}/people/ada2", params={"min_seq": merge["seq"]}).json()
    assert ada2["merged_into"] == "ada"

    again = post(api, ws, {"type": "person.merged", "person_id": "ada2", "survivor": "xena"})
    assert again.status_code == 409 and again.json()["errors"][0]["loc"] == ["person_id"]
    chain = post(api, ws, {"type": "person.merged", "person_id": "ada", "survivor": "xena"})
    assert chain.status_code == 409 and chain.json()["errors"][0]["loc"] == ["person_id"]
    self_merge = post(api, ws, {"type": "person.merged", "person_id": "ada", "survivor": "ada"})
    assert self_merge.status_code == 422 and "survivor" in self_merge.json()["detail"]
    unknown = post(api, ws, {"type": "person.merged", "person_id": "nobody", "survivor": "ada"})
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["loc"] == ["person_id"]

    undo = recorded(api, ws, {"type": "event.retracted", "retracted_event_id": merge["event_id"]})
    assert snapshot(api, ws, undo["seq"]) == before
