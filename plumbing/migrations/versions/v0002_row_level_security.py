"""Row-level security on the state tables.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Every state table keyed on ``workspace_id`` gets a policy that shows (and accepts) only the
rows of the workspace named by the transaction's ``tieline.workspace_id`` setting. The api
runs each workspace-scoped transaction as the api role (no BYPASSRLS, owner of nothing) with
that setting made by ``SET LOCAL``, so a query that forgot its ``WHERE workspace_id`` still
sees one workspace. The role and its grants are not made here but by every start
(``ensure_state_schema``): a role is per PostgreSQL cluster, so a schema restored into
another cluster (``pg_restore --no-privileges``) gets them back there. The owner of the
tables (the role that migrates; the worker, the write services and the webhooks process
connect as it) is not subject to the policies: they do cross-workspace work by design
(projection, delivery), and the api's token lookup, which happens before the workspace is
known, uses it too.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: The setting a transaction names its workspace in (``SET LOCAL tieline.workspace_id``).
#: Unset, ``current_setting(..., true)`` is NULL (or '' once used on the connection): no rows.
IS_CALLERS = "workspace_id = current_setting('tieline.workspace_id', true)"

#: Tables with a workspace_id column.
KEYED = (
    "api_tokens",
    "person_keys",
    "access_log",
    "webhook_endpoints",
    "webhook_deliveries",
)


def upgrade(**kw: str) -> None:
    """Enable the policies (they name no role: they apply to every role but the owner)."""
    for table in KEYED:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY workspace_isolation ON {table} "
            f"USING ({IS_CALLERS}) WITH CHECK ({IS_CALLERS})"
        )
    # Attempts have no workspace column: they belong to a delivery the caller can see (the
    # subquery is itself filtered by the deliveries' policy).
    op.execute("ALTER TABLE webhook_attempts ENABLE ROW LEVEL SECURITY")
    visible = "delivery_id IN (SELECT delivery_id FROM webhook_deliveries)"
    op.execute(
        f"CREATE POLICY workspace_isolation ON webhook_attempts "
        f"USING ({visible}) WITH CHECK ({visible})"
    )


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
