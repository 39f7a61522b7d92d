"""Row-level security on the state tables, and the api's role.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Every state table keyed on ``workspace_id`` gets a policy that shows (and accepts) only the
rows of the workspace named by the transaction's ``tieline.workspace_id`` setting. The api
runs each workspace-scoped transaction as ``api_role`` (no BYPASSRLS, owner of nothing) with
that setting made by ``SET LOCAL``, so a query that forgot its ``WHERE workspace_id`` still
sees one workspace. The owner of the tables (the role that migrates; the worker, the write
services and the webhooks process connect as it) is not subject to the policies: they do
cross-workspace work by design (projection, delivery), and the api's token lookup, which
happens before the workspace is known, uses it too.
"""

from __future__ import annotations

import re

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: The setting a transaction names its workspace in (``SET LOCAL tieline.workspace_id``).
#: Unset, ``current_setting(..., true)`` is NULL (or '' once used on the connection): no rows.
IS_CALLERS = "workspace_id = current_setting('tieline.workspace_id', true)"

#: Tables with a workspace_id column, and what the api may do on them.
KEYED = {
    "api_tokens": "SELECT, INSERT, UPDATE",
    "person_keys": "SELECT, INSERT, UPDATE",
    "access_log": "SELECT, INSERT",
    "webhook_endpoints": "SELECT, INSERT, UPDATE, DELETE",
    "webhook_deliveries": "SELECT, INSERT, UPDATE, DELETE",
}
SEQUENCES = ("access_log_id_seq", "webhook_deliveries_id_seq", "webhook_attempts_id_seq")


def _ident(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


def upgrade(**kw: str) -> None:
    """Create the api role (once per cluster), grant it the state tables, enable the
    policies."""
    role, schema = _ident(kw["api_role"]), _ident(kw["schema"])
    op.execute(
        # Checked first: a database owner without CREATEROLE (a managed PostgreSQL, e.g.
        # CloudNativePG's app user) gets the role made for it at the cluster's creation.
        f"""DO $$ BEGIN
              IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{kw["api_role"]}') THEN
                CREATE ROLE {role} NOLOGIN NOBYPASSRLS;
              END IF;
            EXCEPTION WHEN duplicate_object THEN NULL;
            END $$"""
    )
    # SET LOCAL ROLE needs membership (a superuser has it implicitly).
    op.execute(
        f"""DO $$ BEGIN
              IF NOT pg_has_role(current_user, '{kw["api_role"]}', 'MEMBER') THEN
                EXECUTE 'GRANT {role} TO ' || quote_ident(current_user);
              END IF;
            END $$"""
    )
    op.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    for table, rights in KEYED.items():
        op.execute(f"GRANT {rights} ON {table} TO {role}")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY workspace_isolation ON {table} "
            f"USING ({IS_CALLERS}) WITH CHECK ({IS_CALLERS})"
        )
    # Attempts have no workspace column: they belong to a delivery the caller can see (the
    # subquery is itself filtered by the deliveries' policy).
    op.execute(f"GRANT SELECT, INSERT, DELETE ON webhook_attempts TO {role}")
    op.execute("ALTER TABLE webhook_attempts ENABLE ROW LEVEL SECURITY")
    visible = "delivery_id IN (SELECT delivery_id FROM webhook_deliveries)"
    op.execute(
        f"CREATE POLICY workspace_isolation ON webhook_attempts "
        f"USING ({visible}) WITH CHECK ({visible})"
    )
    op.execute(f"GRANT USAGE ON SEQUENCE {', '.join(SEQUENCES)} TO {role}")


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
