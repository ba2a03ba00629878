"""Cross-check with an independent implementation, python-alipay-sdk (``import alipay``): what we sign it verifies, and
what it signs we verify, for requests, responses and notifications."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

alipay_sdk = pytest.importorskip("alipay")

from elements.pays.AliPayType.signing import load_rsa_key, sign_request, verify_notify_signature, verify_request  # noqa: E402

from .conftest import APP_ID, order  # noqa: E402

TRICKY = "跨实现 a+b&c=d%20e ü"


def _sdk(private_pem: str, public_pem: str):
    return alipay_sdk.AliPay(appid=APP_ID, app_notify_url=None, app_private_key_string=private_pem,
                             alipay_public_key_string=public_pem, sign_type="RSA2")


def _sdk_content(sdk, data: dict) -> str:
    return "&".join(f"{k}={v}" for k, v in sdk._ordered_data(dict(data)))


def test_sdk_verifies_our_request_signature(keys):
    # the SDK as the gateway side: it verifies with the app's public key
    sdk = _sdk(keys["gateway_private"], keys["app_public"])
    ours = sign_request({"app_id": APP_ID, "method": "alipay.trade.precreate", "charset": "utf-8",
                         "sign_type": "RSA2", "timestamp": "2024-05-01 12:00:00", "version": "1.0",
                         "biz_content": '{"subject":"' + TRICKY + '","total_amount":"1.00"}'},
                        load_rsa_key(keys["app_private"]))
    unsigned = {k: v for k, v in ours.items() if k != "sign"}
    assert sdk._verify(_sdk_content(sdk, unsigned), ours["sign"])


def test_we_verify_the_sdks_request_signature(keys):
    sdk = _sdk(keys["app_private"], keys["gateway_public"])
    query = sdk.client_api("alipay.trade.wap.pay", {"out_trade_no": "SDK1", "total_amount": "1.00",
                                                    "subject": TRICKY, "product_code": "QUICK_WAP_WAY"},
                           notify_url="https://shop.example/notify?x=1&y=2")
    params = dict(parse_qsl(query, keep_blank_values=True))
    assert verify_request(params, load_rsa_key(keys["app_public"]))
    assert not verify_request({**params, "notify_url": "https://evil.example/"}, load_rsa_key(keys["app_public"]))


def test_sdk_verifies_our_notification_and_we_verify_its(keys, merchant):
    # ours (the sandbox's, as received by the merchant's endpoint) → the SDK
    m = merchant
    _pay_once(m, order("SDK_NOTIFY", "3.21", TRICKY))
    fields = m.provider.parse_notify_body(m.bodies[-1], "application/x-www-form-urlencoded")
    sdk = _sdk(keys["app_private"], keys["gateway_public"])
    data = {k: v for k, v in fields.items() if k != "sign"}
    assert sdk.verify(dict(data), fields["sign"])
    assert not sdk.verify({**data, "total_amount": "0.01"}, fields["sign"])

    # the SDK signing a notification (as Alipay would) → our verify_notify
    signer = _sdk(keys["gateway_private"], keys["app_public"])
    forged_free = {k: v for k, v in fields.items() if k not in ("sign", "sign_type")}
    signed = {**forged_free, "sign_type": "RSA2", "sign": signer._sign(_sdk_content(signer, forged_free))}
    assert verify_notify_signature(signed, load_rsa_key(keys["gateway_public"]))
    state = m.provider.verify_notify(signed)
    assert state.status == "success" and state.orderId == "SDK_NOTIFY"


def _pay_once(m, o):
    import re
    prep = m.provider.prepare(o, "pc")
    html = httpx.get(prep.payUrl, timeout=5).text
    action = re.search(r'action="([^"]+)" id="pay-form"', html).group(1)
    httpx.post(action, timeout=5)
    m.wait_notified()


def test_sdk_talks_to_the_sandbox(keys, merchant, monkeypatch):
    """The SDK as the merchant against our sandbox gateway: the sandbox accepts its requests and the SDK verifies the
    sandbox's signed responses (cut and checked the SDK's own way)."""
    m = merchant
    monkeypatch.setenv("TZ", "Asia/Shanghai")  # the SDK stamps requests with naive local time
    time.tzset()
    try:
        sdk = _sdk(keys["app_private"], keys["gateway_public"])
        sdk._gateway = f"{m.url}/sandbox/alipay/gateway.do"
        result = sdk.api_alipay_trade_precreate(subject=TRICKY, out_trade_no="SDK_PRE", total_amount="8.88")
        assert result["code"] == "10000" and result["qr_code"].startswith(f"{m.url}/sandbox/alipay/wallet/")
        # not scanned yet: a signed business error, which the SDK hands back as a dict
        assert sdk.api_alipay_trade_query(out_trade_no="SDK_PRE")["sub_code"] == "ACQ.TRADE_NOT_EXIST"
        httpx.get(result["qr_code"], timeout=5)
        assert sdk.api_alipay_trade_query(out_trade_no="SDK_PRE")["trade_status"] == "WAIT_BUYER_PAY"
        # and a wap.pay link signed by the SDK opens the wallet
        link = sdk._gateway + "?" + sdk.client_api("alipay.trade.wap.pay", {
            "out_trade_no": "SDK_WAP", "total_amount": "1.00", "subject": TRICKY, "product_code": "QUICK_WAP_WAY"})
        answer = httpx.get(link, timeout=5)
        assert answer.status_code == 303, answer.text
        assert urlsplit(answer.headers["location"]).path.startswith("/sandbox/alipay/wallet/")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
