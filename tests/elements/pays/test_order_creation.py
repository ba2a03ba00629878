"""create on both databases, with and without a plugin that takes ``jit_order_created``: the order is stored as
given, a taken orderId answers the existing order (or DUPLICATE_ORDER), and the event is written exactly when some
plugin takes it (on PostgreSQL an order nobody is told about is one INSERT in autocommit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.support.live import start_live_app
from tests.support.money import PLUGIN


@pytest.mark.parametrize("subscribed", [True, False], ids=["announced", "unannounced"])
def test_create_stores_the_order_and_refuses_a_taken_id(tmp_path: Path, database: str | None,
                                                        subscribed: bool) -> None:
    with start_live_app(tmp_path, run_jobs=False, database=database,
                        plugins=[PLUGIN] if subscribed else []) as live:
        pay = live.pay_service
        order = pay.create(subject="Created", amount="12.30", orderId="CREATE_000001")
        assert pay.create(subject="Created", amount="12.30", orderId="CREATE_000001") == order
        with pytest.raises(Exception) as info:
            pay.create(subject="Created", amount="12.31", orderId="CREATE_000001")
        assert info.value.code == "DUPLICATE_ORDER"
        stored = pay.query(orderId="CREATE_000001")
        assert (stored["status"], str(stored["amount"]), stored["subject"]) == ("pending", "12.30", "Created")
        assert stored["payments"] == [] and stored["refunds"] == []
        live.app.jobs.ensure_schema()  # (made with the first job)
        with live.app.engine.connect() as conn:
            events = conn.execute(text("SELECT payload FROM jit_job WHERE kind = 'jit.event'")).scalars().all()
        created = [payload for payload in events if "jit_order_created" in payload and "CREATE_000001" in payload]
        assert len(created) == (1 if subscribed else 0)


def test_the_first_pay_url_after_create_does_not_read_the_order_back(tmp_path: Path, database: str | None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with start_live_app(tmp_path, run_jobs=False, database=database) as live:
        pay = live.pay_service
        ledger = live.app.loadElement("pays.services.PaySvc").ledger
        reads: list[str] = []
        reading = ledger._reading
        monkeypatch.setattr(ledger, "_reading", lambda: reads.append("read") or reading())
        order_id = pay.create(subject="Remembered", amount="1.00")["orderId"]
        first = pay.getPayUrl(orderId=order_id, fullName="pays.AliPayType", payType="mobile")
        assert reads == []  # the order as written
        assert pay.getPayUrl(orderId=order_id, fullName="pays.AliPayType", payType="mobile") == first
        assert reads == ["read"]  # offered once: read, and the offer reused
        pay.close(orderId=order_id)
        closed_id = pay.create(subject="Closed first", amount="1.00")["orderId"]
        pay.close(orderId=closed_id)  # forgotten: getPayUrl reads the closed order
        reads.clear()
        with pytest.raises(Exception) as info:
            pay.getPayUrl(orderId=closed_id, fullName="pays.AliPayType", payType="mobile")
        assert info.value.code == "ORDER_CLOSED" and reads == ["read"]
