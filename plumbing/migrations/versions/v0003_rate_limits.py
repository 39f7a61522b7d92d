"""Rate-limit counters shared by every api process.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

One row per (bucket, window): a bucket names what is limited and for whom (e.g. failed
authentications of one client address, requests of one token from one address), the window
is the start of the fixed window the hits fall in. One ``INSERT ... ON CONFLICT DO UPDATE``
counts a hit and returns the total across processes; old windows are deleted as they pass.
Not keyed on a workspace (a failed authentication has none), so not under row-level security;
the api writes it as the owner role, never inside a workspace-scoped transaction.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade(**kw: str) -> None:
    """Create the counters table (unlogged: counts of the last minute are not worth a WAL
    flush, and a PostgreSQL crash that empties it only forgives a minute of hits)."""
    op.execute(
        """CREATE UNLOGGED TABLE rate_limits (
               bucket        text NOT NULL,
               window_start  timestamptz NOT NULL,
               hits          int NOT NULL,
               PRIMARY KEY (bucket, window_start)
           )"""
    )
    op.execute("CREATE INDEX rate_limits_window ON rate_limits (window_start)")


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
