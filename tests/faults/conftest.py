"""Fault-injection suite: every test here is marked ``faults`` and starts its own servers
(embedded NATS/PostgreSQL on free ports under tmp_path), because it kills them."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack

from tests.faults.support import (
    SCALE,
    SEED,
    admin_settings,
    base_settings,
    descendants,
    full_stack,
    quiet,
)

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(HERE):
            item.add_marker(pytest.mark.faults)


def pytest_report_header(config: pytest.Config) -> str:
    return f"tieline faults: TIELINE_FAULTS_SCALE={SCALE:g} TIELINE_FAULTS_SEED={SEED}"


@pytest.fixture(scope="package", autouse=True)
def no_processes_left_behind() -> Iterator[None]:
    """After the fault suite (all its fixtures torn down), no server or tieline process it
    started may still run. Survivors are killed (they are ours) and the suite fails.

    Package scope, like ``shared``: the check runs when tests/faults ends, so processes that
    later tests start (the browser's, a restarted process of the e2e stack) are not counted."""
    before = descendants()
    yield
    deadline = time.monotonic() + 10
    left = _started_here(before)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _started_here(before)
    if left:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"processes left behind by the fault suite: {sorted(left)}")


def _started_here(before: set[int]) -> set[int]:
    """Descendants that are new since ``before`` and were not forked by a process already
    there: a new backend of the session's PostgreSQL (the e2e stack connecting meanwhile) is
    that server's, not a leftover. Killing one (SIGKILL) made the postmaster restart and broke
    every connection of the running e2e stack."""
    left = set()
    for pid in descendants() - before:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).ppid() not in before:
                left.add(pid)
    return left


@pytest.fixture(autouse=True)
def quiet_structlog() -> Iterator[None]:
    """In-process workers log every batch at debug level; keep the test output to errors and
    the scenarios' summary lines (the child processes log to <tmp_path>/logs)."""
    with quiet():
        yield


@dataclass
class Shared:
    """One whole tieline (api, people, interactions, worker) for the scenarios that do not
    kill servers; its stream's dedupe window is 1 s (scenario 6)."""

    stack: Stack
    settings: Settings
    admin: Settings


@pytest.fixture(scope="package")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    settings = base_settings(duplicate_window_s=1.0)
    running = full_stack(tmp_path_factory.mktemp("shared"), settings)
    with quiet():  # only while starting and stopping: other tests may run in between
        stack = running.__enter__()
    try:
        yield Shared(stack, settings, admin_settings(stack, settings))
    finally:
        with quiet():
            running.__exit__(None, None, None)
