"""Baseline: the state tables as the releases before migrations created them.

Revision ID: 0001
Revises:
Create Date: 2026-11-30

Every statement is ``IF NOT EXISTS``, exactly as ``ensure_state_schema`` ran it before there
were migrations: on a database that release created, this revision changes nothing and only
stamps it, so its tokens, keys, access log and webhooks are kept; on a new one it creates them.
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATE_DDL = """
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id      text PRIMARY KEY,
    workspace_id  text NOT NULL,
    role          text NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    name          text NOT NULL,
    secret_sha256 text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE INDEX IF NOT EXISTS api_tokens_ws ON api_tokens (workspace_id);

-- One data key per person. Destroying it (key = NULL) is erasure: every ciphertext of that
-- person's personal data, in the log and everywhere else, becomes unreadable.
CREATE TABLE IF NOT EXISTS person_keys (
    workspace_id  text NOT NULL,
    person_id     text NOT NULL,
    key           bytea,
    wrapped       boolean NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    destroyed_at  timestamptz,
    PRIMARY KEY (workspace_id, person_id)
);

-- Who read whose personal data, when, through which endpoint.
CREATE TABLE IF NOT EXISTS access_log (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    workspace_id  text NOT NULL,
    actor         text NOT NULL,
    endpoint      text NOT NULL,
    person_ids    text[] NOT NULL
);
CREATE INDEX IF NOT EXISTS access_log_ws_at ON access_log (workspace_id, at);

-- Webhook endpoints an admin registered; the signing secret is sealed under the master key
-- and never returned after creation. After too many consecutive failed attempts (or a 410)
-- an endpoint is disabled, with the reason.
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    endpoint_id          text PRIMARY KEY,
    workspace_id         text NOT NULL,
    url                  text NOT NULL,
    kinds                text[] NOT NULL,
    description          text,
    secret               bytea NOT NULL,
    created_by           text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    consecutive_failures int NOT NULL DEFAULT 0,
    disabled_at          timestamptz,
    disabled_reason      text
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_ws ON webhook_endpoints (workspace_id);

-- One delivery per (endpoint, change-log position): the message (its id is the webhook-id,
-- the same on every attempt), its state and retry schedule. The body is kept as sent.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id               bigserial PRIMARY KEY,
    delivery_id      text NOT NULL UNIQUE,
    endpoint_id      text NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    workspace_id     text NOT NULL,
    position         text NOT NULL,
    kind             text NOT NULL,
    body             text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    manual           boolean NOT NULL DEFAULT false,
    last_status      int,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    UNIQUE (endpoint_id, position)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);

-- Every attempt of a delivery: when, how long, the receiver's status or the error.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  text NOT NULL REFERENCES webhook_deliveries (delivery_id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT now(),
    duration_ms  double precision,
    status_code  int,
    error        text,
    manual       boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
"""


def upgrade(**kw: str) -> None:
    """Create the state tables that are missing (none, on a database of an earlier release)."""
    op.execute(STATE_DDL)


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
