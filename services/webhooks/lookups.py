"""The sender's own DNS resolver: host lookups that cannot starve one another.

``getaddrinfo`` blocks a thread, and a timeout around it stops the wait, not the thread: a name
whose DNS server does not answer holds a thread for as long as the system resolver tries (tens
of seconds). In the event loop's shared default executor, the lookups of one such endpoint
(every attempt of its backlog) would take every thread and every other endpoint's lookups
would queue behind them. So the sender resolves in a pool of its own threads with at most
*one* lookup per host name running at a time: attempts for a host whose lookup is running
wait for that lookup and share its answer (several attempts to one receiver at once are the
normal case, and each used to start its own). A stuck name holds one thread, not the pool.

A timeout while resolving (the attempt's time running out in our resolver) is our resolver's
trouble, not a failure of the receiver's: it never counts towards disabling the endpoint
(services/webhooks/sender.py).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tieline.services.webhooks.ssrf import addresses_of

#: Threads for lookups (each stuck host name holds at most one).
THREADS = 32

#: Resolves (host, port) to its addresses, blocking (the default asks getaddrinfo).
Lookup = Callable[[str, int], list[str]]


def system_lookup(host: str, port: int) -> list[str]:
    """The host's addresses from getaddrinfo, in its order (its preference), each once."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return addresses_of(infos)


class Lookups:
    """Resolves in its own threads, one lookup per host name at a time (see the module)."""

    def __init__(self, lookup: Lookup = system_lookup, threads: int = THREADS) -> None:
        self.lookup = lookup
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook-dns")
        self._running: dict[str, asyncio.Future[list[str]]] = {}

    async def resolve(self, host: str, port: int) -> list[str]:
        """The host's addresses (a :data:`ssrf.Resolver`): from the lookup of that host name
        already running, else from a new one. A cancelled wait (the attempt's time ran out)
        leaves the lookup running for the others waiting and for the next attempt."""
        key = f"{host.lower()}:{port}"
        running = self._running.get(key)
        if running is None or running.get_loop() is not asyncio.get_running_loop():
            running = asyncio.wrap_future(self._pool.submit(self.lookup, host, port))
            self._running[key] = running
            running.add_done_callback(lambda f: self._forget(key, f))
        # shield: one waiter's cancellation must not cancel the lookup the others share
        return await asyncio.shield(running)

    def _forget(self, key: str, future: asyncio.Future[list[str]]) -> None:
        """The lookup ended: the next attempt looks the host up afresh (no answer is kept)."""
        if self._running.get(key) is future:
            self._running.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved: a failure nobody waited for is not logged as lost

    def close(self) -> None:
        """Stop taking lookups; the ones running finish in their threads, unwaited."""
        self._pool.shutdown(wait=False, cancel_futures=True)
