"""Alembic migrations of the tables that are *not* rebuilt from the log (the state schema:
API tokens, per-person keys, the access log, webhooks, shared rate-limit counters).

Read models are never migrated: a change of their shape bumps ``READ_MODEL_VERSION`` and the
worker rebuilds them from the log (projections/schema.py). Everything here is run by
:func:`tieline.plumbing.state.ensure_state_schema` (so by ``tieline migrate``, ``tieline up``,
``tieline bootstrap`` and every process at start), in one transaction under the schema's
advisory lock, with the schema as ``search_path``.

Adding a revision (docs/operations.md, "Upgrading"): copy the newest file of ``versions/``,
give it the next number as ``revision`` and the previous one as ``down_revision``, write its
DDL unqualified (the search path is the deployment's schema) and never edit a released one.
"""
