"""Webhook endpoints, deliveries and attempts in PostgreSQL (the state schema: they are not
rebuildable from the log). Every query is scoped by workspace where a client names one."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import AsyncConnection
from tieline.plumbing.crypto import seal, unseal

Row = dict[str, Any]

ENDPOINT_COLS = """endpoint_id, workspace_id, url, kinds, description, created_by, created_at,
    consecutive_failures, disabled_at, disabled_reason"""
DELIVERY_COLS = """id, delivery_id, endpoint_id, position, kind, status, attempts,
    next_attempt_at, last_status, last_error, created_at, delivered_at, body"""


def secret_purpose(ws: str, endpoint_id: str) -> str:
    return f"webhook/{ws}/{endpoint_id}"


async def create_endpoint(
    conn: AsyncConnection[Any],
    ws: str,
    url: str,
    kinds: list[str],
    description: str | None,
    secret: str,
    master_key: bytes,
    actor: str,
) -> Row:
    """Register an endpoint; its secret is stored sealed under the master key."""
    endpoint_id = "ep_" + secrets.token_hex(8)
    sealed = seal(master_key, secret_purpose(ws, endpoint_id), secret.encode())
    cur = await conn.execute(
        f"""INSERT INTO webhook_endpoints (endpoint_id, workspace_id, url, kinds, description,
                secret, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s)
            RETURNING {ENDPOINT_COLS}""",
        (endpoint_id, ws, url, kinds, description, sealed, actor),
    )
    row: Row | None = await cur.fetchone()
    assert row is not None
    return row


async def endpoints(conn: AsyncConnection[Any], ws: str) -> list[Row]:
    cur = await conn.execute(
        f"SELECT {ENDPOINT_COLS} FROM webhook_endpoints WHERE workspace_id = %s "
        "ORDER BY created_at, endpoint_id",
        (ws,),
    )
    return list(await cur.fetchall())


async def endpoint(conn: AsyncConnection[Any], ws: str, endpoint_id: str) -> Row | None:
    cur = await conn.execute(
        f"SELECT {ENDPOINT_COLS} FROM webhook_endpoints WHERE workspace_id = %s "
        "AND endpoint_id = %s",
        (ws, endpoint_id),
    )
    row: Row | None = await cur.fetchone()
    return row


async def delete_endpoint(conn: AsyncConnection[Any], ws: str, endpoint_id: str) -> bool:
    """Delete an endpoint with its deliveries and attempts."""
    cur = await conn.execute(
        "DELETE FROM webhook_endpoints WHERE workspace_id = %s AND endpoint_id = %s",
        (ws, endpoint_id),
    )
    return cur.rowcount > 0


async def enable_endpoint(conn: AsyncConnection[Any], ws: str, endpoint_id: str) -> Row | None:
    """Enable a disabled endpoint again, its failure count cleared."""
    cur = await conn.execute(
        f"""UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL,
                consecutive_failures = 0
            WHERE workspace_id = %s AND endpoint_id = %s RETURNING {ENDPOINT_COLS}""",
        (ws, endpoint_id),
    )
    row: Row | None = await cur.fetchone()
    return row


async def deliveries(
    conn: AsyncConnection[Any], endpoint_id: str, status: str | None, after_id: int, limit: int
) -> list[Row]:
    """A page of an endpoint's deliveries, newest first (``after_id``: below this id, 0 for
    the first page), each with its attempts."""
    cur = await conn.execute(
        f"""SELECT {DELIVERY_COLS} FROM webhook_deliveries
             WHERE endpoint_id = %s AND (%s::text IS NULL OR status = %s)
               AND (%s = 0 OR id < %s)
             ORDER BY id DESC LIMIT %s""",
        (endpoint_id, status, status, after_id, after_id, limit),
    )
    rows = list(await cur.fetchall())
    ids = [r["delivery_id"] for r in rows]
    cur = await conn.execute(
        """SELECT delivery_id, at, duration_ms, status_code, error, manual FROM webhook_attempts
            WHERE delivery_id = ANY(%s) ORDER BY id""",
        (ids,),
    )
    attempts: dict[str, list[Row]] = {i: [] for i in ids}
    for a in await cur.fetchall():
        attempts[a.pop("delivery_id")].append(a)
    for r in rows:
        r["attempt_log"] = attempts[r["delivery_id"]]
    return rows


async def redeliver(
    conn: AsyncConnection[Any], ws: str, endpoint_id: str, delivery_id: str
) -> Row | None:
    """Schedule a delivery again now, as a manual redelivery (sent even to a disabled endpoint,
    with a fresh retry budget)."""
    cur = await conn.execute(
        f"""UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(),
                lease_until = NULL, manual = true, attempts = 0
            WHERE workspace_id = %s AND endpoint_id = %s AND delivery_id = %s
            RETURNING {DELIVERY_COLS}""",
        (ws, endpoint_id, delivery_id),
    )
    row: Row | None = await cur.fetchone()
    return row


# -- the delivery process ----------------------------------------------------------------------


async def active_endpoints(conn: AsyncConnection[Any], workspaces: list[str]) -> list[Row]:
    """The enabled endpoints of ``workspaces`` (id, workspace, kinds)."""
    cur = await conn.execute(
        "SELECT endpoint_id, workspace_id, kinds FROM webhook_endpoints "
        "WHERE disabled_at IS NULL AND workspace_id = ANY(%s)",
        (workspaces,),
    )
    return list(await cur.fetchall())


def body_of(kind: str, at: Any, data: dict[str, Any]) -> str:
    """The JSON body Standard Webhooks recommends: ``type``, ``timestamp``, ``data``."""
    return orjson.dumps({"type": kind, "timestamp": at.isoformat(), "data": data}).decode()


async def enqueue(conn: AsyncConnection[Any], items: list[tuple[str, str, str, str, str]]) -> int:
    """Record deliveries (endpoint, workspace, position, kind, body); one per endpoint and
    position however often a change is handed over (at-least-once upstream)."""
    if not items:
        return 0
    rows = [("msg_" + secrets.token_urlsafe(16).replace("-", "x"), *i) for i in items]
    async with conn.cursor() as cur:
        await cur.executemany(
            """INSERT INTO webhook_deliveries (delivery_id, endpoint_id, workspace_id, position,
                   kind, body) VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (endpoint_id, position) DO NOTHING""",
            rows,
        )
    return len(rows)


@dataclass(frozen=True)
class Due:
    """A delivery claimed for one attempt."""

    delivery_id: str
    endpoint_id: str
    workspace_id: str
    body: str
    attempts: int
    manual: bool
    url: str
    sealed_secret: bytes

    def secret(self, master_key: bytes) -> str:
        purpose = secret_purpose(self.workspace_id, self.endpoint_id)
        return unseal(master_key, purpose, self.sealed_secret).decode()


async def claim_due(conn: AsyncConnection[Any], limit: int, lease_s: float) -> list[Due]:
    """Deliveries due now, leased for one attempt (another delivery process skips them): of
    enabled endpoints, or manual redeliveries."""
    cur = await conn.execute(
        """WITH due AS (
               SELECT d.delivery_id FROM webhook_deliveries d
                 JOIN webhook_endpoints e USING (endpoint_id)
                WHERE d.status = 'pending' AND d.next_attempt_at <= now()
                  AND (d.lease_until IS NULL OR d.lease_until < now())
                  AND (e.disabled_at IS NULL OR d.manual)
                ORDER BY d.next_attempt_at LIMIT %s
                FOR UPDATE OF d SKIP LOCKED)
           UPDATE webhook_deliveries d SET lease_until = now() + %s * interval '1 second'
             FROM due, webhook_endpoints e
            WHERE d.delivery_id = due.delivery_id AND e.endpoint_id = d.endpoint_id
           RETURNING d.delivery_id, d.endpoint_id, d.workspace_id, d.body, d.attempts, d.manual,
                     e.url, e.secret""",
        (limit, lease_s),
    )
    return [
        Due(
            r["delivery_id"],
            r["endpoint_id"],
            r["workspace_id"],
            r["body"],
            r["attempts"],
            r["manual"],
            r["url"],
            bytes(r["secret"]),
        )
        for r in await cur.fetchall()
    ]


async def record_attempt(
    conn: AsyncConnection[Any],
    due: Due,
    status_code: int | None,
    error: str | None,
    duration_ms: float,
) -> None:
    await conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, duration_ms, status_code, error, manual) "
        "VALUES (%s, %s, %s, %s, %s)",
        (due.delivery_id, duration_ms, status_code, error, due.manual),
    )


async def succeeded(conn: AsyncConnection[Any], due: Due, status_code: int) -> None:
    """The receiver took it: the delivery is done and the endpoint's failure streak ends."""
    await conn.execute(
        """UPDATE webhook_deliveries SET status = 'succeeded', attempts = attempts + 1,
               delivered_at = now(), lease_until = NULL, manual = false, last_status = %s,
               last_error = NULL WHERE delivery_id = %s""",
        (status_code, due.delivery_id),
    )
    await conn.execute(
        "UPDATE webhook_endpoints SET consecutive_failures = 0 WHERE endpoint_id = %s",
        (due.endpoint_id,),
    )


