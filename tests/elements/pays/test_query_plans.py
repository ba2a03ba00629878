"""Every statement on the hot path of a payment (the ledger's and the job queue's, compiled once by jitcore.sql) and
every periodic query of the sweep and the runners finds its rows through an index, on SQLite and on PostgreSQL: no
full table scan that would grow with the number of orders (benchmarks/scale.py measures the effect with 1,000,000).

SQLite: ``EXPLAIN QUERY PLAN`` has no ``SCAN`` of a table. PostgreSQL: with ``enable_seqscan = off`` the planner still
picks a sequential scan only when no index can serve the query, so the plan has no ``Seq Scan`` node."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import event, inspect, text

import jitcore.app
import jitcore.jobs as jobs
from elements.pays.services.PaySvc import ledger
from elements.pays.services.PaySvc.migrations import ensure_schema
from elements.pays.services.PaySvc.models import ADDED_INDEXES
from jitcore.sql import database

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)

#: the ledger's compiled statements, with values for their parameters
LEDGER = {name: getattr(ledger, name) for name in (
    "ORDER_BY_ID", "ORDER_BY_ID_LOCKED", "PAYMENTS_OF_ORDER", "PAYMENT_BY_ID", "REFUNDS_OF_ORDER", "REFUND_BY_ID",
    "REFUND_BY_REFUND_ID", "OFFERED_PROVIDERS", "ORDER_AND_OFFER", "ORDER_WITH_PAYMENTS", "PAYMENT_BY_REFERENCE",
    "ORDER_STILL_PENDING", "PAYMENT_OFFER", "PAYMENT_CAPTURED", "ORDER_ACCEPTED")}
#: PostgreSQL's only
POSTGRESQL_LEDGER = {name: getattr(ledger, name) for name in ("NEW_OFFER_OF_PENDING_ORDER", "CAPTURED_AND_ACCEPTED")}
LEDGER_VALUES = {"orderId": "O20261125120000000000ABCDEFGH", "id": 1, "refundId": "R1", "provider": "pays.AliPayType",
                 "payType": "pc", "validUntil": NOW, "reference": "O20261125120000000000ABCDEFGH", "tradeNo": "T1",
                 "now": NOW, "paymentId": 1, "role": "accepted", "payUrl": "https://pay.example/1", "qrCode": None,
                 "expiresAt": NOW, "updatedAt": NOW, "paidAt": NOW, "payTime": NOW, "providerName": "Alipay",
                 "amountFen": 9999, "status": "prepared", "reservedFen": 0, "refundedFen": 0, "checkedAt": None,
                 "createdAt": NOW,
                 **{f"audit_{name}": value
                    for name, value in ledger.audit_values("notify", "pending->success").items()}}
#: the job queue's
JOBS = {name: getattr(jobs, name) for name in (
    "JOB_BY_ID", "SEQUENCE_BUSY", "ANY_CLAIMABLE", "CLAIMABLE", "CLAIMABLE_LOCKED", "CLAIMABLE_BY_ID", "TAKE",
    "TAKE_LOST_LEASE", "FINISH_DONE", "CLAIMED_UNLESS_BUSY")}
JOBS_VALUES = {"jobId": 1, "sequenceKey": "order:O1|shop", "now": NOW.replace(tzinfo=None), "wasState": "due",
               "wasAttempts": 0, "runnerId": "host:1:abc:2", "lease": NOW.replace(tzinfo=None), "error": "lost",
               "kind": "jit.event", "payload": "{}", "state": "running", "attempts": 1,
               **dict.fromkeys(("dueAt", "createdAt", "updatedAt", "leaseUntil"), NOW.replace(tzinfo=None)),
               "runner": "host:1:abc:2"}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    url = (f"sqlite:///{tmp_path / 'plans.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_server").new_database())
    engine = jitcore.app.create_engine(url)
    ensure_schema(engine)
    jobs.metadata.create_all(engine)
    yield engine
    engine.dispose()


def full_scans(engine: Any, sql: str, params: Any) -> list[str]:
    """The tables the plan of ``sql`` reads in full."""
    pooled = engine.raw_connection()
    try:
        conn = pooled.driver_connection
        if engine.dialect.name == "sqlite":
            details = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            # a table read in full (not the one row of a constant or a subquery that yields one row)
            return [detail for detail in details if detail.startswith("SCAN ") and detail.split()[1] in tables]
        conn.execute("SET enable_seqscan = off")
        [[plan]] = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchall()
        conn.rollback()
        found: list[str] = []

        def walk(node: dict[str, Any]) -> None:
            if node["Node Type"] == "Seq Scan":
                found.append(f"Seq Scan on {node['Relation Name']}")
            for child in node.get("Plans", []):
                walk(child)

        walk((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])
        return found
    finally:
        pooled.close()


@pytest.mark.parametrize("statements,values", [(LEDGER, LEDGER_VALUES), (JOBS, JOBS_VALUES)], ids=["ledger", "jobs"])
def test_the_hot_statements_use_indexes(engine: Any, statements: dict[str, Any], values: dict[str, Any]) -> None:
    db = database(engine)
    if statements is LEDGER and engine.dialect.name == "postgresql":
        statements = {**statements, **POSTGRESQL_LEDGER}
    scans = {}
    for name, statement in statements.items():
        compiled = db.compiled(statement)
        found = full_scans(engine, compiled.sql, compiled.parameters(values))
        if found:
            scans[name] = found
    assert scans == {}


#: the indexes that start with a status (they hold the rows of every order in that status), and their tables
STATUS_INDEXES = {"ix_jitpay_payment_sweep": "jitpay_payment", "ix_jitpay_refund_open": "jitpay_refund"}


@pytest.mark.parametrize("newest", sorted(STATUS_INDEXES))
def test_the_statements_about_one_order_never_read_every_order_in_a_status(tmp_path: Path, newest: str) -> None:
    """SQLite without statistics breaks ties between indexes by the order they were created in (``create_all``
    creates a table's indexes in no fixed order): with a status index the newest of its table, the ledger's
    statements must still read one order's rows (or one row), never every order's rows in some status."""
    engine = jitcore.app.create_engine(f"sqlite:///{tmp_path / 'plans.db'}")
    ensure_schema(engine)
    table = STATUS_INDEXES[newest]
    with engine.begin() as conn:
        [index] = [i for i in inspect(conn).get_indexes(table) if i["name"] == newest]
        conn.exec_driver_sql(f"DROP INDEX {newest}")
        conn.exec_driver_sql(f"CREATE INDEX {newest} ON {table} ({', '.join(repr(c) for c in index['column_names'])})"
                             .replace("'", '"'))
    db = database(engine)
    pooled = engine.raw_connection()
    try:
        misled = {}
        for name, statement in LEDGER.items():
            compiled = db.compiled(statement)
            plan = [row[3] for row in pooled.driver_connection.execute(
                "EXPLAIN QUERY PLAN " + compiled.sql, compiled.parameters(LEDGER_VALUES)).fetchall()]
            if any(index in detail for detail in plan for index in STATUS_INDEXES):
                misled[name] = plan
        assert misled == {}
    finally:
        pooled.close()
        engine.dispose()


def test_the_periodic_queries_use_indexes(engine: Any) -> None:
    """The sweep's queries (every minute) and the purge of done jobs, as the ledger and the queue run them."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and ("jitpay_" in statement or "jit_job" in statement):
            seen.append((statement, parameters))

    engines = (engine, engine.jit_bookkeeping_engine())  # the purge is bookkeeping
    for watched in engines:
        event.listen(watched, "before_cursor_execute", record)

    book = ledger.Ledger(engine, jobs=None, order_dict=lambda row: {})
    book._ready = True  # the tables are there
    book.sweep_candidates(checked_before=NOW, created_before=NOW, limit=50)
    book.stale_refunds(NOW, 50)
    book.expired_pending_orders(NOW, 50)
    book.audit_log("O1")

    class App:  # what JobQueue and its purge need
        appId = "plans"
        engine = None
        model = type("Model", (), {"jobs": jitcore.app.AppModel.model_fields["jobs"].default_factory()})()

    App.engine = engine
    queue = jobs.JobQueue(App())  # type: ignore[arg-type]
    queue._ready = True
    queue.purge(timedelta(days=7))
    for watched in engines:
        event.remove(watched, "before_cursor_execute", record)
    assert len(seen) == 5
    scans = {sql.split("FROM", 1)[1].split()[0]: found for sql, params in seen
             if (found := full_scans(engine, sql, params))}
    assert scans == {}


def test_a_version_2_database_gets_the_indexes_added_since(engine: Any) -> None:
    [added] = ADDED_INDEXES
    with engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {added.name}"))
    assert added.name not in {i["name"] for i in inspect(engine).get_indexes(added.table.name)}
    ensure_schema(engine)  # a version-2 database without it, opened by this JitPay
    assert added.name in {i["name"] for i in inspect(engine).get_indexes(added.table.name)}
    ensure_schema(engine)  # and again: nothing to do
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM jitpay_schema")).scalar() == 2
