"""The documented usage, literally, against the real providers and the sandbox over HTTP on loopback: create →
getPayUrl → the buyer pays in the sandbox wallet → the provider's notification → query shows success; and check()
reaching the same state when no notification arrives."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live import LiveApp, pay_in_wallet, start_live_app, wait_for


@pytest.fixture(params=["MD5", "HMAC-SHA256"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    with start_live_app(tmp_path, wechat_sign_type=request.param) as live_app:
        yield live_app


@pytest.mark.parametrize("full_name, pay_type", [("pays.AliPayType", "pc"), ("pays.AliPayType", "mobile"),
                                                 ("pays.AliPayType", "page"), ("pays.WechatPayType", "pc"),
                                                 ("pays.WechatPayType", "mobile")])
def test_documented_flow_with_notification(live: LiveApp, full_name: str, pay_type: str) -> None:
    pay_service = live.app.getElement("pays.services.PaySvc")
    order = pay_service.create(subject="Product Purchase Order", amount=99.99)
    url = pay_service.getPayUrl(orderId=order["orderId"], fullName=full_name, payType=pay_type)
    assert url["orderId"] == order["orderId"] and url["payUrl"].startswith(live.url)
    if pay_type == "pc":
        assert url["qrCode"].startswith("data:image/png;base64,")
    status = pay_service.query(orderId=order["orderId"])
    assert status["status"] == "pending"

    pay_in_wallet(url["payUrl"])
    paid = wait_for(lambda: (s := pay_service.query(orderId=order["orderId"]))["status"] == "success" and s)
    assert paid["amount"] == Decimal("99.99") and paid["payTime"] is not None
    assert paid["provider"] == full_name and paid["tradeNo"]
    checked = pay_service.check(orderId=order["orderId"], fullName=full_name)
    assert checked["status"] == "success" and checked["providerStatus"] == "success"
    notes = live.app.loadElement("pays.services.PaySvc").ledger.audit_log(order["orderId"], kinds=["notify"])
    assert [n.outcome for n in notes][:1] == ["pending->success"] and notes[0].verified


@pytest.mark.parametrize("full_name", ["pays.AliPayType", "pays.WechatPayType"])
def test_check_without_notification(tmp_path: Path, full_name: str) -> None:
    dead = "http://127.0.0.1:9/nowhere"  # the notification never arrives
    elements = {name: {"config": {"notifyUrl": dead}} for name in ("pays.AliPayType", "pays.WechatPayType")}
    with start_live_app(tmp_path, elements=elements) as live:
        pay_service = live.app.getElement("pays.services.PaySvc")
        order = pay_service.create("Purchase VIP Membership", 99.99)
        url = pay_service.getPayUrl(orderId=order["orderId"], fullName=full_name, payType="pc")
        assert pay_service.check(orderId=order["orderId"], fullName=full_name)["status"] == "pending"
        pay_in_wallet(url["payUrl"])
        result = pay_service.check(orderId=order["orderId"], fullName=full_name)
        assert result["status"] == "success" and result["payTime"] is not None
        assert pay_service.query(orderId=order["orderId"])["status"] == "success"


def test_refund_and_close_through_the_sandbox(live: LiveApp) -> None:
    pay_service = live.app.getElement("pays.services.PaySvc")
    for full_name in ("pays.AliPayType", "pays.WechatPayType"):
        order = pay_service.create("Refundable", "20.00")
        url = pay_service.getPayUrl(orderId=order["orderId"], fullName=full_name, payType="pc")
        pay_in_wallet(url["payUrl"])
        wait_for(lambda: pay_service.query(orderId=order["orderId"])["status"] == "success")
        assert pay_service.refund(orderId=order["orderId"], amount="5.00", refundId="RF1")["status"] == "confirmed"
        assert pay_service.refund(orderId=order["orderId"], amount="5.00", refundId="RF1")["status"] == "confirmed"
        pay_service.refund(orderId=order["orderId"], refundId="RF2")
        assert pay_service.query(orderId=order["orderId"])["status"] == "refunded"

        unpaid = pay_service.create("To close", "3.00")
        pay_service.getPayUrl(orderId=unpaid["orderId"], fullName=full_name, payType="pc")
        assert pay_service.close(orderId=unpaid["orderId"])["status"] == "closed"
        assert pay_service.check(orderId=unpaid["orderId"], fullName=full_name)["status"] == "closed"


def test_cashier_status_finds_a_payment_whose_notification_never_arrives(tmp_path: Path) -> None:
    from urllib.parse import parse_qs, urlsplit

    elements = {"pays.AliPayType": {"config": {"notifyUrl": "http://127.0.0.1:9/nowhere"}}}
    with start_live_app(tmp_path, elements=elements) as live:
        pay_service = live.app.getElement("pays.services.PaySvc")
        order = pay_service.create("Purchase VIP Membership", 99.99)
        url = pay_service.getPayUrl(orderId=order["orderId"], fullName="pays.AliPayType", payType="pc")
        pay_in_wallet(url["payUrl"])
        cashier = urlsplit(order["cashierUrl"])
        token = parse_qs(cashier.query)["token"][0]
        status = httpx.get(f"{live.url}{cashier.path}/status", params={"token": token}, timeout=10).json()
        assert status["status"] == "success"  # the status endpoint asked Alipay (alipay.trade.query)
        assert pay_service.query(orderId=order["orderId"])["provider"] == "pays.AliPayType"


def test_documented_usage_literally_on_postgresql(tmp_path: Path, postgres_server: Any) -> None:
    with start_live_app(tmp_path, database=postgres_server.new_database()) as live:
        app = live.app
        pay_service = app.getElement("pays.services.PaySvc")
        result = pay_service.create("Purchase VIP Membership", 99.99)                 # orderId generated
        assert result["status"] == "pending" and result["amount"] == Decimal("99.99")
        result = pay_service.create(subject="Product Order", amount=299.00, orderId="CUSTOM_ORDER_001")
        assert {k: result[k] for k in ("orderId", "status", "amount", "subject")} == {
            "orderId": "CUSTOM_ORDER_001", "status": "pending", "amount": Decimal("299.00"), "subject": "Product Order"}
        status = pay_service.query(orderId="CUSTOM_ORDER_001")
        assert status["status"] == "pending" and status["payTime"] is None
        url = pay_service.getPayUrl(orderId="CUSTOM_ORDER_001", fullName="pays.AliPayType", payType="pc")
        assert set(url) >= {"payUrl", "qrCode", "orderId"}
        assert pay_service.check(orderId="CUSTOM_ORDER_001", fullName="pays.AliPayType")["status"] == "pending"
        pay_in_wallet(url["payUrl"])
        wait_for(lambda: pay_service.query(orderId="CUSTOM_ORDER_001")["status"] == "success")
        checked = pay_service.check(orderId="CUSTOM_ORDER_001", fullName="pays.AliPayType")
        assert checked["status"] == "success" and checked["payTime"] is not None

        wechat = pay_service.create(subject="Product Order", amount="19.90")
        url = pay_service.getPayUrl(orderId=wechat["orderId"], fullName="pays.WechatPayType", payType="pc")
        pay_in_wallet(url["payUrl"])
        wait_for(lambda: pay_service.query(orderId=wechat["orderId"])["status"] == "success")
