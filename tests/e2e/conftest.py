"""One running tieline (separate processes: api, people, interactions, worker) for the
end-to-end tests; each test uses its own workspace."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack, StackConfig

# make_token is re-exported: the e2e, browser and integration tests import it from here.
from tests.conftest import Servers, make_token, settings_env, unique_settings


@pytest.fixture
def ws() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def token(stack_settings: Settings, ws: str) -> str:
    return make_token(stack_settings, ws)


@pytest.fixture
def api(stack: Stack, token: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=headers) as client:
        yield client


#: Settings of the stack the webhook and follow-up tests use: loopback receivers allowed (the
#: test receiver is plain http on 127.0.0.1), short backoff and a low disable threshold so
#: retries and disabling happen within seconds, a follow-up scan every half second.
LIVE_ENV = {
    "TIELINE_WEBHOOK_ALLOW_LOOPBACK": "true",
    "TIELINE_WEBHOOK_BACKOFF_S": "0.2",
    "TIELINE_WEBHOOK_BACKOFF_MAX_S": "2",
    "TIELINE_WEBHOOK_DISABLE_AFTER": "6",
    "TIELINE_WEBHOOK_TIMEOUT_S": "3",
    "TIELINE_FOLLOW_UP_SCAN_S": "0.5",
}


@pytest.fixture(scope="module")
def live_stack(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Settings]]:
    """A stack of its own with :data:`LIVE_ENV` (tests/e2e/test_webhooks.py), and its settings;
    stopped after the module, so it does not load the machine under the tests that follow."""
    settings = unique_settings(servers)
    config = StackConfig(
        data_dir=tmp_path_factory.mktemp("live-stack"),
        nats_url=servers.nats_url,
        database_url=servers.database_url,
        env={**settings_env(settings), **LIVE_ENV},
    )
    with Stack(config) as s:
        yield s, settings


__all__ = ["make_token"]
