"""An index of the webhook deliveries ready to be claimed (pending and not leased), by due
time: the sender asks it whether anything is due before it runs the claim, whose cost grows
with the endpoints of the installation (one probe of each endpoint's own due index), so an idle
sender no longer pays that four times a second.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

The claim still takes its candidates per endpoint (the lateral on
``webhook_deliveries_endpoint_due``): they include rows whose lease has run out, which this
index's predicate leaves out, so it cannot serve them, and a backlog of one endpoint cannot hide
another's rows through it (the reason migration 0009 dropped the global due index). The
planner may use it in the claim's re-check of the rows it locks (a bitmap scan beside
``webhook_deliveries_leased``: a reviewer's EXPLAIN, no slower at 40,000 and 200,000 due rows).
Building it locks ``webhook_deliveries`` against writes for as long as it takes
(docs/operations.md, upgrading across 0011).
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade(**kw: str) -> None:
    """Add ``webhook_deliveries_ready``."""
    op.execute(
        "CREATE INDEX IF NOT EXISTS webhook_deliveries_ready ON webhook_deliveries "
        "(next_attempt_at) WHERE status = 'pending' AND lease_until IS NULL"
    )


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
