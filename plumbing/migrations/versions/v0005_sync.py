"""The sync service's tables (sources with sealed credentials and status, objects last seen,
events recorded per source, contacts matched to people).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

The sync service and the api made these with ``CREATE TABLE IF NOT EXISTS`` at start
(services/sync/state.py before this revision); this is that DDL verbatim, so a database where
they exist keeps them and is only stamped. ``sync_sources`` is keyed on a workspace and gets
row-level security like the other state tables (the api reads and writes it inside workspace
requests); the other three hang off a source.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SYNC_DDL = """
CREATE TABLE IF NOT EXISTS sync_sources (
    source_id       text PRIMARY KEY,
    workspace_id    text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('caldav', 'carddav')),
    url             text NOT NULL,
    username        text NOT NULL,
    secret          bytea NOT NULL,
    owner           text,
    window_days     integer NOT NULL DEFAULT 90,
    interval_s      integer NOT NULL DEFAULT 900,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    tokens          jsonb NOT NULL DEFAULT '{}'::jsonb,
    next_run_at     timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    failures        integer NOT NULL DEFAULT 0,
    last_success_at timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    items_seen      bigint NOT NULL DEFAULT 0,
    last_run        jsonb
);
CREATE INDEX IF NOT EXISTS sync_sources_ws ON sync_sources (workspace_id);
CREATE INDEX IF NOT EXISTS sync_sources_due ON sync_sources (next_run_at);

CREATE TABLE IF NOT EXISTS sync_items (
    source_id   text NOT NULL REFERENCES sync_sources ON DELETE CASCADE,
    href        text NOT NULL,
    collection  text NOT NULL,
    etag        text,
    data        bytea NOT NULL,
    PRIMARY KEY (source_id, href)
);

CREATE TABLE IF NOT EXISTS sync_recorded (
    source_id    text NOT NULL REFERENCES sync_sources ON DELETE CASCADE,
    event_id     uuid NOT NULL,
    href         text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (source_id, event_id)
);

CREATE TABLE IF NOT EXISTS sync_contacts (
    source_id   text NOT NULL REFERENCES sync_sources ON DELETE CASCADE,
    uid         text NOT NULL,
    person_id   text NOT NULL,
    PRIMARY KEY (source_id, uid)
);
"""

IS_CALLERS = "workspace_id = current_setting('tieline.workspace_id', true)"


def upgrade(**kw: str) -> None:
    """Create the sync tables that are missing; a policy on the workspace-keyed one."""
    op.execute(SYNC_DDL)
    op.execute("ALTER TABLE sync_sources ENABLE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY workspace_isolation ON sync_sources "
        f"USING ({IS_CALLERS}) WITH CHECK ({IS_CALLERS})"
    )


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
