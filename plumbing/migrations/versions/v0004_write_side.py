"""The write side's own tables (event ids taken, introductions, the backfill mark).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

The write services made these with ``CREATE TABLE IF NOT EXISTS`` at start
(services/write_state.py ``WRITE_DDL``, main at 90bc06e); this revision is that DDL verbatim,
so a database where they already exist keeps them and their rows, and is only stamped. The two
keyed on a workspace get row-level security like the other state tables; the write services
connect as the owner, which the policies do not restrict, and the api never reads them.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

WRITE_DDL = """
CREATE TABLE IF NOT EXISTS write_events (
    event_id      uuid PRIMARY KEY,
    workspace_id  text NOT NULL,
    type          text NOT NULL,
    digest        text,            -- NULL: learnt from the log, the client's body is unknown
    seq           bigint,          -- NULL: taken, publish not confirmed yet
    retracted_by  uuid,
    taken_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS write_introductions (
    workspace_id      text NOT NULL,
    introduction_id   uuid NOT NULL,
    requester         text NOT NULL,
    introducer        text NOT NULL,
    target            text NOT NULL,
    requester_consent boolean,
    target_consent    boolean,
    made_event_id     uuid,
    PRIMARY KEY (workspace_id, introduction_id)
);
-- One row per stream once the write-side tables hold everything the log held when they were
-- created (see WriteState.backfill).
CREATE TABLE IF NOT EXISTS write_backfill (
    stream     text PRIMARY KEY,
    upto_seq   bigint NOT NULL,
    done_at    timestamptz NOT NULL DEFAULT now()
);
"""

IS_CALLERS = "workspace_id = current_setting('tieline.workspace_id', true)"


def upgrade(**kw: str) -> None:
    """Create the write-side tables that are missing; policies on the workspace-keyed ones."""
    op.execute(WRITE_DDL)
    for table in ("write_events", "write_introductions"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY workspace_isolation ON {table} "
            f"USING ({IS_CALLERS}) WITH CHECK ({IS_CALLERS})"
        )


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
