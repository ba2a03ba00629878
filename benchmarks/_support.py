"""What the issue-14 benchmarks share: the benchmark app, durable databases, floors measured in the same run, and the
table of bars.

Every bar is a ratio of JitPay against a floor measured on the same machine in the same run, interleaved with it
(floor batch, JitPay batch, floor batch, ...), each side's best batch kept: a neighbour's load slows both sides
alike, and absolute times, which drift between runs, are shown for information only.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: the benchmark app's own plugin: one subscriber of jit_order_paid (as the demo shop has), so that every paid
#: notification writes its event to the outbox and delivers it, as in a real app; it does nothing itself
EVENTS_PLUGIN = '''"""The benchmark app's subscriber: the outbox writes and delivers jit_order_paid; nothing else happens."""

from jitcore import hookimpl


@hookimpl
def jit_order_paid(app, order):
    pass
'''


def write_bench_app(directory: Path, database: str | None, base_url: str = "http://127.0.0.1:9") -> Path:
    """An app YAML in ``directory`` with Alipay and WeChat Pay against sandbox keys (nothing here calls a gateway),
    ``database`` (default: SQLite beside the YAML) and the subscriber plugin :data:`EVENTS_PLUGIN`. Returns its
    path."""
    import yaml

    from tests.support.live import generate_sandbox_keys, sandbox_app_config

    generate_sandbox_keys(directory / ".sandbox")
    (directory / "bench_events.py").write_text(EVENTS_PLUGIN)
    config = sandbox_app_config(base_url, database=database, plugins=["bench_events"])
    path = directory / "app.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def durable_postgres() -> Iterator[Any]:
    """A throw-away PostgreSQL server (``tests/support/postgres.py``) with durability switched back on (``fsync``,
    ``synchronous_commit``, ``full_page_writes``: the server's defaults, which the test server turns off): a commit
    waits for its WAL to reach the disk, as a payment commit in production does."""
    import psycopg

    from tests.support.postgres import start_postgres

    server = start_postgres()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(f"ALTER SYSTEM SET {setting} = on")
            conn.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        server.stop()


def machine() -> str:
    """One line about this machine: CPU, cores, kernel, Python, SQLite, file system of the repository."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}")


def interleaved(floor: Callable[[int], Callable[[], None]], subject: Callable[[int], Callable[[], None]], *,
                rounds: int, n: int) -> tuple[float, float]:
    """Seconds per operation of the floor and of JitPay: ``rounds`` alternating batches of ``n`` operations each,
    the best batch of each side. ``floor(n)``/``subject(n)`` prepare a batch (not timed) and return the function that
    runs it."""
    best_floor = best_subject = float("inf")
    for _ in range(rounds):
        for side in ("floor", "subject"):
            batch = (floor if side == "floor" else subject)(n)
            start = time.perf_counter()
            batch()
            seconds = (time.perf_counter() - start) / n
            if side == "floor":
                best_floor = min(best_floor, seconds)
            else:
                best_subject = min(best_subject, seconds)
    return best_floor, best_subject


@dataclass
class Bar:
    """One bar of issue 14: JitPay's ``value`` against its floor's, the ratio the bar is about, and its target."""

    name: str
    database: str
    #: what JitPay's and the floor's numbers are (e.g. "ms/op", "req/s")
    unit: str
    value: float
    floor: float
    floor_name: str
    #: "max": ratio = value / floor must be <= target; "min": ratio = (as given) must be >= target; "info": no bar
    kind: str
    target: float
    ratio: float
    note: str = ""

    @property
    def met(self) -> bool:
        return self.ratio <= self.target if self.kind == "max" else self.ratio >= self.target

    def row(self) -> list[str]:
        if self.kind == "info":
            return [self.name, self.database, f"{self.value:.1f} {self.unit}", f"{self.floor:.1f} {self.unit} "
                    f"({self.floor_name})", "-", "-", "-", self.note]
        bar = f"{'<=' if self.kind == 'max' else '>='} {self.target:g}"
        return [self.name, self.database, f"{self.value:.3f} {self.unit}", f"{self.floor:.3f} {self.unit} "
                f"({self.floor_name})", f"{self.ratio:.3f}", bar, "yes" if self.met else "NO", self.note]


def print_table(bars: list[Bar], title: str = "") -> None:
    """The bars as a plain text table."""
    header = ["bar", "database", "JitPay", "floor (measured in this run)", "ratio", "target", "met", "note"]
    rows = [header] + [bar.row() for bar in bars]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    if title:
        print(title)
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + ("  " + row[-1] if row[-1] else ""))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    sys.stdout.flush()
