"""Issue 14's HTTP bar: Alipay notifications per second and p50/p99 latency under a bounded load on loopback,
``jit serve --workers 2`` against a floor app measured in the same run (:mod:`floor_app`: bare Starlette under
uvicorn with 2 workers, the same RSA2 verification and one conditional UPDATE), on SQLite and PostgreSQL.

The load is bounded: ``--requests`` notifications (each paying a distinct pending order, signed beforehand with the
sandbox gateway's key) over ``--concurrency`` keep-alive connections from one asyncio client, after
``--warmup`` untimed ones; the servers listen on 127.0.0.1 only and are stopped at the end. Rounds alternate floor
and JitPay (``--rounds``, the best of each kept). JitPay's number includes the background work its notifications
leave (settling each paid order, a job in each worker's runner): the clock stops when the last response has arrived
*and* no job is due any more. The memory of each worker process (RSS and PSS, from /proc) is read after the load.

    .venv/bin/python benchmarks/http_load.py [--skip-postgres] [--requests 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from _support import ROOT, Bar, durable_postgres, machine, print_table, write_bench_app

import jitcore  # noqa: E402
import jitcore.app  # noqa: E402
from elements.pays.AliPayType.signing import load_rsa_key  # noqa: E402
from tests.support.live import signed_alipay_payment  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
AMOUNT = "99.99"
JIT = str(Path(sys.executable).with_name("jit"))
NOTIFY_PATH = "/api/shop/pays/services/PaySvc/notify/alipay"
STARTUP_SECONDS = 60.0
DRAIN_SECONDS = 120.0


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def notification_body(order_id: str, serial: int, key: Any) -> bytes:
    """A signed Alipay TRADE_SUCCESS notification of ``order_id`` as its form body."""
    return urlencode(signed_alipay_payment(order_id, AMOUNT, f"2027{serial:016d}", key, f"h{serial}")).encode()


# -- the servers --------------------------------------------------------------------------------------------------
class Server:
    """A server process (its own process group) on a free loopback port, its output in a log file."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: Path, workers: int) -> None:
        self.port = free_port()
        self.log = log
        self.workers = workers
        with log.open("wb") as out:
            self.process = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(self.port),
                                             "--workers", str(workers)], cwd=cwd, env=env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + STARTUP_SECONDS
        while self.output().count("Application startup complete") < workers:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{command[0]} did not start:\n{self.output()[-3000:]}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_processes(self) -> list[Path]:
        """The /proc entries of the worker processes (uvicorn's spawned children)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.process.pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                    found.append(entry)
            except (OSError, ValueError, IndexError):
                continue
        return found

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the worker processes have used so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for entry in self.worker_processes():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
            except (OSError, ValueError, IndexError):
                continue
        return total

    def worker_memory(self) -> list[tuple[float, float]]:
        """(RSS, PSS) in MiB of each worker process."""
        found = []
        for entry in self.worker_processes():
            try:
                rss = pss = 0.0
                for line in (entry / "smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss = int(line.split()[1]) / 1024
                    elif line.startswith("Pss:"):
                        pss = int(line.split()[1]) / 1024
                found.append((rss, pss))
            except (OSError, ValueError, IndexError):
                continue
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


# -- the client ---------------------------------------------------------------------------------------------------
@dataclass
class Result:
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    #: seconds from the last response until no job was due any more (JitPay's background work)
    drain: float = 0.0
    #: CPU seconds the worker processes used for the timed requests (and the background work they left)
    cpu: float = 0.0

    @property
    def per_second(self) -> float:
        return self.requests / (self.seconds + self.drain)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def _load(port: int, path: str, bodies: list[bytes], concurrency: int) -> Result:
    pending = iter(bodies)
    latencies: list[float] = []
    failures = 0

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n").encode()
        try:
            for body in pending:
                start = time.perf_counter()
                writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                headers = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in headers.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                answer = await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                if not headers.startswith(b"HTTP/1.1 200") or answer != b"success":
                    failures += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return Result(len(bodies), time.perf_counter() - start, latencies, failures)


def load(port: int, path: str, bodies: list[bytes], concurrency: int) -> Result:
    """Post ``bodies`` to ``path`` over ``concurrency`` keep-alive connections; the timings."""
    return asyncio.run(_load(port, path, bodies, concurrency))


def due_jobs(url: str) -> int:
    """Jobs of the database at ``url`` still due or running (the periodic sweep aside)."""
    from sqlalchemy import text

    engine = jitcore.app.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM jit_job WHERE state IN ('due', 'running') AND "
                                         "kind <> 'pays.sweep'")).scalar_one())
    finally:
        engine.dispose()


# -- one database -------------------------------------------------------------------------------------------------
class Side:
    """One of the two servers on one database: its orders, its signed notifications, its process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: Server | None = None
        self.bodies: list[list[bytes]] = []
        self.url = ""

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def prepare_jitpay(directory: Path, path: Path, batches: list[int], key_serial: list[int]) -> Side:
    """JitPay's side: orders and their signed notifications per batch, and ``jit serve --workers 2``."""
    side = Side("jit serve --workers 2")
    app = jitcore.load_app(path)
    side.url = app.database_url
    pay = app.getElement("pays.services.PaySvc")
    key = load_rsa_key((directory / ".sandbox" / "alipay_gateway_private_key.pem").read_text())
    for size in batches:
        ids = [pay.create("HTTP benchmark", AMOUNT)["orderId"] for _ in range(size)]
        side.bodies.append([notification_body(order_id, next_serial(key_serial), key) for order_id in ids])
    app.close()
    env = {**os.environ, "JIT_PLUGINS": "none", "PYTHONPATH": str(ROOT)}
    side.server = Server([JIT, "serve", "app.yaml"], directory, env, directory / "serve.log", 2)
    return side


