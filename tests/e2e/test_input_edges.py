"""Input at the edges, end to end (api -> services -> JetStream): each case here used to be
answered wrongly, found by a review (2026-12-03). Bad input gets a 4xx naming the field, and
at once, not a 503 after the command timeout; an accepted line is never lost; a re-send gets
the first answer.

- values no command can carry: NaN / Infinity, lone surrogates, NUL, deep nesting (the
  services' decoder refused the command, which was never answered: a 503 after 10 s; deep
  nesting was a 500; a NUL in a field that is not encrypted was accepted, then
  dead-lettered by the projection);
- a time at the edge of the calendar with an offset (an OverflowError in the service: the
  command was never answered);
- POST /people re-sent with its event_id and no person_id (a fresh person id each time,
  so the re-send was "another body under the same event_id": 409, and the id never learnt);
- one event_id twice in one batch (both published at once: 200 "duplicate" for a body that
  was never recorded);
- NUL in a query parameter or a cursor of a read (a 500 from PostgreSQL).
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import pytest

MET = {"type": "relationship.met", "participants": ["ada", "bob"], "depth": "conversation"}


@pytest.fixture
def people(api: httpx.Client, ws: str) -> str:
    for pid in ("ada", "bob", "cy"):
        r = api.post(f"/v1/workspaces/{ws}/people", json={"person_id": pid, "display_name": pid})
        assert r.status_code == 201, r.text
    return ws


def _refused(r: httpx.Response, loc: list[str], started: float) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [e["loc"] for e in r.json()["errors"]] == [loc], r.text
    assert time.monotonic() - started < 5, "answered at once, not after the command timeout"


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        (
            '{"type":"relationship.met","participants":["ada","bob"],"depth":"brief_chat",'
            '"where":"caf\\ud800"}',
            ["where"],
        ),
        (
            '{"type":"relationship.met","participants":["ada","bob"],"depth":"brief_chat",'
            '"where":"a\\u0000b"}',
            ["where"],
        ),
        (
            '{"type":"relationship.met","participants":["ada","bob"],"depth":"brief_chat","x":NaN}',
            ["body"],
        ),
        ('{"type":"relationship.met","x":' + "[" * 5000 + "]" * 5000 + "}", ["body"]),
        (
            '{"type":"relationship.met","participants":["ada","bob"],"depth":"brief_chat",'
            '"occurred_at":"0001-01-01T00:00:00+01:00"}',
            ["occurred_at"],
        ),
        (
            '{"type":"relationship.met","participants":["ada","bob"],"depth":"brief_chat",'
            '"occurred_at":"9999-12-31T23:59:59-05:00"}',
            ["occurred_at"],
        ),
    ],
    ids=["surrogate", "nul", "nan", "deep", "year_1", "year_9999"],
)
def test_a_value_no_command_can_carry_is_a_422_naming_it(
    api: httpx.Client, people: str, raw: str, loc: list[str]
) -> None:
    started = time.monotonic()
    _refused(api.post(f"/v1/workspaces/{people}/events", content=raw), loc, started)
    # The same as a line of a batch, beside a good line that is recorded.
    started = time.monotonic()
    r = api.post(f"/v1/workspaces/{people}/events/batch", content=json.dumps(MET) + "\n" + raw)
    assert r.status_code == 200 and time.monotonic() - started < 5, r.text
    good, bad = r.json()["results"]
    assert good["status"] == 201 and bad["status"] == 422, r.text
    assert bad["errors"][0]["loc"] == (["line", "2"] if loc == ["body"] else loc)


def test_a_person_field_no_command_can_carry_is_a_422_naming_it(api: httpx.Client, ws: str) -> None:
    for name in ("x\udc00", "x\x00y"):
        started = time.monotonic()
        r = api.post(
            f"/v1/workspaces/{ws}/people",
            content=json.dumps({"display_name": name}),
            headers={"content-type": "application/json"},
        )
        _refused(r, ["display_name"], started)


def test_an_unencrypted_nul_is_refused_not_dead_lettered(api: httpx.Client, ws: str) -> None:
    calibrated = {
        "type": "workspace.model_calibrated",
        "holdout_share": 0.5,
        "validated_at": "2025-01-01T00:00:00Z",
        "strength": {"version": "v\u0000x", "values": {}},
    }
    started = time.monotonic()
    _refused(
        api.post(f"/v1/workspaces/{ws}/events", json=calibrated),
        ["strength", "version"],
        started,
    )


def test_a_person_added_without_an_id_can_be_sent_again(api: httpx.Client, ws: str) -> None:
    body = {"display_name": "Ada", "event_id": str(uuid.uuid4())}
    first = api.post(f"/v1/workspaces/{ws}/people", json=body)
    again = api.post(f"/v1/workspaces/{ws}/people", json=body)
    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert again.json()["person_id"] == first.json()["person_id"]
    assert again.json()["seq"] == first.json()["seq"]
    # Without an event_id each request is a new person, as before.
    other = api.post(f"/v1/workspaces/{ws}/people", json={"display_name": "Ada"})
    assert other.status_code == 201 and other.json()["person_id"] != first.json()["person_id"]


def test_one_event_id_twice_in_a_batch(api: httpx.Client, people: str) -> None:
    same, other = str(uuid.uuid4()), str(uuid.uuid4())
    helped = {"type": "relationship.helped", "helper": "ada", "helped": "cy", "event_id": other}
    lines = [{**MET, "event_id": same}, {**MET, "event_id": same}, {**MET, "event_id": other}]
    lines.insert(2, helped)  # line 4 repeats line 3's id with another body
    r = api.post(
        f"/v1/workspaces/{people}/events/batch", content="\n".join(json.dumps(x) for x in lines)
    )
    assert r.status_code == 200, r.text
    out = r.json()["results"]
    assert [x["status"] for x in out] == [201, 200, 201, 409], out
    assert out[1]["duplicate"] is True and out[1]["seq"] == out[0]["seq"]
    assert out[3]["errors"][0]["loc"] == ["event_id"] and "line 3" in out[3]["error"]
    # What was answered as recorded is on the log, exactly once.
    seq = out[2]["seq"]
    timeline = api.get(
        f"/v1/workspaces/{people}/relationships/ada/cy/timeline", params={"min_seq": seq}
    )
    assert [e["event_id"] for e in timeline.json()["events"]] == [other], timeline.text
    pair = api.get(
        f"/v1/workspaces/{people}/relationships/ada/bob/timeline", params={"min_seq": seq}
    )
    assert [e["event_id"] for e in pair.json()["events"]] == [same], pair.text


def test_nul_in_a_read_is_a_422(api: httpx.Client, ws: str) -> None:
    r = api.get(f"/v1/workspaces/{ws}/people", params={"after": "a\x00"})
    assert r.status_code == 422, r.text
    key = base64.urlsafe_b64encode(json.dumps({"l": "people", "k": ["a\u0000"]}).encode())
    r = api.get(f"/v1/workspaces/{ws}/people", params={"cursor": key.decode().rstrip("=")})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["query", "cursor"], r.text
