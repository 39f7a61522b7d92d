"""The projection checks itself while it runs: a sampled comparison of the read models with
the log, recorded for ``/readyz`` and logged as an alarm on any difference.

Each round, for the generation a worker feeds:

* **checkpoint vs stream**: the checkpoint may not lie beyond the stream's last sequence (a
  reset or truncated stream), and randomly sampled stream messages at or below the
  checkpoint must each be accounted for: archived under their event_id, or dead-lettered at
  their sequence (or, in a bounded replay, skipped). A message that is neither was skipped.
* **pairs vs a replay of their events**: randomly sampled pairs are folded again from their
  stored (unretracted) events with the pure model and the generation's parameters; score,
  tier and event count must equal the stored row.

It reads only; a round that finds a difference writes ``ok = false`` with the differences.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import structlog
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from psycopg import AsyncConnection, sql
from tieline.events_schema.registry import EventDecodeError, EventRegistry
from tieline.plumbing import db, metrics
from tieline.plumbing.config import Settings
from tieline.projections import merges
from tieline.projections.generations import Generation
from tieline.projections.queries.common import checkpoint
from tieline.projections.strength_model import Fold, PairEvent, Params
from tieline.projections.strength_model_workspace import momentum_params, strength_params

log = structlog.get_logger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS {}.self_checks (
    projection   text PRIMARY KEY,
    checked_at   timestamptz NOT NULL,
    ok           boolean NOT NULL,
    checkpoint   bigint NOT NULL,
    stream_last  bigint NOT NULL,
    sampled_msgs int NOT NULL,
    sampled_pairs int NOT NULL,
    problems     jsonb NOT NULL
);
"""


@dataclass
class CheckResult:
    """What one round compared and what differed."""

    checkpoint: int = 0
    stream_last: int = 0
    sampled_msgs: int = 0
    sampled_pairs: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def ensure_table(conn: AsyncConnection[Any], state_schema: str) -> None:
    await conn.execute(sql.SQL(DDL).format(sql.Identifier(state_schema)))


async def check_stream(
    conn: AsyncConnection[Any],
    js: JetStreamContext,
    stream: str,
    registry: EventRegistry,
    gen: Generation,
    rng: random.Random,
    samples: int,
    result: CheckResult,
    until: datetime | None = None,
) -> None:
    """Compare the checkpoint with the stream, and sampled messages with the archive."""
    result.checkpoint = await checkpoint(conn, gen.consumer, gen.schema_name)
    info = await js.stream_info(stream)
    result.stream_last = int(info.state.last_seq)
    if result.checkpoint > result.stream_last:
        result.problems.append(
            f"checkpoint {result.checkpoint} is beyond the stream's last sequence "
            f"{result.stream_last}"
        )
        return
    first = max(int(info.state.first_seq), 1)
    if result.checkpoint < first:
        return
    span = range(first, result.checkpoint + 1)
    for seq in sorted(rng.sample(span, min(samples, len(span)))):
        await _account_for(conn, js, stream, registry, gen, seq, result, until)


async def _account_for(
    conn: AsyncConnection[Any],
    js: JetStreamContext,
    stream: str,
    registry: EventRegistry,
    gen: Generation,
    seq: int,
    result: CheckResult,
    until: datetime | None,
) -> None:
    try:
        msg = await js.get_msg(stream, seq=seq)
    except NotFoundError:
        return  # deleted from the stream: nothing to account for
    result.sampled_msgs += 1
    schema = sql.Identifier(gen.schema_name)
    cur = await conn.execute(
        sql.SQL("SELECT 1 FROM {}.dead_letters WHERE projection = %s AND stream_seq = %s").format(
            schema
        ),
        (gen.consumer, seq),
    )
    if await cur.fetchone() is not None:
        return
    try:
        event = registry.decode(msg.data or b"")
    except EventDecodeError:
        result.problems.append(f"seq {seq}: undecodable and not dead-lettered")
        return
    cur = await conn.execute(
        sql.SQL("SELECT seq FROM {}.events WHERE workspace_id = %s AND event_id = %s").format(
            schema
        ),
        (event.workspace_id, event.event_id),
    )
    skipped = until is not None and event.occurred_at > until  # a bounded replay left it out
    if await cur.fetchone() is None and not skipped:
        result.problems.append(f"seq {seq}: event {event.event_id} is not in the read models")


