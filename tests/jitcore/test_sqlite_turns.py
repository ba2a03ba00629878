"""jitcore.sqlite: the writers of a SQLite database take turns on a lock file (``<database>-jitlock``) instead of
sleeping in SQLite's busy handler; reads take no turn; a turn always comes back (commit, rollback, an error, a closed
connection); a thread never waits for its own turn."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from jitcore.app import create_engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = create_engine(f"sqlite:///{tmp_path / 'turns.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO counter VALUES (1, 0)"))
    yield engine
    engine.dispose()


def turn_is_free(engine: Any) -> bool:
    """Whether a writer of another process could take its turn now."""
    descriptor = os.open(engine.jit_write_turns.path, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)  # (also ends the lock just taken)
    return True


def increment(engine: Any) -> None:
    with engine.begin() as conn:
        n = conn.execute(text("SELECT n FROM counter WHERE id = 1")).scalar_one()
        conn.execute(text("UPDATE counter SET n = :n WHERE id = 1"), {"n": n + 1})


def test_a_write_transaction_holds_the_turn_until_it_ends(engine: Any) -> None:
    assert turn_is_free(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE counter SET n = n + 1"))
        assert not turn_is_free(engine)
    assert turn_is_free(engine)
    # commit-as-you-go on a connection the caller began
    with engine.connect() as conn:
        conn.begin()
        conn.execute(text("UPDATE counter SET n = n + 1"))
        assert not turn_is_free(engine)
        conn.commit()
        assert turn_is_free(engine)


def test_a_read_takes_no_turn(engine: Any) -> None:
    with engine.connect() as conn:  # SQLAlchemy's own BEGIN on the first statement: a snapshot
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 0
        assert turn_is_free(engine)


def test_the_turn_comes_back_after_an_error_a_rollback_and_a_closed_connection(engine: Any) -> None:
    with pytest.raises(ZeroDivisionError):
        with engine.begin() as conn:
            conn.execute(text("UPDATE counter SET n = n + 1"))
            1 / 0
    assert turn_is_free(engine)
    with pytest.raises(OperationalError):
        with engine.begin() as conn:
            conn.execute(text("UPDATE no_such_table SET n = 1"))
    assert turn_is_free(engine)
    conn = engine.connect()
    conn.begin()
    conn.execute(text("UPDATE counter SET n = n + 1"))
    conn.rollback()
    assert turn_is_free(engine)
    conn.begin()
    conn.execute(text("UPDATE counter SET n = n + 1"))
    conn.close()  # the transaction open: closing rolls it back and gives the turn back
    assert turn_is_free(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 0


def test_a_thread_does_not_wait_for_its_own_turn(engine: Any) -> None:
    # a second write transaction of the same thread meets SQLite's lock and busy timeout, as without turns: an
    # error after the timeout, not a thread waiting for itself forever
    @event.listens_for(engine, "connect")
    def short_timeout(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=200")

    engine.dispose()
    with engine.begin() as outer:
        outer.execute(text("UPDATE counter SET n = n + 1"))
        started = time.monotonic()
        with pytest.raises(OperationalError, match="locked"):
            with engine.begin() as inner:
                inner.execute(text("UPDATE counter SET n = n + 1"))
        assert time.monotonic() - started < 10
        assert not turn_is_free(engine)  # still the outer transaction's
    assert turn_is_free(engine)


def test_a_thread_does_not_wait_for_its_own_turn_through_another_engine(engine: Any, tmp_path: Path) -> None:
    # two Apps of one database in one process share the file's turns: the second engine's transaction meets SQLite's
    # busy timeout, not a lock its own thread holds through the first engine
    other = create_engine(str(engine.url))
    assert other.jit_write_turns is engine.jit_write_turns

    @event.listens_for(other, "connect")
    def short_timeout(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=200")

    try:
        with engine.begin() as outer:
            outer.execute(text("UPDATE counter SET n = n + 1"))
            with pytest.raises(OperationalError, match="locked"):
                with other.begin() as inner:
                    inner.execute(text("UPDATE counter SET n = n + 1"))
        assert turn_is_free(engine)
    finally:
        other.dispose()


def test_threads_take_turns(engine: Any) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(40):
                increment(engine)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 240
    assert turn_is_free(engine)


def test_processes_take_turns(engine: Any, tmp_path: Path) -> None:
    # each process reads and writes back in one transaction: a lost update would show in the total
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from sqlalchemy import text
        from jitcore.app import create_engine
        engine = create_engine(sys.argv[1])
        for _ in range(60):
            with engine.begin() as conn:
                n = conn.execute(text("SELECT n FROM counter WHERE id = 1")).scalar_one()
                conn.execute(text("UPDATE counter SET n = :n WHERE id = 1"), {{"n": n + 1}})
    """)
    url = str(engine.url)
    workers = [subprocess.Popen([sys.executable, "-c", script, url]) for _ in range(3)]
    for _ in range(60):
        increment(engine)
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0, 0]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 240


def test_a_driver_transaction_takes_the_turn_and_ends_with_commit_or_rollback(engine: Any) -> None:
    from jitcore.sqlite import driver_transaction

    pooled = engine.raw_connection()
    try:
        dbapi = pooled.driver_connection
        with driver_transaction(engine, dbapi) as conn:
            assert conn is dbapi and dbapi.in_transaction and not turn_is_free(engine)
            conn.execute("UPDATE counter SET n = n + 1")
        assert not dbapi.in_transaction and turn_is_free(engine)
        with pytest.raises(ZeroDivisionError):
            with driver_transaction(engine, dbapi) as conn:
                conn.execute("UPDATE counter SET n = n + 10")
                1 / 0
        assert not dbapi.in_transaction and turn_is_free(engine)
        # an error that ends SQLite's transaction itself still gives the turn back, and the caller sees that error
        with pytest.raises(Exception, match="no such table"):
            with driver_transaction(engine, dbapi) as conn:
                conn.execute("UPDATE missing SET n = 1")
        assert turn_is_free(engine)
    finally:
        pooled.close()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 1  # the first committed, the others not


def test_a_driver_transaction_that_cannot_begin_gives_the_turn_back(engine: Any, tmp_path: Path) -> None:
    import sqlite3

    from jitcore.sqlite import driver_transaction

    holder = sqlite3.connect(tmp_path / "turns.db", isolation_level=None)  # a writer that takes no turn
    holder.execute("BEGIN IMMEDIATE")
    pooled = engine.raw_connection()
    try:
        pooled.driver_connection.execute("PRAGMA busy_timeout=50")
        with pytest.raises(OperationalError, match="database is locked"):
            with driver_transaction(engine, pooled.driver_connection):
                pass
        assert turn_is_free(engine)
    finally:
        pooled.invalidate()
        holder.rollback()
        holder.close()
