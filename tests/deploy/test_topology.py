"""The deployment files, run as shipped (without a container engine; tests/deploy/
compose_topology.py says how each part of a compose file is mapped onto local processes).

The operator's steps of docs/operations.md, in order: ``tieline secrets init -o deploy/.env``,
then the compose file's services: the NATS nodes and PostgreSQL, the ``bootstrap`` one-shot
(``tieline bootstrap``: streams as the NATS admin user, the first admin token), the replicas of
every tieline process. A wrong command, a variable the file forgets, or a healthcheck that does
not work fails these tests.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml

from tests.deploy.compose_topology import Topology, TopologyError, read_env_file, running

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TIELINE = str(Path(sys.executable).parent / "tieline")


def operator_checkout(
    tmp_path: Path, compose_name: str, edit: Callable[[dict[str, Any]], None] | None = None
) -> Path:
    """deploy/ as an operator has it after ``tieline secrets init -o deploy/.env``: the compose
    file (``edit`` applied to a copy), the NATS configs and the Dockerfile of this checkout."""
    project = tmp_path / "checkout" / "deploy"
    project.mkdir(parents=True)
    for name in ("nats", "Dockerfile"):
        (project / name).symlink_to(DEPLOY / name)
    text = (DEPLOY / compose_name).read_text()
    if edit is not None:
        data = yaml.safe_load(text)
        edit(data)
        text = yaml.safe_dump(data, sort_keys=False)
    (project / compose_name).write_text(text)
    subprocess.run(
        [TIELINE, "secrets", "init", "-o", str(project / ".env")], check=True, timeout=60
    )
    return project / compose_name


def api(topology: Topology, name: str, token: str) -> httpx.Client:
    """A client of one api replica, at its own address and container port."""
    address = topology.instance(name).address
    return httpx.Client(
        base_url=f"http://{address}:8080",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def worker_states(topology: Topology) -> dict[str, str]:
    """Each running worker's state from its health endpoint (active or standby)."""
    states = {}
    for worker in topology.instances["worker"]:
        if topology.running(worker):
            body = httpx.get(f"http://{worker.address}:8081/readyz", timeout=10).json()
            states[worker.name] = body["state"]
    return states


