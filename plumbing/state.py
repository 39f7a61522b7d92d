"""Tables that hold the services' own state (not rebuildable from the log): API tokens,
per-person encryption keys and the access log. Created idempotently at start."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, sql

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
"""


async def ensure_state_schema(conn: AsyncConnection[Any], schema: str) -> None:
    """Create the schema and the state tables if missing (idempotent, safe to race)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tieline:{schema}",))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        await conn.execute(STATE_DDL.encode())
