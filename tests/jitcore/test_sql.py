"""jitcore.sql: compiled statements store and read values exactly as SQLAlchemy does, reads run in autocommit,
bookkeeping transactions put the connection's durability back, driver errors come out as SQLAlchemy's."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import (BigInteger, Boolean, Column, DateTime, MetaData, String, Table, bindparam, insert, select,
                        text, update)
from sqlalchemy.exc import IntegrityError

import jitcore.app
from jitcore.sql import bookkeeping, database

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


def test_bookkeeping_commits_and_puts_durability_back(engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            configured = conn.execute(text("SHOW synchronous_commit")).scalar()
    with bookkeeping(engine) as conn:
        conn.execute(things.insert().values(name="booked", status="new"))
        if engine.dialect.name == "sqlite":
            assert conn.connection.driver_connection.execute("PRAGMA synchronous").fetchone()[0] == 1
        else:
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == "off"
    with engine.connect() as conn:
        assert conn.execute(select(things.c.name).where(things.c.name == "booked")).scalar() == "booked"
        if engine.dialect.name == "sqlite":
            level = conn.connection.driver_connection.execute("PRAGMA synchronous").fetchone()[0]
            assert level == {"FULL": 2, "EXTRA": 3, "NORMAL": 1}[jitcore.app.SQLITE_SYNCHRONOUS]
        else:
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == configured
