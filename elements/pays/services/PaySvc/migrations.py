"""Schema versions of the payment tables, and the steps between them.

:func:`ensure_schema` runs on first use of a database: a new database gets the current tables; one at an older
version is moved forward step by step, all in one transaction (several processes starting at once: one migrates,
the others wait and find it done); one at a newer version is refused.

Version 1 (JitPay 0.1): orders, ``jitpay_attempt`` (the pay URLs handed out) and refunds counted on the order.
Version 2: the payment ledger. Every attempt becomes a payment (one per element and provider reference), the
accepted payment of a paid order is recorded, and refunds belong to a payment: ``success`` becomes ``confirmed``,
``failed`` becomes ``refused``, and ``pending`` (whose outcome was unknown) becomes ``unknown``, so the sweep asks
the provider again with the same refund id. The order's ``refundedFen`` then counts confirmed refunds only.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from elements.pays.services.PaySvc.models import ADDED_INDEXES, SCHEMA_VERSION, TABLES, PayPayment, PaySchema
from jitcore.errors import ConfigError

log = logging.getLogger("jitpay")

#: the payment window given to orders migrated from version 1, which had none of their own
V1_PAY_WINDOW = timedelta(minutes=120)


def ensure_schema(engine: Engine) -> None:
    """Create the payment tables, or migrate them to :data:`SCHEMA_VERSION`; refuse a newer database."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # one process at a time creates or migrates; the others wait here, then find the work done
            conn.execute(text("SELECT pg_advisory_xact_lock(7401150001)"))
        names = set(inspect(conn).get_table_names())
        if "jitpay_schema" not in names:
            if "jitpay_order" in names:  # pragma: no cover - a table set without its version row
                raise ConfigError("the database has payment tables but no jitpay_schema row; refusing to guess")
            TABLES[0].metadata.create_all(conn, tables=TABLES)
            conn.execute(PaySchema.__table__.insert().values(id=1, version=SCHEMA_VERSION))
            return
        version = conn.execute(text("SELECT version FROM jitpay_schema WHERE id = 1")).scalar()
        if version is None:
            TABLES[0].metadata.create_all(conn, tables=TABLES)
            conn.execute(PaySchema.__table__.insert().values(id=1, version=SCHEMA_VERSION))
            return
        if version > SCHEMA_VERSION:
            raise ConfigError(f"the database's payment schema is version {version}, newer than this JitPay "
                              f"({SCHEMA_VERSION}); upgrade JitPay")
        while version < SCHEMA_VERSION:
            log.warning("migrating the payment tables from schema version %d to %d", version, version + 1)
            STEPS[version](conn)
            version += 1
            conn.execute(text("UPDATE jitpay_schema SET version = :v WHERE id = 1"), {"v": version})
        _add_indexes(conn)


def _add_indexes(conn: Connection) -> None:
    """Create the indexes added to version 2 after it shipped (:data:`.models.ADDED_INDEXES`) where they are
    missing."""
    inspector = inspect(conn)
    for index in ADDED_INDEXES:
        if index.name not in {found["name"] for found in inspector.get_indexes(index.table.name)}:
            log.warning("adding index %s to %s", index.name, index.table.name)
            index.create(conn)


def _aware(value: Any) -> datetime | None:
    """A stored time as aware UTC (SQLite returns text or naive datetimes)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _v1_reference(order_id: str, provider_name: str, pay_type: str) -> str:
    """The provider reference a version-1 attempt used: the order id, except WeChat Pay's MWEB order."""
    if provider_name == "wechat" and pay_type == "mobile":
        from elements.pays.WechatPayType import mweb_out_trade_no

        return mweb_out_trade_no(order_id)
    return order_id


