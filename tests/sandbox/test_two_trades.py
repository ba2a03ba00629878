"""One order paid twice: WeChat Pay's NATIVE and MWEB trades both paid, or one Alipay and one WeChat trade. Each
provider reports each trade with its reference, and each paid trade is refunded on its own by its trade number,
partly and fully, once per refund id. The sandboxes' books (captured and refunded per trade) agree."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal

import pytest

from elements.pays.errors import ProviderError, RefundInvalid
from elements.pays.Meta import OrderView
from elements.pays.WechatPayType import mweb_out_trade_no

from tests.elements.pays.wechat.conftest import make_provider as make_wechat

from .conftest import Shop, new_order


def trade_view(order: OrderView, tradeNo: str, reference: str) -> OrderView:
    """The order as PaySvc hands it over to refund one of its trades."""
    return dataclasses.replace(order, tradeNo=tradeNo, reference=reference)


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_wechat_native_and_mweb_both_paid_and_refunded(shop_factory, sign_type: str) -> None:
    shop: Shop = shop_factory(wechatSignType=sign_type)
    order = new_order("50.00", expires_in=timedelta(hours=1))
    pc = shop.wechat.prepare(order, "pc")
    mobile = shop.wechat.prepare(order, "mobile")
    assert (pc.reference, mobile.reference) == (order.orderId, mweb_out_trade_no(order.orderId))

    # both pending, each reported with its reference
    states = shop.wechat.query_trades(order)
    assert [(s.reference, s.status) for s in states] == [(pc.reference, "pending"), (mobile.reference, "pending")]

    assert shop.wechatSandbox.pay(pc.reference) is True
    assert shop.wechatSandbox.pay(mobile.reference) is True
    assert shop.wechatSandbox.pay(mobile.reference) is False  # paid already
    notified = shop.wait_notified(2, "wechat")
    assert all(n.error is None for n in notified)
    by_ref = {n.state.reference: n.state for n in notified}
    assert set(by_ref) == {pc.reference, mobile.reference}
    assert all(s.orderId == order.orderId and s.status == "success" and s.paidAmount == order.amount
               for s in by_ref.values())
    native_tx, mweb_tx = by_ref[pc.reference].tradeNo, by_ref[mobile.reference].tradeNo
    assert native_tx and mweb_tx and native_tx != mweb_tx

    states = shop.wechat.query_trades(order)
    assert [(s.reference, s.status, s.tradeNo, s.paidAmount) for s in states] == [
        (pc.reference, "success", native_tx, order.amount), (mobile.reference, "success", mweb_tx, order.amount)]

    # refund the surplus (MWEB) in two parts, the accepted one (NATIVE) in full, each by its transaction id
    mweb = trade_view(order, mweb_tx, mobile.reference)
    first = shop.wechat.refund(mweb, "RF-MWEB-1", Decimal("20.00"), Decimal("20.00"))
    assert first.amount == Decimal("20.00") and first.raw["transaction_id"] == mweb_tx
    assert first.raw["out_trade_no"] == mobile.reference
    again = shop.wechat.refund(mweb, "RF-MWEB-1", Decimal("20.00"), Decimal("20.00"))
    assert again.refundNo == first.refundNo  # once per refund id
    assert shop.wechatSandbox.refunded(mobile.reference) == Decimal("20.00")
    shop.wechat.refund(mweb, "RF-MWEB-2", Decimal("30.00"), Decimal("50.00"))
    with pytest.raises(ProviderError):
        shop.wechat.refund(mweb, "RF-MWEB-3", Decimal("0.01"), Decimal("50.01"))
    native = shop.wechat.refund(trade_view(order, native_tx, pc.reference), "RF-NATIVE", Decimal("50.00"),
                                Decimal("50.00"))
    assert native.raw["transaction_id"] == native_tx and native.raw["out_trade_no"] == pc.reference

    for ref in (pc.reference, mobile.reference):
        assert shop.wechatSandbox.captured(ref) == Decimal("50.00")
        assert shop.wechatSandbox.refunded(ref) == Decimal("50.00")
    assert shop.wechatSandbox.trade(mobile.reference)["refunds"] == {"RF-MWEB-1": 2000, "RF-MWEB-2": 3000}
    states = shop.wechat.query_trades(order)
    assert [(s.reference, s.status) for s in states] == [(pc.reference, "refunded"), (mobile.reference, "refunded")]


def test_wechat_query_trades_leaves_out_what_wechat_does_not_know(shop: Shop) -> None:
    order = new_order()
    assert shop.wechat.query_trades(order) == []
    prep = shop.wechat.prepare(order, "mobile")
    assert [(s.reference, s.status) for s in shop.wechat.query_trades(order)] == [(prep.reference, "pending")]
    assert shop.wechat.query(order).reference == prep.reference


def test_wechat_query_trades_raises_when_a_query_fails(shop: Shop) -> None:
    order = new_order()
    shop.wechat.prepare(order, "pc")
    stranger = make_wechat(shop.app, **{**shop.wechat.config, "apiKey": "x" * 32})  # WeChat refuses its requests
    with pytest.raises(ProviderError) as info:
        stranger.query_trades(order)
    assert info.value.provider_code == "FAIL"


def test_wechat_refund_by_reference_without_a_trade_number(shop: Shop) -> None:
    order = new_order("8.00")
    mobile = shop.wechat.prepare(order, "mobile")
    shop.wechatSandbox.pay(mobile.reference)
    refund = shop.wechat.refund(dataclasses.replace(order, reference=mobile.reference), "RF-REF", Decimal("8.00"),
                                Decimal("8.00"))
    assert refund.raw["out_trade_no"] == mobile.reference
    assert shop.wechatSandbox.refunded(mobile.reference) == Decimal("8.00")
    with pytest.raises(RefundInvalid):
        shop.wechat.refund(dataclasses.replace(order, reference="SOMEONE_ELSE"), "RF-X", Decimal("1.00"),
                           Decimal("1.00"))


def test_alipay_and_wechat_both_paid_for_one_order(shop: Shop) -> None:
    order = new_order("19.90", expires_in=timedelta(hours=1))
    ali = shop.alipay.prepare(order, "pc")
    wx = shop.wechat.prepare(order, "pc")
    assert ali.reference == wx.reference == order.orderId
    assert shop.alipaySandbox.pay(order.orderId) is True  # scans the QR code and pays
    assert shop.wechatSandbox.pay(order.orderId) is True
    ali_n = shop.wait_notified(1, "alipay")[0]
    wx_n = shop.wait_notified(1, "wechat")[0]
    for n in (ali_n, wx_n):
        assert n.error is None and n.state.status == "success" and n.state.orderId == order.orderId
        assert n.state.reference == order.orderId and n.state.paidAmount == order.amount

    ali_q = shop.alipay.query_trades(order)
    assert [(s.reference, s.status, s.tradeNo) for s in ali_q] == [(order.orderId, "success", ali_n.state.tradeNo)]
    wx_q = shop.wechat.query_trades(order)
    assert [(s.reference, s.status, s.tradeNo) for s in wx_q] == [(order.orderId, "success", wx_n.state.tradeNo)]

    # the surplus one back, in full, by its trade number
    shop.wechat.refund(trade_view(order, wx_n.state.tradeNo, order.orderId), "RF-WX", order.amount, order.amount)
    assert shop.wechatSandbox.refunded(order.orderId) == order.amount
    assert shop.alipaySandbox.refunded(order.orderId) == 0
    assert shop.alipaySandbox.captured(order.orderId) == shop.wechatSandbox.captured(order.orderId) == order.amount


def test_alipay_refund_names_the_trade_by_trade_no(shop: Shop) -> None:
    order = new_order("10.00")
    shop.alipay.prepare(order, "pc")
    shop.alipaySandbox.pay(order.orderId)
    trade_no = shop.alipaySandbox.trade(order.orderId).trade_no
    view = trade_view(order, trade_no, order.orderId)
    part = shop.alipay.refund(view, "RA-1", Decimal("4.00"), Decimal("4.00"))
    assert part.raw["trade_no"] == trade_no and part.raw["fund_change"] == "Y"
    assert shop.alipay.refund(view, "RA-1", Decimal("4.00"), Decimal("4.00")).raw["fund_change"] == "N"
    assert shop.alipaySandbox.refunded(order.orderId) == Decimal("4.00")
    # trade_no is sent: another trade's number with this out_trade_no is refused by Alipay
    other = new_order("10.00")
    shop.alipay.prepare(other, "pc")
    shop.alipaySandbox.pay(other.orderId)
    other_no = shop.alipaySandbox.trade(other.orderId).trade_no
    with pytest.raises(ProviderError) as info:
        shop.alipay.refund(trade_view(order, other_no, order.orderId), "RA-X", Decimal("1.00"), Decimal("5.00"))
    assert info.value.provider_code == "ACQ.TRADE_NOT_EXIST"
    assert shop.alipaySandbox.refunded(other.orderId) == 0
    # the rest, by out_trade_no alone (no trade number known)
    shop.alipay.refund(order, "RA-2", Decimal("6.00"), Decimal("10.00"))
    assert shop.alipaySandbox.refunded(order.orderId) == Decimal("10.00")
    assert shop.alipay.query(order).status == "refunded"
    assert shop.alipaySandbox.captured(order.orderId) == Decimal("10.00")
