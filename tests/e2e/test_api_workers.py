"""Several API processes on one port (``tieline up --api-workers N``): the kernel spreads
connections over them (SO_REUSEPORT), each is supervised on its own, and the API keeps
answering while one of them is down."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from pathlib import Path

from tieline.plumbing.config import Settings
from tieline.services.runtime.run import reuse_port_socket
from tieline.services.runtime.supervisor import Stack, StackConfig

from tests.faults.support import stack_env


def test_two_processes_can_listen_on_one_port_with_reuse_port() -> None:
    first = reuse_port_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = reuse_port_socket("127.0.0.1", port)
    try:
        assert second.getsockname()[1] == port
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.close()
    finally:
        first.close()
        second.close()


def test_process_names_add_api_processes() -> None:
    config = StackConfig(data_dir=Path("/nonexistent"), roles=("api", "worker"), api_workers=3)
    stack = Stack.__new__(Stack)
    stack.config = config
    assert stack.process_names() == ["api", "api.2", "api.3", "worker"]


def _probe(url: str) -> str:
    """ "ok", or why ``/readyz`` did not answer 200."""
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
            return "ok" if resp.status == 200 else f"status {resp.status}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _ready(url: str) -> bool:
    return _probe(url) == "ok"


def test_the_api_answers_from_the_other_process_while_one_is_down(
    tmp_path: Path, settings: Settings
) -> None:
    config = StackConfig(
        data_dir=tmp_path / "data",
        env=stack_env(settings),
        api_workers=2,
    )
    stack = Stack(config)
    try:
        stack.start_servers()
        stack.start_processes()
        stack.wait_ready(timeout=120)
        assert set(stack.children) >= {"api", "api.2"}
        pids = {stack.children["api"].pid, stack.children["api.2"].pid}
        assert len(pids) == 2
        # wait_ready waits for both to listen: one 200 alone may come from the first api while
        # the second is still importing, outside the port's SO_REUSEPORT group (seen in CI).
        assert stack.api_processes_not_listening() == []
        deadline = time.monotonic() + 120
        while not all(_ready(stack.api_url) for _ in range(20)):
            assert time.monotonic() < deadline, "the two api processes never both answered"
            time.sleep(0.5)
        stack.kill_role("api", signal.SIGKILL)
        # Nothing restarted it yet (no supervise_once): api.2 alone answers, every time.
        answers = [_probe(stack.api_url) for _ in range(20)]
        log = (tmp_path / "data" / "logs" / "api.2.log").read_text(errors="replace")
        assert answers == ["ok"] * 20, (answers, log[-3000:])
        stack.supervise_once()  # restarts "api" on the same port beside api.2
        assert stack.children["api"].pid not in pids
        stack.wait_ready(timeout=120)
        time.sleep(3)  # a restarted api that could not bind the port would exit meanwhile
        assert stack.children["api"].poll() is None
        assert stack.children["api.2"].poll() is None
    finally:
        stack.stop()
