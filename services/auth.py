"""Bearer API tokens: each bound to one workspace with a role (read < write < admin).

A token looks like ``tl_<token_id>_<secret>``. Only the SHA-256 of the secret is stored (the
secret has 192 random bits, so a fast hash is enough); the plaintext is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from psycopg import AsyncConnection
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.state import ensure_state_schema

Role = Literal["read", "write", "admin"]
ROLE_RANK: dict[str, int] = {"read": 1, "write": 2, "admin": 3}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's workspace, role and name."""

    token_id: str
    workspace_id: str
    role: str
    name: str

    @property
    def actor(self) -> str:
        """What events record as ``recorded_by``."""
        return f"token:{self.name}"

    def may(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """``tl_<id>_<secret>`` -> (id, secret), or None when it is not shaped like a token."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "tl" or len(parts[1]) != 12 or len(parts[2]) < 20:
        return None
    return parts[1], parts[2]


async def create_token(
    conn: AsyncConnection[Any], workspace_id: str, role: str, name: str, token: str | None = None
) -> str:
    """Store a new token (or a given one, e.g. from TIELINE_ADMIN_TOKEN); return its plaintext."""
    if role not in ROLE_RANK:
        raise ValueError(f"role must be one of {', '.join(ROLE_RANK)}")
    if token is None:
        token = f"tl_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
    parts = split_token(token)
    if parts is None:
        raise ValueError("a token must look like tl_<12 hex>_<secret of 20+ characters>")
    token_id, secret = parts
    # A revoked token stays revoked: registering it again (``tieline up`` and the bootstrap
    # do so on every start) used to clear the revocation, so a leaked token came back.
    cur = await conn.execute(
        """INSERT INTO api_tokens (token_id, workspace_id, role, name, secret_sha256)
           VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (token_id) DO UPDATE SET workspace_id = EXCLUDED.workspace_id,
               role = EXCLUDED.role, name = EXCLUDED.name,
               secret_sha256 = EXCLUDED.secret_sha256
           WHERE api_tokens.revoked_at IS NULL
           RETURNING token_id""",
        (token_id, workspace_id, role, name, _sha256(secret)),
    )
    if await cur.fetchone() is None:
        raise TokenRevoked(f"token {token_id} was revoked: it cannot be used again; set a new one")
    return token


class TokenRevoked(ValueError):
    """A token given to be registered (again) was revoked."""


async def issue_token(settings: Settings, workspace_id: str, role: str, name: str) -> str:
    """A new token stored straight in the database, tieline's state tables created first when
    the database has none yet; its plaintext. What ``tieline token create`` stores, for the
    tests, the benches and scripts that need a token without going through the CLI."""
    conn = await db.connect(settings)
    try:
        await ensure_state_schema(conn, settings.database_schema)
        return await create_token(conn, workspace_id, role, name)
    finally:
        await conn.close()


async def list_tokens(
    conn: AsyncConnection[Any],
    workspace_id: str | None = None,
    limit: int | None = None,
    after: tuple[Any, str] | None = None,
) -> list[tuple[Any, ...]]:
    """(token_id, workspace_id, role, name, created_at, revoked_at) of the tokens (of one
    workspace when given), oldest first; at most ``limit``; only those after ``after``, a
    (created_at, token_id) of an earlier page."""
    cur = await conn.execute(
        """SELECT token_id, workspace_id, role, name, created_at, revoked_at FROM api_tokens
           WHERE (%(ws)s::text IS NULL OR workspace_id = %(ws)s)
             AND (%(at)s::timestamptz IS NULL OR (created_at, token_id) > (%(at)s, %(id)s))
           ORDER BY created_at, token_id LIMIT %(limit)s""",
        {
            "ws": workspace_id,
            "at": after[0] if after else None,
            "id": after[1] if after else None,
            "limit": limit,
        },
    )
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in await cur.fetchall()]


async def token_in_workspace(conn: AsyncConnection[Any], token_id: str, workspace_id: str) -> bool:
    """Whether ``token_id`` names a token of ``workspace_id`` (revoked or not)."""
    cur = await conn.execute(
        "SELECT 1 FROM api_tokens WHERE token_id = %s AND workspace_id = %s",
        (token_id, workspace_id),
    )
    return await cur.fetchone() is not None


async def revoke_token(conn: AsyncConnection[Any], token_id: str) -> bool:
    cur = await conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE token_id = %s AND revoked_at IS NULL",
        (token_id,),
    )
    return cur.rowcount == 1


async def verify_token(conn: AsyncConnection[Any], token: str) -> Principal | None:
    """The principal behind a token, or None (unknown, malformed, revoked or wrong secret)."""
    parts = split_token(token)
    if parts is None:
        return None
    token_id, secret = parts
    cur = await conn.execute(
        "SELECT workspace_id, role, name, secret_sha256 FROM api_tokens "
        "WHERE token_id = %s AND revoked_at IS NULL",
        (token_id,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    values = list(row.values()) if isinstance(row, dict) else list(row)
    ws, role, name, digest = values
    if not hmac.compare_digest(digest, _sha256(secret)):
        return None
    return Principal(token_id, ws, role, name)
