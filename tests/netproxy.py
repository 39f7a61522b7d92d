"""A TCP proxy the tests put between a client and a real server, to cut live connections at
a chosen moment (bytes in flight are lost, as when a network path or a broker dies)."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_url``'s host and port, byte for byte."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 4222)
        self.scheme = parts.scheme or "nats"
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._blackholed: set[asyncio.StreamWriter] = set()
        self.severed = 0

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{self.scheme}://127.0.0.1:{port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer, self._blackholed)
            )
        finally:
            self._links.discard(link)
            for w in link:
                w.close()

    @staticmethod
    async def _pipe(
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        blackholed: set[asyncio.StreamWriter] | None = None,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                if blackholed is not None and dst in blackholed:
                    continue  # the server's bytes vanish on the way to the client
                dst.write(data)
                await dst.drain()
        dst.close()

    def blackhole(self) -> None:
        """From now on, drop everything the server sends on the live connections (the client
        does not notice until the connection is cut or its pings go unanswered)."""
        self._blackholed.update(client for client, _ in self._links)

    def sever(self) -> None:
        """Cut every live connection now (in both directions; buffered bytes are dropped)."""
        for client, upstream in list(self._links):
            for w in (client, upstream):
                transport = w.transport
                transport.abort()
        self.severed += 1

    async def close(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
