"""Cursor pagination on every list of the running stack: walking ``next_cursor`` page by page
gives exactly the list one big page gives, in the same order; writes between pages never
make an unchanged item appear twice or go missing; the deprecated ``?after=`` of the
directory still works."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from tieline.plumbing.config import Settings

from tests.e2e.conftest import make_token

Between = Callable[[int], None]


def walk(
    api: httpx.Client,
    path: str,
    field: str,
    limit: int,
    params: dict[str, Any] | None = None,
    between: Between | None = None,
) -> list[Any]:
    """Every item of a list, a page of ``limit`` at a time (``between(page)`` runs after
    each page but the last); each page but the last is full."""
    items: list[Any] = []
    cursor = None
    for page in range(10_000):
        q = {**(params or {}), "limit": limit, **({"cursor": cursor} if cursor else {})}
        r = api.get(path, params=q)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body[field]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        assert len(body[field]) == limit, body
        if between is not None:
            between(page)
    raise AssertionError("the cursor never ended")


def batch(api: httpx.Client, ws: str, events: list[dict[str, Any]]) -> int:
    r = api.post(
        f"/v1/workspaces/{ws}/events/batch", content="\n".join(json.dumps(e) for e in events)
    )
    body = r.json()
    assert r.status_code == 200 and body["rejected"] == 0, body
    return int(body["last_seq"])


def people(*ids: str) -> list[dict[str, Any]]:
    return [{"type": "person.added", "person_id": p, "display_name": p.title()} for p in ids]


def ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def test_directory_pages_are_stable_while_people_are_added(api: httpx.Client, ws: str) -> None:
    ids = [f"p{i:02d}" for i in range(0, 50, 2)]  # p00, p02, ... p48
    seq = batch(api, ws, people(*ids))
    base = f"/v1/workspaces/{ws}/people"
    added: list[str] = []

    def add_some(page: int) -> None:
        # Around every page boundary: before the cursor, after it, and at the very end.
        new = [f"p{page * 10 + 1:02d}", f"p{page * 10 + 9:02d}x", f"z{page}"]
        added.extend(new)
        batch(api, ws, people(*new))

    api.get(base, params={"min_seq": seq})
    seen = [p["person_id"] for p in walk(api, base, "people", 7, between=add_some)]
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert set(ids) <= set(seen), set(ids) - set(seen)
    # The directory itself (one big page, after every write) is what was walked plus the
    # people added before the cursor had passed their place.
    everything = [p["person_id"] for p in api.get(base, params={"limit": 1000}).json()["people"]]
    assert set(everything) - set(seen) <= set(added)
    # The deprecated ?after= still pages, with ``next`` naming the last id of a full page.
    old = api.get(base, params={"limit": 5, "after": "p10"}).json()
    assert [p["person_id"] for p in old["people"]] == everything[everything.index("p10") + 1 :][:5]
    assert old["next"] == old["people"][-1]["person_id"] and old["next_cursor"]


def test_a_persons_ties_page_in_both_orders_and_stay_stable_under_writes(
    api: httpx.Client, ws: str
) -> None:
    friends = [f"f{i:02d}" for i in range(13)]
    events = people("ada", *friends)
    for i, f in enumerate(friends):  # different depths and dates: different scores
        depth = ("brief_chat", "conversation", "meal_or_activity")[i % 3]
        for k in range(1 + i % 4):
            events.append({"type": "relationship.met", "participants": ["ada", f],
                           "depth": depth, "occurred_at": ago(200 - 10 * i - k)})  # fmt: skip
    seq = batch(api, ws, events)
    base = f"/v1/workspaces/{ws}/people/ada/relationships"
    for order in ("strength", "recent"):
        whole = api.get(base, params={"order": order, "limit": 1000, "min_seq": seq}).json()
        paged = walk(api, base, "relationships", 4, {"order": order})
        assert [t["other"] for t in paged] == [t["other"] for t in whole["relationships"]]
        assert len(paged) == 13

    def new_tie(page: int) -> None:
        batch(api, ws, [*people(f"n{page}"), {"type": "relationship.met",
              "participants": ["ada", f"n{page}"], "depth": "deep_conversation"}])  # fmt: skip

    paged = walk(api, base, "relationships", 4, {"order": "strength"}, between=new_tie)
    others = [t["other"] for t in paged]
    assert len(others) == len(set(others)) and set(friends) <= set(others)


def test_introductions_timeline_follow_ups_and_give_and_take_page(
    api: httpx.Client, ws: str
) -> None:
    ids = ["ada", "bo", "cy", "di", "ed", "fi", "gus"]
    events = people(*ids)
    for other in ids[1:]:  # a year-old friendship with each: follow-ups are due
        for k in range(3):
            events.append(
                {
                    "type": "relationship.met",
                    "participants": ["ada", other],
                    "depth": "meal_or_activity",
                    "occurred_at": ago(400 - k * 7),
                }
            )
            events.append(
                {
                    "type": "relationship.followed_up",
                    "from_person": other,
                    "to_person": "ada",
                    "channel": "email",
                    "occurred_at": ago(399 - k),
                }
            )
    for k, target in enumerate(ids[2:]):
        events.append({"type": "introduction.requested", "introduction_id": str(uuid.uuid4()),
                       "requester": "bo", "introducer": "ada", "target": target,
                       "occurred_at": ago(30 - k)})  # fmt: skip
    seq = batch(api, ws, events)
    oops = api.post(f"/v1/workspaces/{ws}/events", json={"type": "relationship.helped",
                    "helper": "ada", "helped": "bo", "occurred_at": ago(380)}).json()  # fmt: skip
    retracted = api.post(f"/v1/workspaces/{ws}/events", json={"type": "event.retracted",
                         "retracted_event_id": oops["event_id"]}).json()  # fmt: skip
    seq = max(seq, retracted["seq"])
    w = f"/v1/workspaces/{ws}"
    cases: list[tuple[str, str, dict[str, Any]]] = [
        (f"{w}/introductions", "introductions", {}),
        (f"{w}/people/ada/follow-ups", "due", {}),
        (f"{w}/people/ada/give-and-take", "ties", {}),
    ]
    for path, field, params in cases:
        whole = api.get(path, params={**params, "limit": 1000, "min_seq": seq}).json()[field]
        assert len(whole) >= 5, (path, whole)
        paged = walk(api, path, field, 2, params)
        if field == "due":  # scores decay between the two reads: compare who, in order
            assert [d["other"] for d in paged] == [d["other"] for d in whole]
        else:
            assert paged == whole, path
    intros = api.get(f"{w}/introductions").json()["introductions"]
    assert [i["requested_at"] for i in intros] == sorted(
        (i["requested_at"] for i in intros), reverse=True
    )
    # A timeline page covers both lists over the same span; together they are the whole.
    # One as_of for every page: the last event's decay curve runs to as_of (now by default).
    path = f"{w}/relationships/ada/bo/timeline"
    at = {"as_of": datetime.now(UTC).isoformat()}
    whole = api.get(path, params={"min_seq": seq, **at}).json()
    assert len(whole["events"]) == 6 and len(whole["retracted"]) == 1
    pages, cursor = [], None
    while True:
        q = {"limit": 2, **at, **({"cursor": cursor} if cursor else {})}
        body = api.get(path, params=q).json()
        pages.append(body)
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(pages) == 4  # 7 rows, 2 a page
    assert [e for p in pages for e in p["events"]] == whole["events"]
    assert [e for p in pages for e in p["retracted"]] == whole["retracted"]


def test_access_log_and_tokens_page(api: httpx.Client, ws: str, stack_settings: Settings) -> None:
    seq = batch(api, ws, people("ada", "bo"))
    for _ in range(5):  # each read of the (projected) directory is an access-log entry
        api.get(f"/v1/workspaces/{ws}/people", params={"min_seq": seq})
    for i in range(5):
        make_token(stack_settings, ws, "read", f"reader{i}")
    w = f"/v1/workspaces/{ws}"
    log = api.get(f"{w}/access-log", params={"limit": 10_000}).json()["entries"]
    assert len(log) >= 5
    assert walk(api, f"{w}/access-log", "entries", 2) == log
    tokens = api.get(f"{w}/tokens", params={"limit": 1000}).json()["tokens"]
    assert len(tokens) == 6  # the fixture's admin token and five readers
    assert walk(api, f"{w}/tokens", "tokens", 4) == tokens
    assert [t["created_at"] for t in tokens] == sorted(t["created_at"] for t in tokens)
