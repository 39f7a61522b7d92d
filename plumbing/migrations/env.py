"""Alembic's environment for tieline's state schema (loaded by Alembic, never imported).

The caller (:mod:`tieline.plumbing.migrations.runner`) hands over an open SQLAlchemy connection
inside a transaction and the schema name; every revision then runs in that one transaction,
after the schema's advisory lock (so processes starting together migrate one at a time and
the later ones find nothing to do) and with the schema as the search path (so revisions write
unqualified DDL and a deployment may use any schema).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection


def run(connection: Connection, schema: str, api_role: str) -> None:
    """Upgrade ``schema`` on ``connection`` to the revision Alembic was asked for."""
    context.configure(
        connection=connection,
        version_table_schema=schema,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        # The same lock key as the read models' DDL (projections/schema.py): one DDL writer
        # per schema at a time.
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"tieline:{schema}"}
        )
        quoted = connection.dialect.identifier_preparer.quote_identifier(schema)
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
        connection.execute(text(f"SET LOCAL search_path TO {quoted}"))
        context.run_migrations(schema=schema, api_role=api_role)


if not context.is_offline_mode():
    attributes = context.config.attributes
    run(attributes["connection"], attributes["schema"], attributes["api_role"])
else:  # pragma: no cover - tieline does not generate SQL scripts offline
    raise SystemExit("tieline's migrations run online only (tieline migrate)")
