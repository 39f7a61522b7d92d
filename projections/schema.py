"""DDL of the read models. Read models are rebuildable from the log, so a change of a table's
shape bumps ``READ_MODEL_VERSION`` and rebuilds into new tables instead of migrating."""

from __future__ import annotations

from psycopg import AsyncConnection, sql
from tieline.plumbing.migrations import API_ROLE, API_ROLE_DDL, WORKSPACE_SETTING

#: Bump when a read-model table changes shape or meaning; tables carry it as a suffix.
READ_MODEL_VERSION = 8  # 8: retracted person updates and introduction makes undone

DDL = """
CREATE TABLE IF NOT EXISTS checkpoints (
    projection  text PRIMARY KEY,
    last_seq    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Append-only archive of every event the projections accepted; (workspace_id, event_id) is the
-- idempotency key beyond JetStream's short dedupe window (ids are unique per workspace).
CREATE TABLE IF NOT EXISTS events (
    event_id        uuid NOT NULL,
    seq             bigint NOT NULL UNIQUE,
    workspace_id    text NOT NULL,
    type            text NOT NULL,
    schema_version  int NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    recorded_by     text NOT NULL,
    subject         text NOT NULL,
    payload         jsonb NOT NULL,
    retracted_by    uuid,
    PRIMARY KEY (workspace_id, event_id)
);
CREATE INDEX IF NOT EXISTS events_ws_seq ON events (workspace_id, seq);
-- A person's add and updates, folded again when an update is retracted (projections/people.py).
-- Made only on an empty archive (a new generation): on a filled one of an older version the
-- build would hold off the archive's writers; that generation is rebuilt anyway.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = current_schema()
                   AND indexname = 'events_person')
       AND NOT EXISTS (SELECT 1 FROM events) THEN
        CREATE INDEX events_person ON events (workspace_id, (payload->>'person_id'), seq)
            WHERE type IN ('person.added', 'person.updated');
    END IF;
END $$;
-- A workspace's adopted model parameters (projections/workspace_models.py).
CREATE INDEX IF NOT EXISTS events_model ON events (workspace_id, seq)
    WHERE type = 'workspace.model_calibrated';

CREATE TABLE IF NOT EXISTS people_v1 (
    workspace_id    text NOT NULL,
    person_id       text NOT NULL,
    display_name    text,
    email           text,
    phone           text,
    organization    text,
    title           text,
    notes           text,
    added_event_id  uuid NOT NULL,
    added_at        timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    last_seq        bigint NOT NULL,
    -- When the change that set each field happened: {field: [occurred_at in microseconds,
    -- seq]}; an update sets only the fields it is newer for (projections/people.py).
    field_at        jsonb NOT NULL DEFAULT '{}',
    retracted       boolean NOT NULL DEFAULT false,
    forgotten       boolean NOT NULL DEFAULT false,
    -- The survivor this person was merged into (person.merged, not retracted); such a person
    -- is not listed, and their timeline counts as the survivor's (projections/merges.py).
    merged_into     text,
    PRIMARY KEY (workspace_id, person_id)
);

-- Every person.merged: merged person -> survivor; a retraction of the merge marks it.
CREATE TABLE IF NOT EXISTS merges_v1 (
    workspace_id    text NOT NULL,
    event_id        uuid NOT NULL,
    merged          text NOT NULL,
    survivor        text NOT NULL,
    seq             bigint NOT NULL,
    retracted       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (workspace_id, event_id)
);
CREATE INDEX IF NOT EXISTS merges_v1_ws ON merges_v1 (workspace_id, merged);

-- One row per (pair, event): the audit timeline of a relationship.
CREATE TABLE IF NOT EXISTS pair_events_v1 (
    workspace_id    text NOT NULL,
    person_a        text NOT NULL,
    person_b        text NOT NULL,
    event_id        uuid NOT NULL,
    seq             bigint NOT NULL,
    type            text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    recorded_by     text NOT NULL,
    detail          jsonb NOT NULL,
    retracted       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (workspace_id, person_a, person_b, event_id)
);
CREATE INDEX IF NOT EXISTS pair_events_v1_event ON pair_events_v1 (workspace_id, event_id);

-- Strength per pair, as the model's decay state at the pair's latest event (state_at); the
-- score at any later time is a closed-form function of it (no nightly rewrite).
CREATE TABLE IF NOT EXISTS strength_v1 (
    workspace_id          text NOT NULL,
    person_a              text NOT NULL,
    person_b              text NOT NULL,
    score                 double precision NOT NULL,
    tier                  text NOT NULL,
    state_at              timestamptz,
    fast                  double precision NOT NULL,
    slow                  double precision NOT NULL,
    reciprocity_factor    double precision NOT NULL,
    rating                double precision,
    event_count           int NOT NULL,
    meetings              int NOT NULL,
    follow_ups            int NOT NULL,
    introductions         int NOT NULL,
    helps                 int NOT NULL,
    ratings               int NOT NULL,
    first_contact_at      timestamptz,
    last_contact_at       timestamptz,
    score_at_last_contact double precision,
    deepest_meeting       text,
    one_sided             boolean NOT NULL,
    can_vouch             boolean NOT NULL,
    reciprocity           jsonb NOT NULL,
    params_version        text NOT NULL,
    -- Momentum's episodes (contacts more than its default episode gap apart); the rest of
    -- momentum is computed at read time (projections/queries/momentum.py).
    episodes              int NOT NULL,
    momentum_version      text NOT NULL,
    -- Time-invariant keys that bound the score at any later time (fast points; slow points
    -- and rating), see projections/strength_model_bound.py: ranked lists read ties in both
    -- orders and stop early.
    bound_fast            double precision NOT NULL,
    bound_slow            double precision NOT NULL,
    -- The strength model's running state (Fold.to_dict) so a new event is one step, not a
    -- recompute of the pair's history.
    fold                  jsonb NOT NULL,
    last_seq              bigint NOT NULL,
    PRIMARY KEY (workspace_id, person_a, person_b)
);
CREATE INDEX IF NOT EXISTS strength_v1_a ON strength_v1 (workspace_id, person_a, bound_slow DESC);
CREATE INDEX IF NOT EXISTS strength_v1_b ON strength_v1 (workspace_id, person_b, bound_slow DESC);
CREATE INDEX IF NOT EXISTS strength_v1_af ON strength_v1 (workspace_id, person_a, bound_fast DESC);
CREATE INDEX IF NOT EXISTS strength_v1_bf ON strength_v1 (workspace_id, person_b, bound_fast DESC);

-- Double opt-in introductions: requested -> each side consents -> made -> outcome.
CREATE TABLE IF NOT EXISTS introductions_v1 (
    workspace_id      text NOT NULL,
    introduction_id   uuid NOT NULL,
    requester         text NOT NULL,
    introducer        text NOT NULL,
    target            text NOT NULL,
    requester_consent boolean,
    target_consent    boolean,
    status            text NOT NULL,
    made_event_id     uuid,
    outcome           text,
    requested_at      timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, introduction_id)
);

-- The change log behind live updates (SSE) and webhooks: what each batch changed, written in
-- the batch's transaction, at a position (seq, sub) that clients resume from. Rows carry ids
-- and scores only, never personal data; old rows are trimmed (live_state.trimmed_seq says how
-- far), and a rebuild writes rows only for recently recorded events (projections/changelog.py).
CREATE TABLE IF NOT EXISTS changes_v1 (
    seq           bigint NOT NULL,
    sub           int NOT NULL,
    workspace_id  text NOT NULL,
    kind          text NOT NULL,
    data          jsonb NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (seq, sub)
);
CREATE INDEX IF NOT EXISTS changes_v1_ws ON changes_v1 (workspace_id, seq, sub);

-- One row: the change log's trim point, how far the follow-up scan has looked, and the last
-- position it wrote (scan_seq, scan_sub): its next rows go above it even after a trim deleted
-- those rows, or a generation switch (which carries this row over) left them behind.
CREATE TABLE IF NOT EXISTS live_state (
    id             int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    trimmed_seq    bigint NOT NULL DEFAULT 0,
    scanned_until  timestamptz
);
-- Columns added since version 6 began, each only when missing: ALTER TABLE would take an
-- exclusive lock at every start even with IF NOT EXISTS. ``retired``: set by a switch, after
-- which a scan of this generation writes nothing (the new generation goes on from here).
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'live_state'::regclass
                   AND attname = 'scan_seq' AND NOT attisdropped) THEN
        ALTER TABLE live_state ADD COLUMN scan_seq bigint NOT NULL DEFAULT 0,
            ADD COLUMN scan_sub int NOT NULL DEFAULT 0,
            ADD COLUMN retired boolean NOT NULL DEFAULT false;
    END IF;
END $$;
INSERT INTO live_state (id) VALUES (1) ON CONFLICT DO NOTHING;

-- Retractions that arrived before the event they retract: a dead-lettered event, retracted
-- meanwhile, that `tieline dlq replay` brings back later. It is retracted as it is archived,
-- as a rebuild from the log reads it (projections/store.py, projections/bulk.py).
-- Made with the retractions an earlier worker dropped (their event not archived), the
-- first of each by position, so a generation from before it keeps the same rule.
DO $$ BEGIN
    IF to_regclass('pending_retractions_v1') IS NULL THEN
        CREATE TABLE pending_retractions_v1 (
            workspace_id        text NOT NULL,
            target_event_id     uuid NOT NULL,
            retraction_event_id uuid NOT NULL,
            seq                 bigint NOT NULL,
            PRIMARY KEY (workspace_id, target_event_id)
        );
        INSERT INTO pending_retractions_v1
        SELECT DISTINCT ON (r.workspace_id, (r.payload->>'retracted_event_id')::uuid)
               r.workspace_id, (r.payload->>'retracted_event_id')::uuid, r.event_id, r.seq
          FROM events r
         WHERE r.type = 'event.retracted' AND NOT EXISTS (
               SELECT 1 FROM events t WHERE t.workspace_id = r.workspace_id
                  AND t.event_id = (r.payload->>'retracted_event_id')::uuid)
         ORDER BY r.workspace_id, (r.payload->>'retracted_event_id')::uuid, r.seq;
    END IF;
END $$;

-- People whose events arrived before their add: an add dead-lettered and brought back by
-- `tieline dlq replay` later. Their updates wait in the archive, and `forget_seq` holds the
-- first erasure's position; when the add comes, both are applied, as a rebuild from a log with
-- the add first has them (projections/people.py, projections/bulk.py). Made with the updates
-- and forgets an earlier worker dropped (no row for their person).
DO $$ BEGIN
    IF to_regclass('pending_people_v1') IS NULL THEN
        CREATE TABLE pending_people_v1 (
            workspace_id text NOT NULL,
            person_id    text NOT NULL,
            forget_seq   bigint,
            PRIMARY KEY (workspace_id, person_id)
        );
        INSERT INTO pending_people_v1
        SELECT f.workspace_id, f.payload->>'person_id',
               min(f.seq) FILTER (WHERE f.type = 'person.forgotten')
          FROM events f
         WHERE f.type IN ('person.forgotten', 'person.updated') AND NOT EXISTS (
               SELECT 1 FROM people_v1 p WHERE p.workspace_id = f.workspace_id
                  AND p.person_id = f.payload->>'person_id')
         GROUP BY f.workspace_id, f.payload->>'person_id';
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS dead_letters (
    id           bigserial PRIMARY KEY,
    projection   text NOT NULL,
    stream_seq   bigint NOT NULL,
    subject      text NOT NULL,
    reason       text NOT NULL,
    detail       text NOT NULL,
    dlq_seq      bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz,
    UNIQUE (projection, stream_seq)
);
"""


