"""Erasure by crypto-shredding, proved independently of the product's own report: after a
forget, nothing of the person's former values can be recovered from the raw streams or from
any row of any table (state schema, live and retired read-model generations) by a party
holding the database, the log and the master key; before it, the same search finds them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection, sql
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing.config import Settings
from tieline.projections import replay
from tieline.services.runtime.supervisor import Stack, StackConfig
from tieline.services.write_rules import body_digest, build

from tests.conftest import Servers, settings_env, unique_settings
from tests.e2e.conftest import make_token
from tests.e2e.test_walking_skeleton import add_people
from tests.e2e.traces import Attacker, Traces


@pytest.fixture
def own_stack(servers: Servers, tmp_path: Path) -> Iterator[tuple[Stack, Settings]]:
    """A stack of its own (own stream and schema), so the test can rebuild the read models
    into a new generation, retiring the old one, without moving the shared stack."""
    settings = unique_settings(servers)
    config = StackConfig(
        data_dir=tmp_path / "stack",
        nats_url=servers.nats_url,
        database_url=servers.database_url,
        env=settings_env(settings),
    )
    with Stack(config) as stack:
        yield stack, settings


def _plant(api: httpx.Client, ws: str, tag: str) -> tuple[dict[str, str], int]:
    """Zelda with personal data, a meeting and a follow-up with free text about her, and an
    unrelated tie; returns the planted values and the last seq."""
    planted = {
        "name": f"Zelda Plantedname {tag}",
        "email": f"zelda.{tag}@example.org",
        "notes": f"Allergic to peanuts {tag}",
        "context": f"Talked about her divorce {tag}",
        "note": f"Sent condolences {tag}",
    }
    person = {"person_id": "zelda", "display_name": planted["name"]}
    r = api.post(f"/v1/workspaces/{ws}/people", json={**person, **_pick(planted, "email", "notes")})
    assert r.status_code == 201, r.text
    add_people(api, ws, "ada", "grace")
    events: list[dict[str, Any]] = [
        {
            "type": "relationship.met",
            "participants": ["zelda", "ada"],
            "depth": "conversation",
            "context": planted["context"],
        },
        {
            "type": "relationship.followed_up",
            "from_person": "ada",
            "to_person": "zelda",
            "channel": "email",
            "note": planted["note"],
        },
        {
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "meal_or_activity",
            "context": "unrelated dinner",
        },
    ]
    for event in events:
        r = api.post(f"/v1/workspaces/{ws}/events", json=event)
        assert r.status_code == 201, r.text
    return planted, int(r.json()["seq"])


def _pick(d: dict[str, str], *keys: str) -> dict[str, str]:
    return {k: d[k] for k in keys}


def _rebuild(stack: Stack, settings: Settings, api: httpx.Client) -> tuple[str, str]:
    """Replay the log into a new generation and switch it live (the old one is retired, its
    tables kept); restart the stack's worker, which stops when its generation retires, as
    ``tieline up`` would; wait until the API reads the new generation. Returns the retired
    and the live schema."""

    async def replay_and_switch() -> tuple[str, str, int]:
        async with await AsyncConnection.connect(settings.database_url, autocommit=True) as c:
            state = sql.Identifier(settings.database_schema)
            cur = await c.execute(sql.SQL("SELECT schema_name FROM {}.generations").format(state))
            [(old,)] = await cur.fetchall()
        result, worker = await replay.replay(settings, status="building")
        await worker.close()
        assert result.switched
        return old, result.generation.schema_name, result.generation.gen

    old, new, gen = asyncio.run(replay_and_switch())
    deadline = time.monotonic() + 60
    while stack.children["worker"].poll() is None:  # it notices within about a second
        assert time.monotonic() < deadline, "the worker did not stop on its retired generation"
        time.sleep(0.2)
    stack.supervise_once()
    while True:
        ready = api.get("/readyz").json()
        if ready["ready"] and ready["checks"]["projection"]["generation"] == gen:
            return old, new
        assert time.monotonic() < deadline, ready
        time.sleep(0.2)


def test_forget_leaves_nothing_recoverable_in_the_stream_or_any_table(
    own_stack: tuple[Stack, Settings],
) -> None:
    """After a forget, a search of the raw streams and of every row of every table (state
    schema, live and retired read-model generations), decrypting with every key that is left,
    finds none of the person's former values. The same search before the forget finds each
    of them in the stream and in both generations' tables (positive control). The product's
    own report is checked too, but not relied on."""
    stack, settings = own_stack
    ws, tag = "erasure", uuid.uuid4().hex
    token = make_token(settings, ws)
    with httpx.Client(
        base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    ) as api:
        planted, seq = _plant(api, ws, tag)
        seen = api.get(f"/v1/workspaces/{ws}/people/zelda", params={"min_seq": seq}).json()
        assert seen["display_name"] == planted["name"]  # readable before
        retired, live = _rebuild(stack, settings, api)
        attacker = Attacker(settings, stack.nats_url, stack.master_key(), ws)
        values = set(planted.values())
        before = asyncio.run(attacker.search(values))
        _assert_found_everywhere_it_should_be(before, planted, settings, (retired, live))

        fixed = {"as_of": "2099-01-01T00:00:00Z"}  # the same instant before and after
        tie = api.get(f"/v1/workspaces/{ws}/relationships/ada/grace", params=fixed).json()
        report = api.post(f"/v1/workspaces/{ws}/people/zelda/forget").json()
        print("\nerasure report:", json.dumps(report, default=str))
        _assert_report(report, planted, tag, before)

        after = asyncio.run(attacker.search(values))
        assert after.tables == before.tables
        assert after.messages[settings.stream_name] == before.messages[settings.stream_name] + 1
        assert after.anywhere() == {}, after.anywhere()
        print(
            f"erasure: {after.rows} rows in {len(after.tables)} tables and "
            f"{sum(after.messages.values())} messages searched after the forget: nothing found"
        )
        _assert_product_behaviour(api, ws, tag, fixed, tie)


def _assert_found_everywhere_it_should_be(
    before: Traces, planted: dict[str, str], settings: Settings, schemas: tuple[str, str]
) -> None:
    """The positive control: every value is recoverable before the forget from the raw
    stream and from the archive of both generations; the person's fields from both
    directories."""
    stream = f"stream:{settings.stream_name}"
    for value in planted.values():
        assert stream in before.places_of(value), value
    for schema in schemas:
        assert set(before.found[f"{schema}.events"]) == set(planted.values()), schema
        assert set(before.found[f"{schema}.people_v1"]) == set(
            _pick(planted, "name", "email", "notes").values()
        ), schema
    assert {f"{s}.{t}" for s in schemas for t in ("events", "people_v1")} <= set(before.tables)
    assert f"{settings.database_schema}.person_keys" in before.tables


#: Tables whose rows belong to no workspace: the erasure report does not search them.
NO_WORKSPACE_TABLES = {
    "alembic_version",
    "checkpoints",
    "generations",
    "live_state",
    "rate_limits",
    "self_checks",
    "write_backfill",
}


def _assert_report(
    report: dict[str, Any], planted: dict[str, str], tag: str, before: Traces
) -> None:
    """The product's report: erased, clean, and its table scan covers every table the
    independent search found (state schema and every generation)."""
    assert report["erased"] is True and report["clean"] is True
    search = report["search"]
    assert search["values_searched"] >= len(planted)
    assert search["stream_messages_with_plaintext"] == 0
    assert search["stream_messages_scanned"] > 0
    # Every table the independent search found is either searched (the workspace's rows of
    # it) or named as holding no workspace's rows.
    searched, skipped = set(search["table_rows_with_plaintext"]), set(search["tables_not_searched"])
    assert searched | skipped == set(before.tables) and not searched & skipped
    assert {t.rsplit(".", 1)[1] for t in skipped} <= NO_WORKSPACE_TABLES, skipped
    assert {"people_v1", "events", "person_keys"} <= {t.rsplit(".", 1)[1] for t in searched}
    assert set(search["table_rows_with_plaintext"].values()) == {0}
    assert tag not in json.dumps(report)  # the report never repeats the values


def _assert_product_behaviour(
    api: httpx.Client, ws: str, tag: str, fixed: dict[str, str], tie: dict[str, Any]
) -> None:
    """What users see: the person shows as forgotten, other ties are unchanged, and new
    events naming the person are refused."""
    after = api.get(f"/v1/workspaces/{ws}/people/zelda").json()
    assert after["display_name"] == "forgotten person" and after["email"] is None
    assert tag not in api.get(f"/v1/workspaces/{ws}/people").text
    assert api.get(f"/v1/workspaces/{ws}/relationships/ada/grace", params=fixed).json() == tie
    again = api.post(
        f"/v1/workspaces/{ws}/events",
        json={"type": "relationship.met", "participants": ["zelda", "ada"], "depth": "brief_chat"},
    )
    assert again.status_code == 410


def test_the_erasure_report_searches_only_its_own_workspace(
    stack: Stack, stack_settings: Settings
) -> None:
    """A's admin wants to know whether workspace B holds a person. Person ids are plaintext
    and can be predictable (contacts sync derives them from an e-mail address). A plants the
    id as the name of a person of its own, forgets that person and reads the report's counts:
    they are A's own (clean, nothing of B counted), so the report is no oracle into B. Before
    the fix the scan covered every workspace's rows and stream messages, and the report came
    back unclean, B's copies counted."""
    tag = uuid.uuid4().hex[:10]
    victim, prober, secret = f"eb-{tag}", f"ea-{tag}", f"p-{tag}"
    report: dict[str, Any] = {}
    for ws, person in ((victim, secret), (prober, "probe")):
        headers = {"Authorization": f"Bearer {make_token(stack_settings, ws)}"}
        with httpx.Client(base_url=stack.api_url, timeout=30, headers=headers) as api:
            r = api.post(
                f"/v1/workspaces/{ws}/people", json={"person_id": person, "display_name": secret}
            )
            assert r.status_code == 201, r.text
            seen = api.get(
                f"/v1/workspaces/{ws}/people/{person}", params={"min_seq": r.json()["seq"]}
            )
            assert seen.status_code == 200, seen.text
            if ws == prober:
                report = api.post(f"/v1/workspaces/{ws}/people/probe/forget").json()
    search = report["search"]
    assert report["erased"] is True and search["values_searched"] == 1, report
    assert search["stream_messages_with_plaintext"] == 0, search
    assert set(search["table_rows_with_plaintext"].values()) == {0}, search
    assert report["clean"] is True


