"""Tracing across real processes: a stack started with ``TIELINE_OTLP_ENDPOINT`` exports its
spans over OTLP/HTTP (protobuf) to a receiver in this test, and the api's, the people
service's and the worker's spans of one write share one trace id."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from tieline.services.runtime.supervisor import Stack, StackConfig

from tests.conftest import Servers, settings_env, unique_settings
from tests.e2e.conftest import make_token

#: (service.name, span name, trace id hex, parent span id hex, span id hex)
Span = tuple[str, str, str, str, str]


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP traces endpoint that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                with self.server.lock:
                    self.server.spans.extend(
                        (
                            attrs["service.name"],
                            s.name,
                            s.trace_id.hex(),
                            s.parent_span_id.hex(),
                            s.span_id.hex(),
                        )
                        for s in scope.spans
                    )
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_spans_of_one_write_from_three_processes_share_one_trace(
    servers: Servers, receiver: Receiver, tmp_path: Path
) -> None:
    settings = unique_settings(servers)
    env = {
        **settings_env(settings),
        "TIELINE_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export every 0.1 s instead of every 5 s
    }
    config = StackConfig(
        data_dir=tmp_path,
        nats_url=servers.nats_url,
        database_url=servers.database_url,
        env=env,
        roles=("api", "people", "worker"),
    )
    with Stack(config) as stack:
        token = make_token(settings, "otlp")
        with httpx.Client(base_url=stack.api_url, timeout=30) as api:
            r = api.post(
                "/v1/workspaces/otlp/people",
                json={"person_id": "ada", "display_name": "Ada"},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert r.status_code == 201, r.text
        # Each process exports on its own schedule: wait until the apply span's chain of
        # parents reaches a root (or time runs out).
        deadline = time.monotonic() + 30
        while True:
            with receiver.lock:
                spans = list(receiver.spans)
            chain = _chain(spans)
            if (chain and chain[-1][3] == "") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert [(s[0], s[1]) for s in chain] == [
        ("tieline-worker", "tieline.projection apply"),
        ("tieline-people", "tieline.event publish"),
        ("tieline-people", f"{settings.subject_prefix}.cmd.otlp.people.record process"),
        ("tieline-api", "people command"),
        ("tieline-api", "POST /v1/workspaces/{ws}/people"),
    ]
    assert chain[-1][3] == ""  # the HTTP request's span is the root


def _chain(spans: list[Span]) -> list[Span]:
    """The projection-apply span and its ancestors among ``spans`` ([] before it arrives)."""
    applies = [s for s in spans if s[1] == "tieline.projection apply"]
    if not applies:
        return []
    assert len(applies) == 1, applies
    by_id = {s[4]: s for s in spans if s[2] == applies[0][2]}
    chain = [applies[0]]
    while chain[-1][3] in by_id:
        chain.append(by_id[chain[-1][3]])
    return chain
