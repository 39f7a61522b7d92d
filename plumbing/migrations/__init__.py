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

#: The PostgreSQL role the api's workspace-scoped connections run as (``SET ROLE``):
#: no BYPASSRLS, owner of nothing, so the row-level security policies apply to it. One name
#: per PostgreSQL cluster (roles are not per schema); the grants are per schema.
API_ROLE = "tieline_api"

#: The policy of every table keyed on a workspace: only the rows of the workspace the
#: session (or transaction) names in ``tieline.workspace_id`` (unset: NULL or '', no rows).
WORKSPACE_SETTING = "tieline.workspace_id"

#: Make the api role if it is missing and the login may (a login without CREATEROLE, e.g. a
#: managed PostgreSQL's app user, gets it made by the operator: docs/operations.md), and make
#: the login a member (``SET LOCAL ROLE`` needs it; a superuser is one implicitly). Checked
#: before acting, so it needs no privilege when both are there.
API_ROLE_DDL = f"""
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{API_ROLE}') THEN
        CREATE ROLE {API_ROLE} NOLOGIN NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
DO $$ BEGIN
    IF NOT pg_has_role(current_user, '{API_ROLE}', 'MEMBER') THEN
        EXECUTE 'GRANT {API_ROLE} TO ' || quote_ident(current_user);
    END IF;
END $$;
"""
