"""The write side's record of person merges (``person.merged``), so it can refuse a merge of a
person who is merged already, into someone merged, or of someone others were merged into.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

Whether a merge still holds is read from ``write_events.retracted_by`` of its event (a merge is
undone by retracting it). Keyed on a workspace, with row-level security like the other
write-side tables; the write services connect as the owner and the api never reads it.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

MERGE_DDL = """
CREATE TABLE IF NOT EXISTS write_merges (
    event_id      uuid PRIMARY KEY,
    workspace_id  text NOT NULL,
    merged        text NOT NULL,
    survivor      text NOT NULL
);
CREATE INDEX IF NOT EXISTS write_merges_merged ON write_merges (workspace_id, merged);
CREATE INDEX IF NOT EXISTS write_merges_survivor ON write_merges (workspace_id, survivor);
"""

IS_CALLERS = "workspace_id = current_setting('tieline.workspace_id', true)"


def upgrade(**kw: str) -> None:
    """Create ``write_merges`` with its workspace policy."""
    op.execute(MERGE_DDL)
    op.execute("ALTER TABLE write_merges ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY workspace_isolation ON write_merges "
        f"USING ({IS_CALLERS}) WITH CHECK ({IS_CALLERS})"
    )


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
