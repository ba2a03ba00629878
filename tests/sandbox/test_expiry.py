"""The order's absolute expiry (``OrderView.expiresAt``) goes to both providers as their own ``time_expire``, and the
sandboxes enforce it as the gateways do: a trade past it can no longer be paid. Over real HTTP on loopback."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from elements.pays.errors import ProviderError
from elements.pays.WechatPayType import mweb_out_trade_no

from .conftest import Shop, new_order

BEIJING = timezone(timedelta(hours=8))


def wait_past(moment: datetime) -> None:
    """Sleep until ``moment`` (aware) has passed, by a little."""
    delay = (moment - datetime.now(timezone.utc)).total_seconds() + 0.2
    if delay > 0:
        time.sleep(delay)


def link_biz(pay_url: str) -> dict[str, str]:
    return json.loads(dict(parse_qsl(urlsplit(pay_url).query))["biz_content"])


# -- Alipay -----------------------------------------------------------------------------------------------------------
def test_alipay_sends_time_expire_for_every_pay_type(shop: Shop) -> None:
    expires = datetime(2031, 5, 6, 7, 8, 9, 987654, tzinfo=timezone.utc)
    order = new_order(expiresAt=expires)
    pc = shop.alipay.prepare(order, "pc")
    # Beijing time, rounded down to the second: the trade never outlives the order
    assert pc.extra["timeExpire"] == "2031-05-06 15:08:09" and "timeoutExpress" not in pc.extra
    assert pc.expiresAt == expires.replace(microsecond=0) and pc.expiresAt <= order.expiresAt
    assert pc.reference == order.orderId
    assert shop.alipaySandbox.trade(order.orderId).expires == datetime(2031, 5, 6, 15, 8, 9, tzinfo=BEIJING)
    for pay_type in ("mobile", "page"):
        prep = shop.alipay.prepare(order, pay_type)
        biz = link_biz(prep.payUrl)
        assert biz["time_expire"] == "2031-05-06 15:08:09" and "timeout_express" not in biz
        assert prep.expiresAt is None and prep.reference == order.orderId


def test_alipay_without_expiry_keeps_timeout_express(shop: Shop) -> None:
    order = new_order()
    assert order.expiresAt is None
    prep = shop.alipay.prepare(order, "mobile")
    biz = link_biz(prep.payUrl)
    assert biz["timeout_express"] == "120m" and "time_expire" not in biz
    assert shop.alipay.prepare(order, "pc").extra["timeoutExpress"] == "120m"


def test_alipay_qr_code_past_its_expiry_cannot_be_paid(shop: Shop) -> None:
    # scanned in time, paid too late: the trade closes (TRADE_CLOSED)
    order = new_order(expires_in=timedelta(seconds=1.5))
    prep = shop.alipay.prepare(order, "pc")
    httpx.get(prep.payUrl, timeout=5)  # the buyer scans
    assert shop.alipay.query(order).status == "pending"
    wait_past(prep.expiresAt)
    assert shop.alipaySandbox.pay(order.orderId) is False
    state = shop.alipay.query(order)
    assert state.status == "closed" and state.raw["trade_status"] == "TRADE_CLOSED"
    page = httpx.get(prep.payUrl, timeout=5).text
    assert 'id="closed-status"' in page and 'id="pay-button"' not in page
    assert shop.alipaySandbox.captured(order.orderId) == 0

    # never scanned before it expired: it never exists at Alipay and cannot be scanned any more
    late = new_order(expires_in=timedelta(seconds=1.5))
    prep = shop.alipay.prepare(late, "pc")
    wait_past(prep.expiresAt)
    page = httpx.get(prep.payUrl, timeout=5).text
    assert 'id="expired-status"' in page and 'id="pay-button"' not in page
    assert shop.alipaySandbox.pay(late.orderId) is False
    state = shop.alipay.query(late)
    assert state.status == "pending" and state.raw["sub_code"] == "ACQ.TRADE_NOT_EXIST"
    assert shop.notifications() == []


def test_alipay_link_past_its_expiry_cannot_be_paid(shop: Shop) -> None:
    order = new_order(expires_in=timedelta(seconds=1.5))
    prep = shop.alipay.prepare(order, "mobile")
    opened = httpx.get(prep.payUrl, timeout=5)  # the browser reaches the cashier: the trade exists
    assert opened.status_code == 303
    wait_past(order.expiresAt.replace(microsecond=0))
    assert shop.alipaySandbox.pay(order.orderId) is False
    assert shop.alipay.query(order).status == "closed"


def test_alipay_refuses_a_malformed_time_expire(shop: Shop) -> None:
    with pytest.raises(ProviderError) as info:
        shop.alipay.gateway.call("alipay.trade.precreate", {
            "out_trade_no": new_order().orderId, "total_amount": "1.00", "subject": "x",
            "time_expire": "2031-05-06T15:08:09"})
    assert info.value.provider_code == "ACQ.INVALID_PARAMETER"


def test_alipay_unscanned_qr_code_closed_by_the_merchant_stays_payable(shop: Shop) -> None:
    """Alipay does not know a precreated trade until it is scanned, so closing it then (ACQ.TRADE_NOT_EXIST) does
    nothing: the old QR code, scanned later, is paid. The money is captured and must be handled (refunded)."""
    order = new_order("6.60", expires_in=timedelta(hours=1))
    prep = shop.alipay.prepare(order, "pc")
    shop.alipay.close(order)  # not an error
    assert shop.alipay.query(order).status == "pending"
    assert shop.alipaySandbox.pay(order.orderId) is True  # scanned and paid after the "close"
    notified = shop.wait_notified(1, "alipay")[0]
    assert notified.state.status == "success" and notified.state.reference == order.orderId
    assert shop.alipay.query(order).status == "success"
    assert shop.alipaySandbox.captured(order.orderId) == order.amount
    assert 'id="paid-status"' in httpx.get(prep.payUrl, timeout=5).text


# -- WeChat Pay --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pay_type,trade_type", [("pc", "NATIVE"), ("mobile", "MWEB")])
def test_wechat_sends_time_expire_on_both_trade_types(shop: Shop, pay_type: str, trade_type: str) -> None:
    expires = datetime.now(timezone.utc).replace(microsecond=456789) + timedelta(minutes=30)
    order = new_order(expiresAt=expires)
    prep = shop.wechat.prepare(order, pay_type)
    expected = expires.astimezone(BEIJING).strftime("%Y%m%d%H%M%S")
    assert prep.extra["time_expire"] == expected
    assert prep.expiresAt <= order.expiresAt
    reference = order.orderId if trade_type == "NATIVE" else mweb_out_trade_no(order.orderId)
    assert prep.reference == reference
    at_wechat = shop.wechatSandbox.trade(reference)
    assert at_wechat["time_expire"] == expected and at_wechat["trade_type"] == trade_type
    # derived from the order alone: asking again sends identical parameters, which WeChat requires
    again = shop.wechat.prepare(order, pay_type, clientIp="198.51.100.9")
    assert again.extra["prepay_id"] == prep.extra["prepay_id"] and again.reference == reference


def test_wechat_validity_is_capped_by_the_order(shop: Shop) -> None:
    order = new_order(expires_in=timedelta(minutes=20))
    prep = shop.wechat.prepare(order, "pc")  # the prepay_id would live 2 hours
    assert prep.expiresAt == order.expiresAt.replace(microsecond=0)
    far = new_order(expires_in=timedelta(days=2))
    prep = shop.wechat.prepare(far, "pc")
    assert prep.expiresAt < datetime.now(timezone.utc) + timedelta(hours=2)


def test_wechat_refuses_an_expiry_less_than_five_minutes_ahead(shop: Shop) -> None:
    order = new_order(expires_in=timedelta(minutes=4, seconds=50))
    for pay_type in ("pc", "mobile"):
        with pytest.raises(ProviderError) as info:
            shop.wechat.prepare(order, pay_type)
        assert info.value.provider_code == "FAIL" and "time_expire时间过短" in info.value.provider_message
    assert shop.wechatSandbox.references() == []
    assert shop.wechat.prepare(new_order(expires_in=timedelta(minutes=5, seconds=30)), "pc").payUrl


@pytest.mark.parametrize("pay_type", ["pc", "mobile"])
def test_wechat_trade_past_its_expiry_cannot_be_paid(shop_factory, pay_type: str) -> None:
    shop = shop_factory(wechat={"timeExpireMinSeconds": 0})
    order = new_order(expires_in=timedelta(seconds=1.5))
    prep = shop.wechat.prepare(order, pay_type)
    assert shop.wechat.query(order).status == "pending"
    wait_past(prep.expiresAt)
    page = httpx.get(prep.payUrl, timeout=5).text
    assert 'data-state="CLOSED"' in page and 'id="pay-button"' not in page
    assert shop.wechatSandbox.pay(prep.reference) is False
    states = shop.wechat.query_trades(order)
    assert [(s.reference, s.status, s.raw["trade_state"]) for s in states] == [(prep.reference, "closed", "CLOSED")]
    assert shop.wechat.query(order).status == "closed"
    shop.wechat.close(order)  # already closed: fine
    assert shop.wechatSandbox.captured(prep.reference) == 0 and shop.notifications() == []


def test_wechat_sandbox_setting_is_checked(shop_factory) -> None:
    from jitcore.errors import ConfigError

    with pytest.raises(ConfigError, match="timeExpireMinSeconds"):
        shop_factory(wechat={"timeExpireMinSeconds": "soon"})
    with pytest.raises(ConfigError, match="notifyMode"):
        shop_factory(wechat={"notifyMode": "later"})
    with pytest.raises(ConfigError, match="notifyMode"):
        shop_factory(alipay={"notifyMode": "later"})
