"""Request ids through the running api: accepted from ``X-Request-ID`` (or the trace id of a
``traceparent``), made up otherwise, returned in the response, written on the api's access-log
line (one JSON line per request) and used as the correlation id of the events recorded."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from tieline.services.runtime.supervisor import Stack


def access_lines(stack: Stack, request_id: str) -> list[dict[str, Any]]:
    """The api's ``http.request`` log lines of ``request_id`` (every line must be JSON)."""
    log = Path(stack.config.data_dir) / "logs" / "api.log"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [x for x in lines if x.get("event") == "http.request" and x["request_id"] == request_id]


def wait_for_line(stack: Stack, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while not (found := access_lines(stack, request_id)):
        assert time.monotonic() < deadline, f"no access-log line with request_id {request_id}"
        time.sleep(0.1)
    assert len(found) == 1, found
    return found[0]


def test_a_callers_request_id_is_returned_logged_and_becomes_the_correlation_id(
    stack: Stack, api: httpx.Client, ws: str
) -> None:
    rid = str(uuid.uuid4())
    r = api.post(
        f"/v1/workspaces/{ws}/people",
        json={"person_id": "ada", "display_name": "Ada"},
        headers={"X-Request-ID": rid},
    )
    assert r.status_code == 201, r.text
    assert r.headers["X-Request-ID"] == rid
    line = wait_for_line(stack, rid)
    assert line["route"] == "/v1/workspaces/{ws}/people"
    assert line["path"] == f"/v1/workspaces/{ws}/people"
    assert line["method"] == "POST" and line["status"] == 201
    assert line["duration_ms"] > 0 and line["level"] == "info" and line["role"] == "api"
    events = api.get(
        f"/v1/workspaces/{ws}/export/events", params={"min_seq": r.json()["seq"]}
    ).text.splitlines()
    assert [json.loads(e)["correlation_id"] for e in events] == [rid]


def test_request_id_from_traceparent_made_up_otherwise_and_unsafe_ones_replaced(
    stack: Stack, api: httpx.Client, ws: str
) -> None:
    trace_id = uuid.uuid4().hex
    r = api.get(
        f"/v1/workspaces/{ws}/people", headers={"traceparent": f"00-{trace_id}-{'a' * 16}-01"}
    )
    assert r.status_code == 200 and r.headers["X-Request-ID"] == trace_id
    assert wait_for_line(stack, trace_id)["status"] == 200

    made = [api.get("/healthz").headers["X-Request-ID"] for _ in range(2)]
    assert made[0] != made[1] and all(uuid.UUID(m) for m in made)

    # A header that could forge log lines or smuggle markup is not echoed: a fresh id is used.
    r = api.get("/healthz", headers={"X-Request-ID": "x" * 129})
    assert r.headers["X-Request-ID"] != "x" * 129 and uuid.UUID(r.headers["X-Request-ID"])
    r = api.get("/healthz", headers={"X-Request-ID": "<script>"})
    assert uuid.UUID(r.headers["X-Request-ID"])

    # A path no route matches is logged as `unmatched`, and the refusal still carries the id.
    r = api.get(f"/no/such/{ws}", headers={"X-Request-ID": "probe-1." + ws})
    assert r.status_code == 404 and r.headers["X-Request-ID"] == "probe-1." + ws
    assert wait_for_line(stack, "probe-1." + ws)["route"] == "unmatched"


def test_a_non_uuid_request_id_gives_a_stable_correlation_id(
    stack: Stack, api: httpx.Client, ws: str
) -> None:
    del stack
    seqs = []
    for pid in ("grace", "linus"):
        r = api.post(
            f"/v1/workspaces/{ws}/people",
            json={"person_id": pid, "display_name": pid},
            headers={"X-Request-ID": f"import-{ws}"},
        )
        assert r.status_code == 201, r.text
        seqs.append(r.json()["seq"])
    events = api.get(
        f"/v1/workspaces/{ws}/export/events", params={"min_seq": max(seqs)}
    ).text.splitlines()
    ids = {json.loads(e)["correlation_id"] for e in events}
    assert len(ids) == 1 and uuid.UUID(ids.pop()).version == 5
