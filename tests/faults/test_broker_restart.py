"""Scenario 2: restart nats-server (a clean stop, then a SIGKILL; each started again on the
same data directory) while events are ingested through the HTTP API.

Every event the API acknowledged must be in the stream exactly once: the client retries every
line that failed with the same event_id, so JetStream's dedupe (and the write side's archive
lookup) must turn the retries of events that *were* stored into duplicates. ``/readyz`` must
answer 503 during each outage and 200 again after it, on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from tieline.services.runtime.embedded import EmbeddedNats, nats_server_binary

from tests.faults.support import (
    EventFactory,
    HttpIngest,
    Oracle,
    ReadyzMonitor,
    Supervision,
    admin_settings,
    assert_verdict,
    base_settings,
    checkpoint_of,
    encode,
    full_stack,
    has_committed,
    make_token,
    nats_admin,
    publish_all,
    rng_for,
    running_stack,
    scaled,
    start_worker_process,
    stream_last_seq,
    subject_of,
    verify,
    wait_for,
)

EVENTS = scaled(3_000, minimum=1_000)
#: (how the server goes down, fraction of the events acknowledged before it does)
OUTAGES = (("stop", 0.3), ("kill", 0.65))


async def test_broker_restarts_during_http_ingest_keep_every_ack_exactly_once(
    tmp_path: Path,
) -> None:
    rng = rng_for("broker_restart")
    settings = base_settings()
    ws = "broker-ws"
    factory = EventFactory(rng, ws, people=100)
    people = [factory.person_added(p, with_server_fields=False) for p in factory.people]
    events = [factory.interaction(with_server_fields=False) for _ in range(EVENTS - len(people))]
    oracle = Oracle()
    for o in people + events:
        oracle.send(o)
    recover: list[float] = []
    outage_statuses: dict[str, list[int]] = {}

    with (
        full_stack(tmp_path, settings, TIELINE_COMMAND_TIMEOUT_S="3") as stack,
        Supervision(stack) as supervision,
    ):
        assert stack.nats is not None
        broker = stack.nats
        admin = admin_settings(stack, settings)
        token = await make_token(admin, ws)
        monitor = ReadyzMonitor(stack.api_url)
        monitor.start()
        async with httpx.AsyncClient(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=15.0,
            trust_env=False,
        ) as client:
            await HttpIngest(client, ws, oracle).run(people)
            acked = 0
            ack_times: list[float] = []

            def count() -> None:
                nonlocal acked
                acked += 1
                ack_times.append(time.monotonic())

            ingest = HttpIngest(client, ws, oracle, on_ack=count)
            ingesting = asyncio.create_task(ingest.run(events))
            for how, fraction in OUTAGES:
                await wait_for(
                    lambda f=fraction: acked >= f * len(events) or ingesting.done(),
                    within=120,
                    what=f"{fraction:.0%} acknowledged",
                )
                assert not ingesting.done(), "ingest finished before the outage"
                await asyncio.to_thread(broker.stop if how == "stop" else broker.kill)
                gone = time.monotonic()  # the server process has exited
                await asyncio.sleep(rng.uniform(1.5, 2.5))
                restarting = time.monotonic()
                await asyncio.to_thread(broker.start)
                up = time.monotonic()
                before = acked
                await wait_for(
                    lambda b=before: acked > b or ingesting.done(),
                    within=60,
                    what="an acknowledged write after the restart",
                )
                await wait_for(
                    lambda u=up: monitor.first_ok_after(u) is not None,
                    within=60,
                    what="/readyz to answer 200 again",
                )
                ok_at = monitor.first_ok_after(up)
                first_ack = next((t for t in ack_times if t >= up), up)
                assert ok_at is not None
                recover.append(max(ok_at, first_ack) - up)
                # Requests whose whole life lay inside the outage (sent after the server had
                # exited, answered before it was started again) must all have said not ready.
                # (One sent during the outage but answered after the restart may rightly say
                # ready: the api checks NATS when it handles the request.)
                outage_statuses[how] = monitor.answered_between(gone, restarting)
            await ingesting
        async with nats_admin(admin) as (_, js):
            last = await stream_last_seq(js, settings.stream_name)

            async def caught_up() -> bool:
                return await checkpoint_of(admin) >= last

            await wait_for(caught_up, within=120, interval=0.2, what="projection catch-up")
            await monitor.stop()
            supervision.stop()
            stack.stop_processes()
            verdict = await verify(
                "broker_restart",
                admin,
                js,
                oracle,
                crashes=len(OUTAGES),
                recover_s=max(recover),
            )
    if supervision.restarts:
        print(f"# processes restarted by the supervisor: {supervision.restarts}")
    assert not ingest.rejected, ingest.rejected[:5]
    assert oracle.retries > 0, f"the outages never hit the ingest: {ingest.statuses}"
    assert not monitor.errors, monitor.errors[:3]
    for how, statuses in outage_statuses.items():
        assert 503 in statuses, f"/readyz during the {how} outage: {statuses}"
        assert 200 not in statuses, f"/readyz said ready while NATS was down ({how})"
    assert_verdict(verdict)


async def test_worker_process_rides_out_a_broker_without_jetstream_yet(tmp_path: Path) -> None:
    """The worker must wait for JetStream to come back, like the services do, not exit.

    A restarted nats-server accepts clients before JetStream has recovered its streams; a
    fetch in that window is answered "503 no responders". That window is made deterministic
    here: the broker is replaced for a few seconds by a nats-server on the same port with the
    same users but without JetStream, then the real one comes back on its data directory.
    """
    rng = rng_for("worker_rides_out_broker_restart")
    settings = base_settings()
    factory = EventFactory(rng, "ride-ws", people=10)
    objs = [factory.interaction() for _ in range(400)]
    oracle = Oracle()
    for o in objs:
        oracle.send(o)
    items = [(o["event_id"], subject_of(settings.subject_prefix, o), encode(o)) for o in objs]
    with running_stack(tmp_path, settings, roles=("worker",)) as stack:
        assert stack.nats is not None
        broker = stack.nats
        admin = admin_settings(stack, settings)
        start_worker_process(stack)
        async with nats_admin(admin) as (_, js):
            await publish_all(js, items[:200], oracle, stream=settings.stream_name)
        await wait_for(lambda: has_committed(admin), within=30, what="first commit")
        await asyncio.to_thread(broker.stop)
        with jetstream_less_server(broker, tmp_path / "no-js"):
            await asyncio.sleep(3.0)  # the worker reconnects and fetches meanwhile
        await asyncio.to_thread(broker.start)
        async with nats_admin(admin) as (_, js):
            await publish_all(js, items[200:], oracle, stream=settings.stream_name)
            last = await stream_last_seq(js, settings.stream_name)
        alive = stack.children["worker"].poll() is None
        caught_up = False
        if alive:

            async def done() -> bool:
                return await checkpoint_of(admin) >= last

            await wait_for(done, within=30, what="catch-up")
            caught_up = True
    assert alive, "the worker process exited while JetStream was not available"
    assert caught_up


@contextlib.contextmanager
def jetstream_less_server(like: EmbeddedNats, data_dir: Path) -> Iterator[None]:
    """nats-server on ``like``'s ports with its configuration minus the jetstream block."""
    data_dir.mkdir(parents=True, exist_ok=True)
    text = like.render_config()
    start = text.index("jetstream {")
    end = text.index("}", start) + 1
    conf = data_dir / "nats.conf"
    conf.write_text(text[:start] + text[end:])
    with (data_dir / "nats.log").open("ab") as log_file:
        proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((like.host, like.port), timeout=0.5),
            ):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "no-JS server failed"
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
