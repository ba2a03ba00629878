"""``jit serve --workers N``: the socket uvicorn shares with its workers is a TCP socket, so that the connections
the workers accept get TCP_NODELAY (asyncio sets it only on TCP sockets); without it every response waited ~40 ms
for the client's delayed ACK."""

from __future__ import annotations

import asyncio
import socket

import pytest
from uvicorn.config import Config

from jitcore.cli import share_tcp_socket


def test_workers_accept_connections_without_nagle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Config, "bind_socket", Config.bind_socket)  # undone after the test
    share_tcp_socket()
    share_tcp_socket()  # idempotent
    sock = Config("jitcore.cli:asgi_from_env", host="127.0.0.1", port=0).bind_socket()
    assert sock.proto == socket.IPPROTO_TCP

    async def accepted_nodelay() -> int:
        found: list[int] = []

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            found.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock.listen()
        server = await asyncio.start_server(connected, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            while not found:
                await asyncio.sleep(0.01)
            writer.close()
        return found[0]

    try:
        assert asyncio.run(accepted_nodelay()) == 1
    finally:
        sock.close()
