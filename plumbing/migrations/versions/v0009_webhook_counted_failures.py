"""The delivery log says which failed attempts counted towards disabling their endpoint.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

An endpoint is disabled after ``webhook_disable_after`` failures in a row, counted in time
order: a failure counts only when no counted failure of the endpoint was recorded while it
was in flight (services/webhooks/sender.py). ``webhook_attempts.counted`` is the counted
failure's place in the streak (1, 2, ...), NULL for an attempt that did not count; the
sender reads the counted failures after a claim, and the first of the current streak (how
long the endpoint has been failing), through the partial index.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade(**kw: str) -> None:
    """Add ``webhook_attempts.counted`` and an index over the counted attempts only."""
    op.execute("ALTER TABLE webhook_attempts ADD COLUMN IF NOT EXISTS counted int")
    op.execute(
        "CREATE INDEX IF NOT EXISTS webhook_attempts_counted ON webhook_attempts (id) "
        "WHERE counted IS NOT NULL"
    )


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