async def check_pairs(
    conn: AsyncConnection[Any],
    gen: Generation,
    params: Params,
    rng: random.Random,
    samples: int,
    result: CheckResult,
) -> None:
    """Fold sampled pairs again from their stored events; compare with the stored row."""
    schema = sql.Identifier(gen.schema_name)
    cur = await conn.execute(
        sql.SQL(
            "SELECT workspace_id, person_a, person_b, score, tier, event_count, params_version, "
            "momentum_version, episodes FROM {}.strength_v1 TABLESAMPLE BERNOULLI (%s) LIMIT %s"
        ).format(schema),
        (await _sample_percent(conn, gen, samples), samples),
    )
    rows = await cur.fetchall()
    rng.shuffle(rows)
    aliases = await merges.load_schema(conn, gen.schema_name)
    for ws, a, b, score, tier, count, version, m_version, episodes in rows:
        result.sampled_pairs += 1
        events = await _events_of(conn, gen, aliases, (ws, a, b))
        # The set the row names: the generation's, or one its workspace adopted.
        mine = params if version == params.version else strength_params(version)
        fold = Fold.of(events, mine, momentum_params(m_version).episode_gap_days)
        if fold is None:
            result.problems.append(f"pair {ws}/{a}/{b}: stored strength but no events")
            continue
        again = fold.strength(mine)
        if not math.isclose(again.score, score, rel_tol=1e-9, abs_tol=1e-9) or (
            again.tier != tier or fold.event_count != count or fold.episodes != episodes
        ):
            result.problems.append(
                f"pair {ws}/{a}/{b}: stored score={score:.6f} tier={tier} events={count}, "
                f"replayed score={again.score:.6f} tier={again.tier} events={fold.event_count}"
                f" (episodes stored {episodes}, replayed {fold.episodes})"
            )


async def _events_of(
    conn: AsyncConnection[Any], gen: Generation, aliases: merges.Aliases, key: merges.PairKey
) -> list[PairEvent]:
    """The relationship's unretracted events, from the stored pairs that belong to it (a
    merged person's pairs count as the survivor's, projections/merges.py)."""
    found: list[tuple[merges.PairKey, PairEvent]] = []
    for ws, a, b in aliases.stored_keys(key):
        cur = await conn.execute(
            sql.SQL(
                "SELECT event_id, seq, type, occurred_at, detail FROM {}.pair_events_v1 "
                "WHERE workspace_id = %s AND person_a = %s AND person_b = %s AND NOT retracted"
            ).format(sql.Identifier(gen.schema_name)),
            (ws, a, b),
        )
        found.extend(
            ((ws, a, b), PairEvent(str(eid), kind, at, int(seq), a, b, _detail(detail)))
            for eid, seq, kind, at, detail in await cur.fetchall()
        )
    return merges.resolve_rows(aliases, found).get(key, [])