def prepare_floor(directory: Path, database: str, batches: list[int], key_serial: list[int]) -> Side:
    """The floor's side: its orders and signed notifications per batch, and the floor app served likewise."""
    from sqlalchemy import MetaData, Table

    from elements.pays.services.PaySvc.models import PayOrder

    side = Side("floor app (Starlette, 2 workers)")
    side.url = database
    engine = jitcore.app.create_engine(database)
    Table("floor_order", metadata := MetaData(), *[column._copy() for column in PayOrder.__table__.columns])
    metadata.create_all(engine)
    key = load_rsa_key((directory / ".sandbox" / "alipay_gateway_private_key.pem").read_text())
    table = metadata.tables["floor_order"]
    now = datetime.now(timezone.utc)
    for index, size in enumerate(batches):
        ids = [f"F{index:02d}{now:%Y%m%d%H%M%S}{i:08d}" for i in range(size)]
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"orderId": order_id, "subject": "HTTP benchmark", "amountFen": 9999,
                                           "status": "pending", "refundedFen": 0, "cashierToken": "t" * 32,
                                           "createdAt": now, "updatedAt": now} for order_id in ids])
        side.bodies.append([notification_body(order_id, next_serial(key_serial), key) for order_id in ids])
    engine.dispose()
    env = {**os.environ, "PYTHONPATH": f"{BENCH_DIR}{os.pathsep}{ROOT}", "FLOOR_DATABASE": database,
           "FLOOR_PUBLIC_KEY": str(directory / ".sandbox" / "alipay_gateway_public_key.pem")}
    side.server = Server([sys.executable, str(BENCH_DIR / "serve_floor.py")], BENCH_DIR, env, directory / "floor.log",
                         2)
    return side


def next_serial(counter: list[int]) -> int:
    """The next serial number of ``counter`` (a one-element list)."""
    counter[0] += 1
    return counter[0]


def run_side(side: Side, batch: int, path: str, concurrency: int, warmup: int, drain: bool) -> Result:
    """One timed run of ``side`` after its warm-up; with ``drain``, until no job is due either."""
    assert side.server is not None
    bodies = side.bodies[batch]
    load(side.server.port, path, bodies[:warmup], concurrency)
    if drain:
        wait_drained(side.url)
    cpu = side.server.cpu_seconds()
    result = load(side.server.port, path, bodies[warmup:], concurrency)
    if drain:
        started = time.perf_counter()
        wait_drained(side.url)
        result.drain = time.perf_counter() - started
    result.cpu = side.server.cpu_seconds() - cpu
    return result


