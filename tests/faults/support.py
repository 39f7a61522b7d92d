"""Shared machinery of the fault-injection suite (tests/faults, docs/faults.md).

Everything here is deliberately independent of the code under test where it judges results:

* events are built as plain JSON by :class:`EventFactory` (not with the product's models), and
  the pairs each event is about are computed here, so the per-pair counts the projection must
  end with come from the test, not from ``projections/``;
* :class:`Oracle` is the list of event_ids the test itself got an acknowledgement for (a
  JetStream PubAck, or a 2xx line result from the HTTP API);
* the stream is read back message by message (:func:`read_stream`) and the read models are
  compared against a clean replay row by row in SQL (:func:`compare_read_models`).

Counts scale with ``TIELINE_FAULTS_SCALE`` (default 1.0) and every random choice comes from
``random.Random`` seeded with ``TIELINE_FAULTS_SEED`` (default 6, the issue number).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js import api as js_api
from psycopg import AsyncConnection, sql
from tieline.events_schema.registry import REGISTRY, EventRegistry
from tieline.plumbing.config import DEPLOYMENT_NAMES, Settings
from tieline.projections.worker import Worker
from tieline.services.runtime.supervisor import Stack, StackConfig

REPO_ROOT = Path(__file__).resolve().parents[2]

SCALE = float(os.environ.get("TIELINE_FAULTS_SCALE", "1.0"))
SEED = int(os.environ.get("TIELINE_FAULTS_SEED", "6"))

#: Tables every scenario compares against a clean replay (the issue names these four; any
#: other read-model table found in the generation's schema is compared too).
READ_MODELS = ("events", "people_v1", "pair_events_v1", "strength_v1")
#: Not read models: the projection's bookkeeping, and the change log behind live updates and
#: webhooks (one relationship.changed row per pair and *batch*, so its rows depend on batch
#: boundaries, like strength_v1.last_seq; live_state holds its trim point and scan time).
NOT_READ_MODELS = ("checkpoints", "dead_letters", "changes_v1", "live_state")
#: Columns left out of the comparison: ``last_seq`` is seq bookkeeping (strength_v1.last_seq
#: is the last seq of the *batch* that last touched the pair, so it depends on batch
#: boundaries, which differ between a crashing worker and a clean replay); columns that
#: default to now() record wall-clock time, not the log.
SKIPPED_COLUMNS = ("last_seq",)


def scaled(n: int, minimum: int = 1) -> int:
    """``n`` times TIELINE_FAULTS_SCALE, at least ``minimum``."""
    return max(minimum, int(n * SCALE))


def rng_for(name: str) -> random.Random:
    """A generator seeded from the suite seed and the scenario name (scenarios don't share)."""
    return random.Random(f"{SEED}:{name}")


def summary(name: str, **fields: Any) -> str:
    """Print the scenario's one summary line (docs/faults.md explains every field)."""
    order = ("sent", "acked", "in_stream", "projected", "lost", "double_counted", "crashes")
    parts = [f"scenario={name}"]
    parts += [f"{k}={fields[k]}" for k in order]
    parts.append(f"recover_s={float(fields['recover_s']):.2f}")
    line = " ".join(parts)
    print("\n" + line, flush=True)
    return line


# ---------------------------------------------------------------------------------------------
# Events, built as plain JSON
# ---------------------------------------------------------------------------------------------

BASE_TIME = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
PairKey = tuple[str, str, str]


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def pairs_of(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """The unordered pairs an interaction is about (the test's own reading of the schema)."""
    t = obj["type"]
    if t == "relationship.met":
        ps = obj["participants"]
        return [_pair(ps[i], ps[j]) for i in range(len(ps)) for j in range(i + 1, len(ps))]
    if t == "relationship.followed_up":
        return [_pair(obj["from_person"], obj["to_person"])]
    if t == "relationship.introduced":
        i, a, b = obj["introducer"], obj["person_a"], obj["person_b"]
        return [_pair(i, a), _pair(i, b), _pair(a, b)]
    if t == "relationship.helped":
        return [_pair(obj["helper"], obj["helped"])]
    if t == "relationship.closeness_rated":
        return [_pair(obj["rater"], obj["ratee"])]
    return []


def subject_of(prefix: str, obj: dict[str, Any]) -> str:
    base = f"{prefix}.ev.{obj['workspace_id']}.{obj['type']}"
    return f"{base}.{obj['person_id']}" if obj["type"].startswith("person.") else base


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class EventFactory:
    """Deterministic valid events for one workspace, as JSON objects."""

    KINDS = (
        "relationship.met",
        "relationship.met",
        "relationship.followed_up",
        "relationship.introduced",
        "relationship.helped",
        "relationship.closeness_rated",
    )

    def __init__(self, rng: random.Random, ws: str, people: int = 40) -> None:
        self.rng = rng
        self.ws = ws
        self.people = [f"p{i:03d}" for i in range(people)]
        self.n = 0

    def _event_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def envelope(self, event_type: str, *, with_server_fields: bool = True) -> dict[str, Any]:
        self.n += 1
        at = (BASE_TIME + timedelta(seconds=self.n)).isoformat().replace("+00:00", "Z")
        obj: dict[str, Any] = {
            "event_id": self._event_id(),
            "type": event_type,
            "occurred_at": at,
            "workspace_id": self.ws,
        }
        if with_server_fields:  # what a service adds; a client may not send these
            obj.update(schema_version=1, recorded_at=at, recorded_by="faults")
        return obj

    def person_added(self, pid: str, *, with_server_fields: bool = True) -> dict[str, Any]:
        obj = self.envelope("person.added", with_server_fields=with_server_fields)
        obj.update(person_id=pid, display_name=f"Person {pid}")
        return obj

    def interaction(self, *, with_server_fields: bool = True) -> dict[str, Any]:
        r = self.rng
        kind = r.choice(self.KINDS)
        obj = self.envelope(kind, with_server_fields=with_server_fields)
        if kind == "relationship.met":
            ps = r.sample(self.people, r.choice((2, 2, 2, 3)))
            obj.update(
                participants=ps,
                depth=r.choice(
                    ("card_exchange", "brief_chat", "conversation", "deep_conversation")
                ),
                duration_minutes=r.randrange(0, 180),
            )
        elif kind == "relationship.followed_up":
            a, b = r.sample(self.people, 2)
            obj.update(from_person=a, to_person=b, channel="email", replied=r.random() < 0.5)
        elif kind == "relationship.introduced":
            i, a, b = r.sample(self.people, 3)
            obj.update(introducer=i, person_a=a, person_b=b)
        elif kind == "relationship.helped":
            a, b = r.sample(self.people, 2)
            obj.update(helper=a, helped=b)
        else:
            a, b = r.sample(self.people, 2)
            obj.update(rater=a, ratee=b, rating=r.randint(1, 5))
        return obj


# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------


@dataclass
class Oracle:
    """What the test sent and what it got acknowledgements for."""

    sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    #: Ids acknowledged twice at different stream sequences (a re-send that dedupe missed).
    conflicts: list[str] = field(default_factory=list)

    def send(self, obj: dict[str, Any]) -> None:
        self.sent[obj["event_id"]] = obj

    def ack(self, event_id: str, seq: int) -> None:
        prior = self.acked.setdefault(event_id, seq)
        if prior != seq:
            self.conflicts.append(event_id)

    def expected_pairs(self, ids: Iterable[str] | None = None) -> Counter[PairKey]:
        """event_count per (workspace, a, b) that the acknowledged events add up to."""
        counts: Counter[PairKey] = Counter()
        for eid in self.acked if ids is None else ids:
            obj = self.sent[eid]
            for a, b in pairs_of(obj):
                counts[(obj.get("workspace_id") or "", a, b)] += 1
        return counts


def is_retriable(exc: BaseException) -> bool:
    """Errors a publisher should retry with the same Nats-Msg-Id (outage, election)."""
    from nats.js.errors import APIError, ServiceUnavailableError

    if isinstance(exc, ServiceUnavailableError):
        return True
    if isinstance(exc, APIError):
        # 10077: no JetStream leader / cluster not available; 503 from the server.
        return exc.code in (None, 500, 503) or exc.err_code in (10008, 10077)
    return isinstance(exc, nats.errors.Error | asyncio.TimeoutError | OSError)


async def publish_all(
    js: JetStreamContext,
    items: list[tuple[str, str, bytes]],
    oracle: Oracle,
    *,
    stream: str,
    concurrency: int = 256,
    publish_timeout: float = 2.0,
    give_up_s: float = 120.0,
    on_ack: Callable[[], None] | None = None,
    rate: float | None = None,
) -> None:
    """Publish (event_id, subject, data) with Nats-Msg-Id=event_id, many in flight; retry each
    with the same id until JetStream acknowledges it (dedupe makes retries harmless).
    ``rate`` (events/s) spreads the first attempts out, so faults land mid-ingest."""
    queue = enumerate(items)
    started = time.monotonic()

    async def one() -> None:
        for i, (eid, subject, data) in queue:
            if rate:
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            deadline = time.monotonic() + give_up_s
            delay = 0.05
            while True:
                try:
                    ack = await js.publish(
                        subject,
                        data,
                        headers={"Nats-Msg-Id": eid},
                        stream=stream,
                        timeout=publish_timeout,
                    )
                except Exception as exc:
                    if not is_retriable(exc) or time.monotonic() > deadline:
                        raise
                    oracle.retries += 1
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                oracle.ack(eid, int(ack.seq))
                if on_ack is not None:
                    on_ack()
                break

    await asyncio.gather(*(one() for _ in range(concurrency)))


@dataclass
class Feeder:
    """Publishes ``items`` at ``rate`` events/s, then keeps publishing fresh events from
    ``factory`` at the same rate until :meth:`stop`, so that every fault of a scenario lands
    while events still arrive (however slow the machine makes the fault loop)."""

    js: JetStreamContext
    oracle: Oracle
    factory: EventFactory
    items: list[tuple[str, str, bytes]]
    stream: str
    prefix: str
    rate: float
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        chunk = max(int(self.rate), 1)  # about a second of events per round
        pending = list(self.items)
        while pending or not self._stop.is_set():
            if not pending:
                objs = [self.factory.interaction() for _ in range(chunk)]
                for o in objs:
                    self.oracle.send(o)
                pending = [(o["event_id"], subject_of(self.prefix, o), encode(o)) for o in objs]
            now, pending = pending[:chunk], pending[chunk:]
            await publish_all(
                self.js, now, self.oracle, stream=self.stream, concurrency=64, rate=self.rate
            )


async def work_in_flight(settings: Settings, js: JetStreamContext) -> bool:
    """Whether the projection has work pending right now (its checkpoint is behind the
    stream): a fault landing now hits work in flight."""
    last = await stream_last_seq(js, settings.stream_name)
    return await checkpoint_of(settings) < last


async def until_in_flight(settings: Settings, js: JetStreamContext, within: float = 15.0) -> bool:
    """Wait (polling every few ms) until the projection has work pending, so the fault about
    to be injected hits work in flight; False if that never happened within ``within`` s.
    On a quiet machine the worker keeps up with the feeder most of the time, so one look at
    a random moment missed now and then ("only 2 of 3 outages in flight")."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await work_in_flight(settings, js):
            return True
        await asyncio.sleep(0.005)
    return False


# ---------------------------------------------------------------------------------------------
# Reading the log back
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamMsg:
    seq: int
    subject: str
    data: bytes

    @property
    def event_id(self) -> str | None:
        try:
            obj = json.loads(self.data)
        except ValueError:
            return None
        return obj.get("event_id") if isinstance(obj, dict) else None


async def read_stream(
    js: JetStreamContext, stream: str, subjects: str, *, within: float = 60.0
) -> list[StreamMsg]:
    """Every message of ``stream`` on ``subjects``, in order, via an ephemeral pull consumer
    that acknowledges nothing (it leaves no trace on the projection's consumer).

    Right after a cluster node restarts, the new consumer may have no leader yet and a fetch
    answers 503; that is an election, not a verdict, so the read starts over until ``within``.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            return await _read_stream_once(js, stream, subjects)
        except Exception as exc:
            if not is_retriable(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _read_stream_once(js: JetStreamContext, stream: str, subjects: str) -> list[StreamMsg]:
    info = await js.stream_info(stream)
    last = int(info.state.last_seq)
    if last == 0:
        return []
    sub = await js.pull_subscribe(
        subjects,
        stream=stream,
        config=js_api.ConsumerConfig(
            ack_policy=js_api.AckPolicy.NONE,
            deliver_policy=js_api.DeliverPolicy.ALL,
            inactive_threshold=30.0,
            max_waiting=16,
        ),
    )
    out: list[StreamMsg] = []
    misses = 0
    try:
        while not out or out[-1].seq < last:
            try:
                msgs = await sub.fetch(2000, timeout=2)
            except (TimeoutError, nats.errors.TimeoutError):
                misses += 1
                if misses > 5:
                    break
                continue
            out += [StreamMsg(m.metadata.sequence.stream, m.subject, m.data) for m in msgs]
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


def stream_report(msgs: list[StreamMsg], oracle: Oracle) -> tuple[int, int, int]:
    """(unique acknowledged ids in the stream, acknowledged ids missing, acknowledged ids that
    appear more than once)."""
    counts = Counter(m.event_id for m in msgs)
    present = sum(1 for eid in oracle.acked if counts[eid] > 0)
    missing = sum(1 for eid in oracle.acked if counts[eid] == 0)
    twice = sum(1 for eid in oracle.acked if counts[eid] > 1)
    return present, missing, twice


async def stream_last_seq(js: JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).state.last_seq)


# ---------------------------------------------------------------------------------------------
# Read models
# ---------------------------------------------------------------------------------------------


async def scalar(conn: AsyncConnection[Any], query: str, *args: Any) -> Any:
    cur = await conn.execute(query, args)
    row = await cur.fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True)
class Target:
    """Where one projection keeps its read models and checkpoint: the schema of the live
    read-model generation and the generation's consumer (= checkpoint) name."""

    schema: str
    projection: str


async def pg_connect(settings: Settings, schema: str | None = None) -> AsyncConnection[Any]:
    """A plain autocommit connection with ``search_path`` = ``schema`` (default: the state
    schema). Independent of services.infra.db on purpose."""
    return await AsyncConnection.connect(
        settings.database_url,
        autocommit=True,
        options=f"-c search_path={schema or settings.database_schema}",
        connect_timeout=3,
    )


async def live_target(settings: Settings) -> Target | None:
    """The live generation's schema and consumer (projections/generations.py); None while no
    worker has created one yet. Code without generations keeps the read models in the state
    schema under the consumer name."""
    try:
        from tieline.projections import generations
    except ImportError:
        return Target(settings.database_schema, settings.consumer_name)
    conn = await pg_connect(settings)
    try:
        exists = await scalar(
            conn, "SELECT to_regclass(%s) IS NOT NULL", f"{settings.database_schema}.generations"
        )
        if not exists:
            return None
        gen = await generations.live(conn, settings.database_schema)
    finally:
        await conn.close()
    return None if gen is None else Target(gen.schema_name, gen.consumer)


async def checkpoint_of(settings: Settings) -> int:
    """The live projection's committed checkpoint, on a short-lived connection (0 before the
    worker created it, -1 when PostgreSQL does not answer)."""
    try:
        target = await live_target(settings)
        if target is None:
            return 0
        conn = await pg_connect(settings, target.schema)
    except Exception:
        return -1
    try:
        exists = await scalar(conn, "SELECT to_regclass('checkpoints') IS NOT NULL")
        if not exists:
            return 0
        # Every partition's checkpoint row when partitioned workers feed it: the minimum.
        value = await scalar(
            conn,
            "SELECT min(last_seq) FROM checkpoints WHERE projection = %s "
            "OR starts_with(projection, %s || '/p')",
            target.projection,
            target.projection,
        )
        return int(value or 0)
    except Exception:
        return -1
    finally:
        await conn.close()


async def has_committed(settings: Settings) -> bool:
    """True once the live projection has committed something."""
    return await checkpoint_of(settings) > 0


@dataclass
class ProjectionCheck:
    projected: int
    lost: int
    unexpected: int
    double_counted: int
    pair_mismatches: list[str]


async def check_projection(
    settings: Settings,
    oracle: Oracle,
    ids: Iterable[str] | None = None,
    workspace: str | None = None,
) -> ProjectionCheck:
    """Compare the live read models with the oracle: the archive holds exactly the
    acknowledged ids; every pair's event_count is exactly what those events add up to.
    With ``workspace``, only that workspace's rows are looked at (shared stacks)."""
    want = set(oracle.acked if ids is None else ids)
    target = await live_target(settings)
    assert target is not None, "no live read-model generation"
    ws_filter = "workspace_id = %(ws)s" if workspace else "TRUE"
    params = {"ws": workspace}
    conn = await pg_connect(settings, target.schema)
    try:
        cur = await conn.execute(f"SELECT event_id::text FROM events WHERE {ws_filter}", params)
        have = {r[0] for r in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT workspace_id, person_a, person_b, event_count FROM strength_v1 "
            f"WHERE {ws_filter}",
            params,
        )
        actual = {(r[0], r[1], r[2]): int(r[3]) for r in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT count(*) - count(DISTINCT (workspace_id, person_a, person_b, event_id)) "
            f"FROM pair_events_v1 WHERE {ws_filter}",
            params,
        )
        dup_rows = int((await cur.fetchone() or (0,))[0])
    finally:
        await conn.close()
    expected = oracle.expected_pairs(want & set(oracle.sent))
    keys = set(actual) | set(expected)
    mismatches = [
        f"{k}: projected {actual.get(k, 0)}, oracle {expected.get(k, 0)}"
        for k in sorted(keys)
        if actual.get(k, 0) != expected.get(k, 0)
    ]
    excess = sum(max(actual.get(k, 0) - expected.get(k, 0), 0) for k in keys)
    return ProjectionCheck(
        projected=len(want & have),
        lost=len(want - have),
        unexpected=len(have - want),
        double_counted=excess + dup_rows,
        pair_mismatches=mismatches,
    )


async def _columns(conn: AsyncConnection[Any], schema: str, table: str) -> list[str]:
    cur = await conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s "
        "AND coalesce(column_default, '') NOT LIKE '%%now()%%' ORDER BY ordinal_position",
        (schema, table),
    )
    return [r[0] for r in await cur.fetchall() if r[0] not in SKIPPED_COLUMNS]


async def _tables(conn: AsyncConnection[Any], schema: str) -> list[str]:
    cur = await conn.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = %s AND table_type = 'BASE TABLE' ORDER BY table_name",
        (schema,),
    )
    return [r[0] for r in await cur.fetchall() if r[0] not in NOT_READ_MODELS]


