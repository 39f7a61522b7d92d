"""The api port shared by ``--api-workers`` processes (SO_REUSEPORT): connections accepted on
it have TCP_NODELAY, like those of a single api process. Without it each request on a
kept-alive connection waited for the client's delayed ACK (Nagle's algorithm): 44 ms per
request with two api processes against about 1 ms with one."""

from __future__ import annotations

import asyncio
import socket

from tieline.services.runtime.run import reuse_port_socket


async def test_connections_on_the_shared_api_port_are_not_delayed_by_nagle() -> None:
    listening = reuse_port_socket("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    # What uvicorn does with the sockets it is given: asyncio's server on that socket.
    server = await asyncio.start_server(handle, sock=listening)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", listening.getsockname()[1])
        try:
            assert await asyncio.wait_for(accepted, 5) != 0
        finally:
            writer.close()
