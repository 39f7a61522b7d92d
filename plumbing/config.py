"""Settings for every tieline process, read from the environment (``TIELINE_*``) or passed in.

Nothing reads settings at import time: each composition root (``create_app(settings)``) takes a
:class:`Settings` object, so tests build their own.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: An origin as browsers send it: scheme://host[:port], no path, no trailing slash.
ORIGIN = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)


class Settings(BaseSettings):
    """Configuration shared by the services, the projection worker and the CLI."""

    model_config = SettingsConfigDict(env_prefix="TIELINE_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    database_url: str = "postgresql://tieline@127.0.0.1:5432/tieline"
    #: PostgreSQL schema holding the read models (tests and snapshots use their own).
    database_schema: str = Field(default="tieline", pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    #: JetStream stream that is the log of record, and the prefix of all tieline subjects.
    stream_name: str = Field(default="TIELINE", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    subject_prefix: str = Field(default="tl", pattern=r"^[a-z0-9_-]{1,32}$")
    stream_replicas: int = Field(default=1, ge=1, le=5)
    #: Window in which JetStream itself drops a re-sent Nats-Msg-Id. Postgres catches the rest.
    duplicate_window_s: float = Field(default=120.0, gt=0)

    api_host: str = "127.0.0.1"
    api_port: int = 8080
    #: API processes serving the one port (each binds it with SO_REUSEPORT and the kernel
    #: spreads new connections over them): reads use more than one core.
    api_workers: int = Field(default=1, ge=1, le=64)
    #: Web origins whose pages may call the API from a browser (CORS), comma-separated in
    #: TIELINE_CORS_ORIGINS, e.g. ``https://app.example.org,http://localhost:5173``; ``*``
    #: for any. None by default: browsers then refuse cross-origin calls.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Largest accepted request body for one event, and for a batch.
    max_event_bytes: int = 64 * 1024
    max_batch_bytes: int = 16 * 1024 * 1024
    max_batch_lines: int = 100_000
    #: How far in the future an occurred_at may lie (clock skew), in seconds.
    max_future_skew_s: float = 300.0
    #: Longest a read with ?min_seq waits for the projection before answering 503.
    min_seq_wait_s: float = Field(default=5.0, ge=0, le=60)
    #: Wait for the WAL flush of every access-log record (an fsync per read of personal data).
    #: Off by default: a PostgreSQL crash may then lose the last fraction of a second of them.
    audit_synchronous_commit: bool = False
    #: Commands a write service handles at once (each mostly waits on round trips).
    command_concurrency: int = Field(default=64, ge=1, le=1024)
    #: Command request/reply timeout between the API and the services.
    command_timeout_s: float = 10.0

    #: Projection worker: messages fetched and committed per transaction.
    batch_size: int = Field(default=2000, ge=1, le=10_000)
    fetch_timeout_s: float = 1.0
    #: Rebuilds, as-of replays, what-ifs and verify fill a new generation with the bulk path
    #: (projections/bulk_load.py) before the worker continues; false: the worker alone.
    replay_bulk: bool = True
    #: Worker processes of the bulk path's strength pass (pairs are folded independently);
    #: 1: fold in the replaying process itself. On 2 shared cores 2 processes did not shorten
    #: the fold of 200k events and cost 23% more CPU (docs/performance.md), hence 1.
    bulk_fold_processes: int = Field(default=1, ge=1, le=64)
    consumer_name: str = "projections"
    #: Partitioned projection workers of the live generation: each applies the events of the
    #: workspaces with ``crc32(workspace_id) % projection_workers == projection_partition``
    #: (docs/architecture.md, "Partitioned projection workers"). A different count than the
    #: live generation's builds a new generation blue/green.
    projection_workers: int = Field(default=1, ge=1, le=64)
    #: Which partition this worker process owns (0 .. projection_workers - 1).
    projection_partition: int = Field(default=0, ge=0, le=63)
    #: A replica's index (a Kubernetes StatefulSet's pod index): when set, the partition is
    #: ``projection_pod_index % projection_workers``, so 2N replicas run each partition as an
    #: active worker and a hot standby (the partition's lock decides which is active).
    projection_pod_index: int | None = Field(default=None, ge=0)
    #: Seconds JetStream waits for an ack before redelivering (a crashed worker's batch).
    ack_wait_s: float = Field(default=30.0, gt=0)
    #: Deliveries of a failing event before it is parked in the dead-letter subject.
    max_attempts: int = Field(default=5, ge=1)
    #: Seconds between the worker's self-check rounds (0: off); messages and pairs sampled.
    self_check_interval_s: float = Field(default=60.0, ge=0)
    self_check_samples: int = Field(default=20, ge=1, le=10_000)

    #: base64 of 32 bytes; wraps the per-person keys at rest (recommended in production).
    master_key: str | None = None
    #: During a rotation, the master key(s) it replaced (comma-separated): values sealed
    #: under them still open; new ones are sealed under ``master_key`` (docs/operations.md).
    master_key_previous: str | None = None
    #: Authentication failures per client and minute before answering 429 (counted across
    #: every api process: services/api/ratelimit.py).
    auth_failures_per_minute: int = 20
    #: Requests per token and client and minute before answering 429; 0: no such limit.
    requests_per_minute: int = Field(default=0, ge=0)
    #: Addresses of the reverse proxies (ingress, load balancer) whose ``X-Forwarded-For`` /
    #: ``X-Forwarded-Proto`` the api believes (uvicorn's ``forwarded_allow_ips``):
    #: comma-separated IPs or CIDR networks, ``*`` for any. Unset: none, the peer address is
    #: the client. The rate limits are keyed on the client this gives.
    forwarded_allow_ips: str | None = None

    #: Health endpoint of the processes without an HTTP API (people, interactions, worker):
    #: ``GET /healthz`` (the process answers) and ``/readyz`` (connected). Off when unset.
    health_host: str = "127.0.0.1"
    health_port: int | None = Field(default=None, ge=1, le=65535)
    #: Refuse to start unless every setting the process's role needs was given explicitly
    #: (services/runtime/run.py ``REQUIRED``). The container image turns it on, so a deployment
    #: that forgets a variable fails at start with its name instead of silently connecting to
    #: localhost defaults or storing per-person keys unwrapped.
    strict_config: bool = False

    #: Live updates (SSE): heartbeat comment interval; the reconnect delay told to clients;
    #: messages one client may have waiting before it is cut off (it resumes with
    #: Last-Event-ID); how long one write to a client may block; the feed's fallback poll.
    sse_heartbeat_s: float = Field(default=15.0, gt=0)
    sse_retry_ms: int = Field(default=2000, ge=0)
    sse_queue_limit: int = Field(default=1000, ge=1)
    sse_send_timeout_s: float = Field(default=30.0, gt=0)
    sse_poll_s: float = Field(default=1.0, gt=0)
    #: How often an open stream checks its token again (a revoked token's stream ends).
    sse_reauth_s: float = Field(default=30.0, gt=0)
    #: How often the webhooks process looks for ties that fell due a follow-up, and how long
    #: change-log rows are kept for clients that resume (older positions get a reset).
    follow_up_scan_s: float = Field(default=60.0, gt=0)
    live_retention_s: float = Field(default=86400.0, gt=0)

    #: Webhooks: plain-http loopback receivers (development) and private-range targets are
    #: refused unless allowed; per-attempt timeout; attempts per delivery with exponential
    #: backoff and jitter between them; consecutive failed attempts that disable an endpoint.
    webhook_allow_loopback: bool = False
    webhook_allow_private: bool = False
    webhook_timeout_s: float = Field(default=15.0, gt=0)
    webhook_max_attempts: int = Field(default=10, ge=1)
    webhook_backoff_s: float = Field(default=5.0, gt=0)
    webhook_backoff_max_s: float = Field(default=6 * 3600.0, gt=0)
    webhook_disable_after: int = Field(default=50, ge=1)
    webhook_concurrency: int = Field(default=16, ge=1, le=1024)
    #: Finished deliveries (and their attempts) stay in the delivery log this long.
    webhook_log_retention_s: float = Field(default=30 * 86400.0, gt=0)

    #: Calendar/address-book sync (services/sync): how often the sync process looks for due
    #: sources, how long one run may hold a source before another process may take it over,
    #: the longest backoff after failures, and the per-request timeout towards the server.
    sync_poll_s: float = Field(default=5.0, gt=0)
    sync_lease_s: float = Field(default=600.0, gt=0)
    sync_backoff_max_s: float = Field(default=3600.0, gt=0)
    sync_timeout_s: float = Field(default=30.0, gt=0)
    #: Sources one sync process runs at once (a slow or dead server holds only its own).
    sync_concurrency: int = Field(default=4, ge=1, le=64)
    #: Events per command the sync sends to a write service.
    sync_chunk: int = Field(default=200, ge=1, le=1000)
    #: Sync sources on loopback (plain http allowed there) and on private addresses are
    #: refused unless allowed: a workspace admin must not reach the installation's own network.
    #: A self-hosted server at home (192.168.x) needs ``TIELINE_SYNC_ALLOW_PRIVATE=true``.
    sync_allow_loopback: bool = False
    sync_allow_private: bool = False

    log_json: bool | None = None
    log_level: str = "INFO"

    #: Tracing (plumbing/telemetry.py): an OTLP/HTTP traces endpoint, e.g.
    #: ``http://otel-collector:4318/v1/traces``. Unset (the default): tracing is off.
    otlp_endpoint: str | None = None
    #: Share of traces kept (parent-based: a trace is kept or dropped whole).
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        """A comma-separated string (the environment) or a list; each an exact origin."""
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            return items
        out = [str(o).strip() for o in items if str(o).strip()]
        bad = [o for o in out if o != "*" and not ORIGIN.match(o)]
        if bad:
            raise ValueError(
                f"not an origin (scheme://host[:port], no path or trailing slash): {bad}"
            )
        return out

    @model_validator(mode="after")
    def _partition_in_range(self) -> Settings:
        """A partition index names one of the ``projection_workers`` partitions."""
        if self.projection_pod_index is not None:
            self.projection_partition = self.projection_pod_index % self.projection_workers
        if self.projection_partition >= self.projection_workers:
            raise ValueError(
                f"projection_partition {self.projection_partition} is not below "
                f"projection_workers {self.projection_workers}"
            )
        return self

    def env(self, *names: str) -> dict[str, str]:
        """The ``TIELINE_*`` variables that give a child process these settings' ``names``."""

        def text(value: Any) -> str:
            return ",".join(map(str, value)) if isinstance(value, list) else str(value)

        return {f"TIELINE_{name.upper()}": text(getattr(self, name)) for name in names}

    def stream_subjects(self) -> list[str]:
        return [f"{self.subject_prefix}.ev.>"]


#: The names a child process must share with its parent to work on the same deployment
#: (same schema, stream, subjects and consumer) when tests and benchmarks start one.
DEPLOYMENT_NAMES = (
    "database_schema",
    "stream_name",
    "subject_prefix",
    "consumer_name",
    "duplicate_window_s",
    "fetch_timeout_s",
)