async def failure_streak(conn: AsyncConnection[Any], endpoint_id: str) -> tuple[int, bool]:
    """Count one more failed attempt of the endpoint: (consecutive failures, disabled?)."""
    cur = await conn.execute(
        "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1 "
        "WHERE endpoint_id = %s RETURNING consecutive_failures, disabled_at",
        (endpoint_id,),
    )
    row = await cur.fetchone()
    if row is None:  # deleted meanwhile
        return 0, True
    return int(row["consecutive_failures"]), row["disabled_at"] is not None


async def disable(conn: AsyncConnection[Any], endpoint_id: str, reason: str) -> None:
    """Disable the endpoint with ``reason``; its pending deliveries fail with it (an admin
    can redeliver them from the log)."""
    await conn.execute(
        "UPDATE webhook_endpoints SET disabled_at = now(), disabled_reason = %s "
        "WHERE endpoint_id = %s AND disabled_at IS NULL",
        (reason, endpoint_id),
    )
    await conn.execute(
        """UPDATE webhook_deliveries SET status = 'failed', lease_until = NULL,
               last_error = coalesce(last_error || '; ', '') || 'endpoint disabled: ' || %s
            WHERE endpoint_id = %s AND status = 'pending' AND NOT manual
              AND (lease_until IS NULL OR lease_until < now())""",
        (reason, endpoint_id),
    )


async def failed(
    conn: AsyncConnection[Any],
    due: Due,
    status_code: int | None,
    error: str,
    retry_in_s: float | None,
) -> None:
    """Record a failed attempt: try again in ``retry_in_s`` seconds, or (None) give up."""
    await conn.execute(
        """UPDATE webhook_deliveries SET attempts = attempts + 1, lease_until = NULL,
               manual = false, last_status = %s, last_error = %s,
               status = CASE WHEN %s::float8 IS NULL THEN 'failed' ELSE 'pending' END,
               next_attempt_at = now() + coalesce(%s::float8, 0) * interval '1 second'
            WHERE delivery_id = %s""",
        (status_code, error, retry_in_s, retry_in_s, due.delivery_id),
    )


async def forget_old(conn: AsyncConnection[Any], older_than_s: float) -> int:
    """Delete finished deliveries (and their attempts) older than ``older_than_s``."""
    cur = await conn.execute(
        "DELETE FROM webhook_deliveries WHERE status <> 'pending' "
        "AND created_at < now() - %s * interval '1 second'",
        (older_than_s,),
    )
    return cur.rowcount