def _detail(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    parsed: dict[str, Any] = orjson.loads(value)
    return parsed


async def _sample_percent(conn: AsyncConnection[Any], gen: Generation, samples: int) -> float:
    """A BERNOULLI percentage that yields about ``4 * samples`` rows of the strength table."""
    cur = await conn.execute(
        "SELECT reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = 'strength_v1'",
        (gen.schema_name,),
    )
    row = await cur.fetchone()
    rows = max(float(row[0]) if row else 0.0, 1.0)
    return min(100.0, 100.0 * 4 * samples / rows)


async def record(
    conn: AsyncConnection[Any], state_schema: str, gen: Generation, r: CheckResult
) -> None:
    await conn.execute(
        sql.SQL(
            "INSERT INTO {}.self_checks (projection, checked_at, ok, checkpoint, stream_last, "
            "sampled_msgs, sampled_pairs, problems) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (projection) DO UPDATE SET checked_at = EXCLUDED.checked_at, "
            "ok = EXCLUDED.ok, checkpoint = EXCLUDED.checkpoint, "
            "stream_last = EXCLUDED.stream_last, sampled_msgs = EXCLUDED.sampled_msgs, "
            "sampled_pairs = EXCLUDED.sampled_pairs, problems = EXCLUDED.problems"
        ).format(sql.Identifier(state_schema)),
        (
            gen.consumer,
            datetime.now(UTC),
            r.ok,
            r.checkpoint,
            r.stream_last,
            r.sampled_msgs,
            r.sampled_pairs,
            orjson.dumps(r.problems[:20]).decode(),
        ),
    )


async def latest(
    conn: AsyncConnection[Any], state_schema: str, consumer: str
) -> dict[str, Any] | None:
    """The last round's result for ``consumer`` (None before the first round)."""
    cur = await conn.execute(
        sql.SQL(
            "SELECT checked_at, ok, checkpoint, stream_last, sampled_msgs, sampled_pairs, "
            "problems FROM {}.self_checks WHERE projection = %s"
        ).format(sql.Identifier(state_schema)),
        (consumer,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    # The api's pool returns dict rows, the worker's connection tuples.
    at, ok, cp, last, msgs, pairs, problems = row.values() if isinstance(row, dict) else row
    return {
        "checked_at": at.isoformat(),
        "ok": ok,
        "checkpoint": cp,
        "stream_last_seq": last,
        "sampled_messages": msgs,
        "sampled_pairs": pairs,
        "problems": problems if isinstance(problems, list) else orjson.loads(problems),
    }


async def run_round(
    conn: AsyncConnection[Any],
    js: JetStreamContext,
    *,
    stream: str,
    state_schema: str,
    registry: EventRegistry,
    gen: Generation,
    params: Params,
    samples: int,
    rng: random.Random,
    until: datetime | None = None,
) -> CheckResult:
    """One round: both comparisons, recorded; an alarm logged on any difference."""
    result = CheckResult()
    await check_stream(conn, js, stream, registry, gen, rng, samples, result, until)
    await check_pairs(conn, gen, params, rng, samples, result)
    await record(conn, state_schema, gen, result)
    metrics.SELF_CHECK.labels("ok" if result.ok else "alarm").inc()
    if result.ok:
        log.info(
            "selfcheck.ok",
            generation=gen.gen,
            checkpoint=result.checkpoint,
            sampled_messages=result.sampled_msgs,
            sampled_pairs=result.sampled_pairs,
        )
    else:
        log.error(
            "selfcheck.ALARM",
            generation=gen.gen,
            problems=result.problems[:20],
            checkpoint=result.checkpoint,
            stream_last_seq=result.stream_last,
        )
    return result


class SelfCheck:
    """The rounds a worker runs beside its batches, on a PostgreSQL connection of its own."""

    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        registry: EventRegistry,
        gen: Generation,
        params: Params,
    ) -> None:
        self.settings, self.js, self.registry = settings, js, registry
        self.gen, self.params = gen, params
        self.rng = random.Random()
        self._conn: AsyncConnection[Any] | None = None

    async def run_forever(self, until: datetime | None = None) -> None:
        """A round every ``self_check_interval_s`` (jittered); an unavailable server only
        skips a round, it never stops the worker."""
        try:
            while True:
                await asyncio.sleep(
                    self.settings.self_check_interval_s * self.rng.uniform(0.8, 1.2)
                )
                try:
                    await self.round(until)
                except (OSError, psycopg.Error, NatsError, TimeoutError) as exc:
                    log.warning("selfcheck.unavailable", error=repr(exc))
                    await self._drop()
        finally:
            await self._drop()

    async def round(self, until: datetime | None = None) -> CheckResult:
        if self._conn is None or self._conn.closed:
            self._conn = await db.connect(self.settings)
            await ensure_table(self._conn, self.settings.database_schema)
        return await run_round(
            self._conn,
            self.js,
            stream=self.settings.stream_name,
            state_schema=self.settings.database_schema,
            registry=self.registry,
            gen=self.gen,
            params=self.params,
            samples=self.settings.self_check_samples,
            rng=self.rng,
            until=until,
        )

    async def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None
