"""``jit serve --workers N``: on Linux every worker listens on a socket of its own (``SO_REUSEPORT``) and the
kernel spreads the connections among them; elsewhere the socket uvicorn shares with its workers is a TCP socket, so
that the connections the workers accept get TCP_NODELAY (asyncio sets it only on TCP sockets); without it every
response waited ~40 ms for the client's delayed ACK."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from uvicorn.config import Config

from jitcore.listeners import WorkerListener, bind_in_group, per_worker_sockets, share_tcp_socket

JIT = str(Path(sys.executable).parent / "jit")


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


# -- one socket per worker (Linux): the kernel spreads the connections ------------------------------------------------
linux_only = pytest.mark.skipif(not per_worker_sockets(), reason="SO_REUSEPORT spreads connections on Linux only")


@linux_only
def test_worker_listeners_share_the_address_and_split_the_connections() -> None:
    reserved = bind_in_group("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    # what each worker process gets: the placeholder, pickled by the supervisor, a socket once unpickled
    workers = [pickle.loads(pickle.dumps(WorkerListener("127.0.0.1", port))) for _ in range(2)]
    clients: list[socket.socket] = []
    try:
        for sock in workers:
            assert isinstance(sock, socket.socket) and sock.getsockname() == ("127.0.0.1", port)
            assert sock.proto == socket.IPPROTO_TCP and sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            sock.listen(64)
            sock.setblocking(False)
        for _ in range(40):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        accepted = [0, 0]
        for index, sock in enumerate(workers):
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted[index] += 1
        # every connection reached one of the listeners (none waits on the supervisor's bound socket); both got a
        # share (all 40 on one of them: a chance of 2 in 2**40)
        assert sum(accepted) == 40 and min(accepted) > 0, accepted
    finally:
        for sock in [*clients, *workers, reserved]:
            sock.close()


@linux_only
def test_a_taken_port_is_refused_by_the_supervisor(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text("appId: shop\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([JIT, "serve", "app.yaml", "--port", str(port), "--workers", "2"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def _workers(pid: int) -> list[int]:
    """The worker processes of the supervisor ``pid`` (its children, but multiprocessing's resource tracker)."""
    children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [child for child in children if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()]


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def _tcp_sockets(port: int, state: str) -> set[str]:
    """Inodes of this machine's IPv4 TCP sockets on local port ``port`` in ``state`` (0A listen, 01 established)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return {fields[9] for fields in map(str.split, lines)
            if int(fields[1].split(":")[1], 16) == port and fields[3] == state}


@linux_only
def test_jit_serve_workers_listen_each_on_their_own_socket(tmp_path: Path) -> None:
    import httpx

    (tmp_path / "app.yaml").write_text("appId: shop\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([JIT, "serve", "app.yaml", "--port", str(port), "--workers", "2"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    clients: list[httpx.Client] = []
    try:
        deadline = time.monotonic() + 60
        while len(_workers(server.pid)) < 2 or len(_tcp_sockets(port, "0A")) < 2:
            assert server.poll() is None and time.monotonic() < deadline, "jit serve did not come up"
            time.sleep(0.1)
        workers = _workers(server.pid)
        listening = _tcp_sockets(port, "0A")
        # two listening sockets, one in each worker (uvicorn's way: one socket, the same in both)
        assert [len(_socket_inodes(pid) & listening) for pid in workers] == [1, 1]
        assert not _socket_inodes(server.pid) & listening  # the supervisor's is bound, not listening
        for _ in range(24):  # keep-alive connections, each answered by the worker that accepted it
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
            clients.append(client)
            assert client.get("/healthz").status_code == 200
        established = _tcp_sockets(port, "01")
        shares = [len(_socket_inodes(pid) & established) for pid in workers]
        assert sum(shares) == 24 and min(shares) > 0, shares
    finally:
        for client in clients:
            client.close()
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert f"Uvicorn running on http://127.0.0.1:{port}" in errors