def _migrate_1_to_2(conn: Connection) -> None:
    """Version 1 → 2: attempts become payments, refunds belong to the accepted payment."""
    timestamp = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
    for column, kind in (("paymentId", "BIGINT"), ("expiresAt", timestamp)):
        conn.execute(text(f'ALTER TABLE jitpay_order ADD COLUMN "{column}" {kind}'))
    for column, kind in (("paymentId", "BIGINT"), ("kind", "VARCHAR(16) NOT NULL DEFAULT 'merchant'"),
                         ("errorCode", "VARCHAR(64)"), ("errorMessage", "TEXT")):
        conn.execute(text(f'ALTER TABLE jitpay_refund ADD COLUMN "{column}" {kind}'))
    conn.execute(text('CREATE INDEX "ix_jitpay_refund_paymentId" ON jitpay_refund ("paymentId")'))
    PayPayment.__table__.create(conn)
    payments = PayPayment.__table__
    now = datetime.now(timezone.utc)

    orders = conn.execute(text('SELECT "orderId", "amountFen", status, provider, "tradeNo", "payTime", '
                               '"createdAt" FROM jitpay_order')).mappings().all()
    attempts = conn.execute(text('SELECT "orderId", provider, "providerName", "payType", "payUrl", "qrCode", '
                                 '"expiresAt", "createdAt" FROM jitpay_attempt ORDER BY id')).mappings().all()
    by_order: dict[str, list[Any]] = {}
    for attempt in attempts:
        by_order.setdefault(attempt["orderId"], []).append(attempt)

    for order in orders:
        order_id = order["orderId"]
        created = _aware(order["createdAt"]) or now
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for attempt in by_order.get(order_id, []):
            reference = _v1_reference(order_id, attempt["providerName"], attempt["payType"])
            rows[(attempt["provider"], reference)] = {
                "orderId": order_id, "provider": attempt["provider"], "providerName": attempt["providerName"],
                "payType": attempt["payType"], "reference": reference, "amountFen": order["amountFen"],
                "status": "prepared", "reservedFen": 0, "refundedFen": 0, "payUrl": attempt["payUrl"],
                "qrCode": attempt["qrCode"], "expiresAt": _aware(attempt["expiresAt"]),
                "createdAt": _aware(attempt["createdAt"]) or created, "updatedAt": now}
        accepted_key = None
        if order["status"] in ("success", "refunded") and order["provider"]:
            # the paid trade: Alipay has one per order; for WeChat Pay the one offered, NATIVE when both were
            mine = [key for key in rows if key[0] == order["provider"]]
            accepted_key = next((key for key in mine if key[1] == order_id), mine[0] if mine else None)
            if accepted_key is None:
                accepted_key = (order["provider"], order_id)
                rows[accepted_key] = {
                    "orderId": order_id, "provider": order["provider"],
                    "providerName": order["provider"].rsplit(".", 1)[-1], "payType": "pc",
                    "reference": order_id, "amountFen": order["amountFen"], "reservedFen": 0, "refundedFen": 0,
                    "createdAt": created, "updatedAt": now}
            rows[accepted_key].update(status="paid", role="accepted", tradeNo=order["tradeNo"],
                                      paidAt=_aware(order["payTime"]) or created)
        accepted_id = None
        for key, row in rows.items():
            result = conn.execute(payments.insert().values(**row))
            if key == accepted_key:
                accepted_id = result.inserted_primary_key[0]
        values: dict[str, Any] = {"expiresAt": created + V1_PAY_WINDOW, "paymentId": accepted_id}
        conn.execute(text('UPDATE jitpay_order SET "expiresAt" = :expiresAt, "paymentId" = :paymentId '
                          'WHERE "orderId" = :orderId'), {**values, "orderId": order_id})
        if accepted_id is None:
            continue
        refunds = conn.execute(text('SELECT id, "amountFen", status FROM jitpay_refund WHERE "orderId" = :o'),
                               {"o": order_id}).mappings().all()
        confirmed = reserved = 0
        for refund in refunds:
            status = {"success": "confirmed", "failed": "refused"}.get(refund["status"], "unknown")
            if status == "confirmed":
                confirmed += refund["amountFen"]
            if status in ("confirmed", "unknown"):
                reserved += refund["amountFen"]
            conn.execute(text('UPDATE jitpay_refund SET status = :s, "paymentId" = :p WHERE id = :id'),
                         {"s": status, "p": accepted_id, "id": refund["id"]})
        paid_status = "refunded" if confirmed >= order["amountFen"] else "paid"
        conn.execute(payments.update().where(payments.c.id == accepted_id)
                     .values(reservedFen=reserved, refundedFen=confirmed, status=paid_status))
        conn.execute(text('UPDATE jitpay_order SET "refundedFen" = :r WHERE "orderId" = :o'),
                     {"r": confirmed, "o": order_id})
    conn.execute(text('UPDATE jitpay_refund SET status = \'unknown\' WHERE "paymentId" IS NULL AND '
                      'status = \'pending\''))
    conn.execute(text("DROP TABLE jitpay_attempt"))


#: STEPS[v] moves a database from version v to v + 1
STEPS: dict[int, Callable[[Connection], None]] = {1: _migrate_1_to_2}
