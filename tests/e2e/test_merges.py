"""Merging duplicate people (person.merged) through the API, on the running stack (separate
api, people, interactions and worker processes; real NATS and PostgreSQL): the merged
person's history counts as the survivor's in every read, and retracting the merge restores
exactly what was there before. Merges racing each other never make a double merge or a
chain."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
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


def test_racing_merges_are_accepted_once_and_the_others_told_which_field(
    api: httpx.Client, ws: str
) -> None:
    """Six clients at once merge ada into three people (twice each): one merge is published,
    the other five get a 409 problem document naming ``person_id``. In one batch, a line that
    would chain onto an earlier accepted line is refused naming its field."""
    add_people(api, ws, "ada", "bob", "cy", "dee", "pat", "quin", "rae")
    bodies = [
        {"type": "person.merged", "person_id": "ada", "survivor": s}
        for s in ("bob", "cy", "dee") * 2
    ]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda b: post(api, ws, b), bodies))
    assert sorted(r.status_code for r in answers) == [201] + [409] * 5, [r.text for r in answers]
    for r in answers:
        if r.status_code == 409:
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["errors"][0]["loc"] == ["person_id"], r.text
    merges = [{"type": "person.merged", "person_id": p, "survivor": s}
              for p, s in (("pat", "quin"), ("quin", "rae"))]  # fmt: skip
    r = api.post(
        f"/v1/workspaces/{ws}/events/batch",
        content="\n".join(json.dumps(m) for m in merges).encode(),
        headers={"content-type": "application/x-ndjson"},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [201, 409], results
    assert results[1]["errors"][0]["loc"] == ["person_id"], results
