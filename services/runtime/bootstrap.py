"""``tieline bootstrap``: the one-shot step a deployment runs before its processes start.

It does, idempotently, what ``tieline up`` does itself for its embedded servers:

1. creates (or checks and updates) the event and dead-letter streams. Only the NATS ``admin``
   user may (services/runtime/nats_auth.py), so it runs as ``TIELINE_NATS_USER=admin``;
2. creates the state tables (tokens, person keys, access log) in PostgreSQL;
3. makes sure workspace ``default`` has an admin token, and prints it when it can: a token given
   in ``TIELINE_ADMIN_TOKEN`` (``tieline secrets init`` generates one) is registered and printed
   on every run; without one, a token named ``bootstrap`` is created on the first run only
   (tokens are stored as hashes, so later runs can say only that it exists).

The servers may still be coming up (a NATS cluster electing its meta leader, PostgreSQL
starting), so every step is retried until ``wait_s`` runs out.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog
from tenacity import RetryCallState, retry_if_exception
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.jetstream import connect_nats, ensure_streams
from tieline.plumbing.retry import NATS, POSTGRES, Policy
from tieline.plumbing.state import ensure_state_schema
from tieline.services.auth import create_token, list_tokens

log = structlog.get_logger(__name__)

#: The name of the token the bootstrap creates when none is given.
BOOTSTRAP_TOKEN_NAME = "bootstrap"


@dataclass(frozen=True)
class BootstrapResult:
    """What the bootstrap did: the event stream's state and the admin token."""

    stream: str
    replicas: int
    last_seq: int
    workspace: str
    #: The admin token's plaintext when it was given or created now; None when one already
    #: existed (its secret is not stored anywhere).
    token: str | None
    #: The existing token's id when ``token`` is None.
    existing_token_id: str | None = None


async def _streams(settings: Settings) -> tuple[str, int, int]:
    nc = await connect_nats(settings, name="tieline-bootstrap")
    try:
        info = await ensure_streams(nc.jetstream(), settings)
        name = info.config.name or settings.stream_name
        return name, int(info.config.num_replicas or 1), int(info.state.last_seq)
    finally:
        await nc.close()


async def _admin_token(
    settings: Settings, workspace: str, given: str | None
) -> tuple[str | None, str | None]:
    """(plaintext, None) for a given or new token; (None, id) when a bootstrap token exists."""
    conn = await db.connect(settings)
    try:
        await ensure_state_schema(conn, settings.database_schema)
        if given:
            return await create_token(conn, workspace, "admin", BOOTSTRAP_TOKEN_NAME, given), None
        for token_id, _ws, role, name, _created, revoked in await list_tokens(conn, workspace):
            if role == "admin" and name == BOOTSTRAP_TOKEN_NAME and revoked is None:
                return None, str(token_id)
        return await create_token(conn, workspace, "admin", BOOTSTRAP_TOKEN_NAME), None
    finally:
        await conn.close()


async def _retry(what: str, step: Any, deadline: float, policy: Policy) -> Any:
    """Run the coroutine function ``step`` until it succeeds or ``deadline`` passes, waiting
    between attempts as ``policy`` says. A ValueError (a malformed token or setting) ends it at
    once: retrying cannot help."""

    def logged(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("bootstrap.retry", step=what, attempt=state.attempt_number, error=repr(error))

    retrying = policy.retrying(
        # Exception only: a cancellation (a BaseException) must end the wait, not be retried.
        retry_if_exception(lambda e: isinstance(e, Exception) and not isinstance(e, ValueError)),
        deadline_s=max(deadline - time.monotonic(), 0.0),
        on_retry=logged,
    )

    # A coroutine function, not a lambda returning a coroutine: tenacity awaits the result
    # only when the function itself is ``async def``.
    async def attempt() -> Any:
        return await asyncio.wait_for(step(), timeout=max(deadline - time.monotonic(), 1.0))

    try:
        return await retrying(attempt)
    except ValueError:
        raise
    except Exception as exc:
        raise RuntimeError(f"bootstrap: {what} failed: {type(exc).__name__}: {exc}") from exc


async def bootstrap(
    settings: Settings, *, admin_token: str | None, workspace: str = "default", wait_s: float = 120
) -> BootstrapResult:
    """Streams, state tables and the first admin token (see the module docstring)."""
    deadline = time.monotonic() + wait_s
    stream, replicas, last_seq = await _retry("streams", lambda: _streams(settings), deadline, NATS)
    token, existing = await _retry(
        "admin token", lambda: _admin_token(settings, workspace, admin_token), deadline, POSTGRES
    )
    log.info("bootstrap.done", stream=stream, replicas=replicas, last_seq=last_seq)
    return BootstrapResult(stream, replicas, last_seq, workspace, token, existing)
