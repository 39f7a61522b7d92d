"""Prometheus metrics of every tieline process (prometheus-client, the default registry).

Each process exposes ``/metrics`` in the Prometheus text format: the api on its own HTTP port
(and on its health port when it has one: ``tieline up --api-workers N`` gives each of the N
api processes sharing the api port one, so each is scraped on its own), the write services,
the worker, the webhooks and the sync process on their health port (``TIELINE_HEALTH_PORT``,
services/runtime/health.py). The names, and what each one means:

api
    ``tieline_http_requests_total{method,route,status}`` and
    ``tieline_http_request_duration_seconds{method,route}``: per route *template*
    (``/v1/workspaces/{ws}/people``), never the raw path, so a workspace or person id never
    becomes a label; ``tieline_sse_clients``: open live-update streams.
api, people, interactions
    ``tieline_command_events_total{type,outcome,status}``: the events of write commands by
    what came of them: ``recorded`` (201), ``duplicate`` (200, a re-sent event id) or
    ``refused`` (the status says why: 409 conflict, 410 forgotten, 422 invalid, 5xx error).
people, interactions
    FastStream's ``faststream_*`` metrics (messages received/processed, processing time,
    publishes) with subjects normalised to their pattern (no workspace ids).
worker
    ``tieline_projection_events_applied_total``, ``..._batches_total``,
    ``..._dead_lettered_total``, ``tieline_projection_batch_apply_seconds`` (fetch excluded,
    database retries included), ``tieline_projection_checkpoint``,
    ``tieline_projection_stream_last_seq``, ``tieline_projection_lag_events`` (the log's last
    sequence minus the committed checkpoint, read at scrape time), ``tieline_projection_active``
    (1: holds the projection lock; 0: hot standby, whose lag is not its own and reads 0),
    ``tieline_dlq_messages`` (messages in the dead-letter stream) and
    ``tieline_selfcheck_rounds_total{result}`` (``ok`` or ``alarm``).
every process with a PostgreSQL pool (api, people, interactions, webhooks, sync)
    Per pool, labelled ``{pool}`` (``api``, ``api-scoped``, ``api-audit``, ``write``,
    ``webhooks``, ``webhooks-read``, ``sync``, ``sync-read``), read at scrape time from
    psycopg_pool's own figures: ``tieline_db_pool_connections`` (open or being made),
    ``tieline_db_pool_connections_in_use``, ``tieline_db_pool_connections_idle``,
    ``tieline_db_pool_connections_max``, ``tieline_db_pool_requests_waiting``,
    ``tieline_db_pool_unreachable`` (1 while a connection attempt has failed since the pool
    last made or handed one out and none is in use or idle: the database is down or cannot
    be reached), and the counters ``tieline_db_pool_connection_errors_total`` (failed
    connection attempts) and ``tieline_db_pool_timeouts_total`` (requests that got no
    connection in time; in the api, a 503). Pools of one name (a read pool and its
    replacement at a read-model switch) are added up, and a closed pool's counts stay.
sync
    Per calendar or address-book source, labelled ``{source_id,kind}`` only (the source id is
    a random ``src_…`` token; no workspace, URL, user name or error text, which may be
    personal, becomes a label), read from ``sync_sources`` at scrape time:
    ``tieline_sync_last_success_timestamp_seconds`` (0: never succeeded),
    ``tieline_sync_source_failing`` (1 while the last run failed, the error is in the API),
    ``tieline_sync_items_seen`` and ``tieline_sync_next_run_timestamp_seconds``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from tieline.plumbing.db import POOL_COUNTERS, POOL_GAUGES, pool_figures

__all__ = [
    "CONTENT_TYPE_LATEST",
    "HTTP_DURATION",
    "HTTP_REQUESTS",
    "SSE_CLIENTS",
    "count_command_outcomes",
    "faststream_middleware",
    "normalise_subject",
    "observe_batch",
    "render",
]

HTTP_REQUESTS = Counter(
    "tieline_http_requests",
    "HTTP requests answered by the api, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "tieline_http_request_duration_seconds",
    "Time from request to the end of the response, by method and route template "
    "(a live-update stream counts until it closes).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SSE_CLIENTS = Gauge("tieline_sse_clients", "Live-update (SSE) streams open on this api.")
COMMAND_EVENTS = Counter(
    "tieline_command_events",
    "Events in write commands by event type and what came of them "
    "(recorded, duplicate, refused; status: the HTTP-style status of the outcome).",
    ["type", "outcome", "status"],
)

APPLIED = Counter("tieline_projection_events_applied", "Events applied to the read models.")
BATCHES = Counter("tieline_projection_batches", "Batches committed by the projection worker.")
DEAD_LETTERED = Counter(
    "tieline_projection_dead_lettered", "Events parked in the dead-letter stream."
)
BATCH_SECONDS = Histogram(
    "tieline_projection_batch_apply_seconds",
    "Time to apply and commit one batch (database retries included, fetch excluded).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
WEBHOOK_EVENTS_WITHOUT_CHANGES = Counter(
    "tieline_webhooks_events_without_changes",
    "Events the webhooks process handed over at or below the change log's trim point: the "
    "projection wrote no rows for them (recorded more than 24 h before their batch, or a bulk "
    "rebuild switched in) or they were trimmed, so no webhook was sent for them.",
)
CHECKPOINT = Gauge("tieline_projection_checkpoint", "Last stream sequence committed.")
STREAM_LAST = Gauge("tieline_projection_stream_last_seq", "Last sequence in the event stream.")
LAG = Gauge(
    "tieline_projection_lag_events",
    "Events in the stream not yet applied (0 on a hot standby).",
)
ACTIVE = Gauge(
    "tieline_projection_active", "1 while this worker holds the projection lock, else 0."
)
DLQ_MESSAGES = Gauge("tieline_dlq_messages", "Messages in the dead-letter stream.")
SELF_CHECK = Counter(
    "tieline_selfcheck_rounds",
    "Self-check rounds of the worker by result (ok, alarm: the read models differ from the log).",
    ["result"],
)


_SYNC_LABELS = ("source_id", "kind")
SYNC_LAST_SUCCESS = Gauge(
    "tieline_sync_last_success_timestamp_seconds",
    "When the source last synced without error (Unix time; 0: never).",
    _SYNC_LABELS,
)
SYNC_FAILING = Gauge(
    "tieline_sync_source_failing", "1 while the source's last run failed, else 0.", _SYNC_LABELS
)
SYNC_ITEMS = Gauge(
    "tieline_sync_items_seen", "Calendar events or vCards the source held at its last run.",
    _SYNC_LABELS,
)  # fmt: skip
SYNC_NEXT_RUN = Gauge(
    "tieline_sync_next_run_timestamp_seconds", "When the source runs next (Unix time).",
    _SYNC_LABELS,
)  # fmt: skip
_SYNC_GAUGES = (SYNC_LAST_SUCCESS, SYNC_FAILING, SYNC_ITEMS, SYNC_NEXT_RUN)


def observe_sync_sources(rows: Iterable[dict[str, Any]]) -> None:
    """Set the sync gauges to ``rows`` (``sync_sources`` rows); a removed source's series go."""
    for gauge in _SYNC_GAUGES:
        gauge.clear()
    for r in rows:
        labels = (r["source_id"], r["kind"])
        done = r["last_success_at"]
        SYNC_LAST_SUCCESS.labels(*labels).set(done.timestamp() if done is not None else 0)
        SYNC_FAILING.labels(*labels).set(1 if r["last_error"] is not None else 0)
        SYNC_ITEMS.labels(*labels).set(int(r["items_seen"]))
        SYNC_NEXT_RUN.labels(*labels).set(r["next_run_at"].timestamp())


