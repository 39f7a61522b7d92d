"""Several API processes on one port (``tieline up --api-workers N``): the kernel spreads
connections over them (SO_REUSEPORT), each is supervised on its own and scraped on a port of
its own, and the API keeps answering while one of them is down."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from tieline.plumbing.config import Settings
from tieline.services.runtime.embedded import find_free_port
from tieline.services.runtime.run import reuse_port_socket
from tieline.services.runtime.supervisor import Stack, StackConfig

from tests.faults.support import stack_env


def test_two_processes_can_listen_on_one_port_with_reuse_port() -> None:
    first = reuse_port_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = reuse_port_socket("127.0.0.1", port)
    first.listen()  # what the api's server does once its app has started
    second.listen()
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


def _healthz_answered(metrics_url: str) -> float:
    """``GET /healthz`` requests the process behind ``metrics_url`` has counted."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tieline_http_requests_total"
        and sample.labels.get("route") == "/healthz"
        and sample.labels.get("method") == "GET"
    )


def _each_process_is_scraped_on_its_own_port(stack: Stack) -> None:
    """Every request to the shared port is counted by exactly one process, and the per-process
    scrape URLs add up to all of them (on the shared port a scrape reaches one process)."""
    urls = stack.metrics_urls()
    assert {"api", "api.2"} <= set(urls), urls
    assert urls["api"] != urls["api.2"]
    assert not urls["api"].startswith(stack.api_url), urls
    before = {name: _healthz_answered(urls[name]) for name in ("api", "api.2")}
    requests = 40
    for _ in range(requests):  # a new connection each: the kernel picks a process for each
        with urllib.request.urlopen(stack.api_url + "/healthz", timeout=5) as resp:
            assert resp.status == 200
    after = {name: _healthz_answered(urls[name]) for name in ("api", "api.2")}
    counted = {name: after[name] - before[name] for name in after}
    assert sum(counted.values()) == requests, counted


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
        _each_process_is_scraped_on_its_own_port(stack)
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


def test_a_single_api_process_does_not_open_the_health_port(
    tmp_path: Path, settings: Settings
) -> None:
    """The image sets TIELINE_HEALTH_PORT for every role (deploy/Dockerfile): a lone api process
    serves its /metrics on its own port and must not also bind the health port; an operator who
    moves the api onto that port (TIELINE_API_PORT=8081) still gets an api (it exited 3)."""
    port = find_free_port("127.0.0.1")
    config = StackConfig(
        data_dir=tmp_path / "data",
        env=stack_env(settings, TIELINE_HEALTH_PORT=str(port)),
        api_port=port,
        roles=("api",),
    )
    stack = Stack(config)
    try:
        stack.start_servers()
        stack.start_processes()
        assert "api" not in stack.health_ports
        stack.wait_ready(timeout=120)
        # Only the api serves its OpenAPI document; a health server on the port would not.
        with urllib.request.urlopen(stack.api_url + "/openapi.json", timeout=10) as resp:
            assert resp.status == 200
        time.sleep(1)  # a process that lost a bind would exit meanwhile
        log = (tmp_path / "data" / "logs" / "api.log").read_text(errors="replace")
        assert stack.children["api"].poll() is None, log[-3000:]
    finally:
        stack.stop()


def test_another_process_on_the_shared_port_stops_the_start(
    tmp_path: Path, settings: Settings
) -> None:
    """A process of the same user that joins the api port's SO_REUSEPORT group (another
    tieline up started at the same moment on the same port) would answer part of this
    installation's requests: the start fails, naming it, instead of going on."""
    import os

    import pytest
    from tieline.services.runtime.errors import OperationalError

    intruder = reuse_port_socket("127.0.0.1", 0)
    intruder.listen()
    config = StackConfig(
        data_dir=tmp_path / "data",
        env=stack_env(settings),
        api_workers=2,
        api_port=intruder.getsockname()[1],
        roles=("api",),
    )
    stack = Stack(config)
    try:
        stack.start_servers()
        stack.start_processes()
        with pytest.raises(OperationalError, match=f"pid {os.getpid()}"):
            stack.wait_ready(timeout=120)
        assert stack.api_processes_not_listening() == []  # both of ours had joined it
    finally:
        stack.stop()
        intruder.close()
