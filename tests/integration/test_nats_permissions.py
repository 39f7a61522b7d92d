"""Least privilege on NATS: each tieline process's user can do what that process does and
nothing else (services/runtime/nats_auth.py).

Most tests start their own nats-server (the binary ``tieline up`` uses) with the generated
``authorization`` block and act as each user with the very nats-py calls the processes make.
A refused operation is recognised by what the server says: nats-py passes the server's
``-ERR 'Permissions Violation ...'`` to ``error_cb`` (a refused request additionally times out,
since the server drops it). The last test runs the real processes under ``Stack`` with an
embedded, authenticating NATS.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js import api as js_api
from tieline.plumbing.config import Settings
from tieline.plumbing.jetstream import ensure_streams
from tieline.services.runtime.embedded import EmbeddedNats, nats_server_binary
from tieline.services.runtime.nats_auth import (
    ROLES,
    authorization_block,
    deploy_authorization_block,
    load_or_create_passwords,
    password_env_var,
)
from tieline.services.runtime.supervisor import Stack, StackConfig

from tests.conftest import Servers, settings_env, unique_settings
from tests.e2e.conftest import make_token

REPO = Path(__file__).resolve().parents[2]
#: JetStream API timeout for the probes: a refused request only ends by timing out.
JS_TIMEOUT = 1.0
#: How long to wait for the server's permissions-violation error to reach error_cb.
ERR_WAIT = 3.0


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Credentials in the developer's environment must not leak into these tests."""
    monkeypatch.delenv("TIELINE_NATS_USER", raising=False)
    monkeypatch.delenv("TIELINE_NATS_PASSWORD", raising=False)
    yield


@dataclass
class Conn:
    """One connection as one NATS user, with the errors the server sent it."""

    role: str
    nc: NatsClient
    js: JetStreamContext
    errors: list[str] = field(default_factory=list)

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e]

    async def violation(self, expected: str) -> bool:
        """Wait (bounded) for a permissions violation whose text contains ``expected``."""
        needle = expected.lower()
        deadline = asyncio.get_running_loop().time() + ERR_WAIT
        while asyncio.get_running_loop().time() < deadline:
            if any(needle in e for e in self.violations()):
                return True
            await asyncio.sleep(0.02)
        return False


@dataclass
class Authz:
    """A nats-server with tieline's users, and the settings of the stream it holds."""

    server: EmbeddedNats
    passwords: dict[str, str]
    settings: Settings
    conns: list[Conn] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.settings.subject_prefix

    @property
    def stream(self) -> str:
        return self.settings.stream_name

    async def connect(self, role: str) -> Conn:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        nc = await nats.connect(
            self.server.url,
            user=role,
            password=self.passwords[role],
            error_cb=on_error,
            allow_reconnect=False,
            name=f"test-{role}",
            inbox_prefix=f"_INBOX_{role}" if role != "admin" else "_INBOX",
        )
        conn = Conn(role, nc, nc.jetstream(timeout=JS_TIMEOUT), errors)
        self.conns.append(conn)
        return conn

    async def stream_messages(self, admin: Conn) -> int:
        return int((await admin.js.stream_info(self.stream)).state.messages)


@pytest.fixture
async def authz(tmp_path: Path) -> AsyncIterator[Authz]:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(stream_name=f"P_{tag}", subject_prefix=f"p{tag}")
    passwords = load_or_create_passwords(tmp_path / "secrets" / "nats-passwords.json")
    block = authorization_block(settings.subject_prefix, settings.stream_name, passwords)
    server = EmbeddedNats(tmp_path / "nats", extra_config=block)
    server.start()
    az = Authz(server, passwords, settings.model_copy(update={"nats_url": server.url}))
    try:
        admin = await az.connect("admin")
        await ensure_streams(admin.js, az.settings)  # the admin step of `tieline up`
        yield az
    finally:
        for conn in az.conns:
            if not conn.nc.is_closed:
                await conn.nc.close()
        server.stop()


def person_event(ws: str, person: str) -> bytes:
    return json.dumps({"type": "person.added", "workspace_id": ws, "person_id": person}).encode()


# -- passwords and the generated configuration ------------------------------------------------


