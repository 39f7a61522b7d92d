"""Rate limits shared by every api process, keyed on the real client (and the token).

The counters live in PostgreSQL (``rate_limits``, an unlogged table of the state schema,
plumbing/migrations/versions/v0003_rate_limits.py): one ``INSERT ... ON CONFLICT DO UPDATE``
counts a hit atomically and returns the total of every process in the current fixed window,
and the database's clock places the windows, so processes with skewed clocks agree. (NATS KV
was the other candidate: it has no atomic increment, so each hit would be a read and a
compare-and-set retried under contention, and it would add a bucket to provision.)

Two limits:

* **failed authentications per client address** (``TIELINE_AUTH_FAILURES_PER_MINUTE``): when
  the window's total passes the limit, the client gets 429 with ``Retry-After`` until the
  window ends, whatever it sends, on every api process. A process learns it from its own
  failure count or from the blocklist it reloads every ``refresh_s`` (a small query: only
  clients over the limit), so a client's total in one window is at most the limit plus one
  guess per process. Requests that authenticate cost no query.
* **requests per token and client** (``TIELINE_REQUESTS_PER_MINUTE``, off by default): every
  authenticated request counts one hit; past the limit, 429 with ``Retry-After``.

"The client" is ``request.client.host``: the peer address, or the address a trusted proxy put
in ``X-Forwarded-For`` when uvicorn runs with ``forwarded_allow_ips``
(``TIELINE_FORWARDED_ALLOW_IPS``; services/runtime/run.py). Without it, every client behind an
ingress would share the ingress's address and one bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: Count one hit in the current window of ``bucket``; the total and the seconds left in it.
HIT = """
INSERT INTO rate_limits AS r (bucket, window_start, hits)
VALUES (%(bucket)s, to_timestamp(floor(extract(epoch FROM now()) / %(w)s) * %(w)s), 1)
ON CONFLICT (bucket, window_start) DO UPDATE SET hits = r.hits + 1
RETURNING hits, extract(epoch FROM r.window_start - now()) + %(w)s AS left_s
"""

#: The buckets over ``limit`` in the current window (the blocklist) and the seconds left.
OVER = """
SELECT bucket, extract(epoch FROM window_start - now()) + %(w)s AS left_s FROM rate_limits
WHERE window_start = to_timestamp(floor(extract(epoch FROM now()) / %(w)s) * %(w)s)
  AND bucket LIKE %(prefix)s AND hits > %(limit)s
"""

FAILURES = "auth-failures:"
REQUESTS = "requests:"


class SharedLimiter:
    """The api's rate limits, counted in PostgreSQL across processes.

    ``connections`` gives the owner-role connections (``system()``): the counters are not
    workspace data and a failed authentication has no workspace.
    """

    def __init__(
        self,
        connections: Any,
        *,
        auth_failures: int,
        requests: int = 0,
        window_s: float = 60.0,
        refresh_s: float = 1.0,
    ) -> None:
        self.connections = connections
        self.auth_failures, self.requests = auth_failures, requests
        self.window_s, self.refresh_s = window_s, refresh_s
        self._blocked: dict[str, float] = {}  # client -> monotonic time its block ends
        self._task: asyncio.Task[None] | None = None

    async def _hit(self, bucket: str) -> tuple[int, float]:
        async with self.connections.system() as conn:
            cur = await conn.execute(HIT, {"bucket": bucket, "w": self.window_s})
            row = await cur.fetchone()
        return int(row["hits"]), max(float(row["left_s"]), 0.0)

    def blocked(self, client: str) -> float | None:
        """Seconds until ``client`` may authenticate again, or None when it may now."""
        until = self._blocked.get(client)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            self._blocked.pop(client, None)
            return None
        return left

    async def failed(self, client: str) -> float | None:
        """Count a failed authentication of ``client``; the seconds it is blocked for when
        this failure took it past the limit (every process's failures count)."""
        hits, left = await self._hit(FAILURES + client)
        if hits <= self.auth_failures:
            return None
        self._block(client, left)
        return left

    async def request(self, token_id: str, client: str) -> float | None:
        """Count an authenticated request; the seconds to wait when the token's requests from
        ``client`` passed the limit in this window (None: go ahead, or no limit set)."""
        if self.requests <= 0:
            return None
        hits, left = await self._hit(f"{REQUESTS}{token_id}:{client}")
        return left if hits > self.requests else None

    def _block(self, client: str, left_s: float) -> None:
        if len(self._blocked) > 100_000:  # bound memory under a spray of client addresses
            self._blocked.clear()
        self._blocked[client] = time.monotonic() + left_s

    async def refresh(self) -> None:
        """Reload the blocklist (clients over the failure limit on any process) and delete
        counters of windows that have passed."""
        async with self.connections.system() as conn:
            cur = await conn.execute(
                OVER, {"w": self.window_s, "prefix": FAILURES + "%", "limit": self.auth_failures}
            )
            for row in await cur.fetchall():
                self._block(row["bucket"].removeprefix(FAILURES), max(float(row["left_s"]), 0.0))
            await conn.execute(
                "DELETE FROM rate_limits WHERE window_start < now() - %s * interval '1 second'",
                (2 * self.window_s,),
            )

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # database restarting: keep the blocklist we have
                log.warning("api.rate_limit_refresh_failed", error=str(exc))
            await asyncio.sleep(self.refresh_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
