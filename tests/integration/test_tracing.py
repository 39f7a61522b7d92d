"""One trace follows a write from the HTTP request through the NATS command, the write
service's publish and the projection worker's apply, on real NATS and PostgreSQL.

The api, the people service and the worker run in this one process (their real composition
roots, talking over the real NATS server), so their spans can be collected by one in-memory
exporter; across processes the same ``traceparent`` headers travel the same way, only the
export goes to an OTLP collector instead (``TIELINE_OTLP_ENDPOINT``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from tieline.plumbing import db, telemetry
from tieline.plumbing.config import Settings
from tieline.plumbing.state import ensure_state_schema
from tieline.projections.worker import Worker
from tieline.services.api.app import create_app
from tieline.services.auth import create_token
from tieline.services.people.app import create_app as create_people


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry.install(provider)
    try:
        yield spans
    finally:
        telemetry.install(None)
        provider.shutdown()


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    w = Worker(settings)
    await w.start()
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        w.stop()
        await task
        await w.close()


async def _token(settings: Settings, ws: str) -> str:
    conn = await db.connect(settings)
    try:
        await ensure_state_schema(conn, settings.database_schema)
        return await create_token(conn, ws, "admin", "tracing")
    finally:
        await conn.close()


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    """``span``'s parent, its parent's parent, ... as far as collected spans go."""
    out = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        out.append(span)
    return out


async def test_one_trace_spans_http_command_publish_and_projection_apply(
    settings: Settings, exporter: InMemorySpanExporter, worker: Worker
) -> None:
    token = await _token(settings, "traced")
    api = create_app(settings)  # after install(): the FastAPI instrumentation is on
    async with (
        create_people(settings),
        api.router.lifespan_context(api),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api),
            base_url="http://api",
            headers={"Authorization": f"Bearer {token}"},
        ) as client,
    ):
        r = await client.post(
            "/v1/workspaces/traced/people", json={"person_id": "ada", "display_name": "Ada"}
        )
        assert r.status_code == 201, r.text
        seq = r.json()["seq"]
        for _ in range(200):
            if worker.stats.last_seq >= seq:
                break
            await asyncio.sleep(0.05)
        assert worker.stats.last_seq >= seq

    spans = exporter.get_finished_spans()
    [server] = [
        s for s in spans if s.kind == SpanKind.SERVER and "/v1/workspaces/{ws}/people" in s.name
    ]
    trace = [s for s in spans if s.context.trace_id == server.context.trace_id]
    by_id = {s.context.span_id: s for s in trace}
    [apply] = [s for s in trace if s.name == "tieline.projection apply"]
    assert apply.kind == SpanKind.CONSUMER and apply.attributes["tieline.seq"] == seq
    chain = _ancestors(apply, by_id)
    kinds = [(s.kind, s.name) for s in chain]
    # apply <- publish (people service) <- command handler (FastStream) <- command request
    # (api) <- HTTP request (api): every step a child of the one before, one trace id.
    assert chain[0].name == "tieline.event publish" and chain[0].kind == SpanKind.PRODUCER
    assert chain[0].attributes["tieline.seq"] == seq
    handler = [s for s in chain if s.kind == SpanKind.CONSUMER]
    assert handler and handler[0].name.endswith("process"), kinds
    command = [s for s in chain if s.name == "people command"]
    assert command and command[0].kind == SpanKind.CLIENT, kinds
    assert chain[-1] is server, kinds
    order = [chain.index(x) for x in (chain[0], handler[0], command[0], server)]
    assert order == sorted(order), kinds
    assert apply.start_time is not None and apply.end_time is not None
    assert apply.end_time >= apply.start_time >= server.start_time  # type: ignore[operator]


async def test_tracing_off_adds_no_header_and_no_span(settings: Settings) -> None:
    """The default: no provider, so a publish carries only its own headers."""
    assert not telemetry.enabled()
    with telemetry.outgoing("people command") as headers:
        assert headers == {}