def test_forgetting_a_survivor_erases_the_people_merged_into_it(api: httpx.Client, ws: str) -> None:
    """A merge says two ids are one human recorded twice. Forgetting the survivor erases the
    duplicate too, in the same command: its name and e-mail are gone from the directory and
    the export, and events naming it are refused. Forgetting a duplicate alone is refused,
    naming its survivor (to erase only the duplicate, retract the merge first). Before this
    the duplicate stayed readable after the survivor's erasure, and a meeting naming it was
    accepted and counted as the erased survivor's."""
    tag = uuid.uuid4().hex[:10]
    add_people(api, ws, "ada")
    merges: dict[str, str] = {}
    for survivor, duplicate in (("zed", "zed2"), ("yan", "yan2")):
        for pid in (survivor, duplicate):
            person = {"person_id": pid, "display_name": f"Z {tag}", "email": f"{pid}.{tag}@e.org"}
            r = api.post(f"/v1/workspaces/{ws}/people", json=person)
            assert r.status_code == 201, r.text
        merge = {"type": "person.merged", "person_id": duplicate, "survivor": survivor}
        r = api.post(f"/v1/workspaces/{ws}/events", json=merge)
        assert r.status_code == 201, r.text
        merges[duplicate] = r.json()["event_id"]
        seen = api.get(
            f"/v1/workspaces/{ws}/people/{duplicate}", params={"min_seq": r.json()["seq"]}
        )
        assert seen.json()["merged_into"] == survivor

    report = api.post(f"/v1/workspaces/{ws}/people/zed/forget").json()
    assert report["erased"] is True and report["clean"] is True, report
    for pid in ("zed", "zed2"):
        gone = api.get(f"/v1/workspaces/{ws}/people/{pid}").json()
        assert gone["display_name"] == "forgotten person" and gone["email"] is None, gone
    assert report.get("merged_people_forgotten") == ["zed2"]
    assert report["search"]["values_searched"] >= 3  # both people's name and e-mail
    assert f"zed2.{tag}" not in api.get(f"/v1/workspaces/{ws}/export/people").text
    met = api.post(
        f"/v1/workspaces/{ws}/events",
        json={"type": "relationship.met", "participants": ["zed2", "ada"], "depth": "brief_chat"},
    )
    assert met.status_code == 410, met.text

    alone = api.post(f"/v1/workspaces/{ws}/people/yan2/forget")
    assert alone.status_code == 409, alone.text
    assert "merged into 'yan'" in alone.json()["detail"]
    assert api.get(f"/v1/workspaces/{ws}/people/yan2").json()["email"] == f"yan2.{tag}@e.org"

    # The merge retracted, and the survivor forgotten at once: the duplicate is a person of
    # its own again and is not taken along (the route reads the merges once the projection
    # has applied the log as it is).
    undo = {"type": "event.retracted", "retracted_event_id": merges["yan2"]}
    assert api.post(f"/v1/workspaces/{ws}/events", json=undo).status_code == 201
    report = api.post(f"/v1/workspaces/{ws}/people/yan/forget").json()
    assert report["erased"] is True and report["merged_people_forgotten"] == [], report
    assert api.get(f"/v1/workspaces/{ws}/people/yan2").json()["email"] == f"yan2.{tag}@e.org"


