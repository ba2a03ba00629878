"""Several processes deliver the same "paid" outcome for the same orders at once, on PostgreSQL: each order is paid
once and the paid event fires once per order."""

from __future__ import annotations

import multiprocessing
import random
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import text

import jitcore
from tests.elements.pays.paysvc.conftest import write_app

PROCESSES = 4
ORDERS = 25


def deliver_all(yaml_path: str, orders: list[str], seed: int) -> int:
    """Child process: load the app and deliver a signed paid notification for every order (in its own order)."""
    app = jitcore.load_app(yaml_path)
    fake = app.classOf(app.getDefine("testpay.FakePayType"))
    sign_fields = sys.modules[fake.__module__].sign_fields
    svc = app.loadElement("pays.services.PaySvc")
    accepted = 0
    shuffled = list(orders)
    random.Random(seed).shuffle(shuffled)
    for order_id in shuffled:
        fields = {"out_trade_no": order_id, "amount": "42.00", "status": "success", "trade_no": f"T{order_id}",
                  "merchant": "m1"}
        fields["sign"] = sign_fields(fields, "fake-secret")
        accepted += svc.handle_notify("fake", fields).body == b"ok"
    app.close()
    return accepted


def test_processes_deliver_the_same_payment_once(tmp_path: Path, postgres_server: Any) -> None:
    url = postgres_server.new_database()
    yaml_path = write_app(tmp_path, url, settings={"events": {"table": True}})
    app = jitcore.load_app(yaml_path)
    pay = app.getElement("pays.services.PaySvc")
    orders = [pay.create("Concurrent", "42.00")["orderId"] for _ in range(ORDERS)]

    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        accepted = pool.starmap(deliver_all, [(str(yaml_path), orders, seed) for seed in range(PROCESSES)])
    assert accepted == [ORDERS] * PROCESSES  # every delivery is answered "processed" (or already processed)

    for order_id in orders:
        assert pay.query(orderId=order_id)["status"] == "success"
    with app.engine.connect() as connection:
        rows = connection.execute(text("SELECT order_id, COUNT(*) FROM test_events WHERE event = 'paid' "
                                       "GROUP BY order_id")).all()
        changes = connection.execute(text("SELECT COUNT(*) FROM jitpay_audit WHERE outcome = 'pending->success'"))
        assert changes.scalar_one() == ORDERS
    assert dict(rows) == {order_id: 1 for order_id in orders}
    app.close()
