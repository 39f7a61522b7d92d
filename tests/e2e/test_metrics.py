"""Every process of a running tieline answers ``/metrics`` in the Prometheus text format, and
the numbers move when events are written: scraped from the real processes of the shared stack
(api, people, interactions, worker, webhooks, sync) and parsed with prometheus_client's parser."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tieline.services.runtime.supervisor import Stack

from tests.e2e.test_walking_skeleton import add_people

Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0: none)."""
    want = dict(labels or {})
    return sum(v for n, lab, v in samples if n == name and want.items() <= lab.items())


def scrape_all(urls: Mapping[str, str]) -> dict[str, Samples]:
    return {role: scrape(url) for role, url in urls.items()}


def caught_up(worker_url: str, timeout: float = 30.0) -> None:
    """Wait until the worker has applied everything on the log (lag 0 at scrape time): the
    stack is shared, and an earlier test's last events may still be in flight; the worker's
    counters are global, so they must not move between this test's two scrapes for others."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(worker_url)
        lag = value(samples, "tieline_projection_lag_events")
        last = value(samples, "tieline_projection_stream_last_seq")
        if lag == 0 and value(samples, "tieline_projection_checkpoint") >= last:
            return
        assert time.monotonic() < deadline, f"worker still {lag} events behind"
        time.sleep(0.1)


def test_every_process_exposes_metrics_that_move_with_writes(
    stack: Stack, api: httpx.Client, ws: str
) -> None:
    urls = stack.metrics_urls()
    assert set(urls) == {"api", "people", "interactions", "worker", "webhooks", "sync"}
    # tieline up writes the same URLs to run/endpoints.json for operators and scrapers.
    assert stack.endpoints().metrics_urls == urls
    caught_up(urls["worker"])
    before = scrape_all(urls)

    add_people(api, ws, "ada", "grace")
    met = {"type": "relationship.met", "participants": ["ada", "grace"], "depth": "conversation"}
    r = api.post(f"/v1/workspaces/{ws}/events", json=met)
    assert r.status_code == 201, r.text
    seq = r.json()["seq"]
    bad = api.post(f"/v1/workspaces/{ws}/events", json={**met, "depth": "telepathy"})
    assert bad.status_code == 422
    assert api.get(f"/v1/workspaces/{ws}/people", params={"min_seq": seq}).status_code == 200
    after = scrape_all(urls)

    def delta(role: str, name: str, labels: Mapping[str, str] | None = None) -> float:
        return value(after[role], name, labels) - value(before[role], name, labels)

    # api: requests per route template (never the raw path), latency histogram, outcomes.
    events_route = {"route": "/v1/workspaces/{ws}/events", "method": "POST"}
    assert delta("api", "tieline_http_requests_total", {**events_route, "status": "201"}) == 1
    assert delta("api", "tieline_http_requests_total", {**events_route, "status": "422"}) == 1
    people_route = {"route": "/v1/workspaces/{ws}/people", "method": "POST", "status": "201"}
    assert delta("api", "tieline_http_requests_total", people_route) == 2
    assert delta("api", "tieline_http_request_duration_seconds_count", events_route) == 2
    assert delta("api", "tieline_http_request_duration_seconds_sum", events_route) > 0
    assert not [lab for n, lab, _ in after["api"] if ws in lab.get("route", "")]
    recorded = {"outcome": "recorded", "status": "201"}
    added = {"type": "person.added", **recorded}
    for role in ("api", "people"):
        assert delta(role, "tieline_command_events_total", added) == 2
    for role in ("api", "interactions"):
        met_labels = {"type": "relationship.met"}
        assert delta(role, "tieline_command_events_total", {**met_labels, **recorded}) == 1
        refused = {**met_labels, "outcome": "refused", "status": "422"}
        assert delta(role, "tieline_command_events_total", refused) == 1

    # write services: FastStream's own metrics, subjects without workspace ids.
    for role in ("people", "interactions"):
        assert delta(role, "faststream_received_messages_total") >= 1
        assert delta(role, "faststream_received_processed_messages_duration_seconds_count") >= 1
        assert not [lab for _, lab, _ in after[role] if ws in str(lab)]

    # worker: events applied, batch apply time, checkpoint, lag, active, dead letters.
    assert delta("worker", "tieline_projection_events_applied_total") == 3
    assert delta("worker", "tieline_projection_batches_total") >= 1
    assert delta("worker", "tieline_projection_batch_apply_seconds_count") >= 1
    assert value(after["worker"], "tieline_projection_checkpoint") >= seq
    assert value(after["worker"], "tieline_projection_stream_last_seq") >= seq
    assert value(after["worker"], "tieline_projection_lag_events") == 0
    assert value(after["worker"], "tieline_projection_active") == 1
    assert [n for n, _, _ in after["worker"] if n == "tieline_dlq_messages"]

    # every process: the standard process metrics of prometheus_client.
    for role, samples in after.items():
        assert value(samples, "process_cpu_seconds_total") > 0, role

    # every process with PostgreSQL pools: each pool, named, connected, reachable.
    pools = {
        "api": {"api", "api-scoped", "api-audit"},
        "people": {"write"},
        "interactions": {"write"},
        "webhooks": {"webhooks", "webhooks-read"},
        "sync": {"sync", "sync-read"},
    }
    for role, names in pools.items():
        shown = {lab["pool"] for n, lab, _ in after[role] if n == "tieline_db_pool_connections"}
        assert shown == names, role
        for name in names:
            assert value(after[role], "tieline_db_pool_connections", {"pool": name}) >= 1
            assert value(after[role], "tieline_db_pool_unreachable", {"pool": name}) == 0


def test_api_counts_open_live_update_streams(stack: Stack, api: httpx.Client, ws: str) -> None:
    url = stack.metrics_urls()["api"]
    opened, done = threading.Event(), threading.Event()

    def listen() -> None:
        with api.stream("GET", f"/v1/workspaces/{ws}/stream") as resp:
            assert resp.status_code == 200
            opened.set()
            for _ in resp.iter_bytes():
                if done.is_set():
                    return

    baseline = value(scrape(url), "tieline_sse_clients")
    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert opened.wait(10)
    deadline = time.monotonic() + 10
    while value(scrape(url), "tieline_sse_clients") < baseline + 1:
        assert time.monotonic() < deadline, "the open stream was never counted"
        time.sleep(0.1)
    done.set()
    add_people(api, ws, "wake")  # a message makes the listener look at `done` and close
    thread.join(10)
    deadline = time.monotonic() + 10
    while value(scrape(url), "tieline_sse_clients") > baseline:
        assert time.monotonic() < deadline, "the closed stream was still counted"
        time.sleep(0.1)
