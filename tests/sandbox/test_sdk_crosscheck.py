"""``time_expire``, the held notifications and refund queries cross-checked with independent SDKs: wechatpy (WeChat
Pay v2) and python-alipay-sdk. Their signed requests carrying a ``time_expire`` are accepted and enforced by the
sandboxes; our signed requests carrying one verify with their code; the sandboxes' held notifications verify with their
code; wechatpy writes the same ``time_expire`` text for the same moment as the provider does; and wechatpy's refund
query reads a refund on its way (and how it ended) as ``WechatPayType.refund_state`` does."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qsl

import pytest

from elements.pays.AliPayType import time_expire as alipay_time_expire
from elements.pays.WechatPayType import time_expire as wechat_time_expire

from .conftest import ALIPAY_APP_ID, MCH_ID, WECHAT_APP_ID, Shop, new_order

wechatpy_pay = pytest.importorskip("wechatpy.pay")
wechatpy_utils = pytest.importorskip("wechatpy.pay.utils")
alipay_sdk = pytest.importorskip("alipay")

BEIJING = timezone(timedelta(hours=8))


def wechatpy_client(shop: Shop):
    client = wechatpy_pay.WeChatPay(appid=WECHAT_APP_ID, api_key=shop.wechatApiKey, mch_id=MCH_ID, timeout=5)
    client.API_BASE_URL = f"{shop.url}/sandbox/wechat/"
    return client


def test_wechatpy_formats_time_expire_as_we_do(shop: Shop) -> None:
    moment = datetime(2030, 12, 31, 16, 30, 5, 999999, tzinfo=timezone.utc)  # 2031-01-01 00:30:05 in Beijing
    ours, stands_for = wechat_time_expire(moment)
    assert ours == "20310101003005" and stands_for == moment.replace(microsecond=0)
    # wechatpy writes the datetime it is given with strftime('%Y%m%d%H%M%S'); it expects Beijing time
    client = wechatpy_client(shop)
    order = new_order()
    answer = client.order.create(trade_type="NATIVE", body="wechatpy", total_fee=1,
                                 notify_url=shop.wechat.settings.notifyUrl, client_ip="127.0.0.1",
                                 out_trade_no=order.orderId, product_id=order.orderId,
                                 time_expire=moment.astimezone(BEIJING))
    assert answer["result_code"] == "SUCCESS"
    assert shop.wechatSandbox.trade(order.orderId)["time_expire"] == ours


def test_the_sandbox_enforces_wechatpys_time_expire(shop_factory) -> None:
    shop: Shop = shop_factory(wechat={"notifyMode": "hold"})
    client = wechatpy_client(shop)
    soon = new_order()
    with pytest.raises(wechatpy_pay.WeChatPayException) as info:  # less than 5 minutes ahead
        client.order.create(trade_type="NATIVE", body="wechatpy", total_fee=1, client_ip="127.0.0.1",
                            notify_url=shop.wechat.settings.notifyUrl, out_trade_no=soon.orderId,
                            product_id=soon.orderId, time_expire=datetime.now(BEIJING) + timedelta(minutes=4))
    assert "time_expire" in info.value.return_msg

    relaxed: Shop = shop_factory(wechat={"notifyMode": "hold", "timeExpireMinSeconds": 0})
    client = wechatpy_client(relaxed)
    order = new_order()
    client.order.create(trade_type="NATIVE", body="wechatpy", total_fee=1, client_ip="127.0.0.1",
                        notify_url=relaxed.wechat.settings.notifyUrl, out_trade_no=order.orderId,
                        product_id=order.orderId,
                        time_expire=(datetime.now(BEIJING) + timedelta(seconds=2)).replace(microsecond=0))
    time.sleep(2.2)
    assert relaxed.wechatSandbox.pay(order.orderId) is False
    assert client.order.query(out_trade_no=order.orderId)["trade_state"] == "CLOSED"


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_our_signed_unifiedorder_with_time_expire_verifies_with_wechatpy(shop_factory, sign_type: str) -> None:
    shop: Shop = shop_factory(wechatSignType=sign_type)
    order = new_order(expires_in=timedelta(hours=1))
    request = shop.wechat.api.signed_request({"body": order.subject, "out_trade_no": order.orderId,
                                              "total_fee": 1234, "time_expire": wechat_time_expire(
                                                  order.expiresAt)[0], "trade_type": "NATIVE"})
    unsigned = {k: v for k, v in request.items() if k != "sign"}
    oracle = wechatpy_utils.calculate_signature if sign_type == "MD5" else wechatpy_utils.calculate_signature_hmac
    assert request["sign"] == oracle(unsigned, shop.wechatApiKey)
    assert request["sign"] != oracle({**unsigned, "time_expire": "20991231235959"}, shop.wechatApiKey)


def test_wechatpy_verifies_a_held_notification(shop_factory) -> None:
    shop: Shop = shop_factory(wechat={"notifyMode": "hold"})  # wechatpy verifies MD5 notifications only
    order = new_order("9.99", expires_in=timedelta(hours=1))
    shop.wechat.prepare(order, "pc")
    shop.wechatSandbox.pay(order.orderId)
    held, = shop.wechatSandbox.take_notifications()
    parsed = wechatpy_client(shop).parse_payment_result(held.body)
    assert parsed["out_trade_no"] == order.orderId and parsed["total_fee"] == 999
    state = shop.wechat.verify_notify(shop.wechat.parse_notify_body(held.body, held.content_type))
    assert state.tradeNo == parsed["transaction_id"] and state.reference == order.orderId


@pytest.mark.parametrize("ending", [("SUCCESS", "SUCCESS", "success"), ("CLOSED", "REFUNDCLOSE", "closed"),
                                    ("ABNORMAL", "CHANGE", "abnormal")])
def test_wechatpy_reads_a_refund_on_its_way_as_our_refund_state_does(shop_factory, ending: tuple[str, ...]) -> None:
    outcome, theirs, ours = ending
    shop: Shop = shop_factory(wechat={"notifyMode": "hold"})
    order = new_order("9.99", expires_in=timedelta(hours=1))
    shop.wechat.prepare(order, "pc")
    shop.wechatSandbox.pay(order.orderId)
    shop.wechatSandbox.refunds_wait = True
    paid = replace(order, tradeNo=shop.wechatSandbox.trade(order.orderId)["transaction_id"])
    accepted = shop.wechat.refund(paid, "WPY-R1", Decimal("4.00"), Decimal("4.00"))
    assert accepted.status == "processing"  # WeChat Pay's SUCCESS to the refund call only says it was accepted
    client = wechatpy_client(shop)

    def signed_by_the_sandbox(answer: dict) -> bool:
        unsigned = {k: v for k, v in answer.items() if k != "sign"}
        return answer["sign"] == wechatpy_utils.calculate_signature(unsigned, shop.wechatApiKey)

    answer = client.refund.query(out_refund_no="WPY-R1")
    assert signed_by_the_sandbox(answer)
    assert (answer["refund_status_0"], answer["refund_fee_0"]) == ("PROCESSING", "400")
    assert shop.wechat.refund_state(paid, "WPY-R1", Decimal("4.00")).status == "processing"
    shop.wechatSandbox.finish_refund("WPY-R1", outcome)
    answer = client.refund.query(out_refund_no="WPY-R1")
    assert signed_by_the_sandbox(answer)
    assert answer["refund_status_0"] == theirs and answer["out_refund_no_0"] == "WPY-R1"
    state = shop.wechat.refund_state(paid, "WPY-R1", Decimal("4.00"))
    assert (state.status, state.refundNo, state.amount) == (ours, answer["refund_id_0"], Decimal("4.00"))


# -- python-alipay-sdk ---------------------------------------------------------------------------------------------------
def _alipay(shop: Shop, private: str, public: str):
    sdk = alipay_sdk.AliPay(appid=ALIPAY_APP_ID, app_notify_url=None, app_private_key_string=private,
                            alipay_public_key_string=public, sign_type="RSA2")
    sdk._gateway = f"{shop.url}/sandbox/alipay/gateway.do"
    return sdk


def test_alipay_sdk_verifies_our_request_with_time_expire(shop: Shop, alipay_keys) -> None:
    # the SDK in the gateway's place: it verifies with the app's public key
    sdk = _alipay(shop, alipay_keys["gateway_private_key"], alipay_keys["app_public_key"])
    order = new_order(expires_in=timedelta(hours=1))
    text, _ = alipay_time_expire(order.expiresAt)
    params = shop.alipay.gateway.signed_params("alipay.trade.precreate", {
        "out_trade_no": order.orderId, "total_amount": "1.00", "subject": order.subject, "time_expire": text})
    assert f'"time_expire":"{text}"' in params["biz_content"]
    unsigned = {k: v for k, v in params.items() if k != "sign"}
    content = "&".join(f"{k}={v}" for k, v in sdk._ordered_data(dict(unsigned)))
    assert sdk._verify(content, params["sign"])
    tampered = content.replace(text, "2099-12-31 23:59:59")
    assert tampered != content and not sdk._verify(tampered, params["sign"])


def test_the_sandbox_enforces_the_alipay_sdks_time_expire(shop_factory, alipay_keys, monkeypatch) -> None:
    shop: Shop = shop_factory(alipay={"notifyMode": "hold"})
    monkeypatch.setenv("TZ", "Asia/Shanghai")  # the SDK stamps requests with naive local time
    time.tzset()
    try:
        sdk = _alipay(shop, alipay_keys["app_private_key"], alipay_keys["gateway_public_key"])
        late = new_order()
        expire = (datetime.now(BEIJING) + timedelta(seconds=2)).strftime("%Y-%m-%d %H:%M:%S")
        result = sdk.api_alipay_trade_precreate(subject="SDK", out_trade_no=late.orderId, total_amount="1.00",
                                                time_expire=expire)
        assert result["code"] == "10000"
        assert shop.alipaySandbox.trade(late.orderId).expires.strftime("%Y-%m-%d %H:%M:%S") == expire
        time.sleep(2.2)
        assert shop.alipaySandbox.pay(late.orderId) is False

        paid = new_order("2.50")
        expire = (datetime.now(BEIJING) + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
        sdk.api_alipay_trade_precreate(subject="SDK", out_trade_no=paid.orderId, total_amount="2.50",
                                       time_expire=expire, notify_url=shop.alipay.notifyUrl)
        assert shop.alipaySandbox.pay(paid.orderId) is True
        assert sdk.api_alipay_trade_query(out_trade_no=paid.orderId)["trade_status"] == "TRADE_SUCCESS"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()

    # the held notification verifies with the SDK, and with the provider
    held, = shop.alipaySandbox.take_notifications()
    fields = dict(parse_qsl(held.body.decode("ascii"), keep_blank_values=True))
    signature = fields.pop("sign")
    assert sdk.verify(dict(fields), signature)
    state = shop.alipay.verify_notify(shop.alipay.parse_notify_body(held.body, held.content_type))
    assert state.reference == paid.orderId and state.status == "success"
