"""Notification control for tests (``notifyMode: hold``): the sandboxes keep each notification exactly as they would
have posted it, and a test delivers it when, how often and in which order it likes. Also WeChat Pay's failed payment
(PAYERROR) from the wallet's "Fail" button or the Python API."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from urllib.parse import parse_qsl, urljoin

import httpx
import pytest

from jitpay_sandbox import sandbox_of
from jitpay_sandbox.held import HeldNotification
from jitpay_sandbox.wechat import WechatSandbox

from .conftest import ALIPAY_NOTIFY, WECHAT_NOTIFY, Shop, new_order


def test_held_notifications_are_the_exact_requests(held: Shop) -> None:
    order = new_order("3.30")
    shop = held
    shop.alipay.prepare(order, "pc")
    shop.wechat.prepare(order, "pc")
    assert shop.alipaySandbox.pay(order.orderId) and shop.wechatSandbox.pay(order.orderId)

    ali, = shop.alipaySandbox.held_notifications()
    wx, = shop.wechatSandbox.held_notifications()
    assert isinstance(ali, HeldNotification) and isinstance(wx, HeldNotification)
    assert (ali.provider, ali.reference, ali.event, ali.url) == ("alipay", order.orderId, "paid",
                                                                 shop.url + ALIPAY_NOTIFY)
    assert ali.content_type == "application/x-www-form-urlencoded; charset=utf-8"
    form = dict(parse_qsl(ali.body.decode("ascii")))
    assert form["out_trade_no"] == order.orderId and form["trade_status"] == "TRADE_SUCCESS" and form["sign"]
    assert (wx.provider, wx.reference, wx.event, wx.url) == ("wechat", order.orderId, "paid", shop.url + WECHAT_NOTIFY)
    assert wx.content_type == "text/xml; charset=utf-8" and wx.body.startswith(b"<xml>")

    # nothing was posted, nothing was attempted
    assert shop.notifications() == []
    assert shop.alipaySandbox.trade(order.orderId).notify_attempts == []
    assert shop.wechatSandbox.trade(order.orderId)["notify_attempts"] == []

    # held_notifications() looks, take_notifications() takes
    assert shop.alipaySandbox.held_notifications() == [ali]
    assert shop.alipaySandbox.take_notifications() == [ali]
    assert shop.alipaySandbox.held_notifications() == [] and shop.alipaySandbox.take_notifications() == []
    assert shop.wechatSandbox.take_notifications() == [wx] and shop.wechatSandbox.held_notifications() == []

    # what the shop receives is byte for byte what was held
    for n in (ali, wx):
        response = n.deliver()
        assert response.status_code == 200
    got = shop.notifications()
    assert [(r.provider, r.body, r.contentType) for r in got] == [("alipay", ali.body, ali.content_type),
                                                                  ("wechat", wx.body, wx.content_type)]
    assert all(r.error is None and r.state.status == "success" and r.state.reference == order.orderId for r in got)


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_delivered_twice_and_out_of_order_they_still_verify(shop_factory, sign_type: str) -> None:
    shop: Shop = shop_factory(alipay={"notifyMode": "hold"}, wechat={"notifyMode": "hold"},
                              wechatSignType=sign_type)
    first, second = new_order("1.00"), new_order("2.00")
    # WeChat: the QR code of the first order fails, the link of the first is paid, the second's QR code is paid
    shop.wechat.prepare(first, "pc")
    mobile = shop.wechat.prepare(first, "mobile")
    shop.wechat.prepare(second, "pc")
    assert shop.wechatSandbox.fail(first.orderId) is True
    assert shop.wechatSandbox.pay(mobile.reference) is True
    assert shop.wechatSandbox.pay(second.orderId) is True
    # Alipay: both orders paid
    for order in (first, second):
        shop.alipay.prepare(order, "pc")
        assert shop.alipaySandbox.pay(order.orderId) is True

    held = shop.wechatSandbox.take_notifications() + shop.alipaySandbox.take_notifications()
    assert [(n.provider, n.event) for n in held] == [("wechat", "failed"), ("wechat", "paid"), ("wechat", "paid"),
                                                     ("alipay", "paid"), ("alipay", "paid")]
    for n in reversed(held):  # newest first...
        assert n.deliver().status_code == 200
    for n in held:  # ...then all of them again
        assert n.deliver().status_code == 200
    got = shop.notifications()
    assert len(got) == 10 and all(r.error is None for r in got)
    assert [r.body for r in got] == [n.body for n in reversed(held)] + [n.body for n in held]
    seen = {(r.provider, r.state.reference, r.state.status, r.state.orderId) for r in got}
    assert seen == {("wechat", first.orderId, "failed", first.orderId),
                    ("wechat", mobile.reference, "success", first.orderId),
                    ("wechat", second.orderId, "success", second.orderId),
                    ("alipay", first.orderId, "success", first.orderId),
                    ("alipay", second.orderId, "success", second.orderId)}
    # the same notification twice gives the same state twice
    for n in held:
        states = [r.state for r in got if r.body == n.body]
        assert len(states) == 2 and states[0] == states[1]


def test_dropped_notifications_leave_the_query(held: Shop) -> None:
    order = new_order("4.00")
    held.wechat.prepare(order, "pc")
    held.wechatSandbox.pay(order.orderId)
    held.wechatSandbox.take_notifications()  # dropped: never delivered
    assert held.notifications() == []
    assert held.wechat.query(order).status == "success"


def test_wechat_payerror_from_the_python_api(held: Shop) -> None:
    order = new_order("7.77", expires_in=timedelta(hours=1))
    prep = held.wechat.prepare(order, "mobile")
    assert held.wechatSandbox.fail(prep.reference) is True
    assert held.wechatSandbox.fail(prep.reference) is False and held.wechatSandbox.pay(prep.reference) is False
    n, = held.wechatSandbox.take_notifications()
    assert n.event == "failed" and n.reference == prep.reference
    n.deliver()
    got, = held.notifications("wechat")
    assert got.error is None and got.fields["result_code"] == "FAIL" and got.fields["err_code"] == "PAYERROR"
    assert got.state.status == "failed" and got.state.reference == prep.reference
    assert got.state.orderId == order.orderId and got.state.tradeNo is None

    state, = held.wechat.query_trades(order)
    assert (state.reference, state.status, state.raw["trade_state"]) == (prep.reference, "failed", "PAYERROR")
    assert held.wechat.query(order).status == "failed"
    assert held.wechatSandbox.captured(prep.reference) == 0
    assert held.wechatSandbox.trade(prep.reference)["state"] == "PAYERROR"


def test_wechat_payerror_from_the_wallet_page(shop: Shop) -> None:
    """The wallet's "Fail" button, with notifications sent as usual."""
    order = new_order("5.00")
    prep = shop.wechat.prepare(order, "pc")
    page = httpx.get(prep.payUrl, timeout=5)
    form = re.search(r'<form method="post" action="([^"]+/fail)"', page.text)
    assert form and 'id="fail-button"' in page.text
    answer = httpx.post(urljoin(str(page.url), html.unescape(form.group(1))), timeout=5, follow_redirects=True)
    assert 'data-state="PAYERROR"' in answer.text
    got, = shop.wait_notified(1, "wechat")
    assert got.state.status == "failed" and got.state.reference == order.orderId
    assert shop.wechat.query(order).status == "failed"