#: Read-model tables keyed on a workspace: each gets row-level security (see ``RLS_DDL``).
#: A new table with a ``workspace_id`` column must be listed here (tests/integration/
#: test_row_level_security.py fails for any such table of a generation without a policy).
WORKSPACE_TABLES = (
    "events",
    "people_v1",
    "pair_events_v1",
    "strength_v1",
    "introductions_v1",
    "changes_v1",
    "merges_v1",
    "pending_retractions_v1",
    "pending_people_v1",
)

#: Tables of a generation whose rows belong to no workspace and hold nothing of one (stream
#: positions only): the api reads them (freshness, the live feed's trim point) unfiltered.
SHARED_TABLES = ("checkpoints", "live_state")

#: Tables the api must not read at all: a dead letter's subject and detail name any
#: workspace, and no route serves them (``tieline dlq`` reads them as the owner).
PRIVATE_TABLES = ("dead_letters",)

# The api reads as API_ROLE on connections whose session names their workspace: it may read
# the workspace tables, where the policies leave it one workspace's rows, and the shared ones.
# Grants are by name, so a table added later is not readable until it is listed here (an
# earlier release granted every table: the REVOKE takes that back on an existing generation).
# The worker writes as the tables' owner, which the policies do not apply to (not FORCEd). Each
# step is conditional, so a start on an existing generation takes no table lock.
RLS_DDL = """
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT ON {readable} TO {role};
REVOKE ALL ON {private} FROM {role};
"""

