"""`tieline up` after crashes, as an operator meets them (real processes, the real CLI):

* every process of the installation killed with SIGKILL during HTTP batch ingest, the dead
  not yet reaped: the next `tieline up` on the same data dir starts by itself, every
  acknowledged event is exported exactly once, `tieline verify --data-dir DIR` is clean;
* only the supervisor killed: its servers and processes go with it;
* servers left running on the data dir (by a supervisor that could not take them along) are
  stopped before the new start;
* a port it needs is taken: one line naming the port and the option, non-zero exit, fast.

Processes are told apart by what an operator would use: a command line or working directory
inside the data dir (psutil), not by the product's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from tieline.services.runtime.embedded import EmbeddedNats, EmbeddedPostgres, find_free_port
from tieline.services.runtime.run import ROLES

from tests.faults.support import EventFactory, HttpIngest, Oracle, rng_for, wait_for

#: Interactions sent through the batch endpoint in the whole-installation crash.
EVENTS = 2_000
#: Fraction of them acknowledged when everything is killed.
KILL_AT = 0.4

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux processes")


def cli_env() -> dict[str, str]:
    """The environment of an operator's shell: no TIELINE_* settings at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIELINE_")}
    env["COLUMNS"] = "250"
    return env


def tieline(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the `tieline` CLI to completion."""
    return subprocess.run(
        [sys.executable, "-m", "tieline.services.cli.main", *args],
        env={**cli_env(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Up:
    """A running `tieline up`; its output is drained by a thread (a full pipe would block it)."""

    proc: subprocess.Popen[str]
    data: Path
    port: int
    lines: list[str] = field(default_factory=list)
    token: str = ""

    @classmethod
    def start(cls, data: Path, port: int, *extra: str, within: float = 120) -> Up:
        argv = ["up", "--data-dir", str(data), "--api-port", str(port), *extra]
        proc = subprocess.Popen(
            [sys.executable, "-m", "tieline.services.cli.main", *argv],
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        up = cls(proc, data, port)
        ready = threading.Event()
        threading.Thread(target=up._drain, args=(ready,), daemon=True).start()
        if not ready.wait(within) or not up.token:
            proc.kill()
            proc.wait()
            raise AssertionError("tieline up did not come up:\n" + up.output)
        return up

    def _drain(self, ready: threading.Event) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"(tl_[0-9a-f]{12}_\S+)", line)
            if found:
                self.token = found.group(1)
            if "Ctrl-C stops everything" in line:
                ready.set()
        ready.set()  # exited before it was up

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Ctrl-C; it must stop cleanly and remove its endpoints file."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=60) == 0, self.output
        assert not (self.data / "run" / "endpoints.json").exists()


def processes_on(data: Path) -> list[psutil.Process]:
    """Live processes other than this one whose command line or working directory lies in
    ``data`` (zombies are dead: they hold no port, file or memory)."""
    root = str(data.resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        info = proc.info
        if info["pid"] == os.getpid() or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        here = any(root in arg for arg in info["cmdline"] or []) or (info["cwd"] or "").startswith(
            root
        )
        if here:
            found.append(proc)
    return found


def kill_everything_on(data: Path) -> None:
    """After a failed test: SIGKILL whatever still runs on ``data`` (the supervisor's children
    follow it by themselves) and wait for it, so nothing outlives the test."""
    left = processes_on(data)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    gone_within(left, 10)


def gone_within(procs: list[psutil.Process], seconds: float) -> tuple[list[psutil.Process], float]:
    """Wait until none of ``procs`` runs (zombies count as gone); (survivors, seconds taken)."""
    started = time.monotonic()
    while True:
        left = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
        elapsed = time.monotonic() - started
        if not left or elapsed > seconds:
            return left, elapsed
        time.sleep(0.05)


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Make this process the reaper of orphaned descendants (PR_SET_CHILD_SUBREAPER) and reap
    none of them until the end: the servers of a killed installation stay zombies, as when
    their parent is slow to reap. Their pids stay taken, and ``postmaster.pid`` names one."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    assert libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


def reap(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def kill_everything(up: Up) -> list[int]:
    """A power cut: freeze the supervisor and every process of the installation (so nothing
    restarts or stops anything), then SIGKILL them all. Returns their pids."""
    supervisor = psutil.Process(up.proc.pid)
    victims = [supervisor, *supervisor.children(recursive=True)]
    victims += [p for p in processes_on(up.data) if p.pid not in {v.pid for v in victims}]
    for v in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            v.suspend()
    for v in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            v.kill()
    up.proc.wait(timeout=10)
    return [v.pid for v in victims]


async def test_whole_installation_killed_during_batch_ingest_restarts_by_itself(
    tmp_path: Path,
) -> None:
    data, port = tmp_path / "data", find_free_port()
    factory = EventFactory(rng_for("up_recovery"), "default", people=60)
    people = [factory.person_added(p, with_server_fields=False) for p in factory.people]
    events = [factory.interaction(with_server_fields=False) for _ in range(EVENTS)]
    oracle = Oracle()
    for obj in people + events:
        oracle.send(obj)
    victims: list[int] = []
    with subreaper():
        try:
            up = Up.start(data, port)
            pgdata_pid = None
            async with httpx.AsyncClient(
                base_url=up.url,
                timeout=10,
                trust_env=False,
                headers={"Authorization": f"Bearer {up.token}"},
            ) as client:
                ingest = HttpIngest(client, "default", oracle, chunk=50, concurrency=4)
                await ingest.run(people)
                sending = asyncio.create_task(ingest.run(events, give_up_s=240))
                goal = len(people) + int(KILL_AT * len(events))
                await wait_for(lambda: len(oracle.acked) >= goal, within=120, what="ingest")
                victims = kill_everything(up)
                acked_at_kill = len(oracle.acked)
                postmaster = (data / "postgres" / "pgdata" / "postmaster.pid").read_text()
                pgdata_pid = int(postmaster.split()[0])
                # The crash left run/endpoints.json behind; it must not be trusted.
                stale = await asyncio.to_thread(tieline, "verify", "--data-dir", str(data))
                assert stale.returncode == 1, stale.stdout + stale.stderr
                assert "no tieline up is running" in stale.stderr
                restarted = time.monotonic()
                up = await asyncio.to_thread(Up.start, data, port)
                restart_s = time.monotonic() - restarted
                await sending
            print(
                f"\nscenario=up_kill_all acked_at_kill={acked_at_kill} of {len(oracle.sent)} "
                f"victims={len(victims)} postmaster_pid={pgdata_pid} restart_s={restart_s:.1f} "
                f"retries={oracle.retries}"
            )
            # The kill hit with requests in flight, and the dead were not yet reaped.
            assert acked_at_kill < len(oracle.sent) and oracle.retries > 0
            assert pgdata_pid in victims and psutil.Process(pgdata_pid).status() == "zombie"
            assert not ingest.rejected, ingest.rejected[:5]
            assert len(oracle.acked) == len(oracle.sent) and not oracle.conflicts
            exported = export_event_ids(up, tmp_path, max(oracle.acked.values()))
            assert exported == Counter(dict.fromkeys(oracle.acked, 1))
            verify = tieline("verify", "--data-dir", str(data))
            assert verify.returncode == 0, verify.stdout + verify.stderr
            assert "DIFFERENT" not in verify.stdout and "events" in verify.stdout
            up.stop()
        finally:
            kill_everything_on(data)
            reap(victims)


def export_event_ids(up: Up, tmp_path: Path, min_seq: int) -> Counter[str]:
    """`tieline export events` once the projection has applied ``min_seq``: id -> rows."""
    out = tmp_path / "events.jsonl"
    result = tieline(
        "export",
        "events",
        "--out",
        str(out),
        "--min-seq",
        str(min_seq),
        "--api-url",
        up.url,
        TIELINE_TOKEN=up.token,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return Counter(json.loads(line)["event_id"] for line in out.read_text().splitlines())


def test_killed_supervisor_takes_its_servers_and_processes_along(tmp_path: Path) -> None:
    data, port = tmp_path / "data", find_free_port()
    up = Up.start(data, port)
    try:
        family = processes_on(data)
        names = Counter(p.name() for p in family)
        assert names["nats-server"] == 1 and names["postgres"] >= 3, names
        roles = [p for p in family if "tieline.services.runtime.run" in p.cmdline()]
        assert len(roles) == len(ROLES)
        # A second `tieline up` on the same data dir is refused at once, naming the first.
        second = tieline("up", "--data-dir", str(data), "--api-port", str(find_free_port()))
        assert second.returncode == 1
        assert second.stderr.strip() == second.stderr.strip().splitlines()[0]
        assert f"in use by another tieline up (pid {up.proc.pid})" in second.stderr
        up.proc.kill()
        up.proc.wait()
        left, took = gone_within(family, 10)
        print(f"\nscenario=up_kill_supervisor processes={len(family)} all_gone_s={took:.2f}")
        assert not left, [(p.pid, p.cmdline()) for p in left]
        assert not processes_on(data)
        # Nothing runs there now: operator commands say so in one line.
        verify = tieline("verify", "--data-dir", str(data))
        assert verify.returncode == 1
        assert verify.stderr.strip().startswith("tieline verify: no tieline up is running on")
    finally:
        kill_everything_on(data)


def test_servers_left_running_on_the_data_dir_are_stopped_first(tmp_path: Path) -> None:
    """A nats-server and a PostgreSQL on the data dir without their supervisor (live
    ``postmaster.pid``; the NATS on the port the new run asks for), and a worker of an earlier
    release (no ``--data-dir`` on its command line) connected to them, are stopped cleanly; the
    new run starts on the same data."""
    data, port = tmp_path / "data", find_free_port()
    nats = EmbeddedNats(data / "nats")
    postgres = EmbeddedPostgres(data / "postgres")
    nats.start()
    postgres.start()
    env = {**cli_env(), "TIELINE_NATS_URL": nats.url, "TIELINE_DATABASE_URL": postgres.url}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tieline.services.runtime.run", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    old = [nats.pid, postgres.pid, worker.pid]
    try:
        up = Up.start(data, port, "--nats-port", str(nats.port))
        note = f"a previous run left on {data}: nats-server pid {old[0]}, postmaster pid {old[1]}"
        assert note in up.output and "1 tieline processes" not in up.output, up.output
        assert f"tieline pid {worker.pid}" in up.output, up.output
        worker.wait(timeout=5)  # listed as a leftover above, so it ran until then
        assert nats.pid is None and postgres.pid is None  # exited (we reaped them)
        assert "database system is shut down" in (data / "postgres" / "postgres.log").read_text()
        with httpx.Client(base_url=up.url, timeout=10, trust_env=False) as client:
            assert client.get("/readyz").status_code == 200
        assert not set(old) & {p.pid for p in processes_on(data)}
        up.stop()
    finally:
        kill_everything_on(data)
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        nats.stop()
        postgres.stop()


def timed_tieline(argv: list[str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall seconds, CPU seconds of the child, result) of one `tieline` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = tieline(*argv, timeout=30)
    took = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return took, cpu, result


@pytest.mark.parametrize("option", ["--api-port", "--nats-port", "--postgres-port"])
def test_a_taken_port_fails_fast_with_one_line(tmp_path: Path, option: str) -> None:
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["up", "--data-dir", str(data)]
        if option == "--api-port":
            argv += ["--api-port", str(port)]
        else:
            argv += ["--api-port", str(find_free_port()), option, str(port)]
        # The best of two tries: one CPU spike from a neighbour must not decide it.
        took, cpu, result = min(timed_tieline(argv) for _ in range(2))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1, output
    assert took < 5, f"took {took:.1f}s (cpu {cpu:.2f}s, load average {os.getloadavg()})"
    assert len(output.splitlines()) == 1, output
    assert f"port {port} on 127.0.0.1" in output and "already in use" in output
    assert option in output
    # Nothing was started.
    assert not (data / "nats").exists() and not (data / "postgres").exists()
    assert not processes_on(data)
