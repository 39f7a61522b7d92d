"""A stand-in HTTP server for tests that need a client to meet a scripted server: the CLI's
stream client, the web page's stall watchdog."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeApi(ThreadingHTTPServer):
    """A stand-in API on a free port: ``answer(handler)`` writes each response; every
    request's path and headers are kept in ``seen``."""

    daemon_threads = True

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler, int], None]) -> None:
        self.answer = answer
        self.seen: list[tuple[str, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> FakeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FakeApi

    def do_GET(self) -> None:
        self.server.seen.append((self.path, dict(self.headers.items())))
        self.server.answer(self, len(self.server.seen))