def test_passwords_are_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secrets" / "nats-passwords.json"
    first = load_or_create_passwords(path)
    assert sorted(first) == sorted(ROLES)
    assert len(set(first.values())) == len(ROLES) and all(len(p) >= 32 for p in first.values())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_passwords(path) == first  # a second `tieline up` keeps them
    partial = {"admin": first["admin"]}
    path.write_text(json.dumps(partial))
    again = load_or_create_passwords(path)
    assert again["admin"] == first["admin"] and sorted(again) == sorted(ROLES)


def test_deploy_configs_carry_the_generated_block_and_parse(tmp_path: Path) -> None:
    """deploy/nats/single.conf and cluster-node-*.conf hold exactly the block this module
    generates (with $TIELINE_NATS_PASSWORD_* references) and pass ``nats-server -t``."""
    block = deploy_authorization_block()
    nodes = sorted((REPO / "deploy/nats").glob("cluster-node-*.conf"))
    confs = [REPO / "deploy/nats/single.conf", *nodes]
    assert len(confs) == 4
    env = {**os.environ, **{password_env_var(r): f"dummy-{r}" for r in ROLES}}
    for conf in confs:
        assert block in conf.read_text(), f"{conf.name}: authorization block differs"
        # -t resolves include/store paths only lexically, so the container paths are fine.
        done = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(conf)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert done.returncode == 0, f"{conf.name}: {done.stdout}{done.stderr}"
    unset = {k: v for k, v in env.items() if k != password_env_var("worker")}
    done = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(confs[0])],
        env=unset,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0, "an unset password variable must stop nats-server"


def test_odd_passwords_are_escaped(tmp_path: Path) -> None:
    odd = {r: f'p"w\\ {r} $HOME # {{x}}' for r in ROLES}
    text = authorization_block("tl", "TIELINE", odd)
    conf = tmp_path / "auth.conf"
    conf.write_text(f"listen: 127.0.0.1:-1\n{text}")
    done = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with pytest.raises(ValueError, match="bcrypt"):
        authorization_block("tl", "TIELINE", {**odd, "api": "$2a$11$abc"})


async def test_odd_password_authenticates(tmp_path: Path) -> None:
    odd = {r: f'p"w\\ {r} $HOME # {{x}}' for r in ROLES}
    with EmbeddedNats(tmp_path, extra_config=authorization_block("tl", "T", odd)) as server:
        nc = await nats.connect(server.url, user="api", password=odd["api"])
        await nc.close()
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(server.url, user="api", password="wrong", allow_reconnect=False)


# -- what each process does is allowed --------------------------------------------------------


