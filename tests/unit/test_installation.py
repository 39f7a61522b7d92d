"""The pieces `tieline up` checks a data dir with before it starts anything (real processes,
real sockets and locks; no servers): the supervisor's lock, leftovers, a stale
``postmaster.pid``, taken ports, and children that die with their parent."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from tieline.services.runtime import installation
from tieline.services.runtime.errors import AlreadyRunning, OperationalError, PortInUse
from tieline.services.runtime.installation import (
    DataDirLock,
    PortNeed,
    check_ports,
    clear_stale_postmaster_pid,
    find_leftovers,
    running_pid,
    stop_leftovers,
)
from tieline.services.runtime.procs import die_with_parent, is_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux processes")


@pytest.fixture
def sleeper() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; all killed and reaped afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def sleep_in(
    started: list[subprocess.Popen[bytes]], cwd: Path, exe: str = "sleep"
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([exe, "30"], cwd=cwd)
    started.append(proc)
    return proc


def test_one_supervisor_per_data_dir(tmp_path: Path) -> None:
    assert running_pid(tmp_path) is None
    first = DataDirLock(tmp_path)
    first.acquire()
    try:
        assert running_pid(tmp_path) == os.getpid()
        with pytest.raises(AlreadyRunning, match=rf"another tieline up \(pid {os.getpid()}\)"):
            DataDirLock(tmp_path).acquire()
    finally:
        first.release()
    assert running_pid(tmp_path) is None
    again = DataDirLock(tmp_path)
    again.acquire()  # free again once released (the kernel also frees it when a holder dies)
    again.release()


def test_a_taken_port_is_named_with_the_option_that_changes_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        need = PortNeed("127.0.0.1", port, "API", "--api-port or TIELINE_API_PORT")
        with pytest.raises(PortInUse) as caught:
            check_ports([need])
        message = str(caught.value)
        assert f"port {port} on 127.0.0.1 (API) is already in use by pid {os.getpid()}" in message
        assert message.endswith("choose another with --api-port or TIELINE_API_PORT")
        check_ports([need], except_ports={port})  # held by a leftover about to be stopped
    check_ports([need])  # free once closed


def test_leftovers_are_our_servers_only_and_are_stopped(
    tmp_path: Path, sleeper: list[subprocess.Popen[bytes]]
) -> None:
    data = tmp_path / "data"
    (data / "bin").mkdir(parents=True)
    fake_nats = data / "bin" / "nats-server"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake_nats)
    server = sleep_in(sleeper, data, str(fake_nats))
    shell = sleep_in(sleeper, data)  # an operator's process in the data dir: never touched
    deadline = time.monotonic() + 5
    while not find_leftovers(data) and time.monotonic() < deadline:
        time.sleep(0.05)
    found = find_leftovers(data)
    assert [(left.proc.pid, left.kind) for left in found] == [(server.pid, "nats-server")]
    stop_leftovers(found, grace_s=5)
    assert server.wait(timeout=5) == -signal.SIGTERM
    assert shell.poll() is None


def test_classify_tells_servers_backends_and_tieline_processes_apart() -> None:
    root = "/srv/tl"
    run = ["python3", "-m", installation.ROLE_MODULE, "api"]
    cases: list[tuple[dict[str, object], str | None]] = [
        ({"name": "postgres", "cmdline": ["postgres", "-D", f"{root}/pg"]}, "postmaster"),
        ({"name": "postgres", "cmdline": ["postgres: idle"], "cwd": f"{root}/pg"}, "postgres"),
        ({"name": "postgres", "cmdline": ["postgres", "-D", "/srv/tl2/pg"]}, None),
        ({"name": "nats-server", "cmdline": ["nats-server", "-c", f"{root}/n"]}, "nats-server"),
        ({"name": "python3", "cmdline": [*run, "--data-dir", root]}, "tieline"),
        ({"name": "python3", "cmdline": [*run, "--data-dir", f"{root}2"]}, None),
        ({"name": "python3", "cmdline": run, "cwd": root}, None),
        ({"name": "tail", "cmdline": ["tail", "-f", f"{root}/logs/api.log"]}, None),
    ]
    for info, kind in cases:
        assert installation._classify(info, root) == kind, info


def test_postmaster_pid_of_a_dead_process_is_left_to_postgres(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock = tmp_path / "postmaster.pid"
    lock.write_text(f"{gone.pid}\n{tmp_path}\n")
    assert clear_stale_postmaster_pid(tmp_path) is None
    assert lock.exists()


def test_postmaster_pid_of_an_unreaped_zombie_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(installation, "REAP_WAIT_S", 0.3)
    dead = subprocess.Popen(["true"])  # our child: a zombie until we wait for it
    deadline = time.monotonic() + 5
    while psutil.Process(dead.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    lock = tmp_path / "postmaster.pid"
    lock.write_text(f"{dead.pid}\n{tmp_path}\n")
    try:
        why = clear_stale_postmaster_pid(tmp_path)
        assert why is not None and "never reaped" in why
        assert not lock.exists()
    finally:
        dead.wait()


def test_postmaster_pid_reused_by_another_process_is_removed(
    tmp_path: Path, sleeper: list[subprocess.Popen[bytes]]
) -> None:
    other = sleep_in(sleeper, Path("/"))
    lock = tmp_path / "postmaster.pid"
    lock.write_text(f"{other.pid}\n{tmp_path}\n")
    why = clear_stale_postmaster_pid(tmp_path)
    assert why is not None and "another process" in why
    assert not lock.exists()


def test_postmaster_pid_of_a_process_working_in_the_cluster_is_never_removed(
    tmp_path: Path, sleeper: list[subprocess.Popen[bytes]]
) -> None:
    live = sleep_in(sleeper, tmp_path)
    lock = tmp_path / "postmaster.pid"
    lock.write_text(f"{live.pid}\n{tmp_path}\n")
    with pytest.raises(OperationalError, match=f"pid {live.pid}"):
        clear_stale_postmaster_pid(tmp_path)
    assert lock.exists()


CHILD_OF_A_DOOMED_PARENT = """
import signal, subprocess, sys
from tieline.services.runtime.procs import die_with_parent
child = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent(signal.SIGKILL))
print(child.pid, flush=True)
sys.stdin.read()
"""


def test_a_child_dies_with_its_parent_however_the_parent_dies() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD_OF_A_DOOMED_PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    assert not is_gone(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while not is_gone(child):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.01)


def test_no_death_signal_is_tied_to_a_thread_that_ends() -> None:
    """The kernel ties PR_SET_PDEATHSIG to the forking *thread*: off the main thread none is
    arranged, or the child would die when that thread ends."""
    assert die_with_parent(signal.SIGTERM) is not None
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(die_with_parent(signal.SIGTERM)))
    thread.start()
    thread.join()
    assert seen == [None]


def test_the_port_check_loads_no_server_client() -> None:
    """`tieline up` must report a taken port within seconds on a busy machine: the path to the
    check (the CLI and services/runtime/up.py) imports none of the heavy clients, which load
    only once the checks passed."""
    probe = (
        "import sys, tieline.services.cli.main, tieline.services.runtime.up; "
        "print(sorted(m for m in ('pydantic', 'psycopg', 'httpx', 'nats', 'structlog') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
