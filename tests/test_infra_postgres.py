"""The test infrastructure's PostgreSQL server (tests/support/postgres.py) is real, isolated and unprivileged."""

from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_new_database_gives_separate_empty_databases(postgres_server):
    first, second = postgres_server.new_database(), postgres_server.new_database()
    assert first != second
    assert first.startswith(f"postgresql+psycopg://jitpay@127.0.0.1:{postgres_server.port}/")

    with psycopg.connect(_dsn(first), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id text PRIMARY KEY, amount_fen bigint NOT NULL)")
        conn.execute("INSERT INTO orders VALUES ('o1', 9999)")
        assert conn.execute("SELECT amount_fen FROM orders").fetchone() == (9999,)
        version = conn.execute("SHOW server_version").fetchone()[0]
        assert int(version.split(".")[0]) >= 12

    with psycopg.connect(_dsn(second)) as conn:
        assert conn.execute("SELECT to_regclass('public.orders')").fetchone() == (None,)


def test_sqlalchemy_url_works(postgres_url):
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == make_url(postgres_url).database
    finally:
        engine.dispose()


def test_server_does_not_run_as_root(postgres_server):
    status = Path(f"/proc/{postgres_server.pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids and all(uid != "0" for uid in uids), status