#: Help of each pool figure (plumbing/db.py pool_figures).
_POOL_HELP = {
    "connections": "Connections of the pool, open or being made.",
    "connections_in_use": "Connections handed out and not yet given back.",
    "connections_idle": "Open connections waiting in the pool.",
    "connections_max": "The most connections the pool may open.",
    "requests_waiting": "Requests waiting for a connection.",
    "unreachable": "1 while the pool cannot reach PostgreSQL, else 0.",
    "connection_errors": "Connection attempts that failed.",
    "timeouts": "Requests that got no connection in time (in the api, a 503).",
}


class PoolCollector(Collector):
    """This process's pools at scrape time, per pool name (plumbing/db.py pool_figures)."""

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        figures = sorted(pool_figures().items())
        for key in POOL_GAUGES:
            gauge = GaugeMetricFamily(f"tieline_db_pool_{key}", _POOL_HELP[key], labels=["pool"])
            for name, mine in figures:
                gauge.add_metric([name], mine[key])
            yield gauge
        for key in POOL_COUNTERS:
            counter = CounterMetricFamily(
                f"tieline_db_pool_{key}", _POOL_HELP[key], labels=["pool"]
            )
            for name, mine in figures:
                counter.add_metric([name], mine[key])
            yield counter


REGISTRY.register(PoolCollector())