async def compare_read_models(settings: Settings, a: str, b: str) -> list[str]:
    """Row-by-row differences between the read models in schemas ``a`` and ``b`` (EXCEPT ALL
    both ways, so multiplicities count too); empty when they are equal."""
    diffs: list[str] = []
    conn = await pg_connect(settings)
    try:
        tables = await _tables(conn, a)
        missing = [t for t in READ_MODELS if t not in tables]
        assert not missing, f"{a} lacks read models {missing}"
        other = await _tables(conn, b)
        if tables != other:
            diffs.append(f"tables differ: {tables} in {a}, {other} in {b}")
        for table in tables:
            cols = await _columns(conn, a, table)
            col_list = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
            for x, y in ((a, b), (b, a)):
                q = sql.SQL(
                    "SELECT {cols} FROM {x}.{t} EXCEPT ALL SELECT {cols} FROM {y}.{t} LIMIT 3"
                ).format(
                    cols=col_list,
                    x=sql.Identifier(x),
                    y=sql.Identifier(y),
                    t=sql.Identifier(table),
                )
                cur = await conn.execute(q)
                rows = await cur.fetchall()
                if rows:
                    diffs.append(f"{table}: rows in {x} but not in {y}, e.g. {rows[:3]}")
    finally:
        await conn.close()
    return diffs


