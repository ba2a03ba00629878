"""The provider's side of the extended contract, against the WeChat Pay sandbox on loopback: ``time_expire`` from the
order's ``expiresAt``, trade references on prepare, query and notification, ``query_trades``, and WeChat orders an
older JitPay made without ``time_expire`` (or ``attach``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from decimal import Decimal

import pytest

from elements.pays.errors import ProviderError
from elements.pays.Meta import OrderView
from elements.pays.WechatPayType import mweb_out_trade_no, time_expire

from .conftest import SandboxWorld

_counter = iter(range(10**6))
UTC = dt.timezone.utc


def new_order(amount: str = "6.66", expires_in: dt.timedelta | None = dt.timedelta(hours=1)) -> OrderView:
    now = dt.datetime.now(UTC)
    return OrderView(orderId=f"E{time.time_ns()}{next(_counter)}"[:32], subject="有效期 Expiry", amount=Decimal(amount),
                     createdAt=now, expiresAt=now + expires_in if expires_in else None)


def test_time_expire_text() -> None:
    assert time_expire(dt.datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == (
        "20260101080000", dt.datetime(2026, 1, 1, tzinfo=UTC))
    # rounded down, never up: the trade must not outlive the order
    assert time_expire(dt.datetime(2026, 1, 1, 15, 59, 59, 999999, tzinfo=UTC))[0] == "20260101235959"
    # naive is UTC (the contract's times are UTC), whatever the machine's zone
    assert time_expire(dt.datetime(2026, 1, 1, 16, 0, 0))[0] == "20260102000000"
    shanghai = dt.timezone(dt.timedelta(hours=8))
    assert time_expire(dt.datetime(2026, 1, 1, 8, 0, tzinfo=shanghai))[0] == "20260101080000"


def test_references_on_prepare_query_and_notification(world: SandboxWorld) -> None:
    order = new_order()
    pc = world.provider.prepare(order, "pc")
    mobile = world.provider.prepare(order, "mobile")
    assert pc.reference == order.orderId and mobile.reference == mweb_out_trade_no(order.orderId)
    assert pc.extra["time_expire"] == mobile.extra["time_expire"] == time_expire(order.expiresAt)[0]
    assert pc.expiresAt <= order.expiresAt and mobile.expiresAt <= order.expiresAt

    assert world.provider.query(order).reference == order.orderId  # both pending: NATIVE first
    world.sandbox.pay(mobile.reference)
    notified = world.receiver.wait()["state"]
    assert notified.reference == mobile.reference and notified.orderId == order.orderId
    queried = world.provider.query(order)
    assert queried.status == "success" and queried.reference == mobile.reference
    assert queried.tradeNo == notified.tradeNo
    trades = world.provider.query_trades(order)
    assert [(s.reference, s.status) for s in trades] == [(pc.reference, "pending"), (mobile.reference, "success")]


def test_no_expiry_means_no_time_expire(world: SandboxWorld) -> None:
    order = new_order(expires_in=None)
    prep = world.provider.prepare(order, "pc")
    assert prep.extra["time_expire"] is None and world.sandbox.trade(order.orderId)["time_expire"] == ""
    remaining = prep.expiresAt - dt.datetime.now(UTC)
    assert dt.timedelta(hours=1, minutes=45) < remaining < dt.timedelta(hours=2)


@pytest.mark.parametrize("pay_type", ["pc", "mobile"])
def test_an_order_made_before_time_expire_is_offered_as_made(world: SandboxWorld, pay_type: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A pending order whose WeChat order the previous JitPay made (attach, no time_expire): WeChat answers the
    time_expire request "201 商户订单号重复", and the provider asks for it again as it was made."""
    order = new_order()
    before = world.provider.prepare(dataclasses.replace(order, expiresAt=None), pay_type)
    with caplog.at_level(logging.WARNING):
        again = world.provider.prepare(order, pay_type)
    assert again.extra["prepay_id"] == before.extra["prepay_id"] and again.extra["time_expire"] is None
    assert again.expiresAt <= order.expiresAt
    assert "older JitPay without time_expire" in caplog.text
    # another expiry for an order made with one is refused, not silently dropped
    made_with = new_order()
    world.provider.prepare(made_with, pay_type)
    with pytest.raises(ProviderError) as info:
        world.provider.prepare(dataclasses.replace(made_with, expiresAt=made_with.expiresAt
                                                   + dt.timedelta(minutes=5)), pay_type)
    assert info.value.provider_code == "INVALID_REQUEST"


def test_an_order_made_before_attach_is_offered_as_made(world: SandboxWorld) -> None:
    order = new_order()
    old = {"body": order.subject, "out_trade_no": order.orderId, "total_fee": 666, "fee_type": "CNY",
           "spbill_create_ip": "127.0.0.1", "notify_url": world.provider.settings.notifyUrl, "trade_type": "NATIVE",
           "product_id": order.orderId}
    code_url = world.provider.api.call("pay/unifiedorder", old)["code_url"]
    prep = world.provider.prepare(order, "pc")
    assert prep.payUrl == code_url and prep.extra["time_expire"] is None


def test_refund_of_a_named_trade_checks_the_answer(world: SandboxWorld) -> None:
    order = new_order("3.00")
    pc = world.provider.prepare(order, "pc")
    mobile = world.provider.prepare(order, "mobile")
    world.sandbox.pay(pc.reference)
    world.sandbox.pay(mobile.reference)
    states = {s.reference: s for s in world.provider.query_trades(order)}
    # the MWEB trade, named by its transaction id, with its reference
    mweb = dataclasses.replace(order, tradeNo=states[mobile.reference].tradeNo, reference=mobile.reference)
    assert world.provider.refund(mweb, "RW-1", Decimal("3.00"), Decimal("3.00")).amount == Decimal("3.00")
    # a reference that is not the named trade's: the answer is about another WeChat order
    wrong = dataclasses.replace(order, tradeNo=states[pc.reference].tradeNo, reference=mobile.reference)
    with pytest.raises(ProviderError) as info:
        world.provider.refund(wrong, "RW-2", Decimal("1.00"), Decimal("1.00"))
    assert info.value.provider_code == "INVALID_RESPONSE" and info.value.details["outcomeUnknown"] is True
    # a reference PaySvc made up for its own books (not a WeChat order) is ignored when the trade number is given
    ledger_ref = dataclasses.replace(order, tradeNo=states[pc.reference].tradeNo, reference=f"{order.orderId}#x")
    assert world.provider.refund(ledger_ref, "RW-3", Decimal("1.00"), Decimal("2.00")).amount == Decimal("1.00")
    assert world.sandbox.refunded(pc.reference) == Decimal("2.00")
