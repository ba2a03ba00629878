"""jitcore.sql: compiled statements store and read values exactly as SQLAlchemy does, reads run in autocommit,
bookkeeping runs on a sibling engine that does not wait for the disk (or, on an engine without one, puts the
connection's durability back), driver errors come out as SQLAlchemy's."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import (BigInteger, Boolean, Column, DateTime, MetaData, String, Table, bindparam, create_engine,
                        event, insert, select, text, update)
from sqlalchemy.exc import IntegrityError

import jitcore.app
from jitcore.sql import bookkeeping, bookkeeping_change, database

metadata = MetaData()
things = Table("sql_thing", metadata,
               Column("id", BigInteger().with_variant(__import__("sqlalchemy").Integer, "sqlite"), primary_key=True),
               Column("name", String(32), nullable=False, unique=True),
               Column("at", DateTime(timezone=True)),
               Column("flag", Boolean),
               Column("status", String(16), nullable=False))

INSERT = insert(things).values(name=bindparam("name"), at=bindparam("at"), flag=bindparam("flag"), status="new")
BY_NAME = select(things).where(things.c.name == bindparam("name"))
LATER = select(things.c.name).where(things.c.at > bindparam("after"), things.c.status.in_(["new", "old"]))
TOUCH = update(things).where(things.c.name == bindparam("name"), things.c.status == "new").values(status="old")


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path):
    url = (f"sqlite:///{tmp_path / 'sql.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_server").new_database())
    engine = jitcore.app.create_engine(url)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_values_round_trip_as_through_sqlalchemy(engine) -> None:
    db = database(engine)
    assert database(engine) is db
    at = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=timezone.utc)
    with engine.begin() as conn:
        db.on(conn).rowcount(INSERT, {"name": "fast", "at": at, "flag": True})
        conn.execute(things.insert().values(name="slow", at=at, flag=False, status="new"))
    with engine.connect() as conn:  # what SQLAlchemy itself stored and reads back
        stored = {row.name: row for row in conn.execute(select(things))}
    with db.read() as conn:
        fast, slow = conn.first(BY_NAME, {"name": "fast"}), conn.first(BY_NAME, {"name": "slow"})
        assert conn.first(BY_NAME, {"name": "none"}) is None
        later = {row.name for row in conn.all(LATER, {"after": datetime(2026, 1, 1, tzinfo=timezone.utc)})}
    assert later == {"fast", "slow"}
    for row in (fast, slow):
        assert tuple(row) == tuple(stored[row.name])
        assert row.at.replace(tzinfo=timezone.utc) == at and isinstance(row.flag, bool)
    if engine.dialect.name == "sqlite":  # the same text in the column as SQLAlchemy writes
        with engine.connect() as conn:
            assert len(set(conn.execute(text("SELECT at FROM sql_thing")).scalars())) == 1


def test_driver_errors_are_sqlalchemy_errors(engine) -> None:
    db = database(engine)
    with engine.begin() as conn:
        db.on(conn).rowcount(INSERT, {"name": "one", "at": None, "flag": None})
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            db.on(conn).rowcount(INSERT, {"name": "one", "at": None, "flag": None})
    with engine.begin() as conn:
        assert db.on(conn).rowcount(TOUCH, {"name": "one"}) == 1
        assert db.on(conn).rowcount(TOUCH, {"name": "one"}) == 0


def test_reads_leave_the_pooled_connection_as_it_was(engine) -> None:
    db = database(engine)
    for _ in range(3):
        with db.read() as conn:
            assert conn.first(BY_NAME, {"name": "x"}) is None
    with engine.begin() as conn:  # an ordinary transaction on the same pool still commits and rolls back
        conn.execute(things.insert().values(name="kept", status="new"))
    with pytest.raises(RuntimeError):
        with engine.begin() as conn:
            conn.execute(things.insert().values(name="gone", status="new"))
            raise RuntimeError
    with db.read() as conn:
        assert conn.first(BY_NAME, {"name": "kept"}) is not None and conn.first(BY_NAME, {"name": "gone"}) is None


def test_a_snapshot_sees_one_moment_and_leaves_the_connection_as_it_was(engine) -> None:
    db = database(engine)
    with engine.begin() as conn:
        conn.execute(things.insert().values(name="seen", status="new"))
    for _ in range(2):  # (the pooled connection comes back usable)
        with db.snapshot() as conn:
            before = conn.first(BY_NAME, {"name": "seen"}).status
            with engine.begin() as writer:  # another connection commits meanwhile (a reader never blocks it)
                writer.execute(update(things).where(things.c.name == "seen")
                               .values(status="old" if before == "new" else "new"))
            assert conn.first(BY_NAME, {"name": "seen"}).status == before  # the snapshot's moment
        with db.read() as conn:
            assert conn.first(BY_NAME, {"name": "seen"}).status != before  # a read sees the latest commit
    with engine.begin() as conn:  # ordinary transactions on the same pool still commit
        conn.execute(update(things).where(things.c.name == "seen").values(status="last"))
    with db.snapshot() as conn:
        assert conn.first(BY_NAME, {"name": "seen"}).status == "last"


def _durability(conn) -> object:
    """The connection's commit durability: SQLite's synchronous level and whether its engine syncs the WAL after each
    commit (jitcore.sqlite.WalSync); PostgreSQL's synchronous_commit and where it comes from (the test server's own
    setting is off already: "client" and "session" tell a connection's own)."""
    if conn.dialect.name == "sqlite":
        level = conn.connection.driver_connection.execute("PRAGMA synchronous").fetchone()[0]
        return level, getattr(conn.engine, "jit_wal_sync", None) is not None
    return tuple(conn.execute(text("SELECT setting, source FROM pg_settings WHERE name = 'synchronous_commit'")).one())