async def test_each_role_can_do_its_job(authz: Authz) -> None:
    """The nats-py calls the processes make, as their own users, without a single violation."""
    p, s = authz.prefix, authz.stream
    api, people, inter, worker, hooks = [
        await authz.connect(r) for r in ("api", "people", "interactions", "worker", "webhooks")
    ]
    for conn in (api, people, inter, worker, hooks):  # every process checks the streams at start
        info = await ensure_streams(conn.js, authz.settings)
        assert info.config.name == s

    # people and interactions answer commands in their queue groups (allow_responses).
    async def answer(msg: Any) -> None:
        await msg.respond(b'{"results": []}')

    await people.nc.subscribe(f"{p}.cmd.*.people.*", queue="people", cb=answer)
    await inter.nc.subscribe(f"{p}.cmd.*.interactions.*", queue="interactions", cb=answer)
    await people.nc.flush()  # the server has the subscriptions before anyone asks
    await inter.nc.flush()
    for service in ("people", "interactions"):
        reply = await api.nc.request(f"{p}.cmd.ws.{service}.record", b"{}", timeout=5)
        assert reply.data == b'{"results": []}'
    assert (await api.js.stream_info(s)).config.name == s  # /readyz

    # Each service publishes the event types it owns and looks people up.
    ack = await people.js.publish(
        f"{p}.ev.ws.person.added.ada", person_event("ws", "ada"), stream=s
    )
    await people.js.publish(f"{p}.ev.ws.person.updated.ada", b"{}", stream=s)
    assert (await people.js.get_last_msg(s, f"{p}.ev.ws.person.added.ada")).seq == ack.seq
    assert (await inter.js.get_last_msg(s, f"{p}.ev.ws.person.added.ada")).seq == ack.seq
    await inter.js.publish(f"{p}.ev.ws.relationship.met", b"{}", stream=s)
    last = await inter.js.publish(f"{p}.ev.ws.event.retracted", b"{}", stream=s)

    # The worker: durable pull consumer exactly as projections/worker.py creates it.
    async def subscribe() -> JetStreamContext.PullSubscription:
        return await worker.js.pull_subscribe(
            subject=f"{p}.ev.>",
            durable="projections",
            stream=s,
            config=js_api.ConsumerConfig(
                ack_policy=js_api.AckPolicy.ALL,
                deliver_policy=js_api.DeliverPolicy.ALL,
                ack_wait=30,
                max_ack_pending=2000,
                max_deliver=-1,
            ),
        )

    sub = await subscribe()  # creates the consumer
    msgs = await sub.fetch(10, timeout=5)
    assert [m.metadata.sequence.stream for m in msgs] == list(range(1, last.seq + 1))
    await msgs[0].in_progress()
    await msgs[-1].ack()
    dlq = await worker.js.publish(
        f"{p}.dlq.projections", b"poison", stream=f"{s}_DLQ", headers={"Nats-Msg-Id": "x:1"}
    )
    assert dlq.stream == f"{s}_DLQ"
    await sub.unsubscribe()
    await subscribe()  # a restarted worker finds the durable (CONSUMER.INFO only)
    admin = authz.conns[0]
    await asyncio.sleep(0.2)
    consumer = await admin.js.consumer_info(s, "projections")
    assert consumer.ack_floor is not None and consumer.ack_floor.stream_seq == last.seq

    # The webhooks process: its durable consumer exactly as services/webhooks/app.py makes it.
    async def hook_subscribe() -> JetStreamContext.PullSubscription:
        return await hooks.js.pull_subscribe(
            f"{p}.ev.>",
            durable="webhooks",
            stream=s,
            config=js_api.ConsumerConfig(
                ack_policy=js_api.AckPolicy.EXPLICIT,
                deliver_policy=js_api.DeliverPolicy.NEW,
                ack_wait=60,
                max_ack_pending=2000,
                max_deliver=-1,
            ),
        )

    hook_sub = await hook_subscribe()
    newer = await inter.js.publish(f"{p}.ev.ws.relationship.met", b"{}", stream=s)
    [hooked] = await hook_sub.fetch(1, timeout=5)
    assert hooked.metadata.sequence.stream == newer.seq
    await hooked.in_progress()
    await hooked.ack()
    await hook_sub.unsubscribe()
    await hook_subscribe()  # found again on restart

    for conn in (api, people, inter, worker, hooks):
        await conn.nc.flush()
    await asyncio.sleep(0.2)
    assert [c.violations() for c in (api, people, inter, worker, hooks)] == [[], [], [], [], []]


async def test_processes_start_without_create_rights_once_admin_made_the_streams(
    authz: Authz,
) -> None:
    """ensure_streams only looks the streams up when they exist, and says clearly what is
    wrong (instead of a bare timeout) when a process would have to create one."""
    admin = authz.conns[0]
    api = await authz.connect("api")
    await ensure_streams(api.js, authz.settings)
    await api.nc.flush()
    assert api.violations() == []
    await admin.js.delete_stream(f"{authz.stream}_DLQ")
    with pytest.raises(RuntimeError, match=r"STREAM\.CREATE"):
        await ensure_streams(api.js, authz.settings)
    assert await api.violation(f'publish to "$js.api.stream.create.{authz.stream}_dlq"')
    other = authz.settings.model_copy(update={"stream_name": f"{authz.stream}X"})
    with pytest.raises(RuntimeError, match=r"STREAM\.INFO"):
        await ensure_streams(api.js, other)


# -- everything else is refused -----------------------------------------------------------------


async def test_people_cannot_publish_interaction_events(authz: Authz) -> None:
    p, s = authz.prefix, authz.stream
    admin = authz.conns[0]
    people = await authz.connect("people")
    ack = await people.js.publish(
        f"{p}.ev.ws.person.added.ada", person_event("ws", "ada"), stream=s, timeout=5
    )
    assert isinstance(ack, js_api.PubAck) and ack.stream == s
    before = await authz.stream_messages(admin)
    with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
        await people.js.publish(f"{p}.ev.ws.relationship.met", b"{}", stream=s, timeout=1)
    assert await people.violation(
        f'permissions violation for publish to "{p}.ev.ws.relationship.met"'
    )
    assert await authz.stream_messages(admin) == before