def render() -> tuple[bytes, str]:
    """(body, content type) of this process's metrics in the Prometheus text format."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def outcome_of(status: int) -> str:
    """``recorded``, ``duplicate`` or ``refused`` for an outcome's HTTP-style status."""
    if status == 201:
        return "recorded"
    if status == 200:
        return "duplicate"
    return "refused"


def count_command_outcomes(
    items: Sequence[Any], results: Iterable[dict[str, Any]], known_types: frozenset[str]
) -> None:
    """Count each item of a command with its result. An unknown ``type`` counts as
    ``other``, so whatever a client sends, the label set stays bounded."""
    for item, result in zip(items, results, strict=False):
        kind = item.get("type") if isinstance(item, dict) else None
        label = kind if isinstance(kind, str) and kind in known_types else "other"
        status = int(result.get("status", 500))
        COMMAND_EVENTS.labels(label, outcome_of(status), str(status)).inc()


def observe_batch(applied: int, dead_lettered: int, checkpoint: int, seconds: float) -> None:
    """A committed projection batch."""
    BATCHES.inc()
    APPLIED.inc(applied)
    DEAD_LETTERED.inc(dead_lettered)
    CHECKPOINT.set(checkpoint)
    BATCH_SECONDS.observe(seconds)


def observe_position(active: bool, checkpoint: int, stream_last: int | None) -> None:
    """The worker's position against the log (at scrape time)."""
    ACTIVE.set(1 if active else 0)
    if not active:
        LAG.set(0)
        return
    CHECKPOINT.set(checkpoint)
    if stream_last is not None:
        STREAM_LAST.set(stream_last)
        LAG.set(max(stream_last - checkpoint, 0))


def normalise_subject(subject: str) -> str:
    """A NATS subject as a metric label: the workspace and person tokens replaced by ``*``
    and reply inboxes (unique per request) folded into ``_INBOX``."""
    if subject.startswith("_INBOX"):
        return "_INBOX"
    parts = subject.split(".")
    if len(parts) >= 3 and parts[1] in ("cmd", "ev"):
        parts[2] = "*"
        if parts[1] == "ev" and len(parts) > 5 and parts[3] == "person":
            parts = [*parts[:5], "*"]
    return ".".join(parts)


@functools.cache
def faststream_middleware() -> Any:
    """FastStream's Prometheus middleware for a NATS broker, one per process (its metrics
    register once in the default registry), with subjects normalised by
    :func:`normalise_subject` so a workspace id or a reply inbox never becomes a label."""
    from faststream.nats.prometheus.provider import (
        NatsMetricsSettingsProvider,
        settings_provider_factory,
    )
    from faststream.prometheus.middleware import PrometheusMiddleware

    class Provider(NatsMetricsSettingsProvider):
        def get_consume_attrs_from_message(self, msg: Any) -> Any:
            attrs = super().get_consume_attrs_from_message(msg)
            attrs["destination_name"] = normalise_subject(attrs["destination_name"])
            return attrs

        def get_publish_destination_name_from_cmd(self, cmd: Any) -> str:
            return normalise_subject(super().get_publish_destination_name_from_cmd(cmd))

    def factory(msg: Any) -> Any:
        made = settings_provider_factory(msg)
        return Provider() if isinstance(made, NatsMetricsSettingsProvider) else made

    return PrometheusMiddleware(
        settings_provider_factory=factory, registry=REGISTRY, app_name="tieline"
    )