def _configured(engine) -> object:
    """What an app's connections are set to: NORMAL and the WAL synced after each commit on a SQLite file, the
    PostgreSQL server's setting."""
    if engine.dialect.name == "sqlite":
        return 1, True
    plain = create_engine(engine.url.render_as_string(hide_password=False))
    try:
        with plain.connect() as conn:
            configured = _durability(conn)
    finally:
        plain.dispose()
    assert configured[1] not in ("client", "session")
    return configured


def test_bookkeeping_runs_on_a_sibling_engine_that_does_not_wait_for_the_disk(engine) -> None:
    configured = _configured(engine)
    sibling = engine.jit_bookkeeping_engine()
    assert sibling is engine.jit_bookkeeping_engine() and sibling is not engine
    with bookkeeping(engine) as conn:
        assert conn.engine is sibling
        conn.execute(things.insert().values(name="booked", status="new"))
        assert _durability(conn) == ((1, False) if engine.dialect.name == "sqlite" else ("off", "client"))
    # a single statement: autocommit on PostgreSQL, a transaction taking its turn on SQLite
    assert bookkeeping_change(engine, TOUCH, {"name": "booked"}) == 1
    assert bookkeeping_change(engine, TOUCH, {"name": "booked"}) == 0
    with engine.connect() as conn:  # committed, and the app's own connections stay durable
        assert conn.execute(select(things.c.status).where(things.c.name == "booked")).scalar() == "old"
        assert _durability(conn) == configured
    if engine.dialect.name == "postgresql":
        with sibling.connect() as conn:  # the sibling's session after its autocommit statement
            assert _durability(conn) == ("off", "client")
    engine.dispose()  # the sibling goes with it, and a new one is made on the next use
    assert engine.jit_bookkeeping_engine() is not sibling


def test_bookkeeping_without_a_sibling_puts_the_connection_durability_back(engine) -> None:
    plain = create_engine(engine.url.render_as_string(hide_password=False),
                          **({"connect_args": {"check_same_thread": False}} if engine.dialect.name == "sqlite" else {}))
    configured = (2, False) if engine.dialect.name == "sqlite" else _configured(engine)
    try:
        if engine.dialect.name == "sqlite":
            @event.listens_for(plain, "connect")
            def _full(dbapi_connection, _record) -> None:
                dbapi_connection.execute("PRAGMA synchronous=FULL")
        with bookkeeping(plain) as conn:
            assert conn.engine is plain
            conn.execute(things.insert().values(name="plain", status="new"))
            assert _durability(conn) == ((1, False) if engine.dialect.name == "sqlite" else ("off", "session"))
        assert bookkeeping_change(plain, TOUCH, {"name": "plain"}) == 1
        with plain.connect() as conn:
            assert conn.execute(select(things.c.status).where(things.c.name == "plain")).scalar() == "old"
            assert _durability(conn) == configured
    finally:
        plain.dispose()


def test_a_bookkeeping_session_keeps_the_options_the_url_gives() -> None:
    from jitcore.app import _asynchronous_commits

    assert _asynchronous_commits("postgresql+psycopg://u@h/db") == {
        "connect_args": {"options": "-c synchronous_commit=off"}}
    assert _asynchronous_commits("postgresql+psycopg://u@h/db?options=-c%20search_path%3Dshop") == {
        "connect_args": {"options": "-c search_path=shop -c synchronous_commit=off"}}
    assert _asynchronous_commits("sqlite:///x.db") == {}


def test_a_busy_worker_keeps_its_connections(engine) -> None:
    """Eight threads holding a connection at once (a busy ``jit serve`` worker): after the first peak, the pool hands
    out the connections it keeps instead of opening new ones (SQLAlchemy's default pool of 5 closed the sixth and
    later when they were given back, and opened them again at the next peak)."""
    import threading

    opened: list[int] = []
    errors: list[BaseException] = []
    event.listen(engine, "connect", lambda *_: opened.append(1))
    barrier = threading.Barrier(8)

    def busy() -> None:
        try:
            for _ in range(5):
                barrier.wait(timeout=30)
                with engine.connect() as conn:  # a read holds its connection until it ends
                    conn.execute(select(things.c.id).limit(1)).all()
                    barrier.wait(timeout=30)  # all eight hold one at the same time
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    def peak() -> None:
        threads = [threading.Thread(target=busy) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []

    peak()
    first = len(opened)
    assert first >= 8 - 1  # (one may have been opened before, by the fixture)
    peak()
    assert len(opened) == first


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.none(), st.datetimes(), st.datetimes(timezones=st.just(timezone.utc)), st.dates()))
def test_sqlite_datetimes_are_bound_as_sqlalchemy_binds_them(value) -> None:
    """jitcore.sql's faster DATETIME conversion on SQLite writes exactly SQLAlchemy's text (naive datetimes through
    isoformat, anything else through SQLAlchemy's own)."""
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    from jitcore.sql import _bind_processor

    dialect = sqlite_dialect.dialect()
    ours = _bind_processor(DateTime(), dialect)
    theirs = DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert ours is not theirs and ours(value) == theirs(value)