async def dead_letter_count(settings: Settings) -> int:
    target = await live_target(settings)
    assert target is not None
    conn = await pg_connect(settings, target.schema)
    try:
        return int(await scalar(conn, "SELECT count(*) FROM dead_letters"))
    finally:
        await conn.close()


async def drain_worker(worker: Worker, until_seq: int, within: float) -> None:
    """Run ``worker`` until its checkpoint reaches ``until_seq``."""
    async with asyncio.timeout(within):
        while worker.stats.last_seq < until_seq:
            await worker.run_once()


async def clean_replay(
    settings: Settings,
    js: JetStreamContext,
    *,
    registry: EventRegistry = REGISTRY,
    within: float = 180.0,
) -> Settings:
    """Project the whole stream again with a fresh in-process Worker: another state schema
    (so another live generation and read-model schema), another consumer name, another batch
    size. Returns the replay's settings."""
    replay = settings.model_copy(
        update={
            "database_schema": f"{settings.database_schema}_replay",
            "consumer_name": "clean_replay",
            "batch_size": 1000 if settings.batch_size != 1000 else 700,
            "fetch_timeout_s": 0.2,
        }
    )
    last = await stream_last_seq(js, settings.stream_name)
    worker = Worker(replay, registry)
    await worker.start()
    try:
        await drain_worker(worker, last, within)
    finally:
        await worker.close()
    return replay


