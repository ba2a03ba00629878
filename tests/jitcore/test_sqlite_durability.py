"""The embedded SQLite database: durable commits (WAL, synchronous=NORMAL, the WAL synced after the writer's turn and
before the commit returns), reads that never wait for a writer, write transactions that take the write lock first,
and files only their owner can read (issue 11, items 7 and 10)."""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

import jitcore
from jitcore.app import create_engine
from tests.jitcore.jobs_support import PLUGIN, write_app
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


class DiskSyncs:
    """``os.fdatasync`` and ``os.fsync`` as they are, recording each call: what the descriptor names, and whether the
    database's write turn was free at that moment (another open file of the lock file gets it without waiting)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, database: Path, *, failing: bool = False) -> None:
        self.lock_file = f"{database}-jitlock"
        self.calls: list[tuple[str, str, bool]] = []
        self.failing = failing
        for name in ("fdatasync", "fsync"):
            monkeypatch.setattr(os, name, self._recording(name, getattr(os, name)))

    def _recording(self, name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def call(descriptor: int) -> None:
            self.calls.append((name, os.readlink(f"/proc/self/fd/{descriptor}"), self._turn_free()))
            if self.failing:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real(descriptor)
        return call

    def _turn_free(self) -> bool:
        probe = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(probe)  # (closing it gives the probe's lock back)

    def files(self) -> list[str]:
        return [path for _name, path, _free in self.calls]


def test_every_connection_is_wal_normal_and_the_engine_syncs_each_commit(shop: Any) -> None:
    with shop.engine.connect() as first, shop.engine.connect() as second:
        for conn in (first, second):
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL: the WAL is synced after the turn
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    database = Path(shop.engine.url.database).resolve()  # as SQLite names it (and /proc shows it)
    assert shop.engine.jit_wal_sync.wal == f"{database}-wal"
    # the job queue's bookkeeping (claims, outcomes) does not wait for the disk at all
    assert getattr(shop.engine.jit_bookkeeping_engine(), "jit_wal_sync", None) is None


def test_a_commit_is_on_disk_before_it_returns_and_the_next_writer_does_not_wait_for_that(
        shop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pay = shop.getElement("pays.services.PaySvc")
    pay.create(subject="warm-up", amount="1.00")  # the tables, and the WAL's directory entry synced once
    database = Path(shop.engine.url.database).resolve()
    wal = f"{database}-wal"
    syncs = DiskSyncs(monkeypatch, database)

    # PaySvc's write (a ledger transaction): one WAL sync, after the turn was given back, before create() returned
    order = pay.create(subject="VIP", amount="9.99")
    assert syncs.calls == [("fdatasync", wal, True)]

    # a plain write transaction; a read and a rolled back write sync nothing
    syncs.calls.clear()
    with shop.engine.begin() as conn:
        conn.execute(text("UPDATE jitpay_order SET subject = 'VIP 2' WHERE \"orderId\" = :o"), {"o": order["orderId"]})
        assert syncs.calls == []
    assert syncs.calls == [("fdatasync", wal, True)]
    syncs.calls.clear()
    assert pay.query(orderId=order["orderId"])["subject"] == "VIP 2"
    with pytest.raises(RuntimeError), shop.engine.begin() as conn:
        conn.execute(text("UPDATE jitpay_order SET subject = 'never' WHERE \"orderId\" = :o"), {"o": order["orderId"]})
        raise RuntimeError
    with shop.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jitpay_order")).scalar() == 2
    assert syncs.calls == []

    # a transaction SQLAlchemy began by itself (engine.connect(), then a write and commit()) that wrote
    with shop.engine.connect() as conn:
        conn.execute(text("UPDATE jitpay_order SET subject = 'VIP 3' WHERE \"orderId\" = :o"), {"o": order["orderId"]})
        conn.commit()
    assert syncs.calls == [("fdatasync", wal, True)]


def test_a_new_wal_file_gets_its_directory_entry_synced_and_a_missing_one_the_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = tmp_path.resolve()
    database = tmp_path / "shop.db"
    engine = create_engine(f"sqlite:///{database}")
    syncs = DiskSyncs(monkeypatch, database)
    try:
        for name in ("first", "second"):
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE IF NOT EXISTS t (name TEXT)"))
                conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": name})
        # the directory once, after the first sync of the new WAL file
        assert syncs.files() == [f"{database}-wal", str(tmp_path), f"{database}-wal"]
        engine.dispose()  # the last connection closes: SQLite checkpoints and removes the WAL
        assert not Path(f"{database}-wal").exists()
        syncs.calls.clear()
        engine.jit_wal_sync()
        assert syncs.files() == [str(database)]
    finally:
        engine.dispose()
    with sqlite3.connect(database) as check:
        assert [row[0] for row in check.execute("SELECT name FROM t")] == ["first", "second"]


def test_a_failed_sync_fails_the_commit_with_a_clear_error(shop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pay = shop.getElement("pays.services.PaySvc")
    pay.create(subject="warm-up", amount="1.00")
    database = Path(shop.engine.url.database)
    DiskSyncs(monkeypatch, database, failing=True)
    with pytest.raises(OperationalError, match="is written but could not be put on disk: Input/output error") as caught:
        with shop.engine.begin() as conn:
            conn.execute(text("UPDATE jitpay_order SET subject = 'lost?'"))
    assert caught.value.orig.errno == errno.EIO
    monkeypatch.undo()
    with shop.engine.begin() as conn:  # the connection and the turn are usable again
        conn.execute(text("UPDATE jitpay_order SET subject = 'kept'"))


def test_a_process_that_dies_between_its_commit_and_the_sync_keeps_the_commit(tmp_path: Path) -> None:
    """Only a power loss can take a commit whose WAL was not synced yet: the operating system holds its pages."""
    database = tmp_path / "shop.db"
    with sqlite3.connect(database) as setup:
        setup.execute("CREATE TABLE t (name TEXT)")
    script = textwrap.dedent(f"""
        import os
        from sqlalchemy import text
        import jitcore.sqlite
        from jitcore.app import create_engine
        jitcore.sqlite.WalSync.__call__ = lambda self: os._exit(7)  # dies right after COMMIT, before the sync
        engine = create_engine("sqlite:///{database}")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES ('paid')"))
        os._exit(0)
    """)
    died = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert died.returncode == 7
    with sqlite3.connect(database) as check:
        assert check.execute("SELECT name FROM t").fetchall() == [("paid",)]



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


def test_a_runner_puts_what_it_claimed_on_disk_before_it_runs_the_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another connection may see a commit a moment before its WAL is synced; a job acts outside the database on what
    it was given (a provider's refund, say), so its runner syncs the WAL after claiming it: the WAL is written in
    order, and that covers the commit that enqueued the job."""
    monkeypatch.setenv("JIT_PLUGINS", "none")
    app = jitcore.load_app(write_app(tmp_path, plugins=[PLUGIN]))
    try:
        app.jobs.run_until_idle()  # the tables, the housekeeping
        with app.engine.begin() as conn:
            app.jobs.enqueue(conn, "test.record", {"n": 1})
        syncs = DiskSyncs(monkeypatch, Path(app.engine.url.database))
        take, execute = app.jobs._take, app.jobs._execute

        def taking(*args: Any) -> Any:
            syncs.calls.append(("claim", "", False))
            return take(*args)

        def running(row: Any) -> Any:
            syncs.calls.append(("run", "", False))
            return execute(row)

        monkeypatch.setattr(app.jobs, "_take", taking)
        monkeypatch.setattr(app.jobs, "_execute", running)
        assert app.jobs.run_until_idle().done == 1
        wal = f"{Path(app.engine.url.database).resolve()}-wal"
        assert syncs.calls == [("claim", "", False), ("fdatasync", wal, True), ("run", "", False)]
    finally:
        app.close()


