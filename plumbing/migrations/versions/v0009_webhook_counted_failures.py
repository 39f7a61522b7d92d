"""The delivery log says which failed attempts counted towards disabling their endpoint; the
claim reads each endpoint's due rows; held deliveries leave the due range.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

An endpoint is disabled after ``webhook_disable_after`` failures in a row, counted in time
order: a failure counts only when no counted failure of the endpoint was recorded while it
was in flight (services/webhooks/sender.py). ``webhook_attempts.counted`` is the counted
failure's place in the streak (1, 2, ...), NULL for an attempt that did not count; the
sender finds the first of the current streak (how long the endpoint has been failing)
through the partial index. ``webhook_endpoints.counted_total`` counts the endpoint's counted
failures ever: a claim notes it, and a failure that finds it grown since did overlap one.
Endpoints' streaks start again at 0 (a streak from before has no counted attempt to date it
from).

The sender's claim takes, for each endpoint, the first of its due rows
(``webhook_deliveries_endpoint_due``, which replaces the global ``webhook_deliveries_due``),
so one endpoint's backlog cannot hide the others', and counts its attempts in flight on the
leased rows (``webhook_deliveries_leased``). A
disabled endpoint's pending deliveries are *held*: ``next_attempt_at`` far in the future
(year 9999, services/webhooks/store.py ``HELD_AT``) until it is enabled; the rows a previous
release left due are moved there now (not one in flight).

Stop the webhooks processes of the previous release before this migration runs (``tieline
migrate``, then start the new release): they lock an endpoint and then the attempt log, the
migration the tables the other way round, and they neither count failures the new way nor
find their deliveries without the dropped index.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade(**kw: str) -> None:
    """Add ``webhook_attempts.counted``, the two indexes, and hold disabled endpoints'
    deliveries."""
    op.execute("ALTER TABLE webhook_attempts ADD COLUMN IF NOT EXISTS counted int")
    op.execute(
        "ALTER TABLE webhook_endpoints ADD COLUMN IF NOT EXISTS counted_total bigint "
        "NOT NULL DEFAULT 0"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS webhook_attempts_counted ON webhook_attempts (id) "
        "WHERE counted IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint_due "
        "ON webhook_deliveries (endpoint_id, next_attempt_at) WHERE status = 'pending'"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS webhook_deliveries_leased ON webhook_deliveries "
        "(endpoint_id) WHERE lease_until IS NOT NULL"
    )
    # The claim no longer reads the global due index; left there, the planner walked it
    # filtered by endpoint, past another endpoint's whole backlog.
    op.execute("DROP INDEX IF EXISTS webhook_deliveries_due")
    op.execute("UPDATE webhook_endpoints SET consecutive_failures = 0")
    op.execute(
        "UPDATE webhook_deliveries d SET next_attempt_at = '9999-01-01 00:00:00+00' "
        "FROM webhook_endpoints e WHERE e.endpoint_id = d.endpoint_id "
        "AND e.disabled_at IS NOT NULL AND d.status = 'pending' AND NOT d.manual "
        "AND (d.lease_until IS NULL OR d.lease_until < now())"
    )


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