@dataclass(frozen=True)
class Forbidden:
    """One operation a role must not be able to perform, and the refusal it must get."""

    role: str
    what: str
    run: Callable[[Conn, Authz], Awaitable[Any]]
    #: Text of the server's permissions violation (lower case).
    refusal: Callable[[Authz], str]
    #: A publish or API request must also fail (time out) on the client side.
    raises: bool = True


def publish_event(role: str, tail: str) -> Forbidden:
    return Forbidden(
        role,
        f"publish {{p}}.{tail}",
        lambda c, a: c.js.publish(f"{a.prefix}.{tail}", b"{}", stream=a.stream, timeout=1),
        lambda a: f'publish to "{a.prefix}.{tail}"',
    )


def publish_plain(role: str, tail: str) -> Forbidden:
    """A core publish (no reply expected): refused without an exception on the client."""

    async def run(c: Conn, a: Authz) -> None:
        await c.nc.publish(f"{a.prefix}.{tail}", b"{}")
        await c.nc.flush()

    return Forbidden(
        role, f"core publish {{p}}.{tail}", run, lambda a: f'publish to "{a.prefix}.{tail}"', False
    )


def js_api_call(
    role: str, what: str, call: Callable[[JetStreamContext, Authz], Awaitable[Any]], subject: str
) -> Forbidden:
    """A JetStream API request; ``subject`` is formatted with ``s`` (stream) and ``p``."""
    return Forbidden(
        role,
        what,
        lambda c, a: call(c.js, a),
        lambda a: f'publish to "{subject.format(s=a.stream, p=a.prefix)}',
    )


def subscribe(role: str, subject: str, queue: str = "") -> Forbidden:
    async def run(c: Conn, a: Authz) -> None:
        await c.nc.subscribe(subject.format(p=a.prefix), queue=queue)
        await c.nc.flush()

    suffix = f' using queue "{queue}"' if queue else ""
    return Forbidden(
        role,
        f"subscribe {subject}" + (f" (queue {queue})" if queue else ""),
        run,
        lambda a: f'subscription to "{subject.format(p=a.prefix)}"{suffix}',
        False,
    )


def _consumer(a: Authz) -> js_api.ConsumerConfig:
    return js_api.ConsumerConfig(
        name="intruder", durable_name="intruder", filter_subject=f"{a.prefix}.ev.>"
    )


