"""One running tieline (separate processes: api, people, interactions, worker) for the
end-to-end tests; each test uses its own workspace."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from tieline.plumbing.config import Settings
from tieline.services.runtime.supervisor import Stack


def make_token(settings: Settings, ws: str, role: str = "admin", name: str = "tester") -> str:
    """Create an API token straight in the database (what ``tieline token create`` does)."""
    import asyncio

    from tieline.plumbing import db
    from tieline.plumbing.state import ensure_state_schema
    from tieline.services.auth import create_token

    async def go() -> str:
        conn = await db.connect(settings)
        try:
            await ensure_state_schema(conn, settings.database_schema)
            return await create_token(conn, ws, role, name)
        finally:
            await conn.close()

    return asyncio.run(go())


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
