"""Schema version 1 → 2: a database made by JitPay 0.1 (``v1.db``, written by that code; on PostgreSQL the same rows
in the tables that code created, ``v1_postgresql.sql``) is migrated on first use, orders, attempts and refunds
carried over."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy import inspect, text

from elements.pays.services.PaySvc.ledger import Ledger
from elements.pays.services.PaySvc.migrations import ensure_schema
from elements.pays.services.PaySvc.models import SCHEMA_VERSION
from elements.pays.WechatPayType import mweb_out_trade_no
from jitcore.app import create_engine
from jitcore.errors import ConfigError

HERE = Path(__file__).parent
V1_TABLES = ("jitpay_order", "jitpay_attempt", "jitpay_refund", "jitpay_audit", "jitpay_schema")


def _v1_rows() -> dict[str, list[dict[str, Any]]]:
    with sqlite3.connect(HERE / "v1.db") as conn:
        conn.row_factory = sqlite3.Row
        return {table: [dict(row) for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
                for table in V1_TABLES}


@pytest.fixture(params=["sqlite", "postgres"])
def v1_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An engine on a version-1 database: a copy of v1.db, or PostgreSQL with the v1 tables and the same rows."""
    if request.param == "sqlite":
        path = tmp_path / "v1.db"
        shutil.copy(HERE / "v1.db", path)
        engine = create_engine(f"sqlite:///{path}")
    else:
        engine = create_engine(request.getfixturevalue("postgres_server").new_database())
        with engine.begin() as conn:
            conn.exec_driver_sql((HERE / "v1_postgresql.sql").read_text())
            for table, rows in _v1_rows().items():
                for row in rows:
                    columns = ", ".join(f'"{c}"' for c in row)
                    values = ", ".join(f":{c}" for c in row)
                    conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({values})"),
                                 {k: (bool(v) if k == "verified" and v is not None else v) for k, v in row.items()})
            conn.execute(text("SELECT setval(pg_get_serial_sequence('jitpay_refund', 'id'), 100)"))
    yield engine
    engine.dispose()


def _ledger(engine: Any) -> Ledger:
    return Ledger(engine, jobs=None, order_dict=lambda row: {"orderId": row.orderId})


def test_v1_database_is_migrated_with_everything_carried_over(v1_engine: Any) -> None:
    ensure_schema(v1_engine)
    with v1_engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM jitpay_schema")).scalar() == SCHEMA_VERSION == 2
        tables = set(inspect(conn).get_table_names())
    assert "jitpay_attempt" not in tables and "jitpay_payment" in tables
    ledger = _ledger(v1_engine)
    ledger._ready = True

    # every order is there, in its state, with a payment window
    orders = {oid: ledger.order(oid) for oid in ("V1PENDING0001", "V1PAID0000002", "V1REFUNDED003", "V1CLOSED00004",
                                                 "V1FAILED00005", "V1NEW00000006")}
    assert {oid: o.status for oid, o in orders.items()} == {
        "V1PENDING0001": "pending", "V1PAID0000002": "success", "V1REFUNDED003": "refunded",
        "V1CLOSED00004": "closed", "V1FAILED00005": "failed", "V1NEW00000006": "pending"}
    assert all(o.expiresAt is not None for o in orders.values())

    # attempts became payments, one per provider reference (WeChat's MWEB order has its own)
    pending = {(p.provider, p.reference, p.payType, p.status) for p in ledger.payments("V1PENDING0001")}
    assert pending == {("pays.AliPayType", "V1PENDING0001", "pc", "prepared"),
                       ("pays.WechatPayType", "V1PENDING0001", "pc", "prepared"),
                       ("pays.WechatPayType", mweb_out_trade_no("V1PENDING0001"), "mobile", "prepared")}
    assert ledger.payments("V1NEW00000006") == []

    # the paid order: its accepted payment, refunds on it; only the confirmed one counts, the unknown one is kept
    # counted against the payment (and will be asked again), the refused one released
    paid = orders["V1PAID0000002"]
    [accepted] = ledger.payments("V1PAID0000002")
    assert paid.paymentId == accepted.id and accepted.role == "accepted" and accepted.status == "paid"
    assert accepted.tradeNo == "2026112022001000000000001" and accepted.amountFen == 10000
    assert (accepted.refundedFen, accepted.reservedFen) == (2000, 2500)
    assert paid.refundedFen == 2000
    refunds = {r.refundId: (r.status, r.paymentId) for r in ledger.refunds("V1PAID0000002")}
    assert refunds == {"R-done": ("confirmed", accepted.id), "R-refused": ("refused", accepted.id),
                       "R-unknown": ("unknown", accepted.id)}
    assert ledger.money_check("V1PAID0000002") == (10000 - 2000, 10000 - 2000)

    # the fully refunded WeChat order: paid through MWEB, refunded in full
    [wechat] = ledger.payments("V1REFUNDED003")
    assert wechat.reference == mweb_out_trade_no("V1REFUNDED003") and wechat.status == "refunded"
    assert wechat.tradeNo == "4200000000202611200001"
    assert ledger.refund_by_id("V1REFUNDED003", "R-all").status == "confirmed"
    assert ledger.money_check("V1REFUNDED003") == (0, 0)
    for oid in ("V1PENDING0001", "V1CLOSED00004", "V1FAILED00005", "V1NEW00000006"):
        assert ledger.money_check(oid) == (0, 0)

    # the audit log is untouched
    assert [a.outcome for a in ledger.audit_log("V1PAID0000002")] == ["pending->success"]

    ensure_schema(v1_engine)  # a second start finds it done
    with v1_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jitpay_payment")).scalar() == 7


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE jitpay_schema SET version = 99"))
    with pytest.raises(ConfigError, match="version 99, newer than this JitPay"):
        ensure_schema(engine)


def test_a_new_database_gets_version_2(tmp_path: Path) -> None:
    engine = sa_create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    ensure_schema(engine)
    ensure_schema(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM jitpay_schema")).scalar() == 2