def test_an_outcome_note_is_erased_with_either_person_of_the_introduction(
    stack: Stack, stack_settings: Settings, api: httpx.Client, ws: str
) -> None:
    """An introduction's outcome names its two people (introduction.outcome v2, filled in
    by the write side), so its note is encrypted with both their keys: after either is
    forgotten nobody holding the database, the log and the master key can read it. Before
    (v1) it was under the workspace's key, which no erasure destroys."""
    tag = uuid.uuid4().hex[:10]
    note = f"Zelda is job-hunting after her divorce {tag}"
    add_people(api, ws, "zelda", "ada", "grace")
    intro = str(uuid.uuid4())
    steps: list[dict[str, Any]] = [
        {
            "type": "introduction.requested",
            "introduction_id": intro,
            "requester": "zelda",
            "introducer": "grace",
            "target": "ada",
        },
        {"type": "introduction.consented", "introduction_id": intro, "person": "zelda"},
        {"type": "introduction.consented", "introduction_id": intro, "person": "ada"},
        {
            "type": "relationship.introduced",
            "introduction_id": intro,
            "introducer": "grace",
            "person_a": "zelda",
            "person_b": "ada",
        },
        {"type": "introduction.outcome", "introduction_id": intro, "outcome": "met", "note": note},
    ]
    for step in steps:
        r = api.post(f"/v1/workspaces/{ws}/events", json=step)
        assert r.status_code == 201, r.text
    outcome = _exported(api, ws, r.json()["seq"], "introduction.outcome")
    assert (outcome["requester"], outcome["target"], outcome["note"]) == ("zelda", "ada", note)
    _forget_zelda_and_search(stack, stack_settings, api, ws, note, outcome["event_id"])