def eventually(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    """The first truthy result of ``check``, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: still {last!r} after {timeout}s")


def meetings(client: httpx.Client, seq: int) -> int | None:
    """ada-grace meetings once the projection has applied ``seq`` (None while it has not)."""
    r = client.get("/v1/workspaces/default/relationships/ada/grace", params={"min_seq": seq})
    return int(r.json()["meetings"]) if r.status_code == 200 else None


def met(client: httpx.Client, minutes: int) -> int:
    r = client.post(
        "/v1/workspaces/default/events",
        json={
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "conversation",
            "duration_minutes": minutes,
        },
    )
    assert r.status_code == 201, r.text
    return int(r.json()["seq"])


def refuses_anonymous(url: str) -> bool:
    """True when the NATS server turns away a client without credentials."""

    async def go() -> bool:
        try:
            nc = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
        except Exception as exc:
            return "authorization" in str(exc).lower()
        await nc.close()
        return False

    return asyncio.run(go())


def test_cluster_file_runs_the_scenario_and_a_standby_worker_takes_over(tmp_path: Path) -> None:
    compose = operator_checkout(tmp_path, "compose.cluster.yaml")
    secrets = read_env_file(compose.parent / ".env")
    token = secrets["TIELINE_ADMIN_TOKEN"]
    with running(compose, tmp_path / "run") as topology:
        declared = {s: len(group) for s, group in topology.instances.items()}
        assert declared == {
            "nats-1": 1, "nats-2": 1, "nats-3": 1, "postgres": 1, "bootstrap": 1,
            "api": 2, "people": 2, "interactions": 2, "worker": 2, "webhooks": 2, "sync": 2,
        }  # fmt: skip
        assert refuses_anonymous(f"nats://{topology.address_of('nats-2')}:4222")
        first = topology.instance("bootstrap-1").log_tail(100)
        assert "stream TIELINE: 3 replica(s)" in first and token in first
        code, again = topology.run_again("bootstrap")  # every `up` runs it again
        assert code == 0 and token in again, again

        api1, api2 = api(topology, "api-1", token), api(topology, "api-2", token)
        for person in ("ada", "grace"):
            r = api1.post(
                "/v1/workspaces/default/people",
                json={"person_id": person, "display_name": person.title()},
            )
            assert r.status_code == 201, r.text
        seq = met(api1, 45)
        assert eventually("strength via api-2", lambda: meetings(api2, seq)) == 1
        eventually(
            "projection caught up",
            lambda: api2.get("/readyz").json()["checks"]["projection"]["lag"] == 0,
        )

        states = eventually(
            "one active worker",
            lambda: (
                sorted(worker_states(topology).values()) == ["active", "standby"]
                and worker_states(topology)
            ),
        )
        [active] = [name for name, state in states.items() if state == "active"]
        topology.kill(topology.instance(active))
        seq = met(api2, 30)
        assert eventually("strength via api-1 after failover", lambda: meetings(api1, seq)) == 2
        survivor = eventually("standby took over", lambda: worker_states(topology))
        assert list(survivor.values()) == ["active"] and active not in survivor


def test_a_variable_removed_from_the_file_fails_the_topology_naming_it(tmp_path: Path) -> None:
    def drop_master_key(data: dict[str, Any]) -> None:
        del data["services"]["people"]["environment"]["TIELINE_MASTER_KEY"]

    compose = operator_checkout(tmp_path, "compose.cluster.yaml", drop_master_key)
    with pytest.raises(TopologyError) as failed, running(compose, tmp_path / "run", timeout=90):
        pass
    message = str(failed.value)
    assert "people-" in message and "exited" in message, message
    assert "missing required setting(s): TIELINE_MASTER_KEY" in message, message


def test_a_secret_missing_from_the_env_file_stops_the_file_from_loading(tmp_path: Path) -> None:
    compose = operator_checkout(tmp_path, "compose.cluster.yaml")
    env = compose.parent / ".env"
    kept = [line for line in env.read_text().splitlines() if "PASSWORD_WORKER=" not in line]
    env.write_text("\n".join(kept) + "\n")
    with pytest.raises(
        TopologyError,
        match="required variable TIELINE_NATS_PASSWORD_WORKER is missing a value: "
        "run tieline secrets init",
    ):
        Topology(compose, tmp_path / "run")


def test_single_node_file_backs_up_and_restores_by_replay(tmp_path: Path) -> None:
    """docs/operations.md "Back up" and "Restore by replay", on compose.yaml: the streams with
    ``tieline stream backup`` (run with the bootstrap service's admin credentials), the state
    schema with ``pg_dump``; then a new installation with the same .env gets the state schema
    back with ``pg_restore``, the bootstrap, ``tieline stream restore``, and the workers
    rebuild every read model from the log. Names read back decrypted: the person keys and the
    master key made it across."""
    compose = operator_checkout(tmp_path, "compose.yaml")
    token = read_env_file(compose.parent / ".env")["TIELINE_ADMIN_TOKEN"]
    backup = tmp_path / "backup"
    with running(compose, tmp_path / "first") as topology:
        client = api(topology, "api-1", token)
        for person, name in (("ada", "Ada Lovelace"), ("grace", "Grace Hopper")):
            r = client.post(
                "/v1/workspaces/default/people", json={"person_id": person, "display_name": name}
            )
            assert r.status_code == 201, r.text
        seq = met(client, 45)
        assert eventually("strength", lambda: meetings(client, seq)) == 1
        saved = topology.run("bootstrap", ["stream", "backup", "/backup"], {backup: "/backup"})
        assert saved.returncode == 0, saved.stderr
        assert f"backed up TIELINE: 3 message(s), last seq {seq}" in saved.stdout
        dump = topology.exec("postgres-1", PG_DUMP)
        assert dump.returncode == 0, dump.stderr
        (backup / "state.dump").write_bytes(dump.stdout)

    fresh = Topology(compose, tmp_path / "second")
    try:
        fresh.up(["nats", "postgres"])
        state = (backup / "state.dump").read_bytes()
        loaded = fresh.exec("postgres-1", PG_RESTORE, stdin=state)
        assert loaded.returncode == 0, loaded.stderr
        fresh.up(["bootstrap"])
        fresh.wait("bootstrap", "service_completed_successfully", time.monotonic() + 180)
        back = fresh.run("bootstrap", ["stream", "restore", "/backup"], {backup: "/backup"})
        assert back.returncode == 0, back.stderr
        assert f"restored TIELINE: 3 message(s), last seq {seq}" in back.stdout
        fresh.up()
        client = api(fresh, "api-1", token)  # the token came back with the state schema
        assert eventually("strength after replay", lambda: meetings(client, seq)) == 1
        ada = client.get("/v1/workspaces/default/people/ada")
        assert ada.status_code == 200 and ada.json()["display_name"] == "Ada Lovelace", ada.text
    finally:
        fresh.down()


#: docs/operations.md: the state schema without the generations table (read models are
#: rebuilt, so their bookkeeping must not come back).
PG_DUMP = [
    "pg_dump", "-U", "tieline", "-d", "tieline", "--schema=tieline",
    "--exclude-table=tieline.generations", "--format=custom",
]  # fmt: skip
#: --no-privileges: the grants name the api role, which belongs to the old PostgreSQL cluster
#: (every process grants it again at start).
PG_RESTORE = [
    "pg_restore", "-U", "tieline", "-d", "tieline", "--exit-on-error", "--no-privileges",
]  # fmt: skip
