"""WeChat Pay through the whole stack: ``jitcore.load_app`` of an app YAML, ``app.getElement("pays.services.PaySvc")``,
the sandbox plugin's routes and PaySvc's notify route on one real uvicorn server, for both sign types."""

from __future__ import annotations

import dataclasses
import re
import socket
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from elements.pays.errors import OrderClosed
from elements.pays.WechatPayType.signing import calculate_sign
from elements.pays.WechatPayType.wirexml import build_cdata_xml, parse_xml
from tests.support.live import WECHAT_APP_ID, WECHAT_MCH_ID, LiveApp, start_live_app, wait_for

from .conftest import random_key

WECHAT = "pays.WechatPayType"


@pytest.fixture(params=["MD5", "HMAC-SHA256"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveApp]:
    with start_live_app(tmp_path, wechat_sign_type=request.param) as live:
        yield live


def pay_on_wallet(live: LiveApp, payUrl: str) -> None:
    page = httpx.get(payUrl)
    assert 'id="pay-button"' in page.text
    action = re.search(r'<form method="post" action="([^"]+/pay)"', page.text).group(1)
    assert httpx.post(live.url + action).status_code == 303


def notify_url(live: LiveApp) -> str:
    return f"{live.url}/api/shop/pays/services/PaySvc/wechatNotify"


def test_pc_pay_notification_query(live: LiveApp) -> None:
    svc = live.pay_service
    order = svc.create(subject="年度会员 Annual membership", amount=Decimal("99.99"))
    prep = svc.getPayUrl(orderId=order["orderId"], fullName=WECHAT, payType="pc", clientIp="203.0.113.9")
    assert prep["qrCode"].startswith("data:image/png;base64,") and "/sandbox/wechat/wallet/" in prep["payUrl"]
    # A second call for the same pending order reuses the still-valid prepay.
    assert svc.getPayUrl(orderId=order["orderId"], fullName=WECHAT, payType="pc")["payUrl"] == prep["payUrl"]
    assert svc.query(orderId=order["orderId"])["status"] == "pending"
    pay_on_wallet(live, prep["payUrl"])
    paid = wait_for(lambda: (o := svc.query(orderId=order["orderId"]))["status"] == "success" and o)
    assert paid["provider"] == WECHAT and paid["tradeNo"].startswith("42") and paid["payTime"] is not None
    # check() agrees and changes nothing.
    checked = svc.check(orderId=order["orderId"], fullName=WECHAT)
    assert checked["providerStatus"] == "success" and checked["tradeNo"] == paid["tradeNo"]


def test_mobile_pay_reached_by_check_without_notification(live: LiveApp) -> None:
    provider = live.app.loadElement(WECHAT)
    # Simulate an app whose notify URL WeChat cannot reach: only check() can learn of the payment.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}/nowhere"
    sock.close()
    provider.settings = dataclasses.replace(provider.settings, notifyUrl=dead)
    svc = live.pay_service
    order = svc.create(subject="H5 order", amount=Decimal("0.01"))
    prep = svc.getPayUrl(orderId=order["orderId"], fullName=WECHAT, payType="mobile")
    assert prep["qrCode"] is None
    pay_on_wallet(live, prep["payUrl"])
    assert svc.query(orderId=order["orderId"])["status"] == "pending"
    checked = svc.check(orderId=order["orderId"], fullName=WECHAT)
    assert checked["status"] == "success" and checked["amount"] == Decimal("0.01")


def signed_notification(live: LiveApp, order_id: str, total_fee: str, key: str | None = None) -> bytes:
    key = key or (live.yaml_path.parent / ".sandbox" / "wechat_api_key.txt").read_text().strip()
    fields = {"appid": WECHAT_APP_ID, "mch_id": WECHAT_MCH_ID, "nonce_str": "x" * 32, "return_code": "SUCCESS",
              "result_code": "SUCCESS", "openid": "oForged", "trade_type": "NATIVE", "bank_type": "OTHERS",
              "total_fee": total_fee, "cash_fee": total_fee, "transaction_id": "4200000000000000000000000001",
              "out_trade_no": order_id, "time_end": "20240101120000"}
    # signed with the merchant's configured sign type: the only one its notifications may use
    fields["sign"] = calculate_sign(fields, key, live.app.loadElement(WECHAT).settings.signType)
    return build_cdata_xml(fields)


def test_forged_tampered_and_hostile_notifications_change_nothing(live: LiveApp) -> None:
    svc = live.pay_service
    order = svc.create(subject="Forgery target", amount=Decimal("10.00"))
    svc.getPayUrl(orderId=order["orderId"], fullName=WECHAT, payType="pc")
    bodies = {
        "forged": signed_notification(live, order["orderId"], "1000", key=random_key()),
        "wrong amount": signed_notification(live, order["orderId"], "1"),
        "billion laughs": b'<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><xml><a>&b;</a></xml>',
        "not xml": b"return_code=SUCCESS",
    }
    for name, body in bodies.items():
        reply = httpx.post(notify_url(live), content=body, headers={"Content-Type": "text/xml"})
        assert reply.status_code == 200, name
        assert parse_xml(reply.content)["return_code"] == "FAIL", name
        assert svc.query(orderId=order["orderId"])["status"] == "pending", name
    # The genuine one (right key, right amount) is accepted, and accepted again idempotently.
    genuine = signed_notification(live, order["orderId"], "1000")
    for _ in range(2):
        reply = httpx.post(notify_url(live), content=genuine, headers={"Content-Type": "text/xml"})
        assert reply.content == (b"<xml><return_code><![CDATA[SUCCESS]]></return_code>"
                                 b"<return_msg><![CDATA[OK]]></return_msg></xml>")
    assert svc.query(orderId=order["orderId"])["status"] == "success"


def test_close_and_refund(live: LiveApp) -> None:
    svc = live.pay_service
    unpaid = svc.create(subject="To close", amount=Decimal("5.00"))
    prep = svc.getPayUrl(orderId=unpaid["orderId"], fullName=WECHAT, payType="pc")
    assert svc.close(orderId=unpaid["orderId"])["status"] == "closed"
    assert 'data-state="CLOSED"' in httpx.get(prep["payUrl"]).text
    with pytest.raises(OrderClosed):
        svc.getPayUrl(orderId=unpaid["orderId"], fullName=WECHAT, payType="pc")

    order = svc.create(subject="To refund", amount=Decimal("20.00"))
    pay_on_wallet(live, svc.getPayUrl(orderId=order["orderId"], fullName=WECHAT, payType="mobile")["payUrl"])
    wait_for(lambda: svc.query(orderId=order["orderId"])["status"] == "success")
    first = svc.refund(orderId=order["orderId"], amount=Decimal("5.00"), refundId="RF1", reason="部分退款")
    assert first["status"] == "confirmed" and first["refundNo"]
    assert svc.refund(orderId=order["orderId"], amount=Decimal("5.00"), refundId="RF1")["refundNo"] == first["refundNo"]
    svc.refund(orderId=order["orderId"])  # the rest
    final = svc.query(orderId=order["orderId"])
    assert final["status"] == "refunded" and final["refundedAmount"] == Decimal("20.00")