def _exported(
    api: httpx.Client, ws: str, seq: int, event_type: str, index: int = 0
) -> dict[str, Any]:
    """The ``index``-th event of ``event_type`` in the workspace's export (once ``seq`` is
    projected)."""
    exported = api.get(f"/v1/workspaces/{ws}/export/events", params={"min_seq": seq})
    events = [e for e in map(json.loads, exported.text.splitlines()) if e["type"] == event_type]
    return events[index]


def _forget_zelda_and_search(
    stack: Stack, settings: Settings, api: httpx.Client, ws: str, text: str, event_id: str
) -> None:
    """``text`` (of event ``event_id``) is recoverable before zelda is forgotten (the positive
    control) and nowhere after: not in the stream or any table to an attacker holding the
    database, the log and the master key, not in the export, and the event's digest gone
    (it would confirm a guess of the text: see the next test)."""
    attacker = Attacker(settings, stack.nats_url, stack.master_key(), ws)
    assert asyncio.run(attacker.search({text})).anywhere()
    report = api.post(f"/v1/workspaces/{ws}/people/zelda/forget").json()
    assert report["erased"] is True and report["clean"] is True, report
    assert asyncio.run(attacker.search({text})).anywhere() == {}
    tag = text.rsplit(" ", 1)[-1]  # the unique part
    assert tag not in api.get(f"/v1/workspaces/{ws}/export/events").text
    assert _stored_digests(settings, ws)[event_id] is None


def _digest_guess(ws: str, obj: dict[str, Any]) -> str:
    """What an attacker computes for a guessed body: the write side's own digest of it (the
    function is public, and so is everything else of the event on the log)."""
    event = build(
        ws,
        obj,
        actor="attacker",
        now=datetime.now(UTC),
        types=frozenset(REGISTRY.classes),
        service="attacker",
        registry=REGISTRY,
        max_future_skew_s=60,
    )
    return body_digest(event, obj)


def _stored_digests(settings: Settings, ws: str) -> dict[str, str | None]:
    async def read() -> dict[str, str | None]:
        async with await AsyncConnection.connect(settings.database_url, autocommit=True) as c:
            cur = await c.execute(
                sql.SQL(
                    "SELECT event_id::text, digest FROM {}.write_events WHERE workspace_id = %s"
                ).format(sql.Identifier(settings.database_schema)),
                (ws,),
            )
            return {r[0]: r[1] for r in await cur.fetchall()}

    return asyncio.run(read())


