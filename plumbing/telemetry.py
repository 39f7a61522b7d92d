"""OpenTelemetry traces across the processes: api -> NATS command -> write service -> event
publish -> projection apply. Off by default.

``TIELINE_OTLP_ENDPOINT`` (an OTLP/HTTP traces URL, e.g. ``http://otel-collector:4318/v1/traces``)
turns tracing on in every process (:func:`configure_tracing`), batched and exported in the
background, sampled at ``TIELINE_TRACE_SAMPLE_RATIO`` (parent-based, so a trace is kept or
dropped whole). Without it nothing here creates a span, adds a header or costs more than a
flag check.

The W3C ``traceparent`` travels in NATS message headers:

* the api's command request carries it (:func:`outgoing`, a CLIENT span around the request);
* FastStream's ``NatsTelemetryMiddleware`` continues it in the write service (a CONSUMER span
  around the handler);
* :class:`TracedJetStream` puts the current context into every event it publishes (a
  PRODUCER span per publish), so it is stored in the stream with the event;
* the worker, after committing a batch, records one span per applied event whose parent is
  that stored context (:func:`trace_applied`), timed from the start of the batch's apply to
  its commit. Events from before tracing was on, or from a tracing-off producer, get a span
  of their own trace.

The provider is held here, not installed as OpenTelemetry's global one, so a test can swap an
in-memory exporter in and out (:func:`install`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from opentelemetry.sdk.trace import TracerProvider
    from tieline.plumbing.config import Settings

__all__ = [
    "TracedJetStream",
    "broker_middlewares",
    "configure_tracing",
    "enabled",
    "install",
    "jetstream",
    "outgoing",
    "provider",
    "trace_applied",
]

_PROPAGATOR = TraceContextTextMapPropagator()
_state: dict[str, Any] = {"provider": None}


def install(tracer_provider: TracerProvider | None) -> None:
    """Trace into ``tracer_provider`` from now on (None: tracing off)."""
    _state["provider"] = tracer_provider


def provider() -> TracerProvider | None:
    """The provider spans go to, or None when tracing is off."""
    found: TracerProvider | None = _state["provider"]
    return found


def enabled() -> bool:
    return _state["provider"] is not None


def tracer() -> Tracer:
    return trace.get_tracer("tieline", tracer_provider=provider())


def configure_tracing(settings: Settings, service_name: str) -> bool:
    """Turn tracing on when ``settings.otlp_endpoint`` is set: an SDK provider naming the
    process ``service_name``, exporting over OTLP/HTTP in batches. True when on."""
    if not settings.otlp_endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    made = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.namespace": "tieline"}),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
    )
    made.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    install(made)
    return True


def shutdown() -> None:
    """Flush and stop the exporter (at process exit; spans still queued are sent)."""
    found = provider()
    if found is not None:
        found.shutdown()


@contextlib.contextmanager
def outgoing(name: str, **attributes: Any) -> Iterator[dict[str, str]]:
    """A CLIENT span around a NATS request; yields the headers that carry it (empty when
    tracing is off)."""
    headers: dict[str, str] = {}
    if not enabled():
        yield headers
        return
    with tracer().start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes):
        _PROPAGATOR.inject(headers)
        yield headers


class TracedJetStream(JetStreamContext):
    """A JetStream context whose ``publish`` runs in a PRODUCER span and stores the trace
    context in the message's headers (next to ``Nats-Msg-Id``)."""

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,  # noqa: ASYNC109  (the signature it overrides)
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> Any:
        if not enabled():
            return await super().publish(subject, payload, timeout, stream, headers, msg_ttl)
        with tracer().start_as_current_span(
            "tieline.event publish",
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "nats", "messaging.destination.name": subject},
        ) as span:
            carried = dict(headers or {})
            _PROPAGATOR.inject(carried)
            ack = await super().publish(subject, payload, timeout, stream, carried, msg_ttl)
            span.set_attribute("tieline.seq", int(ack.seq))
            return ack


def jetstream(nc: NatsClient) -> JetStreamContext:
    """``nc.jetstream()``, tracing its publishes (:class:`TracedJetStream`)."""
    return TracedJetStream(nc)


def broker_middlewares() -> tuple[Any, ...]:
    """A write service's FastStream middlewares: Prometheus metrics always
    (plumbing/metrics.py), OpenTelemetry when tracing is on (it continues the api's trace
    from the command's ``traceparent`` header)."""
    from tieline.plumbing.metrics import faststream_middleware

    if not enabled():
        return (faststream_middleware(),)
    from faststream.nats.opentelemetry import NatsTelemetryMiddleware

    return (faststream_middleware(), NatsTelemetryMiddleware(tracer_provider=provider()))


def trace_applied(msgs: Sequence[Msg], started_ns: int) -> None:
    """One CONSUMER span per message of a committed batch, child of the context its producer
    stored in the message, from ``started_ns`` (the apply began) to now (committed)."""
    if not enabled():
        return
    ended = time.time_ns()
    spans = tracer()
    for m in msgs:
        parent = _PROPAGATOR.extract(m.headers or {})
        span = spans.start_span(
            "tieline.projection apply",
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=started_ns,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": m.subject,
                "tieline.seq": int(m.metadata.sequence.stream),
            },
        )
        span.end(end_time=ended)
