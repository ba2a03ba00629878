"""How ``jit serve --workers N`` listens: one socket per worker, the kernel spreading connections among them.

uvicorn's supervisor binds one socket and every worker accepts on it. Whichever worker wakes first takes every
pending connection (asyncio accepts up to the backlog in one go), so a few keep-alive clients, or a reverse proxy's
pool of upstream connections, all end up on one worker: measured with 8 connections and 2 workers, one worker served
every notification, bound to one core by its interpreter lock, while the other idled.

On Linux each worker binds a socket of its own to the address instead, with ``SO_REUSEPORT``; the kernel hands each
new connection to one of the listening sockets by a hash of its addresses and ports, so the workers get about equal
shares. The supervisor binds the address first without listening (:func:`bind_in_group`): a port taken by another
program fails at once with a clear error instead of a worker crash loop, an ephemeral port (``--port 0``) is the
same for every worker, and the port stays the group's while workers restart. The price: connections waiting in the
queue of a worker that dies are reset (the provider sends its notification again; Linux's
``net.ipv4.tcp_migrate_req`` hands them to another worker instead). Elsewhere (macOS, BSD: ``SO_REUSEPORT`` there
does not spread connections) the workers share the supervisor's socket, as uvicorn has it.

Every socket here is created with the protocol named (``IPPROTO_TCP``): asyncio sets ``TCP_NODELAY`` only on the
connections of such a socket (see :func:`share_tcp_socket`).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

__all__ = ["per_worker_sockets", "bind_in_group", "WorkerListener", "share_tcp_socket"]


def per_worker_sockets() -> bool:
    """Whether this system spreads connections among sockets bound to one address (Linux's ``SO_REUSEPORT``)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_in_group(host: str, port: int) -> socket.socket:
    """A TCP socket (the protocol named) bound to ``(host, port)`` with ``SO_REUSEADDR`` and ``SO_REUSEPORT``; IPv6
    when ``host`` has a colon, as uvicorn decides. The supervisor binds one without listening, first, to reserve the
    address (kept open while the workers run; no connection is ever queued on a socket that does not listen); each
    worker binds one and listens on it. Raises :class:`OSError` when the address cannot be bound (taken by a program
    that does not share it, not permitted, not an address of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
    except BaseException:
        sock.close()
        raise
    return sock


class WorkerListener:
    """What the supervisor hands each worker in place of a socket: unpickled in the worker process (uvicorn pickles
    the list of sockets for every worker it starts, restarts included), it becomes that worker's own socket on
    ``(host, port)`` (:func:`bind_in_group`), on which uvicorn's server listens."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return bind_in_group, (self.host, self.port)

    def __repr__(self) -> str:
        return f"WorkerListener({self.host!r}, {self.port})"


def share_tcp_socket() -> None:
    """Make the socket uvicorn binds for its worker processes say it is TCP (where they share one).

    uvicorn creates that socket as ``socket.socket(family)``, protocol 0, and the workers accept on a copy of it.
    asyncio sets ``TCP_NODELAY`` only on a socket whose protocol is TCP, so every connection a worker accepted kept
    Nagle's algorithm: the body of each response waited for the client's delayed ACK of its headers, 40 ms on Linux
    (a notification answered in 44 ms instead of 1 ms). Patches ``uvicorn.Config.bind_socket`` in this (the
    supervising) process only."""
    from uvicorn.config import Config

    bind_socket = Config.bind_socket
    if getattr(bind_socket, "_jit_tcp", False):
        return

    def bind_tcp_socket(self: Config) -> socket.socket:
        sock = bind_socket(self)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, sock.detach())
            sock.set_inheritable(True)
        return sock

    bind_tcp_socket._jit_tcp = True  # type: ignore[attr-defined]
    Config.bind_socket = bind_tcp_socket  # type: ignore[method-assign]
