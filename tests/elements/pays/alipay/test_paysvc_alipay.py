"""The documented flow through the whole stack: a loaded app (``jitcore.load_app``) served over HTTP, ``PaySvc`` with
``pays.AliPayType`` against the sandbox gateway mounted in the same app, the buyer paying in the wallet, Alipay's
notification arriving at ``alipayNotify``; and ``check`` reaching the same state without a notification."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from elements.pays.AliPayType.signing import load_rsa_key, sign_notify
from tests.support.live import ALIPAY_APP_ID, ALIPAY_SELLER_ID, start_live_app, wait_for

NOTIFY_PATH = "/api/shop/pays/services/PaySvc/alipayNotify"
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


def _sandbox_settings(delays: list[float]) -> dict:
    keys = ".sandbox"
    return {"sandbox": {"alipay": {
        "appId": ALIPAY_APP_ID, "sellerId": ALIPAY_SELLER_ID, "notifyDelays": delays,
        "appPublicKey": {"$file": f"{keys}/alipay_app_public_key.pem"},
        "gatewayPrivateKey": {"$file": f"{keys}/alipay_gateway_private_key.pem"}}}}


@pytest.fixture
def live(tmp_path: Path):
    with start_live_app(tmp_path, settings=_sandbox_settings([0, 0.1, 0.2, 0.4, 0.8])) as app:
        yield app


@pytest.fixture
def live_quiet(tmp_path: Path):
    """The sandbox waits 60s before its first notification: only ``check`` can learn of the payment in time."""
    with start_live_app(tmp_path, settings=_sandbox_settings([60])) as app:
        yield app


def _call(client: httpx.Client, function: str, **args) -> dict:
    response = client.post(f"/api/shop/pays/services/PaySvc/{function}", json=args)
    assert response.status_code == 200, response.text
    return response.json()


def _pay_in_wallet(url: str) -> None:
    """The buyer: open the wallet page (following the gateway's redirect for links), press Pay."""
    page = httpx.get(url, timeout=5, follow_redirects=True)
    assert page.status_code == 200, page.text
    action = re.search(r'action="([^"]+)" id="pay-form"', page.text)
    assert action, page.text
    assert httpx.post(action.group(1), timeout=5).status_code == 303


@pytest.mark.parametrize("pay_type", ["pc", "mobile", "page"])
def test_pay_and_notify(live, pay_type):
    with live.client() as client:
        order = _call(client, "create", subject="会员 VIP + 1年 & more", amount="66.60")
        prep = _call(client, "getPayUrl", orderId=order["orderId"], fullName="pays.AliPayType", payType=pay_type)
        assert prep["payUrl"].startswith(live.url)
        if pay_type == "pc":
            assert prep["qrCode"].startswith("data:image/png;base64,")
        _pay_in_wallet(prep["payUrl"])
        paid = wait_for(lambda: (o := _call(client, "query", orderId=order["orderId"]))["status"] == "success" and o)
        assert paid["provider"] in ("pays.AliPayType", "alipay"), paid["provider"]
        assert paid["tradeNo"] and paid["payTime"]
        assert Decimal(str(paid["amount"])) == Decimal("66.60")
        checked = _call(client, "check", orderId=order["orderId"], fullName="pays.AliPayType")
        assert checked["status"] == "success" and checked["providerStatus"] == "success"


def test_check_without_notification_then_refund(live_quiet):
    with live_quiet.client() as client:
        order = _call(client, "create", subject="无通知 no notify", amount="10.00")
        prep = _call(client, "getPayUrl", orderId=order["orderId"], fullName="pays.AliPayType", payType="pc")
        pending = _call(client, "check", orderId=order["orderId"], fullName="pays.AliPayType")
        assert pending["status"] == "pending"  # not scanned: ACQ.TRADE_NOT_EXIST
        _pay_in_wallet(prep["payUrl"])
        checked = _call(client, "check", orderId=order["orderId"], fullName="pays.AliPayType")
        assert checked["status"] == "success" and checked["tradeNo"] and checked["payTime"]
        refund = _call(client, "refund", orderId=order["orderId"])
        assert refund
        assert _call(client, "query", orderId=order["orderId"])["status"] == "refunded"


def test_forged_and_tampered_notifications_change_nothing(live):
    keys = live.yaml_path.parent / ".sandbox"
    gateway_key = load_rsa_key((keys / "alipay_gateway_private_key.pem").read_text())
    app_key = load_rsa_key((keys / "alipay_app_private_key.pem").read_text())
    with live.client() as client:
        order = _call(client, "create", subject="forgery target", amount="5.00")
        fields = {"notify_time": "2024-05-01 12:00:00", "notify_type": "trade_status_sync", "notify_id": "forged",
                  "app_id": ALIPAY_APP_ID, "charset": "utf-8", "version": "1.0", "trade_no": "2024050122001499999",
                  "out_trade_no": order["orderId"], "trade_status": "TRADE_SUCCESS", "total_amount": "5.00",
                  "gmt_payment": "2024-05-01 12:00:00", "seller_id": ALIPAY_SELLER_ID}
        attempts = [
            sign_notify(fields, app_key),  # not Alipay's key
            {**sign_notify(fields, gateway_key), "total_amount": "0.01"},  # tampered after signing
            sign_notify({**fields, "total_amount": "0.01"}, gateway_key),  # validly signed, wrong amount
            sign_notify({**fields, "app_id": "2021000000009999"}, gateway_key),  # another app
            sign_notify({**fields, "seller_id": "2088000000009999"}, gateway_key),  # another seller
            {k: v for k, v in sign_notify(fields, gateway_key).items() if k != "sign"},  # unsigned
        ]
        for form in attempts:
            answer = httpx.post(live.url + NOTIFY_PATH, content=urlencode(form), headers=FORM, timeout=5)
            assert answer.text == "failure", (form, answer.text)
            assert _call(client, "query", orderId=order["orderId"])["status"] == "pending"
        garbage = httpx.post(live.url + NOTIFY_PATH, content=b"a=1&a=2", headers=FORM, timeout=5)
        assert garbage.text != "success"
        # the genuine one is accepted, and accepted again when Alipay retries it
        genuine = urlencode(sign_notify(fields, gateway_key))
        for _ in range(2):
            answer = httpx.post(live.url + NOTIFY_PATH, content=genuine, headers=FORM, timeout=5)
            assert answer.text == "success"
        assert _call(client, "query", orderId=order["orderId"])["status"] == "success"
