"""Import and export on the running stack: JSON Lines with bad lines, vCard, iCalendar, CSV,
an export round trip into another workspace, and exports that never hold a forgotten person's
plaintext."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack
from tieline.services.tools.importer import ImportSummary, import_file, person_id_for

from tests.e2e.conftest import make_token
from tests.e2e.test_walking_skeleton import add_people, stream_last_seq

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def cli(
    stack: Stack, ws: str, token: str, *args: str, ok: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TIELINE_API_URL": stack.api_url,
        "TIELINE_WORKSPACE": ws,
        "TIELINE_TOKEN": token,
    }
    done = subprocess.run(
        [sys.executable, "-m", "tieline.services.cli.tools", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in ok, f"exit {done.returncode}\n{done.stderr}\n{done.stdout}"
    return done


def imported(stack: Stack, ws: str, token: str, path: Path, **kwargs: Any) -> ImportSummary:
    return import_file(path, api_url=stack.api_url, workspace=ws, token=token, **kwargs)


def wait_applied(api: httpx.Client, ws: str, seq: int | None, timeout: float = 60.0) -> None:
    """Read-your-writes: until the projection has applied ``seq``."""
    if not seq:
        return
    deadline = time.monotonic() + timeout
    while True:
        r = api.get(f"/v1/workspaces/{ws}/people", params={"limit": 1, "min_seq": seq})
        if r.status_code == 200:
            return
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        time.sleep(0.2)


def export(api: httpx.Client, ws: str, kind: str, **params: Any) -> list[dict[str, Any]]:
    r = api.get(f"/v1/workspaces/{ws}/export/{kind}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines() if line]


def timeline(api: httpx.Client, ws: str, a: str, b: str) -> list[dict[str, Any]]:
    r = api.get(f"/v1/workspaces/{ws}/relationships/{a}/{b}/timeline")
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


# -- JSON Lines ---------------------------------------------------------------------------


def test_jsonl_import_reports_bad_lines_and_publishes_only_the_good_ones(
    stack: Stack, api: httpx.Client, ws: str, token: str
) -> None:
    path = FIXTURES / "import_mixed.jsonl"
    before = stream_last_seq(api)
    done = cli(stack, ws, token, "import", str(path), "--json", ok=(1,))
    first = json.loads(done.stdout)
    rejected = {r["line"]: r["error"] for r in first["rejected"]}
    # Bad locally (never sent): 6 broken JSON, 7 same person twice, 9 in the future,
    # 10 unknown type, 12 unknown depth, 15 not an object. Refused by the API: 13 (no "ghost").
    assert sorted(rejected) == [6, 7, 9, 10, 12, 13, 15], rejected
    assert "JSON" in rejected[6] and "distinct" in rejected[7] and "future" in rejected[9]
    assert "relationship.stalked" in rejected[10] and "depth" in rejected[12]
    assert rejected[13].startswith("404") and "ghost" in rejected[13]
    assert (first["records"], first["valid"], first["published"]) == (15, 9, 8)
    assert first["already_present"] == 0
    assert stream_last_seq(api) == before + 8
    assert "publishing 9 events" in done.stderr  # plain progress lines when not a terminal

    wait_applied(api, ws, first["last_seq"])
    kinds = [e["type"] for e in timeline(api, ws, "ada", "grace")]
    assert kinds == [
        "relationship.met",
        "relationship.followed_up",
        "relationship.introduced",
        "relationship.closeness_rated",
    ]
    # recorded_by / workspace_id of an exported line are dropped, not refused.
    [met] = timeline(api, ws, "ada", "linus")[1:]
    assert met["recorded_by"] == "token:tester"

    again = json.loads(cli(stack, ws, token, "import", str(path), "--json", ok=(1,)).stdout)
    assert again["published"] == 0 and again["already_present"] == 8
    assert sorted(r["line"] for r in again["rejected"]) == [6, 7, 9, 10, 12, 13, 15]
    assert stream_last_seq(api) == before + 8


def test_a_dry_run_validates_without_publishing(
    stack: Stack, api: httpx.Client, ws: str, token: str
) -> None:
    before = stream_last_seq(api)
    done = cli(
        stack, ws, token, "import", str(FIXTURES / "import_mixed.jsonl"), "--dry-run", ok=(1,)
    )
    assert "would publish: 9" in done.stdout and "line 6:" in done.stdout
    assert stream_last_seq(api) == before


def test_import_refuses_a_token_without_write_rights(
    stack: Stack, stack_settings: Settings, api: httpx.Client, ws: str
) -> None:
    reader = make_token(stack_settings, ws, "read", "reader")
    before = stream_last_seq(api)
    done = cli(stack, ws, reader, "import", str(FIXTURES / "import_mixed.jsonl"), ok=(2,))
    assert "403" in done.stderr
    assert stream_last_seq(api) == before


# -- vCard and iCalendar ------------------------------------------------------------------


def test_vcard_and_icalendar_import_people_and_meetings(
    stack: Stack, api: httpx.Client, ws: str, token: str
) -> None:
    cards = imported(stack, ws, token, FIXTURES / "contacts.vcf")
    assert (cards.published, cards.already_present) == (4, 0)
    assert [ln for ln, _ in sorted(cards.rejected)] == [30, 34]
    ada = person_id_for(ws, email="ada@example.com")
    grace = person_id_for(ws, email="grace@example.com")
    linus = person_id_for(ws, email="linus@example.org")
    assert ada and grace and linus
    wait_applied(api, ws, cards.last_seq)
    person = api.get(f"/v1/workspaces/{ws}/people/{ada}").json()
    assert person["display_name"] == "Ada Lovelace" and person["email"] == "ada@example.com"
    assert person["organization"] == "Analytical Engines Ltd / Research"
    assert person["notes"] == "Met at the Babbage salon. Loves poetical science."
    assert api.get(f"/v1/workspaces/{ws}/people/{linus}").json()["display_name"] == (
        "Linus Torvalds"
    )

    cal = imported(stack, ws, token, FIXTURES / "meetings.ics")
    # The three attendees already exist (from the vCards): already there, not errors.
    assert (cal.published, cal.already_present) == (3, 3), cal.rejected
    assert dict(cal.skipped) == {
        43: "cancelled",
        53: "fewer than two people",
        62: "in the future (has not happened yet)",
    }
    assert [ln for ln, _ in cal.rejected] == [71]
    wait_applied(api, ws, cal.last_seq)

    lunch, call = timeline(api, ws, ada, grace)
    assert lunch["occurred_at"].startswith("2024-06-10T10:00:00")  # 12:00 in Berlin (CEST)
    assert lunch["detail"]["duration_minutes"] == 90 and lunch["detail"]["group_size"] == 2
    assert lunch["detail"]["initiated_by"] == ada and lunch["detail"]["mode"] == "in_person"
    assert call["detail"]["duration_minutes"] == 45 and call["detail"]["group_size"] == 3
    assert call["detail"]["mode"] == "remote"
    call2, review = timeline(api, ws, grace, linus)
    assert call2["event_id"] == call["event_id"]
    assert review["occurred_at"].startswith("2024-06-20T08:00:00")  # custom VTIMEZONE, +02:00
    assert review["detail"]["duration_minutes"] == 30
    contexts = {e.get("context") for e in export(api, ws, "events")}
    assert {"Lunch after the keynote", "Compiler sync", "Kernel review"} <= contexts

    before = stream_last_seq(api)
    again = imported(stack, ws, token, FIXTURES / "meetings.ics")
    assert (again.published, again.already_present) == (0, 6)
    assert stream_last_seq(api) == before


# -- CSV ----------------------------------------------------------------------------------


def test_csv_import_follows_the_documented_mapping(
    stack: Stack, api: httpx.Client, ws: str, token: str
) -> None:
    s = imported(stack, ws, token, FIXTURES / "events.csv")
    bad = dict(s.rejected)
    assert sorted(bad) == [8, 10, 11, 12], bad
    assert "duration_minutes" in bad[8] and "channel" in bad[10]
    assert "person_id" in bad[11] and "replied" in bad[12]
    assert s.published == 7
    wait_applied(api, ws, s.last_seq)
    assert api.get(f"/v1/workspaces/{ws}/people/cy").json()["display_name"] == "Cy, the third"
    ann_bob = timeline(api, ws, "ann", "bob")
    assert [(e["type"], e["detail"].get("duration_minutes")) for e in ann_bob] == [
        ("relationship.met", 45),
        ("relationship.met", 120),
        ("relationship.followed_up", None),
    ]
    assert ann_bob[1]["occurred_at"].startswith("2024-02-03T11:00:00")
    assert ann_bob[1]["detail"]["group_size"] == 3
    assert ann_bob[2]["detail"] == {
        "from": "bob",
        "to": "ann",
        "channel": "message",
        "replied": True,
    }
    assert [e["type"] for e in timeline(api, ws, "ann", "cy")] == [
        "relationship.met",
        "relationship.helped",
    ]
    [helped] = [e for e in export(api, ws, "events") if e["type"] == "relationship.helped"]
    assert helped["what"] == "moving boxes" and helped["occurred_at"].startswith("2024-02-06")


# -- export round trip --------------------------------------------------------------------


def _pairs(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[Any]]:
    out: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for r in rows:
        out[(r["person_a"], r["person_b"])].append(
            (r["type"], r["occurred_at"], json.dumps(r["detail"], sort_keys=True), r["retracted"])
        )
    return {k: sorted(v) for k, v in out.items()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return bool(a == pytest.approx(b, rel=1e-9, abs=1e-9))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def test_an_export_imported_into_another_workspace_gives_the_same_read_models(
    stack: Stack, stack_settings: Settings, api: httpx.Client, ws: str, token: str, tmp_path: Path
) -> None:
    net = tmp_path / "net.jsonl"
    cli(
        stack,
        ws,
        token,
        "simulate",
        "--seed",
        "11",
        "--people",
        "30",
        "--events",
        "300",
        "--out",
        str(net),
    )
    lines = [json.loads(x) for x in net.read_text().splitlines()]
    assert len(lines) == 300
    a = imported(stack, ws, token, net)
    assert (a.published, a.rejected) == (300, [])
    # Give A a retraction and an update, so the export carries them too.
    met = next(x for x in lines if x["type"] == "relationship.met")
    r = api.post(
        f"/v1/workspaces/{ws}/events",
        json={"type": "event.retracted", "retracted_event_id": met["event_id"], "reason": "typo"},
    )
    assert r.status_code == 201, r.text
    r = api.post(
        f"/v1/workspaces/{ws}/events",
        json={
            "type": "person.updated",
            "person_id": lines[0]["person_id"],
            "title": "Chief Tester",
        },
    )
    assert r.status_code == 201, r.text
    seq_a = r.json()["seq"]

    exported = tmp_path / "a.jsonl"
    cli(stack, ws, token, "export", "events", "--out", str(exported), "--min-seq", str(seq_a))
    rows = [json.loads(x) for x in exported.read_text().splitlines()]
    assert len(rows) == 302 and [x["seq"] for x in rows] == sorted(x["seq"] for x in rows)
    [flagged] = [x for x in rows if x["event_id"] == met["event_id"]]
    assert flagged["retracted"] is True and flagged["retracted_by"]

    other = f"ws-{uuid.uuid4().hex[:12]}"
    other_token = make_token(stack_settings, other)
    b = imported(stack, other, other_token, exported, remap_ids=True)
    assert (b.published, b.already_present, b.rejected) == (302, 0, [])
    again = imported(stack, other, other_token, exported, remap_ids=True)
    assert (again.published, again.already_present) == (0, 302)

    with httpx.Client(
        base_url=stack.api_url, timeout=60, headers={"Authorization": f"Bearer {other_token}"}
    ) as api_b:
        wait_applied(api_b, other, b.last_seq)
        people_a = {p.pop("person_id"): p for p in export(api, ws, "people")}
        people_b = {p.pop("person_id"): p for p in export(api_b, other, "people")}
        for p in (*people_a.values(), *people_b.values()):
            p.pop("added_event_id")
        assert people_a == people_b and len(people_a) == 30
        assert any(p["title"] == "Chief Tester" for p in people_b.values())

        strength_a = export(api, ws, "strength")
        strength_b = export(api_b, other, "strength")
        assert len(strength_a) == len(strength_b) > 10
        for sa, sb in zip(strength_a, strength_b, strict=True):
            sa.pop("last_seq")
            sb.pop("last_seq")
            assert _same(sa, sb), (sa, sb)

        timeline_a = _pairs(export(api, ws, "timeline"))
        timeline_b = _pairs(export(api_b, other, "timeline"))
        assert timeline_a == timeline_b
        assert any(row[-1] for rows_ in timeline_b.values() for row in rows_)  # the retraction

        events_b = export(api_b, other, "events")
        ignore = {
            "event_id",
            "seq",
            "recorded_at",
            "recorded_by",
            "workspace_id",
            "correlation_id",
            "causation_id",
            "retracted_by",
            "retracted_event_id",
        }

        def key(e: dict[str, Any]) -> str:
            return json.dumps({k: v for k, v in e.items() if k not in ignore}, sort_keys=True)

        assert sorted(map(key, rows)) == sorted(map(key, events_b))
        [retraction] = [e for e in events_b if e["type"] == "event.retracted"]
        [target] = [e for e in events_b if e["event_id"] == retraction["retracted_event_id"]]
        assert target["retracted"] and target["participants"] == met["participants"]


def test_exports_in_csv_and_parquet_and_as_of(
    stack: Stack, api: httpx.Client, ws: str, token: str, tmp_path: Path
) -> None:
    pa = pytest.importorskip("pyarrow.parquet")
    s = imported(stack, ws, token, FIXTURES / "events.csv")
    wait_applied(api, ws, s.last_seq)
    events = export(api, ws, "events")
    for kind in ("events", "people", "strength", "timeline"):
        n = len(export(api, ws, kind))
        csv_out, pq_out = tmp_path / f"{kind}.csv", tmp_path / f"{kind}.parquet"
        cli(stack, ws, token, "export", kind, "--out", str(csv_out))
        cli(stack, ws, token, "export", kind, "--format", "parquet", "--out", str(pq_out))
        assert len(csv_out.read_text().splitlines()) == n + 1
        table = pa.read_table(pq_out)
        assert table.num_rows == n, kind
    table = pa.read_table(tmp_path / "events.parquet").to_pylist()
    met = [r for r in table if r["type"] == "relationship.met"]
    assert sorted(tuple(r["participants"]) for r in met) == [("ann", "bob"), ("ann", "bob", "cy")]
    # The events CSV imports back (into the same workspace: nothing new).
    back = imported(stack, ws, token, tmp_path / "events.csv")
    assert (back.published, back.already_present, back.rejected) == (0, len(events), [])

    cut = "2024-02-03T12:00:00+01:00"
    early = export(api, ws, "events", as_of=cut)
    assert {e["type"] for e in early} == {"person.added", "relationship.met"} and len(early) == 5
    early_tl = export(api, ws, "timeline", as_of=cut)
    assert {r["occurred_at"][:10] for r in early_tl} == {"2024-02-01", "2024-02-03"}
    r = api.get(f"/v1/workspaces/{ws}/export/strength", params={"as_of": cut})
    assert r.headers["x-tieline-as-of"].startswith("not applied")
    naive = api.get(f"/v1/workspaces/{ws}/export/events", params={"as_of": "2024-02-03T12:00"})
    assert naive.status_code == 422 and "timezone" in naive.json()["detail"]


def test_exports_are_for_admins_only(stack: Stack, stack_settings: Settings, ws: str) -> None:
    for role in ("read", "write"):
        tok = make_token(stack_settings, ws, role, role)
        with httpx.Client(
            base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {tok}"}
        ) as client:
            for kind in ("events", "people", "strength", "timeline"):
                r = client.get(f"/v1/workspaces/{ws}/export/{kind}")
                assert r.status_code == 403, (role, kind, r.text)
    with httpx.Client(base_url=stack.api_url, timeout=30) as anon:
        assert anon.get(f"/v1/workspaces/{ws}/export/events").status_code == 401
    # An admin of another workspace gets nothing of this one.
    other = f"ws-{uuid.uuid4().hex[:12]}"
    with httpx.Client(
        base_url=stack.api_url,
        timeout=30,
        headers={"Authorization": f"Bearer {make_token(stack_settings, other)}"},
    ) as outsider:
        for kind in ("events", "people", "strength", "timeline"):
            r = outsider.get(f"/v1/workspaces/{ws}/export/{kind}")
            assert r.status_code == 403
            assert r.json()["type"] == "https://tieline.dev/problems/forbidden"


# -- erasure ------------------------------------------------------------------------------


def test_exports_never_hold_a_forgotten_persons_plaintext(
    stack: Stack, api: httpx.Client, ws: str, token: str, tmp_path: Path
) -> None:
    planted = [
        "pat.planted.7QX@example.org",
        "Patricia Plantedname",
        "planted-note-9XKW",
        "planted context Z3PQ",
        "planted help K8LM",
        "planted follow-up R2DV",
    ]
    visible = "ada.visible.4MNB@example.org"
    add_people(api, ws, "grace")
    r = api.post(
        f"/v1/workspaces/{ws}/people",
        json={"person_id": "ada", "display_name": "Ada Visible", "email": visible},
    )
    assert r.status_code == 201
    r = api.post(
        f"/v1/workspaces/{ws}/people",
        json={
            "person_id": "pat",
            "display_name": planted[1],
            "email": planted[0],
            "notes": planted[2],
        },
    )
    assert r.status_code == 201
    for body in (
        {
            "type": "relationship.met",
            "participants": ["pat", "ada"],
            "depth": "conversation",
            "context": planted[3],
        },
        {"type": "relationship.helped", "helper": "pat", "helped": "grace", "what": planted[4]},
        {
            "type": "relationship.followed_up",
            "from_person": "ada",
            "to_person": "pat",
            "channel": "email",
            "note": planted[5],
        },
        {
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "brief_chat",
            "context": "ada and grace only",
        },
    ):
        r = api.post(f"/v1/workspaces/{ws}/events", json=body)
        assert r.status_code == 201, r.text
    wait_applied(api, ws, r.json()["seq"])
    before = api.get(f"/v1/workspaces/{ws}/export/events").text
    assert all(p in before for p in planted)  # decrypted while pat is known

    report = api.post(f"/v1/workspaces/{ws}/people/pat/forget").json()
    assert report["erased"] is True
    texts = {
        kind: api.get(
            f"/v1/workspaces/{ws}/export/{kind}", params={"min_seq": report["forgotten_seq"]}
        ).text
        for kind in ("events", "people", "strength", "timeline")
    }
    for kind in ("events", "people"):
        out = tmp_path / f"{kind}.csv"
        cli(stack, ws, token, "export", kind, "--out", str(out))
        texts[f"{kind}.csv"] = out.read_text()
        pq = tmp_path / f"{kind}.parquet"
        cli(stack, ws, token, "export", kind, "--out", str(pq))
        parquet = pytest.importorskip("pyarrow.parquet")
        texts[f"{kind}.parquet"] = json.dumps(parquet.read_table(pq).to_pylist(), default=str)
    for name, text in texts.items():
        for value in planted:
            assert value not in text, f"{value!r} in the {name} export after forgetting"
    events = [json.loads(x) for x in texts["events"].splitlines()]
    [added] = [e for e in events if e["type"] == "person.added" and e["person_id"] == "pat"]
    assert added["display_name"] == added["email"] == added["notes"] == "[erased]"
    [pat_met] = [
        e for e in events if e["type"] == "relationship.met" and "pat" in e["participants"]
    ]
    assert pat_met["context"] == "[erased]"
    assert any(e["type"] == "person.forgotten" for e in events)
    # Others' data still reads.
    assert visible in texts["events"] and visible in texts["people"]
    assert "ada and grace only" in texts["events"]
    people = {p["person_id"]: p for p in map(json.loads, texts["people"].splitlines())}
    assert people["pat"]["forgotten"] is True and people["pat"]["email"] is None
    # The reads are in the access log.
    log = api.get(f"/v1/workspaces/{ws}/access-log", params={"person": "ada"}).json()
    endpoints = {e["endpoint"] for e in log["entries"]}
    assert {"GET export/events", "GET export/people"} <= endpoints


def test_an_export_with_an_erased_merge_imports_the_erasure_whole(
    stack: Stack, stack_settings: Settings, api: httpx.Client, ws: str, token: str, tmp_path: Path
) -> None:
    """Forgetting a survivor forgets the people merged into it in one command, and the write
    side refuses them apart; the importer sends adjacent erasures in one chunk, so the export
    of such a workspace imports with nothing rejected and both people forgotten."""
    add_people(api, ws, "sam", "sam2", "ada")
    r = api.post(
        f"/v1/workspaces/{ws}/events",
        json={"type": "person.merged", "person_id": "sam2", "survivor": "sam"},
    )
    assert r.status_code == 201, r.text
    wait_applied(api, ws, r.json()["seq"])
    report = api.post(f"/v1/workspaces/{ws}/people/sam/forget").json()
    assert report["erased"] is True and report["merged_people_forgotten"] == ["sam2"], report
    r = api.post(
        f"/v1/workspaces/{ws}/events",
        json={"type": "relationship.met", "participants": ["ada", "sam"], "depth": "brief_chat"},
    )
    assert r.status_code == 410, r.text  # (nothing after the erasure names them)

    exported = tmp_path / "erased.jsonl"
    cli(stack, ws, token, "export", "events", "--out", str(exported))
    kinds = [json.loads(x)["type"] for x in exported.read_text().splitlines()]
    assert kinds[-2:] == ["person.forgotten", "person.forgotten"], kinds

    other = f"ws-{uuid.uuid4().hex[:12]}"
    other_token = make_token(stack_settings, other)
    b = imported(stack, other, other_token, exported)
    assert (b.published, b.rejected) == (len(kinds), []), b
    headers = {"Authorization": f"Bearer {other_token}"}
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=headers) as other_api:
        wait_applied(other_api, other, b.last_seq)
        people = {p["person_id"]: p for p in export(other_api, other, "people")}
    assert people["sam"]["forgotten"] is True and people["sam2"]["forgotten"] is True, people
