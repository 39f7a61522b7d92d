"""The api port shared by ``--api-workers`` processes (SO_REUSEPORT): connections accepted on
it have TCP_NODELAY, like those of a single api process. Without it each request on a
kept-alive connection waited for the client's delayed ACK (Nagle's algorithm): 44 ms per
request with two api processes against about 1 ms with one."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from tieline.services.runtime.run import reuse_port_socket


async def test_connections_on_the_shared_api_port_are_not_delayed_by_nagle() -> None:
    listening = reuse_port_socket("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    # What uvicorn does with the sockets it is given: asyncio's server on that socket (which
    # makes it listen).
    server = await asyncio.start_server(handle, sock=listening)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", listening.getsockname()[1])
        try:
            assert await asyncio.wait_for(accepted, 5) != 0
        finally:
            writer.close()


async def test_the_shared_port_is_not_listened_on_until_the_app_has_started() -> None:
    """A process on the shared port takes its share of new connections only once it can
    serve them: while its startup runs (NATS, PostgreSQL), its socket is bound, not
    listening, and the kernel gives every connection to the processes that are."""
    import uvicorn

    sock = reuse_port_socket("127.0.0.1", 0)
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await release.wait()  # connecting to NATS and PostgreSQL
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})

    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.sleep(0.3)
        assert not server.started
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
        release.set()
        for _ in range(100):
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    finally:
        release.set()
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()