def test_notify_mode_switches_at_run_time(shop: Shop) -> None:
    sandbox = shop.wechatSandbox
    assert sandbox.notify_mode == "send"
    sandbox.notify_mode = "hold"
    order = new_order()
    shop.wechat.prepare(order, "pc")
    sandbox.pay(order.orderId)
    assert len(sandbox.held_notifications()) == 1 and shop.notifications() == []
    sandbox.notify_mode = "send"
    other = new_order()
    shop.wechat.prepare(other, "pc")
    sandbox.pay(other.orderId)
    assert shop.wait_notified(1)[0].state.orderId == other.orderId
    with pytest.raises(ValueError):
        sandbox.notify_mode = "sometimes"
    with pytest.raises(ValueError):
        shop.alipaySandbox.notify_mode = "never"


def test_unknown_references(shop: Shop) -> None:
    for sandbox in (shop.alipaySandbox, shop.wechatSandbox):
        with pytest.raises(KeyError):
            sandbox.pay("NO_SUCH_TRADE")
        assert sandbox.captured("NO_SUCH_TRADE") == 0 and sandbox.refunded("NO_SUCH_TRADE") == 0
        assert sandbox.trade("NO_SUCH_TRADE") is None
    with pytest.raises(KeyError):
        shop.wechatSandbox.fail("NO_SUCH_TRADE")
    order = new_order()
    shop.alipay.prepare(order, "pc")
    shop.wechat.prepare(order, "mobile")
    assert shop.alipaySandbox.references() == [order.orderId]
    assert shop.wechatSandbox.references() == [shop.wechat.prepare(order, "mobile").reference]


def test_sandbox_of_finds_the_sandboxes_serving_an_app(held: Shop) -> None:
    from jitpay_sandbox.alipay import AlipaySandbox, alipay_routes
    from jitpay_sandbox.wechat import wechat_routes

    class App:  # a stand-in that, like jitcore's App, can be weakly referenced
        settings = held.app.settings

    app = App()
    assert sandbox_of(app, "alipay") is None
    a_routes, w_routes = alipay_routes(app), wechat_routes(app)
    assert isinstance(sandbox_of(app, "alipay"), AlipaySandbox)
    assert sandbox_of(app, "alipay") is a_routes[0].endpoint.__self__
    wechat = sandbox_of(app, "wechat")
    assert isinstance(wechat, WechatSandbox) and any(getattr(r.endpoint, "__self__", None) is wechat
                                                     for r in w_routes)
    assert sandbox_of(held.app, "alipay") is None  # a SimpleNamespace cannot be remembered