POLICY_DDL = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = {table_name}::regclass
                   AND relrowsecurity) THEN
        ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = {table_name}::regclass
                   AND polname = 'workspace_isolation') THEN
        CREATE POLICY workspace_isolation ON {table}
            USING (workspace_id = current_setting({setting}, true));
    END IF;
END $$;
"""


def rls_statements(schema: str) -> sql.Composed:
    """The api role, its grants on ``schema`` and a policy on every workspace table."""
    parts = [
        sql.SQL(API_ROLE_DDL),
        sql.SQL(RLS_DDL).format(
            role=sql.Identifier(API_ROLE),
            schema=sql.Identifier(schema),
            readable=sql.SQL(", ").join(
                sql.Identifier(schema, t) for t in (*WORKSPACE_TABLES, *SHARED_TABLES)
            ),
            private=sql.SQL(", ").join(sql.Identifier(schema, t) for t in PRIVATE_TABLES),
        ),
    ]
    for table in WORKSPACE_TABLES:
        parts.append(
            sql.SQL(POLICY_DDL).format(
                table=sql.Identifier(schema, table),
                table_name=sql.Literal(f"{schema}.{table}"),
                setting=sql.Literal(WORKSPACE_SETTING),
            )
        )
    return sql.Composed(parts)


async def ensure_schema(conn: AsyncConnection[object], schema: str) -> None:
    """Create the schema and every read-model table if missing, with the row-level security
    policies the api's reads run under (idempotent, safe to race)."""
    async with conn.transaction():
        # Serialise concurrent starters (API, worker, tests) so CREATE IF NOT EXISTS can't race.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tieline:{schema}",))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        await conn.execute(DDL.encode())
        await conn.execute(rls_statements(schema))
