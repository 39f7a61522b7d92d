"""The sender's own DNS resolver: host lookups that cannot starve one another.

``getaddrinfo`` blocks a thread, and a timeout around it stops the wait, not the thread: a name
whose DNS server does not answer holds a thread for as long as the system resolver tries (tens
of seconds). In the event loop's shared default executor, the lookups of one such endpoint
(every attempt of its backlog) would take every thread and every other endpoint's lookups
would queue behind them. So the sender resolves in a small pool of its own threads with at most
*one* lookup per host name running at a time: an attempt for a host whose lookup is still
running fails at once (:class:`LookupBusy`, "DNS lookup still running") instead of queueing
another. A stuck name holds one thread, not the pool.

Both that failure and a timeout while resolving (:class:`LookupTimedOut`, the attempt's time
running out in our resolver) are our resolver's trouble, not a failure of the receiver's: they
never count towards disabling the endpoint (services/webhooks/sender.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

#: Threads for lookups (each stuck host name holds at most one).
THREADS = 8

#: Resolves (host, port) to its addresses, blocking (the default asks getaddrinfo).
Lookup = Callable[[str, int], list[str]]


class LookupBusy(RuntimeError):
    """A lookup of the host is still running (an earlier attempt's): this one is not started."""


class LookupTimedOut(RuntimeError):
    """The attempt's time ran out while our resolver was looking the host up."""


def system_lookup(host: str, port: int) -> list[str]:
    """The host's addresses from getaddrinfo, in its order (its preference), each once."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Lookups:
    """Resolves in its own threads, one lookup per host name at a time (see the module)."""

    def __init__(self, lookup: Lookup = system_lookup, threads: int = THREADS) -> None:
        self.lookup = lookup
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook-dns")
        self._running: dict[str, Future[list[str]]] = {}

    async def resolve(self, host: str, port: int) -> list[str]:
        """The host's addresses (a :data:`ssrf.Resolver`); LookupBusy when a lookup of it is
        still running. A cancelled wait (the attempt's time ran out) leaves the lookup to
        finish in its thread, still counted as running for its host."""
        key = host.lower()
        running = self._running.get(key)
        if running is not None and not running.done():
            raise LookupBusy(f"DNS lookup of {host!r} still running (an earlier attempt's)")
        loop = asyncio.get_running_loop()
        future = self._pool.submit(self.lookup, host, port)
        self._running[key] = future
        future.add_done_callback(lambda f: self._ended(loop, key, f))
        return await asyncio.wrap_future(future)

    def _ended(self, loop: asyncio.AbstractEventLoop, key: str, future: Future[list[str]]) -> None:
        """In the lookup's thread: hand the bookkeeping to the loop's (gone: nothing to do)."""
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._forget, key, future)

    def _forget(self, key: str, future: Future[list[str]]) -> None:
        """The lookup ended (called in the loop's thread, as :meth:`resolve` is)."""
        if self._running.get(key) is future:
            self._running.pop(key, None)

    def close(self) -> None:
        """Stop taking lookups; the ones running finish in their threads, unwaited."""
        self._pool.shutdown(wait=False, cancel_futures=True)
