"""A revoked token stays revoked when it is registered again, as ``tieline up`` (its stored
admin token) and the bootstrap (``TIELINE_ADMIN_TOKEN``) do on every start: the registration
used to clear ``revoked_at``, so a leaked token that an operator revoked came back."""

from __future__ import annotations

import pytest
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.state import ensure_state_schema
from tieline.services.auth import TokenRevoked, create_token, revoke_token, verify_token


async def test_registering_a_revoked_token_again_is_refused(settings: Settings) -> None:
    conn = await db.connect(settings)
    try:
        await ensure_state_schema(conn, settings.database_schema)
        token = await create_token(conn, "w-revoked", "admin", "admin")
        assert await create_token(conn, "w-revoked", "admin", "admin", token) == token
        assert await verify_token(conn, token) is not None
        assert await revoke_token(conn, token.split("_")[1])
        with pytest.raises(TokenRevoked, match="revoked"):
            await create_token(conn, "w-revoked", "admin", "admin", token)
        assert await verify_token(conn, token) is None
    finally:
        await conn.close()