def test_the_sync_finds_the_wal_sqlite_writes_through_a_symbolic_link(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = tmp_path.resolve()
    (tmp_path / "data").mkdir()
    sqlite3.connect(tmp_path / "data" / "shop.db").close()
    database = tmp_path / "shop.db"
    database.symlink_to(tmp_path / "data" / "shop.db")  # the app's YAML names the link
    engine = create_engine(f"sqlite:///{database}")
    syncs = DiskSyncs(monkeypatch, database)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (name TEXT)"))
        wal = str(tmp_path / "data" / "shop.db-wal")  # SQLite resolved the link: its WAL is beside the real file
        assert Path(wal).exists() and not Path(f"{database}-wal").exists()
        assert syncs.files() == [wal, str(tmp_path / "data")]
    finally:
        engine.dispose()


def test_a_notification_whose_commit_is_not_on_disk_is_not_acknowledged(
        shop: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider is told "success" only for a payment on disk: a failed sync answers it with a failure, and its
    next delivery (the commit is in the WAL, now synced) is acknowledged."""
    from urllib.parse import urlencode

    from elements.pays.AliPayType.signing import load_rsa_key
    from elements.pays.Meta import NotifyRequest
    from tests.support.live import signed_alipay_payment

    pay = shop.getElement("pays.services.PaySvc")
    svc = shop.loadElement("pays.services.PaySvc")
    order = pay.create(subject="VIP", amount="9.99")
    gateway_key = load_rsa_key((tmp_path / ".sandbox" / "alipay_gateway_private_key.pem").read_text())
    body = urlencode(signed_alipay_payment(order["orderId"], "9.99", "2026120722001", gateway_key)).encode()
    form = "application/x-www-form-urlencoded; charset=utf-8"

    DiskSyncs(monkeypatch, Path(shop.engine.url.database), failing=True)
    reply = svc.handleNotify("alipay", NotifyRequest.of(body, form))
    assert reply.body != b"success"  # Alipay notifies again
    monkeypatch.undo()
    assert svc.handleNotify("alipay", NotifyRequest.of(body, form)).body == b"success"
    assert pay.query(orderId=order["orderId"])["status"] == "success"
