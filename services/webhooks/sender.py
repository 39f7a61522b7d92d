"""One attempt of one delivery: check where it goes, sign it, POST it, record the outcome.

A ``2xx`` answer is success. Anything else (another status, a redirect, which is never
followed, a timeout, a refused or reset connection, a URL the SSRF guard refuses) is a failed
attempt: the delivery is tried again after an exponentially growing wait with random jitter
(tenacity's ``wait_exponential_jitter``; a longer ``Retry-After`` wins), until
``webhook_max_attempts``. Every failed attempt also extends the endpoint's streak of
consecutive failures; at ``webhook_disable_after`` (or at once on ``410 Gone``, as the Standard
Webhooks spec asks) the endpoint is disabled with the reason, and its pending deliveries fail
with it. Every attempt is kept in the delivery log.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import structlog
from tenacity import RetryCallState, Retrying, wait_exponential_jitter
from tieline.plumbing.config import Settings
from tieline.services.webhooks import store
from tieline.services.webhooks.signing import headers
from tieline.services.webhooks.ssrf import Policy, Resolver, UrlRefused, check_url, system_resolver

log = structlog.get_logger(__name__)

USER_AGENT = "tieline-webhooks/1"


def policy_of(settings: Settings) -> Policy:
    return Policy(settings.webhook_allow_loopback, settings.webhook_allow_private)


def retry_wait(settings: Settings, attempt: int) -> float:
    """Seconds before the next attempt after ``attempt`` failed ones: backoff * 2^(n-1) plus
    up to ``backoff`` of random jitter, at most ``webhook_backoff_max_s``."""
    wait = wait_exponential_jitter(
        multiplier=settings.webhook_backoff_s,
        max=settings.webhook_backoff_max_s,
        jitter=settings.webhook_backoff_s,
    )
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = attempt
    return float(wait(state))


def retry_after(response: httpx.Response) -> float | None:
    """The receiver's ``Retry-After`` in seconds (only the delay form)."""
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


class Sender:
    """Sends claimed deliveries; the pool is the state schema's."""

    def __init__(
        self,
        settings: Settings,
        pool: Any,
        master_key: bytes | None,
        resolve: Resolver = system_resolver,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.master_key = master_key
        self.resolve = resolve
        self.client = httpx.AsyncClient(
            timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def attempt(self, due: store.Due) -> None:
        """Send ``due`` once and record what happened."""
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        wait_hint: float | None = None
        try:
            status, wait_hint = await self._post(due)
            if not 200 <= status < 300:
                error = f"HTTP {status}" + (
                    " (redirects are not followed)" if 300 <= status < 400 else ""
                )
        except UrlRefused as exc:
            error = f"refused: {exc}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # a bug or a missing master key: recorded, retried later
            error = f"{type(exc).__name__}: {exc}"
            log.exception("webhooks.attempt_failed", delivery_id=due.delivery_id)
        elapsed_ms = (time.perf_counter() - started) * 1000
        async with self.pool.connection() as conn, conn.transaction():
            await store.record_attempt(conn, due, status, error, elapsed_ms)
            if error is None:
                assert status is not None
                await store.succeeded(conn, due, status)
            else:
                await self._failed(conn, due, status, error, wait_hint)
        log.info(
            "webhooks.attempt",
            delivery_id=due.delivery_id,
            endpoint_id=due.endpoint_id,
            status=status,
            error=error,
            ms=round(elapsed_ms, 1),
        )

    async def _post(self, due: store.Due) -> tuple[int, float | None]:
        if self.master_key is None:
            raise RuntimeError("webhook secrets need TIELINE_MASTER_KEY")
        target = await check_url(due.url, policy_of(self.settings), self.resolve)
        body = due.body.encode()
        sent = headers(due.secret(self.master_key), due.delivery_id, int(time.time()), body)
        port = httpx.URL(due.url).port
        sent["host"] = target.host if port is None else f"{target.host}:{port}"
        sent["user-agent"] = USER_AGENT
        async with self.client.stream(
            "POST",
            target.url,
            content=body,
            headers=sent,
            extensions={"sni_hostname": target.host},
        ) as response:
            return response.status_code, retry_after(response)

    async def _failed(
        self, conn: Any, due: store.Due, status: int | None, error: str, hint: float | None
    ) -> None:
        streak, disabled = await store.failure_streak(conn, due.endpoint_id)
        reason = None
        if status == 410:
            reason = "the receiver answered 410 Gone"
        elif streak >= self.settings.webhook_disable_after:
            reason = f"{streak} consecutive failed attempts; the last: {error}"
        if reason is not None and not disabled:
            await store.disable(conn, due.endpoint_id, reason)
            log.warning("webhooks.endpoint_disabled", endpoint_id=due.endpoint_id, reason=reason)
            disabled = True
            error = f"{error}; endpoint disabled: {reason}"
        attempts = due.attempts + 1
        retry_in: float | None = None
        if not disabled and attempts < self.settings.webhook_max_attempts:
            retry_in = max(retry_wait(self.settings, attempts), hint or 0.0)
            retry_in = min(retry_in, self.settings.webhook_backoff_max_s)
        await store.failed(conn, due, status, error, retry_in)