def test_no_digest_confirms_a_guess_of_a_forgotten_persons_note(
    stack_settings: Settings, api: httpx.Client, ws: str
) -> None:
    """The write side keeps a digest of each body a client sent (a re-sent id with another
    body is refused). Whoever holds the database and the log sees every field of an event
    but its encrypted notes, so a digest lets them confirm a guess of a note: fill it in,
    digest, compare. After the person's erasure no stored digest confirms a guess of their
    events (nor of their directory entry); an unrelated event keeps its digest, so a reused
    id is still refused there. Before, every digest stayed and confirmed the guess."""
    tag = uuid.uuid4().hex[:10]
    add_people(api, ws, "zelda", "ada", "grace")
    lines: dict[str, dict[str, Any]] = {
        "zelda": {
            "type": "person.updated",
            "person_id": "zelda",
            "notes": f"Allergic to peanuts {tag}",
        },
        "met": {
            "type": "relationship.met",
            "participants": ["zelda", "ada"],
            "depth": "conversation",
            "context": f"Talked about her divorce {tag}",
            "occurred_at": "2026-11-02T10:00:00Z",
        },
        "note": {
            "type": "relationship.followed_up",
            "from_person": "ada",
            "to_person": "zelda",
            "channel": "email",
            "note": f"Sent condolences {tag}",
        },
        "unrelated": {
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "brief_chat",
            "context": f"Unrelated chat {tag}",
        },
    }
    for obj in lines.values():
        obj["event_id"] = str(uuid.uuid4())
        r = api.post(f"/v1/workspaces/{ws}/events", json=obj)
        assert r.status_code == 201, r.text
    guesses = {name: _digest_guess(ws, obj) for name, obj in lines.items()}
    before = _stored_digests(stack_settings, ws)
    for name, obj in lines.items():  # positive control: each guess is confirmed before
        assert before[obj["event_id"]] == guesses[name], name

    report = api.post(f"/v1/workspaces/{ws}/people/zelda/forget").json()
    assert report["erased"] is True and report["clean"] is True, report
    stored = _stored_digests(stack_settings, ws)
    confirmed = {name for name, obj in lines.items() if stored[obj["event_id"]] == guesses[name]}
    assert confirmed == {"unrelated"}
    # Zelda's four events lost their digests (her person.added too); the unrelated meeting
    # and the other two people's person.added kept theirs.
    assert None not in before.values()
    kept = {e for e, d in stored.items() if d is not None}
    assert len(before) == 7 and len(kept) == 3, (before, stored)

    # A reused id of an unrelated event is still refused; one of the forgotten person's
    # events is answered as recorded (its body can no longer be compared), nothing published.
    reused = {**lines["unrelated"], "context": "another body"}
    assert api.post(f"/v1/workspaces/{ws}/events", json=reused).status_code == 409
    again = api.post(f"/v1/workspaces/{ws}/events", json={**lines["note"], "note": "other"})
    assert again.status_code == 200 and again.json()["duplicate"] is True, again.text


def test_a_retraction_reason_is_erased_with_the_people_of_the_retracted_event(
    stack: Stack, stack_settings: Settings, api: httpx.Client, ws: str
) -> None:
    """A retraction names the people of the event it retracts (event.retracted v2, filled in
    by the write side), so its reason is encrypted with their keys: after any of them is
    forgotten nobody holding the database, the log and the master key can read it. Before
    (v1) it was under the workspace's key, which no erasure destroys. A wrong ``about`` is
    refused; once a person is forgotten, a retraction of an event naming them names only the
    others (a calendar sync retracting a meeting with a forgotten attendee still can)."""
    tag = uuid.uuid4().hex[:10]
    reason = f"Zelda asked us to drop this, health reasons {tag}"
    add_people(api, ws, "zelda", "ada")
    met = {"type": "relationship.met", "participants": ["zelda", "ada"], "depth": "brief_chat"}
    first, second = (api.post(f"/v1/workspaces/{ws}/events", json=met).json() for _ in "12")
    wrong = {"type": "event.retracted", "retracted_event_id": first["event_id"], "about": ["ada"]}
    refused = api.post(f"/v1/workspaces/{ws}/events", json=wrong)
    assert refused.status_code == 422 and "about" in refused.text, refused.text
    retraction = {"type": "event.retracted", "retracted_event_id": first["event_id"]}
    r = api.post(f"/v1/workspaces/{ws}/events", json={**retraction, "reason": reason})
    assert r.status_code == 201, r.text
    stored = _exported(api, ws, r.json()["seq"], "event.retracted")
    assert (stored["about"], stored["reason"]) == (["ada", "zelda"], reason)
    _forget_zelda_and_search(stack, stack_settings, api, ws, reason, r.json()["event_id"])

    later = {"type": "event.retracted", "retracted_event_id": second["event_id"]}
    r = api.post(f"/v1/workspaces/{ws}/events", json={**later, "reason": "wrong day"})
    assert r.status_code == 201, r.text
    assert _exported(api, ws, r.json()["seq"], "event.retracted", 1)["about"] == ["ada"]
