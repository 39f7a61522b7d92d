"""Attempts of deliveries: check where each goes, sign it, POST it, record the outcome.

A ``2xx`` answer is success. Anything else (another status, a redirect, which is never
followed, a timeout, a refused or reset connection, a URL the SSRF guard refuses) is a failed
attempt: the delivery is tried again after an exponentially growing wait with random jitter
(tenacity's ``wait_exponential_jitter``; a longer ``Retry-After`` wins), until
``webhook_max_attempts``. Every attempt is kept in the delivery log.

**Time.** One attempt (resolving, connecting, sending, waiting for the answer's head) takes at
most ``webhook_timeout_s`` in all: httpx's timeouts bound each phase, so a receiver that
trickles a byte now and then could otherwise hold an attempt for ever. Attempts run side by
side, up to ``webhook_concurrency``, and a slot freed is filled at once (no batch waits for its
slowest member); at most a quarter of the slots (at least one) go to one endpoint at a time, so
a slow receiver delays its own deliveries, not other endpoints'.

**Disabling.** An endpoint that keeps failing is disabled (with the reason); the rule counts
failed attempts *in time order*: a failure extends the endpoint's streak only when the
endpoint's last *counted* failure was recorded before this attempt was claimed. Sixteen
attempts that time out together are one observation of a failing receiver, not sixteen; a
pipeline of attempts that keep failing counts about one failure per attempt's duration. A
counted attempt records its place in the streak (``webhook_attempts.counted``, migration
0009) and says so in the delivery log ("... (counts towards disabling: failure 3 in a row)").
A ``429 Too Many Requests`` does
not count (the receiver is there and asks for less); ``502``/``503``/``504``, other statuses,
timeouts and refused connections count one each, like a timeout. Any success ends the streak.
The endpoint is disabled when the streak reaches ``webhook_disable_after`` *and* it has been
failing (since the streak's first counted failure) for at least as long as one delivery's
first that-many (at most ``webhook_max_attempts``) retry waits would last, so a receiver that
is away for a restart while a backlog fails quickly is not disabled; at once on ``410 Gone``,
as the Standard Webhooks spec asks. A disabled endpoint's deliveries are held until it is
enabled again (services/webhooks/store.py); manual redeliveries are sent to it meanwhile,
retried like any delivery, and never count towards a streak nor disable it (not even a 410).

**Retry-After** (seconds or an HTTP date) on a ``429`` or ``503`` holds back every delivery of
the endpoint that is not in flight for that long (at most ``webhook_backoff_max_s``); on any
failure it is the least wait before that delivery's next attempt.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog
from tenacity import RetryCallState, Retrying, wait_exponential_jitter
from tieline.plumbing.config import Settings
from tieline.plumbing.crypto import MasterKey
from tieline.services.webhooks import store
from tieline.services.webhooks.lookups import Lookup, Lookups, system_lookup
from tieline.services.webhooks.signing import headers
from tieline.services.webhooks.ssrf import Policy, Resolver, Target, UrlRefused, check_url

log = structlog.get_logger(__name__)

USER_AGENT = "tieline-webhooks/1"
#: Answers after which the receiver asked for quiet: their Retry-After holds the endpoint.
PAUSING = (429, 503)
#: How long connecting to an address that is not the host's last may take before the next
#: one is tried. Without it an address that drops packets (a broken IPv6 route, a firewall)
#: took the attempt's whole time and the working address after it was never reached.
#: Happy Eyeballs (RFC 8305) races addresses 250 ms apart; tried one at a time we wait
#: longer, for a path that lost a SYN or two (Linux resends at 1 s and 3 s).
NEXT_ADDRESS_AFTER_S = 3.0


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


def disable_span_s(settings: Settings) -> float:
    """How long an endpoint must have taken nothing before its streak may disable it: the
    retry waits (without jitter) of one delivery's first ``webhook_disable_after`` attempts
    (at most ``webhook_max_attempts``)."""
    n = min(settings.webhook_disable_after, settings.webhook_max_attempts)
    base, top = settings.webhook_backoff_s, settings.webhook_backoff_max_s
    return sum(min(base * 2.0 ** min(k, 60), top) for k in range(n - 1))


DEFAULT_PORTS = {"https": 443, "http": 80}


def host_header(target: Target) -> str:
    """The Host header (RFC 9110, 7.2): the checked host name, an IPv6 literal in brackets,
    and the port only when the URL gives one other than its scheme's default. Built from the
    checked URL, not by httpx: it refuses some names that IDNA maps."""
    scheme, port = target.template[0], target.template[1]
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if port in (None, DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"


def interleaved(addresses: Sequence[str]) -> list[str]:
    """The addresses with the two families alternating, the resolver's first family first
    and each family in the resolver's order (RFC 8305, section 4): getaddrinfo lists every
    IPv6 address first, and a host whose IPv6 path is broken would cost every one of them
    its wait before an IPv4 address is tried."""
    first = ":" in addresses[0] if addresses else False
    same = [a for a in addresses if (":" in a) == first]
    other = [a for a in addresses if (":" in a) != first]
    out: list[str] = []
    for pair in itertools.zip_longest(same, other):
        out += [a for a in pair if a is not None]
    return out


def connect_budget(remaining_s: float, addresses_left: int) -> float:
    """How long connecting to the next address may take: the last one left has all the time
    that remains; one before it at most :data:`NEXT_ADDRESS_AFTER_S` and no more than its
    share of the time left, counting the last address twice (it must also send and hear the
    answer), so a long list of addresses that drop packets still leaves the last ones time."""
    if addresses_left <= 1:
        return remaining_s
    return min(NEXT_ADDRESS_AFTER_S, remaining_s / (addresses_left + 1))


def per_endpoint(settings: Settings) -> int:
    """Attempts in flight to one endpoint at most: a quarter of the slots, at least one."""
    return max(1, settings.webhook_concurrency // 4)


def retry_after(response: httpx.Response) -> float | None:
    """The receiver's ``Retry-After`` in seconds (a delay or an HTTP date), None if absent or
    unreadable. Only ASCII digits are a delay: ``str.isdigit`` also takes "²", which
    ``float`` refuses."""
    value = response.headers.get("retry-after", "").strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Sender:
    """Sends claimed deliveries; the pool is the state schema's. :meth:`send_due` starts
    attempts in free slots; ``wake`` is set whenever a slot frees up."""

    def __init__(
        self,
        settings: Settings,
        pool: Any,
        master_key: MasterKey | None,
        resolve: Resolver | None = None,
        lookup: Lookup = system_lookup,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.master_key = master_key
        #: Host lookups in the sender's own threads, one per host at a time, shared.
        self.lookups = Lookups(lookup)
        self.resolve = resolve or self.lookups.resolve
        self.client = httpx.AsyncClient(
            timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False
        )
        self.wake = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Let the attempts in flight finish (each is bounded), then close the client."""
        if self._sending:
            await asyncio.wait(self._sending, timeout=self.settings.webhook_timeout_s + 5)
        for task in self._sending:
            task.cancel()
        await self.client.aclose()
        self.lookups.close()

    async def send_due(self) -> int:
        """Claim due deliveries for the free slots and start their attempts; how many."""
        free = self.settings.webhook_concurrency - len(self._sending)
        if free <= 0:
            return 0
        lease_s = self.settings.webhook_timeout_s + 30  # the attempt's bound, and then some
        async with self.pool.connection() as conn:
            due = await store.claim_due(conn, free, lease_s, per_endpoint(self.settings))
        for d in due:
            task = asyncio.create_task(self._attempt_logged(d))
            self._sending.add(task)
            task.add_done_callback(self._finished)
        return len(due)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self.wake.set()

    async def _attempt_logged(self, due: store.Due) -> None:
        try:
            await self.attempt(due)
        except Exception as exc:  # PostgreSQL away: the lease runs out, the attempt is redone
            log.warning("webhooks.record_failed", delivery_id=due.delivery_id, error=repr(exc))

    async def attempt(self, due: store.Due) -> None:
        """Send ``due`` once (at most ``webhook_timeout_s`` in all) and record what happened.
        Our own resolver's trouble (the time running out while resolving, or a resolver that
        cannot answer now, EAI_AGAIN, as a hung lookup ends) is recorded as a failed attempt
        that does not count towards disabling the endpoint
        (services/webhooks/lookups.py)."""
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        wait_hint: float | None = None
        resolving, counts = True, True
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s) as limit:
                if self.master_key is None:
                    raise RuntimeError("webhook secrets need TIELINE_MASTER_KEY")
                target = await check_url(due.url, policy_of(self.settings), self.resolve)
                resolving = False
                deadline = limit.when()
                assert deadline is not None  # asyncio.timeout was given a delay
                status, wait_hint = await self._post(due, target, self.master_key, deadline)
            if not 200 <= status < 300:
                error = f"HTTP {status}" + (
                    " (redirects are not followed)" if 300 <= status < 400 else ""
                )
        except TimeoutError:
            bound = self.settings.webhook_timeout_s
            error = f"timed out: no answer within {bound:g} s"
            if resolving:  # our resolver's, not the receiver's
                error, counts = f"timed out resolving the host within {bound:g} s", False
        except UrlRefused as exc:
            error, counts = f"refused: {exc}", not exc.temporary
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # a bug or a missing master key: recorded, retried later
            error = f"{type(exc).__name__}: {exc}"
            log.exception("webhooks.attempt_failed", delivery_id=due.delivery_id)
        elapsed_ms = (time.perf_counter() - started) * 1000
        await self._record(due, status, error, wait_hint, elapsed_ms, counts)
        log.info(
            "webhooks.attempt",
            delivery_id=due.delivery_id,
            endpoint_id=due.endpoint_id,
            status=status,
            error=error,
            ms=round(elapsed_ms, 1),
        )

    async def _post(
        self, due: store.Due, target: Target, master_key: MasterKey, deadline: float
    ) -> tuple[int, float | None]:
        """POST to the checked addresses, IPv6 and IPv4 interleaved (:func:`interleaved`),
        the next one only when a connection could not be made (nothing was sent): refused, or
        not made within its share of the time left (:func:`connect_budget`); ``deadline``:
        the attempt's end, in the event loop's time."""
        body = due.body.encode()
        sent = headers(due.secrets(master_key), due.delivery_id, int(time.time()), body)
        sent["host"] = host_header(target)
        sent["user-agent"] = USER_AGENT
        bound = self.settings.webhook_timeout_s
        order = interleaved(target.addresses)
        loop = asyncio.get_running_loop()
        for n, address in enumerate(order, start=1):
            connect = connect_budget(deadline - loop.time(), len(order) - n + 1)
            try:
                async with self.client.stream(
                    "POST",
                    target.url_for(address),
                    content=body,
                    headers=sent,
                    timeout=httpx.Timeout(bound, connect=max(connect, 0.001)),
                    extensions={"sni_hostname": target.host},
                ) as response:
                    return response.status_code, retry_after(response)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if n == len(order):
                    raise
        raise AssertionError("check_url returns at least one address")

    async def _record(
        self,
        due: store.Due,
        status: int | None,
        error: str | None,
        hint: float | None,
        elapsed_ms: float,
        counts: bool = True,
    ) -> None:
        """Record the attempt and its outcome; ``counts``: False when the failure is our own
        doing (our resolver), never the endpoint's."""
        async with self.pool.connection() as conn, conn.transaction():
            endpoint = await store.lock_endpoint(conn, due.endpoint_id)
            if error is None:
                assert status is not None
                await store.record_attempt(conn, due, status, None, elapsed_ms)
                await store.succeeded(conn, due, status)
                return
            streak, reason = None, None
            if counts:
                streak, reason = await self._disable_reason(conn, due, endpoint, status)
            logged = error if streak is None else error + store.counted_note(streak)
            await store.record_attempt(conn, due, status, logged, elapsed_ms, streak)
            if reason is not None:
                await store.disable(conn, due.endpoint_id, reason + f"; the last: {error}")
                log.warning(
                    "webhooks.endpoint_disabled", endpoint_id=due.endpoint_id, reason=reason
                )
                error = f"{error}; endpoint disabled: {reason}"
            await self._failed(conn, due, status, error, hint)

    async def _disable_reason(
        self, conn: Any, due: store.Due, endpoint: store.Row | None, status: int | None
    ) -> tuple[int | None, str | None]:
        """Count the failure in the endpoint's streak (see the module's docstring): the
        streak's length when it counted (None when not), and why the endpoint is to be
        disabled now (None: it is not). A manual redelivery never counts, nor disables, not
        even on a 410; a failure counts only when the endpoint's last *counted* failure was
        recorded before this attempt was claimed (failures overlapping a counted one observed
        the same failing receiver), so a pipeline counts about one per attempt's duration."""
        if due.manual or endpoint is None or endpoint["disabled_at"] is not None:
            return None, None  # a redelivery by hand, deleted, or disabled already
        if status == 410:
            return None, "the receiver answered 410 Gone"
        if status == 429 or store.overlapped(endpoint, due):
            return None, None
        streak = await store.extend_streak(conn, due.endpoint_id)
        if streak < self.settings.webhook_disable_after:
            return streak, None
        failing_s = await store.failing_for_s(conn, due.endpoint_id)
        if failing_s < disable_span_s(self.settings):
            return streak, None
        return streak, f"{streak} consecutive failed attempts over {failing_s:.0f} s"

    async def _failed(
        self, conn: Any, due: store.Due, status: int | None, error: str, hint: float | None
    ) -> None:
        top = self.settings.webhook_backoff_max_s
        if hint is not None:
            hint = min(hint, top)
            if status in PAUSING:
                await store.pause(conn, due.endpoint_id, hint)
        attempts = due.attempts + 1
        retry_in: float | None = None
        if attempts < self.settings.webhook_max_attempts:
            retry_in = min(max(retry_wait(self.settings, attempts), hint or 0.0), top)
        await store.failed(conn, due, status, error, retry_in)
