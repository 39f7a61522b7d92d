"""The rows the projection writes in bulk: column lists, the one-statement bulk insert
(:class:`Bulk`), the COPY staging tables, and the pure row builders shared by the live store
and the bulk rebuild (so both write byte-identical rows)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import AsyncConnection, AsyncCursor
from tieline.events_schema.models import Event
from tieline.projections.changelog import COLUMNS as CHANGE_COLUMNS
from tieline.projections.changes import PERSON_FIELDS, PairEventRow
from tieline.projections.items import Decoded
from tieline.projections.people import added_stamps, stamp
from tieline.projections.strength_model import Fold, PairEvent, Params, bound_keys, vouches
from tieline.projections.strength_model_momentum import MOMENTUM_PARAMS

MOMENTUM_VERSION = MOMENTUM_PARAMS.version

PairKey = tuple[str, str, str]  # workspace, person_a, person_b

#: Columns (and PostgreSQL types) of the rows a batch writes in bulk.
ARCHIVE = (
    ("event_id", "uuid"),
    ("seq", "bigint"),
    ("workspace_id", "text"),
    ("type", "text"),
    ("schema_version", "int"),
    ("occurred_at", "timestamptz"),
    ("recorded_at", "timestamptz"),
    ("recorded_by", "text"),
    ("subject", "text"),
    ("payload", "jsonb"),
)
PAIR = (
    ("workspace_id", "text"),
    ("person_a", "text"),
    ("person_b", "text"),
    ("event_id", "uuid"),
    ("seq", "bigint"),
    ("type", "text"),
    ("occurred_at", "timestamptz"),
    ("recorded_at", "timestamptz"),
    ("recorded_by", "text"),
    ("detail", "jsonb"),
)
STRENGTH = (
    ("workspace_id", "text"),
    ("person_a", "text"),
    ("person_b", "text"),
    ("score", "float8"),
    ("tier", "text"),
    ("state_at", "timestamptz"),
    ("fast", "float8"),
    ("slow", "float8"),
    ("reciprocity_factor", "float8"),
    ("rating", "float8"),
    ("event_count", "int"),
    ("meetings", "int"),
    ("follow_ups", "int"),
    ("introductions", "int"),
    ("helps", "int"),
    ("ratings", "int"),
    ("first_contact_at", "timestamptz"),
    ("last_contact_at", "timestamptz"),
    ("score_at_last_contact", "float8"),
    ("deepest_meeting", "text"),
    ("one_sided", "bool"),
    ("can_vouch", "bool"),
    ("reciprocity", "jsonb"),
    ("params_version", "text"),
    ("episodes", "int"),
    ("momentum_version", "text"),
    ("bound_fast", "float8"),
    ("bound_slow", "float8"),
    ("fold", "jsonb"),
    ("last_seq", "bigint"),
)
UPSERT_STRENGTH_TAIL = "ON CONFLICT (workspace_id, person_a, person_b) DO UPDATE SET " + ", ".join(
    f"{c} = EXCLUDED.{c}" for c, _ in STRENGTH[3:]
)


@dataclass(frozen=True)
class Bulk:
    """How a batch's rows reach one table, in one statement either way:

    * a small batch: ``INSERT ... SELECT ... FROM unnest(<one array per column>)``. The query
      text is the same for every batch, so psycopg parses it once and PostgreSQL prepares it;
      a multi-row VALUES would be new text (parsed again, never prepared) for every size.
    * a large batch: COPY into a staging table, then one ``INSERT ... SELECT`` from it. COPY's
      row encoding runs in C; arrays are encoded element by element and lose past ~64 rows.
    """

    staging: str
    target: str
    columns: tuple[tuple[str, str], ...]
    tail: str  # ON CONFLICT ... [RETURNING ...]
    order: str = ""  # the ORDER BY of the merge

    @property
    def cols(self) -> str:
        return ", ".join(c for c, _ in self.columns)

    @property
    def unnest(self) -> str:
        arrays = ", ".join(f"%b::{'text' if t == 'jsonb' else t}[]" for _, t in self.columns)
        values = ", ".join(f"{c}::jsonb" if t == "jsonb" else c for c, t in self.columns)
        return (
            f"INSERT INTO {self.target} ({self.cols}) SELECT {values} "
            f"FROM unnest({arrays}) AS u({self.cols}) {self.order} {self.tail}"
        )

    @property
    def merge(self) -> str:
        return (
            f"INSERT INTO {self.target} ({self.cols}) SELECT {self.cols} "
            f"FROM {self.staging} {self.order} {self.tail}"
        )


ARCHIVE_BULK = Bulk(
    "events_in",
    "events",
    ARCHIVE,
    "ON CONFLICT DO NOTHING RETURNING workspace_id, event_id",
    "ORDER BY seq",
)
PAIRS_BULK = Bulk("pair_events_in", "pair_events_v1", PAIR, "ON CONFLICT DO NOTHING")
STRENGTH_BULK = Bulk("strength_in", "strength_v1", STRENGTH, UPSERT_STRENGTH_TAIL)
CHANGES_BULK = Bulk("changes_in", "changes_v1", CHANGE_COLUMNS, "ON CONFLICT DO NOTHING")
STAGING = {b.staging: b.target for b in (ARCHIVE_BULK, PAIRS_BULK, STRENGTH_BULK, CHANGES_BULK)}
#: Up to this many rows a batch goes in through unnest, above it through COPY (measured).
UNNEST_MAX_ROWS = 64


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _key_arrays(keys: Sequence[PairKey]) -> tuple[list[str], list[str], list[str]]:
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]


class _Staging:
    """Transaction-scoped staging tables for COPY (created once per connection; emptied by
    ON COMMIT DELETE ROWS, which truncates in place, unlike a TRUNCATE statement, which makes
    new files and catalog rows every time)."""

    def __init__(self) -> None:
        self._ready: weakref.WeakSet[AsyncConnection[Any]] = weakref.WeakSet()
        self._used: set[str] = set()  # tables already filled in the current transaction

    def begin(self) -> None:
        self._used.clear()

    def forget(self, conn: AsyncConnection[Any]) -> None:
        """After a rollback: the tables may have been created in the undone transaction."""
        self._ready.discard(conn)

    async def write(
        self, conn: AsyncConnection[Any], bulk: Bulk, rows: Sequence[Sequence[Any]]
    ) -> AsyncCursor[Any]:
        """Insert ``rows`` into ``bulk.target``; the cursor holds what ``bulk.tail`` returns."""
        if len(rows) <= UNNEST_MAX_ROWS:
            columns = [list(c) for c in zip(*rows, strict=True)]
            return await conn.execute(bulk.unnest, columns)
        await self.copy(conn, bulk.staging, bulk.cols, rows)
        return await conn.execute(bulk.merge)

    async def copy(
        self, conn: AsyncConnection[Any], table: str, cols: str, rows: Sequence[Sequence[Any]]
    ) -> None:
        """COPY ``rows`` into the staging table ``table``."""
        if conn not in self._ready:
            for name, like in STAGING.items():
                await conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {name} "
                    f"(LIKE {like} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
            self._ready.add(conn)
        if table in self._used:  # a second fill in one transaction (a retraction's recompute)
            await conn.execute(f"DELETE FROM {table}")
        self._used.add(table)
        async with conn.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
            for row in rows:
                await copy.write_row(row)


def archive_row(seq: int, subject: str, event: Event, payload: str) -> tuple[Any, ...]:
    """One ``events`` row (``payload``: the registry's canonical encoding of ``event``)."""
    e = event
    return (
        e.event_id,
        seq,
        e.workspace_id,
        e.type,
        e.schema_version,
        e.occurred_at,
        e.recorded_at,
        e.recorded_by,
        subject,
        payload,
    )


def pair_row(seq: int, event: Event, r: PairEventRow) -> tuple[Any, ...]:
    """One ``pair_events_v1`` row: ``event`` on the timeline of the pair ``r`` names."""
    e = event
    return (
        e.workspace_id,
        r.person_a,
        r.person_b,
        e.event_id,
        seq,
        e.type,
        e.occurred_at,
        e.recorded_at,
        e.recorded_by,
        _json(r.detail),
    )


def pair_event(seq: int, event: Event, r: PairEventRow) -> PairEvent:
    """What the strength model folds for ``event`` on the pair ``r`` names."""
    e = event
    return PairEvent(str(e.event_id), e.type, e.occurred_at, seq, r.person_a, r.person_b, r.detail)


def strength_row(
    key: PairKey, fold: Fold, seq: int, params: Params, momentum_version: str = MOMENTUM_VERSION
) -> tuple[Any, ...]:
    """One ``strength_v1`` row: the pair's strength at its latest event, its momentum
    episodes (counted with the set ``momentum_version``), and its fold."""
    s = fold.strength(params)
    counts = fold.counts
    st = s.state
    return (
        *key,
        s.score,
        s.tier,
        st.at,
        st.fast,
        st.slow,
        st.reciprocity_factor,
        st.rating,
        fold.event_count,
        counts.get("relationship.met", 0),
        counts.get("relationship.followed_up", 0),
        counts.get("relationship.introduced", 0),
        counts.get("relationship.helped", 0),
        counts.get("relationship.closeness_rated", 0),
        s.first_contact_at,
        s.last_contact_at,
        s.score_at_last_contact,
        s.deepest_meeting,
        bool(s.reciprocity.get("one_sided")),
        vouches(s, params),
        _json(s.reciprocity),
        params.version,
        fold.episodes,
        momentum_version,
        *bound_keys(st, params),
        fold.to_json(),
        seq,
    )


def person_row(it: Decoded, p: dict[str, Any]) -> tuple[Any, ...]:
    """The ``people_v1`` row a ``person.added`` inserts (``field_at`` last, as a dict)."""
    e = it.event
    fields = (p[f] for f in PERSON_FIELDS)
    return (
        e.workspace_id,
        p["person_id"],
        *fields,
        e.event_id,
        e.occurred_at,
        e.occurred_at,
        it.seq,
        added_stamps(p, stamp(e.occurred_at, it.seq)),
    )