def wait_drained(url: str) -> None:
    """Wait (at most DRAIN_SECONDS) until the database at ``url`` has no job due."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while due_jobs(url) and time.monotonic() < deadline:
        time.sleep(0.02)


def run(label: str, directory: Path, jitpay_db: str | None, floor_db: str, *, requests: int, concurrency: int,
        warmup: int, rounds: int) -> tuple[list[Bar], list[str]]:
    """Both sides on one database, alternating ``rounds`` times (best kept): the bars and the report lines."""
    serial = [0]
    batches = [warmup + requests] * rounds
    floor = jitpay = None
    try:
        app_yaml = write_bench_app(directory, jitpay_db)  # and the sandbox keys both sides use
        floor = prepare_floor(directory, floor_db, batches, serial)
        jitpay = prepare_jitpay(directory, app_yaml, batches, serial)
        best: dict[str, Result] = {}
        for index in range(rounds):
            for side, path, drain in ((floor, "/notify", False), (jitpay, NOTIFY_PATH, True)):
                result = run_side(side, index, path, concurrency, warmup, drain)
                if result.failures:
                    raise RuntimeError(f"{side.name} on {label}: {result.failures} notifications not answered "
                                       f"success\n{side.server.output()[-3000:] if side.server else ''}")
                if side.name not in best or result.per_second > best[side.name].per_second:
                    best[side.name] = result
        memory = {side.name: side.server.worker_memory() for side in (floor, jitpay) if side.server}
    finally:
        for side in (floor, jitpay):
            if side is not None:
                side.stop()
    f, j = best[floor.name], best[jitpay.name]
    ms = 1e3
    lines = [f"{label}: {side.name}: {r.per_second:7.1f} notifications/s (responses {r.requests / r.seconds:.1f}/s"
             f"{f', background drained {r.drain:.2f} s after the last' if r.drain else ''}), "
             f"p50 {r.percentile(50) * ms:.1f} ms, p99 {r.percentile(99) * ms:.1f} ms, workers' CPU "
             f"{r.cpu / r.requests * ms:.2f} ms per notification; workers "
             + ", ".join(f"RSS {rss:.0f} MiB / PSS {pss:.0f} MiB" for rss, pss in memory[side.name])
             for side, r in ((floor, f), (jitpay, j))]
    rss = [value for value, _ in memory[jitpay.name]]
    bars = [
        Bar("HTTP notifications/s: JitPay / floor", label, "/s", j.per_second, f.per_second,
            f"bare Starlette, {concurrency} connections", "min", 0.5, j.per_second / f.per_second,
            f"p50 {j.percentile(50) * ms:.1f} ms vs {f.percentile(50) * ms:.1f} ms, p99 {j.percentile(99) * ms:.1f} ms "
            f"vs {f.percentile(99) * ms:.1f} ms"),
        Bar("memory per worker (RSS)", label, "MiB", max(rss) if rss else 0.0,
            max(value for value, _ in memory[floor.name]) if memory[floor.name] else 0.0, "floor app worker",
            "info", 0, 0.0, "reported, no bar"),
    ]
    return bars, lines


def run_all(*, skip_postgres: bool, requests: int, concurrency: int, warmup: int, rounds: int) -> tuple[list[Bar],
                                                                                                        list[str]]:
    bars: list[Bar] = []
    lines: list[str] = []
    options = {"requests": requests, "concurrency": concurrency, "warmup": warmup, "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix=".bench-", dir=ROOT) as tmp:
        result = run("SQLite", Path(tmp), None, f"sqlite:///{Path(tmp) / 'floor.db'}", **options)
        bars += result[0]
        lines += result[1]
    if not skip_postgres:
        with durable_postgres() as server, tempfile.TemporaryDirectory(prefix=".bench-", dir=ROOT) as tmp:
            result = run(f"PostgreSQL {server.version.split()[0]}", Path(tmp), server.new_database(),
                         server.new_database(), **options)
            bars += result[0]
            lines += result[1]
    return bars, lines


def main() -> None:
    """The HTTP bars on SQLite and (unless skipped) PostgreSQL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--requests", type=int, default=2000, help="timed notifications per run")
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--warmup", type=int, default=200, help="untimed notifications before each run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per side (best kept)")
    args = parser.parse_args()
    bars, lines = run_all(skip_postgres=args.skip_postgres, requests=args.requests, concurrency=args.concurrency,
                          warmup=args.warmup, rounds=args.rounds)
    print(f"== issue 14, HTTP notifications ({machine()}) ==")
    for line in lines:
        print(line)
    print_table(bars)


if __name__ == "__main__":
    main()
