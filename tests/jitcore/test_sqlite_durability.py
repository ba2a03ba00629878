"""The embedded SQLite database: durable commits (synchronous=FULL), reads that never wait for a writer, write
transactions that take the write lock first, and files only their owner can read (issue 11, items 7 and 10)."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from sqlalchemy import text

import jitcore
from jitcore.app import create_engine
from tests.support.live import generate_sandbox_keys, sandbox_app_config

#: far below the 30 s busy timeout: a read that waited for the writer would take the whole timeout
QUICK = 5.0


@contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another connection (as another process would) holds the database's write lock, with a write pending."""
    holder = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def finishes_quickly(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a thread; its result if it finished within QUICK seconds, else fail."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(QUICK)
    assert not thread.is_alive(), f"still waiting after {QUICK} s: it waits for the write lock"
    if "error" in outcome:
        raise outcome["error"]
    assert time.monotonic() - started < QUICK
    return outcome["result"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Any]:
    """An app with PaySvc on an embedded SQLite file beside its YAML (providers configured, never reached)."""
    generate_sandbox_keys(tmp_path / ".sandbox")
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(sandbox_app_config("http://127.0.0.1:1")))
    app = jitcore.load_app(path)
    yield app
    app.close()


def test_every_connection_is_wal_with_synchronous_full(shop: Any) -> None:
    with shop.engine.connect() as first, shop.engine.connect() as second:
        for conn in (first, second):
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_a_read_does_not_wait_while_another_connection_holds_the_write_lock(shop: Any) -> None:
    pay = shop.getElement("pays.services.PaySvc")
    order = pay.create(subject="VIP", amount="9.99")
    shop.jobs.run_until_idle()
    database = Path(shop.engine.url.database)
    with write_lock_held(database):
        # PaySvc's reads (the cashier's and the API's), the job listing (jit jobs), a plain engine.connect()
        assert finishes_quickly(lambda: pay.query(orderId=order["orderId"]))["status"] == "pending"
        assert finishes_quickly(lambda: shop.jobs.list(["dead"])) == []

        def plain_read() -> int:
            with shop.engine.connect() as conn:
                return int(conn.execute(text("SELECT count(*) FROM jitpay_order")).scalar())

        assert finishes_quickly(plain_read) == 1


def test_an_idle_job_runner_polls_without_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text("appId: t\n")
    app = jitcore.load_app(path)
    try:
        assert app.jobs.run_until_idle().done == 0  # tables created, housekeeping done
        with write_lock_held(Path(app.engine.url.database)):
            assert finishes_quickly(app.jobs.run_until_idle).done == 0  # no job due: one read, no lock
    finally:
        app.close()


def test_read_then_write_transactions_of_several_connections_lose_nothing(tmp_path: Path) -> None:
    """``engine.begin()`` is BEGIN IMMEDIATE: it takes the write lock at its start (waiting under the busy timeout),
    so a read-then-write transaction never fails on upgrade (SQLITE_BUSY) when another writer committed in between,
    and never writes from a stale read. Four engines stand for four processes."""
    engines = [create_engine(f"sqlite:///{tmp_path / 'x.db'}") for _ in range(4)]
    with engines[0].begin() as conn:
        conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))
    errors: list[BaseException] = []

    def increment(engine: Any) -> None:
        try:
            for _ in range(25):
                with engine.begin() as conn:  # read, then write what was read
                    n = conn.execute(text("SELECT n FROM counter")).scalar()
                    time.sleep(0.001)
                    conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=increment, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with engines[0].connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar() == 100
    for engine in engines:
        engine.dispose()


def test_begin_waits_for_the_lock_holder(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    holder = sqlite3.connect(tmp_path / "x.db", isolation_level=None, timeout=0, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    threading.Timer(0.5, lambda: (holder.execute("ROLLBACK"), holder.close())).start()
    started = time.monotonic()
    with engine.begin() as conn:
        waited = time.monotonic() - started
        conn.execute(text("INSERT INTO t VALUES (1)"))
    assert waited >= 0.4  # BEGIN IMMEDIATE waited for the holder, then went through
    engine.dispose()


def test_the_database_file_jitpay_creates_is_0600_with_its_wal_and_shm(tmp_path: Path, shop: Any) -> None:
    old_umask = os.umask(0o022)
    try:
        shop.getElement("pays.services.PaySvc").create(subject="VIP", amount="1.00")
        database = Path(shop.engine.url.database)
        with shop.engine.connect() as conn:  # a connection is open: the -wal and -shm files exist
            conn.execute(text("SELECT 1"))
            for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm"), Path(f"{database}-jitlock")):
                assert path.exists() and mode(path) == 0o600, path
    finally:
        os.umask(old_umask)


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    existing = tmp_path / "kept.db"
    existing.touch()
    existing.chmod(0o640)
    engine = create_engine(f"sqlite:///{existing}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    engine.dispose()
    assert mode(existing) == 0o640
    memory = create_engine("sqlite://")  # in memory: no file at all
    with memory.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    memory.dispose()
    # the writers' lock file (jitcore.sqlite) beside it, none for the in-memory database
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.db", "kept.db-jitlock"]
    assert mode(tmp_path / "kept.db-jitlock") == 0o600
