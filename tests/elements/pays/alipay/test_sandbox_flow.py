"""End to end over real HTTP on loopback: the provider's production code against the sandbox gateway, a buyer paying
on the wallet page, the signed notification reaching the merchant's endpoint, and the trade's life after that."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from elements.pays.AliPayType.signing import load_rsa_key, verify_notify_signature
from elements.pays.errors import ProviderError, UnsupportedPayType

from tests.support.live import wait_for

from .conftest import SELLER_ID, make_provider, order


def _wallet(m, url: str) -> str:
    page = httpx.get(url, timeout=5)
    assert page.status_code == 200, page.text
    return page.text


def _pay(m, wallet_url: str) -> httpx.Response:
    html = _wallet(m, wallet_url)
    action = re.search(r'<form method="post" action="([^"]+)" id="pay-form">', html)
    assert action, html
    response = httpx.post(action.group(1), timeout=5)
    assert response.status_code == 303
    return response


def test_pc_precreate_scan_pay_notify_query(merchant):
    m = merchant
    o = order("PC_ORDER_1", "12.30", "年度会员 annual + plan & more = 100%")
    before = datetime.now(timezone.utc)
    prep = m.provider.prepare(o, "pc")
    assert prep.payUrl.startswith(f"{m.url}/sandbox/alipay/wallet/")
    assert prep.qrCode and prep.qrCode.startswith("data:image/png;base64,")
    assert before + timedelta(minutes=119) < prep.expiresAt <= datetime.now(timezone.utc) + timedelta(minutes=120)
    assert prep.extra["timeoutExpress"] == "120m"

    # Not scanned yet: Alipay knows no such trade, which means pending.
    state = m.provider.query(o)
    assert state.status == "pending" and state.raw["sub_code"] == "ACQ.TRADE_NOT_EXIST"

    html = _wallet(m, prep.payUrl)  # the buyer scans
    assert "年度会员 annual + plan &amp; more = 100%" in html and "12.30" in html
    assert 'id="pay-button"' in html and "演示商户 Demo Shop" in html
    state = m.provider.query(o)
    assert state.status == "pending" and state.raw["trade_status"] == "WAIT_BUYER_PAY"

    _pay(m, prep.payUrl)
    notified = m.wait_notified()[0]
    assert notified.orderId == "PC_ORDER_1" and notified.status == "success"
    assert notified.paidAmount == Decimal("12.30") and notified.payTime is not None
    assert notified.raw["subject"] == o.subject  # the tricky subject survived signing and form encoding
    assert notified.raw["seller_id"] == SELLER_ID

    state = m.provider.query(o)
    assert state.status == "success" and state.tradeNo == notified.tradeNo
    assert state.paidAmount == Decimal("12.30")
    assert state.payTime == notified.payTime
    assert abs(state.payTime - datetime.now(timezone.utc)) < timedelta(minutes=1)

    html = _wallet(m, prep.payUrl)
    assert 'id="paid-status"' in html and 'data-delivered="true"' in html
    assert m.sandbox.trade("PC_ORDER_1").notify_delivered


def test_precreate_is_idempotent_and_consistent(merchant):
    m = merchant
    first = m.provider.prepare(order("PC_AGAIN", "1.00"), "pc")
    assert m.provider.prepare(order("PC_AGAIN", "1.00"), "pc").payUrl == first.payUrl
    with pytest.raises(ProviderError) as info:
        m.provider.prepare(order("PC_AGAIN", "2.00"), "pc")
    assert info.value.provider_code == "ACQ.CONTEXT_INCONSISTENT"
    _wallet(m, first.payUrl)
    _pay(m, first.payUrl)
    with pytest.raises(ProviderError) as info:
        m.provider.prepare(order("PC_AGAIN", "1.00"), "pc")
    assert info.value.provider_code == "ACQ.TRADE_HAS_SUCCESS"


@pytest.mark.parametrize("pay_type,method,product", [("mobile", "alipay.trade.wap.pay", "QUICK_WAP_WAY"),
                                                     ("page", "alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY")])
def test_signed_link_to_the_wallet_and_back(merchant, keys, pay_type, method, product):
    m = merchant
    o = order(f"LINK_{pay_type.upper()}", "0.01", "手机支付 ü + & = %")
    prep = m.provider.prepare(o, pay_type)
    assert prep.qrCode is None and prep.expiresAt is None
    parts = urlsplit(prep.payUrl)
    params = dict(parse_qsl(parts.query))
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{m.url}/sandbox/alipay/gateway.do"
    assert params["method"] == method and f'"product_code":"{product}"' in params["biz_content"]
    assert params["notify_url"] == m.provider.notifyUrl and params["return_url"] == f"{m.url}/shop/paid"

    redirect = httpx.get(prep.payUrl, timeout=5)
    assert redirect.status_code == 303
    wallet_url = redirect.headers["location"]
    assert m.provider.query(o).status == "pending"  # the browser is at the cashier: the trade exists
    _pay(m, wallet_url)
    assert m.wait_notified()[0].orderId == o.orderId
    assert m.provider.query(o).status == "success"

    html = _wallet(m, wallet_url)
    link = re.search(r'href="([^"]+)" id="return-link"', html)
    assert link
    returned = dict(parse_qsl(urlsplit(link.group(1).replace("&amp;", "&")).query))
    assert returned["method"] == f"{method}.return" and returned["out_trade_no"] == o.orderId
    assert verify_notify_signature(returned, load_rsa_key(keys["gateway_public"]))


def test_tampered_link_is_refused(merchant):
    m = merchant
    prep = m.provider.prepare(order("LINK_TAMPER", "100.00"), "mobile")
    tampered = prep.payUrl.replace("100.00", "1.00")
    assert tampered != prep.payUrl
    page = httpx.get(tampered, timeout=5)
    assert page.status_code == 400 and "isv.invalid-signature" in page.text
    assert m.sandbox.trade("LINK_TAMPER") is None


def test_close_before_and_after_scan(merchant):
    m = merchant
    o = order("CLOSE_ME")
    prep = m.provider.prepare(o, "pc")
    m.provider.close(o)  # unscanned: nothing to close, not an error
    _wallet(m, prep.payUrl)
    m.provider.close(o)
    assert m.provider.query(o).status == "closed"
    html = _wallet(m, prep.payUrl)
    assert 'id="closed-status"' in html and 'id="pay-button"' not in html
    httpx.post(f"{prep.payUrl}/pay", timeout=5)
    assert m.provider.query(o).status == "closed"
    assert m.notified == []


def test_paid_trade_cannot_be_closed_and_refunds(merchant):
    m = merchant
    o = order("REFUND_ME", "10.00")
    prep = m.provider.prepare(o, "pc")
    _pay(m, prep.payUrl)
    m.wait_notified()
    with pytest.raises(ProviderError) as info:
        m.provider.close(o)
    assert info.value.provider_code == "ACQ.TRADE_STATUS_ERROR"

    first = m.provider.refund(o, "R1", Decimal("3.00"), Decimal("3.00"), reason="部分退款")
    assert first.refundId == "R1" and first.amount == Decimal("3.00") and first.raw["fund_change"] == "Y"
    again = m.provider.refund(o, "R1", Decimal("3.00"), Decimal("3.00"))
    assert again.raw["fund_change"] == "N" and again.raw["refund_fee"] == "3.00"  # idempotent per refundId
    with pytest.raises(ProviderError) as info:
        m.provider.refund(o, "R1", Decimal("4.00"), Decimal("4.00"))
    assert info.value.provider_code == "ACQ.DISCORDANT_REPEAT_REQUEST"
    with pytest.raises(ProviderError) as info:
        m.provider.refund(o, "R2", Decimal("7.01"), Decimal("10.00"))  # more than is left
    assert info.value.provider_code == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    assert m.provider.query(o).status == "success"

    m.provider.refund(o, "R2", Decimal("7.00"), Decimal("10.00"))
    state = m.provider.query(o)
    assert state.status == "refunded" and state.paidAmount == Decimal("10.00")
    assert m.sandbox.trade("REFUND_ME").status == "TRADE_CLOSED"


def test_refund_of_unpaid_trade_is_refused(merchant):
    m = merchant
    o = order("NOT_PAID")
    with pytest.raises(ProviderError) as info:
        m.provider.refund(o, "R1", Decimal("1.00"), Decimal("1.00"))
    assert info.value.provider_code == "ACQ.TRADE_NOT_EXIST"
    _wallet(m, m.provider.prepare(o, "pc").payUrl)
    with pytest.raises(ProviderError) as info:
        m.provider.refund(o, "R1", Decimal("1.00"), Decimal("1.00"))
    assert info.value.provider_code == "ACQ.TRADE_STATUS_ERROR"


def test_notification_is_retried_until_success(merchant):
    m = merchant
    m.fail_next = 3
    prep = m.provider.prepare(order("RETRY_ME", "5.55"), "pc")
    _pay(m, prep.payUrl)
    m.wait_notified()
    trade = m.sandbox.trade("RETRY_ME")
    # the sandbox records an attempt after reading the reply, a moment after the receiver has answered
    wait_for(lambda: len(trade.notify_attempts) == 4)
    assert [a["body"] for a in trade.notify_attempts] == ["failure"] * 3 + ["success"]
    assert len({body for body in m.bodies}) == 1  # every retry carries the same signed notification


def test_sandbox_refuses_a_stranger(merchant, keys):
    m = merchant
    forger = make_provider(m.app, keys, privateKey=keys["other_private"], gateway=m.provider.gateway.gateway)
    with pytest.raises(ProviderError) as info:
        forger.query(order("ANY"))
    assert info.value.provider_code == "isv.invalid-signature"
    wrong_app = make_provider(m.app, keys, appId="2021000000009999", gateway=m.provider.gateway.gateway)
    with pytest.raises(ProviderError) as info:
        wrong_app.query(order("ANY"))
    assert info.value.provider_code == "isv.invalid-app-id"
    for p in (forger, wrong_app):
        p.gateway.close()


def test_sandbox_checks_the_gateway_rules(merchant):
    m = merchant
    url = m.provider.gateway.gateway
    params = m.provider.gateway.signed_params("alipay.trade.query", {"out_trade_no": "X"})
    ok = httpx.post(url, data=params, timeout=5)
    assert '"sub_code":"ACQ.TRADE_NOT_EXIST"' in ok.text
    cases = {
        "isv.missing-signature": {k: v for k, v in params.items() if k != "sign"},
        "isv.missing-app-id": {k: v for k, v in params.items() if k != "app_id"},
        "isv.invalid-signature-type": {**params, "sign_type": "RSA"},
        "isv.invalid-signature": {**params, "biz_content": '{"out_trade_no":"Y"}'},
    }
    for sub_code, data in cases.items():
        answer = httpx.post(url, data=data, timeout=5)
        assert f'"sub_code":"{sub_code}"' in answer.text, (sub_code, answer.text)
        assert answer.text.startswith('{"alipay_trade_query_response":{"code":"40')
        assert '"sign":"' in answer.text
    stale = m.provider.gateway.common_params("alipay.trade.query", {"out_trade_no": "X"})
    stale["timestamp"] = (datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M:%S")  # UTC, not Beijing time
    from elements.pays.AliPayType.signing import sign_request
    answer = httpx.post(url, data=sign_request(stale, m.provider.gateway._private_key), timeout=5)
    assert '"sub_code":"isv.invalid-timestamp"' in answer.text
    unknown = httpx.post(url, data={**params, "method": "alipay.nothing"}, timeout=5)
    assert unknown.text.startswith('{"error_response":')


def test_fastpay_refund_query(merchant):
    m = merchant
    o = order("RQ_ORDER", "2.00")
    _pay(m, m.provider.prepare(o, "pc").payUrl)
    m.provider.refund(o, "RQ1", Decimal("0.50"), Decimal("0.50"))
    content = m.provider.gateway.call("alipay.trade.fastpay.refund.query",
                                      {"out_trade_no": "RQ_ORDER", "out_request_no": "RQ1"})
    assert content["refund_amount"] == "0.50" and content["refund_status"] == "REFUND_SUCCESS"
    content = m.provider.gateway.call("alipay.trade.fastpay.refund.query",
                                      {"out_trade_no": "RQ_ORDER", "out_request_no": "NOPE"})
    assert "refund_amount" not in content


def test_held_refunds_move_money_only_when_the_sandbox_ends_them(merchant):
    """refunds_wait: fund_change N and nothing the refund query finds until finish_refund; a refund ended FAILED is
    made anew when its out_request_no comes again; refunds_refused refuses new refunds outright."""
    m = merchant
    o = order("HELD_ORDER", "3.00")
    _pay(m, m.provider.prepare(o, "pc").payUrl)
    gateway, sandbox = m.provider.gateway, m.sandbox
    sandbox.refunds_wait = True
    try:
        held = gateway.call("alipay.trade.refund", {"out_trade_no": "HELD_ORDER", "refund_amount": "1.00",
                                                    "out_request_no": "H1"})
        assert held["fund_change"] == "N" and held["refund_fee"] == "0.00"
        assert sandbox.processing_refunds() == [("HELD_ORDER", "H1")] and sandbox.refunded("HELD_ORDER") == 0
        query = {"out_trade_no": "HELD_ORDER", "out_request_no": "H1"}
        assert "refund_amount" not in gateway.call("alipay.trade.fastpay.refund.query", query)
        with pytest.raises(ProviderError) as caught:  # the held refund counts against the trade
            gateway.call("alipay.trade.refund", {"out_trade_no": "HELD_ORDER", "refund_amount": "2.01",
                                                 "out_request_no": "H2"})
        assert caught.value.provider_code == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
        assert sandbox.finish_refund("H1", "FAILED") and not sandbox.finish_refund("H1", "FAILED")
        assert "refund_amount" not in gateway.call("alipay.trade.fastpay.refund.query", query)
        sandbox.refunds_wait = False
        again = gateway.call("alipay.trade.refund", {"out_trade_no": "HELD_ORDER", "refund_amount": "1.00",
                                                     "out_request_no": "H1"})
        assert again["fund_change"] == "Y" and again["refund_fee"] == "1.00"
        assert gateway.call("alipay.trade.fastpay.refund.query", query)["refund_amount"] == "1.00"
        sandbox.refunds_refused = "ACQ.SELLER_BALANCE_NOT_ENOUGH"
        with pytest.raises(ProviderError) as caught:
            gateway.call("alipay.trade.refund", {"out_trade_no": "HELD_ORDER", "refund_amount": "1.00",
                                                 "out_request_no": "H3"})
        assert caught.value.provider_code == "ACQ.SELLER_BALANCE_NOT_ENOUGH"
        repeat = gateway.call("alipay.trade.refund", {"out_trade_no": "HELD_ORDER", "refund_amount": "1.00",
                                                      "out_request_no": "H1"})
        assert repeat["fund_change"] == "N" and sandbox.refunded("HELD_ORDER") == Decimal("1.00")  # made once
        with pytest.raises(KeyError):
            sandbox.finish_refund("NEVER")
    finally:
        sandbox.refunds_wait, sandbox.refunds_refused = False, None


def test_local_checks_before_any_call(merchant):
    m = merchant
    with pytest.raises(UnsupportedPayType):
        m.provider.prepare(order("X1"), "app")
    from elements.pays.errors import AmountInvalid, RefundInvalid
    with pytest.raises(AmountInvalid):
        m.provider.prepare(order("X1", "0.001"), "pc")
    with pytest.raises(AmountInvalid):
        m.provider.prepare(order("X1", "100000000.01"), "mobile")
    with pytest.raises(RefundInvalid):
        m.provider.refund(order("X1", "1.00"), "R", Decimal("1.00"), Decimal("1.50"))