async def replay_differences(settings: Settings, js: JetStreamContext) -> list[str]:
    """Replay the stream cleanly and compare every read model with the live one."""
    replayed = await clean_replay(settings, js)
    mine, theirs = await live_target(settings), await live_target(replayed)
    assert mine is not None and theirs is not None
    return await compare_read_models(settings, mine.schema, theirs.schema)


# ---------------------------------------------------------------------------------------------
# Servers and processes
# ---------------------------------------------------------------------------------------------


def unique_tag() -> str:
    return uuid.uuid4().hex[:8]


def stack_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = settings.env(*DEPLOYMENT_NAMES, "batch_size", "stream_replicas")
    env["TIELINE_LOG_LEVEL"] = "INFO"
    env.update(extra)
    return env


def base_settings(**overrides: Any) -> Settings:
    tag = unique_tag()
    values: dict[str, Any] = {
        "database_schema": f"f_{tag}",
        "stream_name": f"F_{tag}",
        "subject_prefix": f"f{tag}",
        "consumer_name": "projections",
        "fetch_timeout_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


def admin_settings(stack: Stack, settings: Settings) -> Settings:
    """``settings`` pointed at the stack's servers, as the embedded NATS's admin user."""
    creds = stack.nats_credentials("admin")
    update: dict[str, Any] = {"nats_url": stack.nats_url, "database_url": stack.database_url}
    if creds is not None:
        update.update(nats_user=creds[0], nats_password=creds[1])
    return settings.model_copy(update=update)


@contextlib.contextmanager
def running_stack(
    data_dir: Path, settings: Settings, roles: tuple[str, ...], workers: int = 1, **env: str
) -> Iterator[Stack]:
    """Embedded NATS (with its per-role users) and PostgreSQL on free ports under
    ``data_dir``; ``roles`` are started but not waited for (``workers`` partitioned
    projection workers). Everything stops on exit."""
    config = StackConfig(
        data_dir=data_dir, roles=roles, env=stack_env(settings, **env), workers=workers
    )
    stack = Stack(config)
    try:
        stack.start_servers()
        yield stack
    finally:
        stack.stop()


def start_worker_process(stack: Stack) -> None:
    """Start the product's worker (``python -m tieline.services.runtime.run worker``)."""
    stack.start_role("worker")


def signal_role(stack: Stack, role: str, sig: signal.Signals) -> None:
    proc = stack.children[role]
    if proc.poll() is None:
        proc.send_signal(sig)


@contextlib.asynccontextmanager
async def nats_admin(settings: Settings) -> AsyncIterator[tuple[NatsClient, JetStreamContext]]:
    kwargs: dict[str, Any] = {}
    if settings.nats_user:
        kwargs.update(user=settings.nats_user, password=settings.nats_password or "")
    nc = await nats.connect(
        settings.nats_url,
        name="tieline-faults",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=5,
        **kwargs,
    )
    try:
        yield nc, nc.jetstream()
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def http_json(url: str, timeout: float = 3.0) -> tuple[int, Any]:
    """GET ``url`` without proxies; (status, parsed JSON body or None). Status 0: no answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return int(r.status), json.load(r)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.load(exc)
        except ValueError:
            return exc.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


async def wait_for(
    predicate: Callable[[], Any], within: float, interval: float = 0.1, what: str = ""
) -> float:
    """Await ``predicate()`` (sync or async) until truthy; return the seconds it took."""
    started = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise TimeoutError(f"timed out after {within:g}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """structlog in this process at ERROR and above while inside (restored after)."""
    import logging

    import structlog

    old = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        yield
    finally:
        structlog.configure(**old)


def descendants() -> set[int]:
    """Live (non-zombie) descendants of this test process."""
    from tieline.services.runtime.procs import descendants as live_descendants

    return {p.pid for p in live_descendants(os.getpid())}


# ---------------------------------------------------------------------------------------------
# The common ending of a scenario
# ---------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    line: str
    lost: int
    double_counted: int
    problems: list[str]


async def verify(
    name: str,
    settings: Settings,
    js: JetStreamContext,
    oracle: Oracle,
    *,
    crashes: int,
    recover_s: float,
    replay: bool = True,
    dead_letters: int = 0,
) -> Verdict:
    """Read the stream back, check the projection against the oracle and against a clean
    replay, print the summary line, and return what is wrong (the caller asserts).

    lost: acknowledged ids missing from the stream or from the archive (events table).
    double_counted: acknowledged ids stored twice in the stream, acknowledged at two different
    seqs, or counted more than once in strength_v1/pair_events_v1.
    """
    problems: list[str] = []
    last = await stream_last_seq(js, settings.stream_name)
    msgs = await read_stream(js, settings.stream_name, f"{settings.subject_prefix}.ev.>")
    in_stream, missing, twice = stream_report(msgs, oracle)
    check = await check_projection(settings, oracle)
    checkpoint = await checkpoint_of(settings)
    if checkpoint != last:
        problems.append(f"checkpoint {checkpoint} != stream last seq {last}")
    if len(oracle.acked) != len(oracle.sent):
        problems.append(f"only {len(oracle.acked)} of {len(oracle.sent)} sent were acknowledged")
    if missing:
        problems.append(f"{missing} acknowledged events are not in the stream")
    if twice:
        problems.append(f"{twice} acknowledged events are in the stream more than once")
    if oracle.conflicts:
        problems.append(
            f"{len(oracle.conflicts)} ids acknowledged at two seqs: {oracle.conflicts[:3]}"
        )
    if check.lost:
        problems.append(f"{check.lost} acknowledged events were never projected")
    if check.unexpected:
        problems.append(f"{check.unexpected} projected events were never acknowledged")
    if check.pair_mismatches:
        problems.append(
            f"{len(check.pair_mismatches)} pairs differ from the oracle, e.g. "
            + "; ".join(check.pair_mismatches[:3])
        )
    parked = await dead_letter_count(settings)
    if parked != dead_letters:
        problems.append(f"{parked} messages dead-lettered, expected {dead_letters}")
    if replay and not lost_already(missing, check):
        # (When the oracle already shows a loss the verdict is failure; skip the costly replay.)
        diffs = await replay_differences(settings, js)
        problems += [f"differs from a clean replay: {d}" for d in diffs]
    lost = missing + check.lost
    double = twice + len(oracle.conflicts) + check.double_counted
    line = summary(
        name,
        sent=len(oracle.sent),
        acked=len(oracle.acked),
        in_stream=in_stream,
        projected=check.projected,
        lost=lost,
        double_counted=double,
        crashes=crashes,
        recover_s=recover_s,
    )
    return Verdict(line, lost, double, problems)


def lost_already(missing: int, check: ProjectionCheck) -> bool:
    return bool(missing or check.lost)


def assert_verdict(v: Verdict) -> None:
    assert v.lost == 0 and v.double_counted == 0 and not v.problems, (
        v.line + "\n" + "\n".join(v.problems)
    )


# ---------------------------------------------------------------------------------------------
# The whole stack over HTTP
# ---------------------------------------------------------------------------------------------


async def make_token(settings: Settings, ws: str, role: str = "admin") -> str:
    """An API token for ``ws`` (what ``tieline token create`` does)."""
    from tieline.services.auth import issue_token

    return await issue_token(settings, ws, role, "faults")


@contextlib.contextmanager
def full_stack(
    data_dir: Path, settings: Settings, workers: int | None = None, **env: str
) -> Iterator[Stack]:
    """Embedded servers plus every tieline process (api, people, interactions, worker, and
    ``worker.2`` ... for ``workers`` partitions; default TIELINE_FAULTS_WORKERS, else 1),
    ready (``/readyz`` 200) on entry; everything stops on exit."""
    if workers is None:
        workers = int(os.environ.get("TIELINE_FAULTS_WORKERS", "1"))
    roles = ("api", "people", "interactions", "worker")
    with running_stack(data_dir, settings, roles=roles, workers=workers, **env) as stack:
        stack.start_processes()
        stack.wait_ready(timeout=90)
        yield stack


def ndjson(objs: Iterable[dict[str, Any]]) -> bytes:
    return b"\n".join(encode(o) for o in objs) + b"\n"


@dataclass
class HttpIngest:
    """Posts events through /v1/workspaces/{ws}/events/batch and retries every line that was
    not accepted because of an outage (5xx, or no answer) with the same event_id."""

    client: Any  # httpx.AsyncClient with base_url and the bearer token
    ws: str
    oracle: Oracle
    chunk: int = 50
    concurrency: int = 4
    on_ack: Callable[[], None] | None = None
    statuses: Counter[int] = field(default_factory=Counter)
    rejected: list[str] = field(default_factory=list)

    async def run(self, objs: list[dict[str, Any]], give_up_s: float = 120.0) -> None:
        chunks = [objs[i : i + self.chunk] for i in range(0, len(objs), self.chunk)]
        queue = iter(chunks)

        async def one() -> None:
            for chunk in queue:
                pending = list(chunk)
                deadline = time.monotonic() + give_up_s
                delay = 0.1
                while pending:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{len(pending)} events never acknowledged")
                    pending = await self._post(pending)
                    if pending:
                        self.oracle.retries += 1
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 1.0)

        await asyncio.gather(*(one() for _ in range(self.concurrency)))

    async def _post(self, objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Post once; return the lines to send again."""
        import httpx

        try:
            r = await self.client.post(
                f"/v1/workspaces/{self.ws}/events/batch",
                content=ndjson(objs),
                headers={"Content-Type": "application/x-ndjson"},
            )
        except httpx.HTTPError:
            self.statuses[0] += 1
            return objs
        self.statuses[r.status_code] += 1
        if r.status_code >= 500:
            return objs
        assert r.status_code == 200, f"batch answered {r.status_code}: {r.text[:500]}"
        results = r.json()["results"]
        assert len(results) == len(objs)
        again = []
        for obj, res in zip(objs, results, strict=True):
            status = int(res["status"])
            self.statuses[status] += 1
            if status in (200, 201):
                assert res["event_id"] == obj["event_id"]
                self.oracle.ack(obj["event_id"], int(res["seq"]))
                if self.on_ack is not None:
                    self.on_ack()
            elif status >= 500:
                again.append(obj)
            else:
                self.rejected.append(f"{obj['event_id']}: {status} {res.get('error')}")
        return again


@dataclass
class ReadyzMonitor:
    """Polls /readyz every ``interval`` seconds; keeps (sent, answered, status) per request
    (status 0: no answer within ``timeout``)."""

    url: str
    interval: float = 0.1
    timeout: float = 1.0
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
            while True:
                sent = time.monotonic()
                try:
                    r = await client.get(self.url + "/readyz")
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                except Exception as exc:  # keep polling; report it
                    self.errors.append(repr(exc))
                    status = -1
                self.samples.append((sent, time.monotonic(), status))
                await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def answered_between(self, start: float, end: float) -> list[int]:
        """Statuses of the requests sent at or after ``start`` and answered before ``end``."""
        return [s for a, b, s in self.samples if start <= a and b < end]

    def first_ok_after(self, start: float) -> float | None:
        return next((b for a, b, s in self.samples if a >= start and s == 200), None)


class Supervision:
    """What ``tieline up`` does for its children: restart any that exited (Stack.supervise_once),
    in a background thread; ``restarts`` says which roles had to be restarted."""

    def __init__(self, stack: Stack, interval: float = 0.2) -> None:
        import threading

        self.stack = stack
        self.interval = interval
        self._stop = threading.Event()
        self._held = False  # read and written under _lock
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="faults-supervisor", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if not self._held:
                    self.stack.supervise_once()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """No restarts inside the block: a test can observe the system while a killed process
        is certainly down (its restart could otherwise race the observation); on exit,
        supervision goes on and restarts whatever exited."""
        with self._lock:  # a round already under way finishes before the hold starts
            self._held = True
        try:
            yield
        finally:
            with self._lock:
                self._held = False

    @property
    def restarts(self) -> dict[str, int]:
        return dict(self.stack.restarts)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> Supervision:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