FORBIDDEN: list[Forbidden] = [
    # api: a front end's gateway; commands only, never events or stream contents.
    publish_event("api", "ev.ws.person.added.ada"),
    publish_event("api", "ev.ws.relationship.met"),
    publish_event("api", "ev.ws.event.retracted"),
    publish_plain("api", "ev.ws.relationship.met"),
    publish_event("api", "dlq.projections"),
    js_api_call(
        "api",
        "create a consumer",
        lambda js, a: js.add_consumer(a.stream, _consumer(a)),
        "$JS.API.CONSUMER.CREATE.{s}.intruder",
    ),
    js_api_call(
        "api",
        "direct get",
        lambda js, a: js.get_msg(a.stream, 1, direct=True),
        "$JS.API.DIRECT.GET.{s}",
    ),
    js_api_call(
        "api",
        "purge the stream",
        lambda js, a: js.purge_stream(a.stream),
        "$JS.API.STREAM.PURGE.{s}",
    ),
    js_api_call(
        "api",
        "delete the stream",
        lambda js, a: js.delete_stream(a.stream),
        "$JS.API.STREAM.DELETE.{s}",
    ),
    js_api_call(
        "api",
        "create a stream",
        lambda js, a: js.add_stream(name="EVIL", subjects=["evil.>"]),
        "$JS.API.STREAM.CREATE.EVIL",
    ),
    subscribe("api", "{p}.ev.>"),
    subscribe("api", "_INBOX.>"),
    subscribe("api", "_INBOX_worker.>"),
    subscribe("worker", "_INBOX_api.>"),
    subscribe("people", "_INBOX_interactions.>"),
    subscribe("api", "{p}.cmd.>"),
    subscribe("api", "{p}.cmd.*.people.*", queue="people"),
    # people: only person events.
    publish_event("people", "ev.ws.relationship.met"),
    publish_event("people", "ev.ws.event.retracted"),
    publish_event("people", "dlq.projections"),
    publish_event("people", "cmd.ws.interactions.record"),
    js_api_call(
        "people",
        "create a consumer",
        lambda js, a: js.add_consumer(a.stream, _consumer(a)),
        "$JS.API.CONSUMER.CREATE.{s}.intruder",
    ),
    js_api_call(
        "people",
        "update the stream",
        lambda js, a: js.update_stream(name=a.stream, subjects=[">"]),
        "$JS.API.STREAM.UPDATE.{s}",
    ),
    js_api_call(
        "people",
        "delete a message",
        lambda js, a: js.delete_msg(a.stream, 1),
        "$JS.API.STREAM.MSG.DELETE.{s}",
    ),
    subscribe("people", "{p}.ev.>"),
    subscribe("people", "{p}.cmd.*.people.*"),  # outside its queue group
    subscribe("people", "{p}.cmd.*.interactions.*", queue="interactions"),
    # interactions: only relationship and retraction events.
    publish_event("interactions", "ev.ws.person.added.ada"),
    publish_event("interactions", "ev.ws.person.updated.ada"),
    publish_plain("interactions", "ev.ws.person.added.ada"),
    publish_event("interactions", "ev.ws.something.else"),
    publish_event("interactions", "cmd.ws.people.record"),
    js_api_call(
        "interactions",
        "purge the stream",
        lambda js, a: js.purge_stream(a.stream),
        "$JS.API.STREAM.PURGE.{s}",
    ),
    subscribe("interactions", "{p}.ev.>"),
    subscribe("interactions", "{p}.cmd.*.people.*", queue="people"),
    # worker: reads the log through its consumer, writes only dead letters.
    publish_event("worker", "ev.ws.person.added.ada"),
    publish_event("worker", "ev.ws.relationship.met"),
    publish_event("worker", "ev.ws.event.retracted"),
    publish_event("worker", "cmd.ws.people.record"),
    js_api_call(
        "worker",
        "purge the stream",
        lambda js, a: js.purge_stream(a.stream),
        "$JS.API.STREAM.PURGE.{s}",
    ),
    js_api_call(
        "worker",
        "delete its consumer",
        lambda js, a: js.delete_consumer(a.stream, "projections"),
        "$JS.API.CONSUMER.DELETE.{s}.projections",
    ),
    js_api_call(
        "worker",
        "consume the dead-letter stream",
        lambda js, a: js.add_consumer(f"{a.stream}_DLQ", _consumer(a)),
        "$JS.API.CONSUMER.CREATE.{s}_DLQ.intruder",
    ),
    js_api_call(
        "worker",
        "create a stream",
        lambda js, a: js.add_stream(name="EVIL", subjects=["evil.>"]),
        "$JS.API.STREAM.CREATE.EVIL",
    ),
    subscribe("worker", "{p}.ev.>"),
    subscribe("worker", "{p}.cmd.>"),
    # webhooks: reads the log through its own durable consumer only, publishes nothing.
    publish_event("webhooks", "ev.ws.relationship.met"),
    publish_event("webhooks", "ev.ws.person.added.ada"),
    publish_event("webhooks", "dlq.projections"),
    publish_event("webhooks", "cmd.ws.people.record"),
    js_api_call(
        "webhooks",
        "create another consumer",
        lambda js, a: js.add_consumer(a.stream, _consumer(a)),
        "$JS.API.CONSUMER.CREATE.{s}.intruder",
    ),
    js_api_call(
        "webhooks",
        "read the projection's consumer",
        lambda js, a: js.consumer_info(a.stream, "projections"),
        "$JS.API.CONSUMER.INFO.{s}.projections",
    ),
    js_api_call(
        "webhooks",
        "delete its consumer",
        lambda js, a: js.delete_consumer(a.stream, "webhooks"),
        "$JS.API.CONSUMER.DELETE.{s}.webhooks",
    ),
    js_api_call(
        "webhooks",
        "get a message",
        lambda js, a: js.get_msg(a.stream, 1),
        "$JS.API.STREAM.MSG.GET.{s}",
    ),
    subscribe("webhooks", "{p}.ev.>"),
    subscribe("webhooks", "_INBOX_api.>"),
]


