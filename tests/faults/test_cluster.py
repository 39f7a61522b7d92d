"""Scenario 4: a 3-node JetStream cluster on loopback, the stream at R3. Kill the stream leader
mid-ingest (and later, separately, one follower); ingest must continue after the election
(the publisher retries with the same Nats-Msg-Id), no acknowledged event may be lost or
stored twice, and the projection must end equal to a clean replay.

The nodes are the same embedded nats-server the stack uses, with generated configs on free
ports under tmp_path (deploy/nats/cluster-local-*.conf uses fixed ports). The worker runs
in-process: ``TIELINE_NATS_URL`` is one URL, so a worker process pointed at a node that is
down could not start; the test gives the in-process worker all three URLs (see
docs/faults.md, "Changes needed").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import nats
from nats.js import JetStreamContext
from tieline.plumbing.config import Settings
from tieline.plumbing.jetstream import ensure_streams
from tieline.projections import worker as worker_module
from tieline.projections.worker import Worker
from tieline.services.runtime.embedded import EmbeddedNats, EmbeddedPostgres, find_free_port

from tests.faults.support import (
    EventFactory,
    Oracle,
    assert_verdict,
    base_settings,
    checkpoint_of,
    encode,
    http_json,
    publish_all,
    rng_for,
    scaled,
    stream_last_seq,
    subject_of,
    verify,
    wait_for,
)

EVENTS = scaled(6_000, minimum=2_000)
#: Spread ingest over ~20 s so both faults (and the elections) happen while it runs.
RATE = EVENTS / 20


class Cluster:
    """Three clustered nats-servers (JetStream, file storage) on loopback."""

    def __init__(self, root: Path, size: int = 3) -> None:
        routes = [find_free_port() for _ in range(size)]
        self.nodes: list[EmbeddedNats] = []
        for i in range(size):
            others = ", ".join(
                json.dumps(f"nats://127.0.0.1:{p}") for j, p in enumerate(routes) if j != i
            )
            extra = (
                "cluster {\n"
                '  name: "tieline-faults"\n'
                f'  listen: "127.0.0.1:{routes[i]}"\n'
                f"  routes: [{others}]\n"
                "}\n"
            )
            self.nodes.append(
                EmbeddedNats(
                    root / f"n{i + 1}",
                    server_name=f"n{i + 1}",
                    sync_always=False,  # as deploy/nats/cluster-*.conf: replicas, lazy fsync
                    extra_config=extra,
                )
            )

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, server_name: str) -> EmbeddedNats:
        return next(n for n in self.nodes if n.server_name == server_name)

    def start(self) -> None:
        for n in self.nodes:
            n.start()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def meta_leader(self) -> str | None:
        for n in self.nodes:
            if n.pid is None:
                continue
            status, body = http_json(f"{n.monitor_url}/jsz")
            if status == 200 and body and (body.get("meta_cluster") or {}).get("leader"):
                return str(body["meta_cluster"]["leader"])
        return None


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[Cluster]:
    cluster = Cluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@contextlib.asynccontextmanager
async def connect(urls: list[str]) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(
        urls,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=2,
        name="tieline-faults",
    )
    try:
        yield nc.jetstream()
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def all_urls_connect(settings: Settings, name: str) -> Any:
    """services.infra.jetstream.connect_nats, but with every node of a comma-separated URL."""
    return await nats.connect(
        settings.nats_url.split(","),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=5,
    )


class SupervisedWorker:
    """The product Worker in-process, restarted like the supervisor restarts the process
    when it exits (every exit is counted and reported)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.exits: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def _loop(self) -> None:
        while not self._stop.is_set():
            worker = Worker(self.settings)
            try:
                await worker.start()
                while not self._stop.is_set():
                    await worker.run_once()
            except Exception as exc:
                self.exits.append(f"{type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await worker.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def stream_leader(js: JetStreamContext, stream: str) -> tuple[str, list[str]]:
    info = await js.stream_info(stream)
    assert info.cluster is not None and info.cluster.leader
    followers = [r.name for r in (info.cluster.replicas or []) if r.name]
    return info.cluster.leader, followers


async def replicas_current(js: JetStreamContext, stream: str) -> bool:
    try:
        info = await js.stream_info(stream)
    except Exception:
        return False
    c = info.cluster
    return bool(
        c
        and c.leader
        and c.replicas
        and len(c.replicas) == 2
        and all(r.current and not r.offline for r in c.replicas)
    )


async def test_cluster_leader_and_follower_loss_lose_and_double_nothing(tmp_path: Path) -> None:
    rng = rng_for("cluster")
    factory = EventFactory(rng, "cluster-ws", people=400)
    objs = [factory.person_added(p) for p in factory.people]
    objs += [factory.interaction() for _ in range(EVENTS - len(objs))]
    oracle = Oracle()
    for o in objs:
        oracle.send(o)

    with (
        running_cluster(tmp_path / "cluster") as cluster,
        EmbeddedPostgres(tmp_path / "postgres") as pg,
    ):
        await wait_for(cluster.meta_leader, within=30, what="a JetStream meta leader")
        settings = base_settings(
            nats_url=",".join(cluster.urls),
            database_url=pg.url,
            stream_replicas=3,
            batch_size=500,
            ack_wait_s=5.0,
        )
        items = [(o["event_id"], subject_of(settings.subject_prefix, o), encode(o)) for o in objs]
        faults: list[str] = []
        recover: list[float] = []
        with mock.patch.object(worker_module, "connect_nats", all_urls_connect):
            async with connect(cluster.urls) as js:
                await _retry(lambda: ensure_streams(js, settings), within=30)
                worker = SupervisedWorker(settings)
                worker.start()
                acked = 0

                def count() -> None:
                    nonlocal acked
                    acked += 1

                publishing = asyncio.create_task(
                    publish_all(
                        js,
                        items,
                        oracle,
                        stream=settings.stream_name,
                        concurrency=128,
                        publish_timeout=2.0,
                        on_ack=count,
                        rate=RATE,
                    )
                )
                for role, at in (("leader", 0.25), ("follower", 0.6)):
                    await wait_for(
                        lambda at=at: acked >= at * len(items),
                        within=120,
                        what=f"{at:.0%} acknowledged",
                    )
                    await wait_for(
                        lambda: replicas_current(js, settings.stream_name),
                        within=60,
                        what="all replicas current",
                    )
                    leader, followers = await stream_leader(js, settings.stream_name)
                    victim = leader if role == "leader" else rng.choice(sorted(followers))
                    node = cluster.node(victim)
                    before = acked
                    killed = time.monotonic()
                    await asyncio.to_thread(node.kill)
                    faults.append(f"{role}:{victim}")
                    # Ingest must go on without the node: wait for the next acknowledgements.
                    await wait_for(
                        lambda before=before: acked > before + 50,
                        within=60,
                        interval=0.02,
                        what=f"ingest to continue without {victim}",
                    )
                    recover.append(time.monotonic() - killed)
                    if role == "leader":
                        new_leader, _ = await stream_leader(js, settings.stream_name)
                        assert new_leader != victim
                    await asyncio.sleep(rng.uniform(0.5, 1.5))
                    await asyncio.to_thread(node.start)
                await publishing
                # The restarted follower must have rejoined before the stream is read back.
                await wait_for(
                    lambda: replicas_current(js, settings.stream_name),
                    within=60,
                    what="all replicas current after the restarts",
                )
                last = await stream_last_seq(js, settings.stream_name)

                async def caught_up() -> bool:
                    return await checkpoint_of(settings) >= last

                await wait_for(caught_up, within=120, interval=0.2, what="projection catch-up")
                await worker.stop()
                verdict = await verify(
                    "cluster",
                    settings,
                    js,
                    oracle,
                    crashes=len(faults),
                    recover_s=max(recover),
                )
        if worker.exits:
            print(f"# worker exits during the cluster scenario: {worker.exits}")
    assert_verdict(verdict)


async def _retry(fn: Any, within: float) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            return await fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
