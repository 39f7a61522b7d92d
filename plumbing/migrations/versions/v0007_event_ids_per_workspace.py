"""Event ids are unique per workspace, not across all of them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

``write_events`` and ``write_merges`` were keyed on ``event_id`` alone, so an id one
workspace had used was refused in every other (409): a client deriving ids from its own
records (``uuid5`` of a CRM id, ``tieline simulate``'s seeded ids) collided with another
workspace doing the same, and a writer could learn with a 409 whether another workspace had
used an id it could predict, or take it first. Both tables are now keyed on
``(workspace_id, event_id)``; the rows stay as they are (every id was unique across all
workspaces, so it is unique within each).
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade(**kw: str) -> None:
    """Re-key both tables on (workspace_id, event_id)."""
    for table in ("write_events", "write_merges"):
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey, "
            f"ADD PRIMARY KEY (workspace_id, event_id)"
        )


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