async def test_every_forbidden_operation_is_refused(authz: Authz) -> None:
    admin = authz.conns[0]
    people = await authz.connect("people")
    await people.js.publish(
        f"{authz.prefix}.ev.ws.person.added.ada", person_event("ws", "ada"), stream=authz.stream
    )
    before = await authz.stream_messages(admin)
    conns = {
        role: await authz.connect(role)
        for role in ("api", "people", "interactions", "worker", "webhooks")
    }

    async def attempt(op: Forbidden) -> str | None:
        """None when refused as expected, else what went wrong."""
        conn = conns[op.role]
        raised = False
        try:
            await op.run(conn, authz)
        except Exception:
            raised = True
        if op.raises and not raised:
            return f"{op.role}: {op.what}: succeeded on the client side"
        if not await conn.violation(op.refusal(authz)):
            return f"{op.role}: {op.what}: no permissions violation from the server"
        return None

    # Concurrently: each refused request costs a JetStream API timeout.
    outcomes = await asyncio.gather(*(attempt(op) for op in FORBIDDEN))
    failures = [o for o in outcomes if o is not None]
    refused = len(FORBIDDEN) - len(failures)
    summary = (
        f"nats permissions: {len(FORBIDDEN)} forbidden operations attempted, {refused} refused"
    )
    print(summary)
    assert not failures, "\n".join([summary, *failures])
    assert await authz.stream_messages(admin) == before, "a refused publish reached the stream"
    info = await admin.js.stream_info(authz.stream)
    assert info.config.subjects == [f"{authz.prefix}.ev.>"]
    consumers = [c.name for c in await admin.js.consumers_info(authz.stream)]
    assert "intruder" not in consumers
    assert "EVIL" not in [s.config.name for s in await admin.js.streams_info()]


async def test_no_anonymous_access(authz: Authz) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(authz.server.url, allow_reconnect=False, max_reconnect_attempts=0)


# -- the real processes, each with only its own permissions -----------------------------------


@pytest.mark.integration
def test_stack_runs_every_process_with_only_its_own_nats_user(
    servers: Servers, tmp_path: Path
) -> None:
    settings = unique_settings(servers)
    config = StackConfig(
        data_dir=tmp_path / "stack",
        nats_url=None,
        database_url=servers.database_url,
        env=settings_env(settings),
    )
    ws = f"ws-{uuid.uuid4().hex[:12]}"
    with Stack(config) as stack:
        assert stack.nats is not None and "authorization" in stack.nats.config_path.read_text()
        users = {role: stack.nats_credentials(role) for role in (*stack.config.roles, "admin")}
        assert all(c is not None and c[0] == role for role, c in users.items())
        for role in stack.config.roles:
            env = stack.child_env(role)
            assert (env["TIELINE_NATS_USER"], env["TIELINE_NATS_PASSWORD"]) == users[role]
        passwords = json.loads(stack.passwords_path.read_text())
        token = make_token(settings, ws)  # bearer token, as tests/e2e/conftest.py makes it
        with httpx.Client(
            base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
        ) as api:
            for pid in ("ada", "grace"):
                r = api.post(
                    f"/v1/workspaces/{ws}/people", json={"person_id": pid, "display_name": pid}
                )
                assert r.status_code == 201, r.text
            r = api.post(
                f"/v1/workspaces/{ws}/events",
                json={
                    "type": "relationship.met",
                    "participants": ["ada", "grace"],
                    "depth": "conversation",
                },
            )
            assert r.status_code == 201, r.text
            seq = r.json()["seq"]
            s = api.get(f"/v1/workspaces/{ws}/relationships/ada/grace", params={"min_seq": seq})
            assert s.status_code == 200, s.text
            assert s.json()["meetings"] == 1 and s.json()["score"] > 0
        assert stack.restarts == {}, f"processes died: {stack.restarts}"
        logs = {
            role: (config.data_dir / "logs" / f"{role}.log").read_text()
            for role in stack.config.roles
        }
        for role, text in logs.items():
            assert "ermissions violation" not in text, f"{role} hit a permissions violation"

    # A second start on the same data directory reuses the passwords and the streams.
    with Stack(config) as again:
        assert json.loads(again.passwords_path.read_text()) == passwords
        assert again.nats_credentials("api") == users["api"]
        ready = httpx.get(f"{again.api_url}/readyz", timeout=30).json()
        assert ready["checks"]["projection"]["stream_seq"] == seq
