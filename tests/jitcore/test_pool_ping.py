"""jitcore.app.create_engine on a database server: a pooled connection that rested is pinged before use, so that one
the server closed meanwhile (a restart, an idle timeout) is replaced instead of failing the operation that gets it;
one used again at once costs no round trip (see ``PING_AFTER_REST_SECONDS``)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, literal_column, select
from sqlalchemy.exc import OperationalError

import jitcore.app
from jitcore.sql import database

ONE = select(literal_column("1").label("one"))


@pytest.fixture
def server_engine(postgres_server: Any) -> Any:
    url = postgres_server.new_database()
    engine = jitcore.app.create_engine(url)
    yield engine, url
    engine.dispose()


def _close_every_connection(url: str) -> int:
    """What a server restart does to the pool: end every other session of the database. Returns how many."""
    from sqlalchemy.engine import make_url

    parts = make_url(url)
    with psycopg.connect(host=parts.host, port=parts.port, user=parts.username, dbname=parts.database,
                         autocommit=True) as admin:
        ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
    time.sleep(0.2)  # the backends are gone
    return int(ended)


def _pings(engine: Any) -> list[float]:
    """A list that grows by one entry per checkout that pinged (the connection's rest was long enough)."""
    pinged: list[float] = []

    @event.listens_for(engine, "checkout")
    def _count(_dbapi: Any, record: Any, _proxy: Any) -> None:
        rested = record.info.get("jit_rested_from")
        if rested is not None and time.monotonic() - rested >= jitcore.app.PING_AFTER_REST_SECONDS:
            pinged.append(rested)

    return pinged


def test_a_rested_connection_closed_by_the_server_is_replaced(server_engine: Any, monkeypatch: Any) -> None:
    engine, url = server_engine
    db = database(engine)
    with db.read() as conn:
        assert conn.first(ONE)[0] == 1
    with engine.connect() as conn:
        assert conn.execute(ONE).scalar() == 1
    assert _close_every_connection(url) >= 1
    monkeypatch.setattr(jitcore.app, "PING_AFTER_REST_SECONDS", 0.0)
    # both ways the payment code reads and writes get a working connection: no error reaches the operation
    with db.read() as conn:
        assert conn.first(ONE)[0] == 1
    with engine.begin() as conn:
        assert conn.execute(ONE).scalar() == 1
    assert engine.pool.checkedout() == 0


def test_a_connection_used_again_at_once_is_not_pinged(server_engine: Any) -> None:
    engine, url = server_engine
    pinged = _pings(engine)
    db = database(engine)
    for _ in range(20):
        with db.read() as conn:
            assert conn.first(ONE)[0] == 1
    assert pinged == []
    # the cost of skipping the ping: a connection the server closed a moment ago fails one operation, and the pool
    # connects anew for the next
    _close_every_connection(url)
    with pytest.raises(OperationalError) as failed:
        with db.read() as conn:
            conn.first(ONE)
    assert failed.value.connection_invalidated
    with db.read() as conn:
        assert conn.first(ONE)[0] == 1


def test_a_ping_leaves_the_connection_idle(server_engine: Any, monkeypatch: Any) -> None:
    engine, _ = server_engine
    with engine.connect() as conn:
        conn.execute(ONE)
    monkeypatch.setattr(jitcore.app, "PING_AFTER_REST_SECONDS", 0.0)
    pinged = _pings(engine)
    raw = engine.raw_connection()
    try:
        assert pinged and raw.driver_connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        raw.driver_connection.autocommit = True  # what jitcore.sql's reads do: refused inside a transaction
    finally:
        raw.driver_connection.autocommit = False
        raw.close()
