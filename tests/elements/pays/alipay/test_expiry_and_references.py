"""The provider's side of the extended contract, against the Alipay sandbox on loopback: ``time_expire`` from the
order's ``expiresAt``, trade references on prepare, query and notification, ``query_trades`` (one trade per order; a
QR code nobody scanned is reported pending), and refunds naming the trade by ``trade_no``."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from elements.pays.AliPayType import time_expire
from elements.pays.errors import ProviderError
from elements.pays.Meta import OrderView

from .conftest import order


def with_expiry(o: OrderView, expiresAt: datetime | None) -> OrderView:
    return dataclasses.replace(o, expiresAt=expiresAt)


def test_time_expire_text() -> None:
    utc = timezone.utc
    assert time_expire(datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=utc)) == (
        "2026-01-01 08:00:00", datetime(2026, 1, 1, tzinfo=utc))
    assert time_expire(datetime(2026, 1, 1, 15, 59, 59, 999999, tzinfo=utc))[0] == "2026-01-01 23:59:59"
    assert time_expire(datetime(2026, 1, 1, 16, 0, 0))[0] == "2026-01-02 00:00:00"  # naive is UTC


def test_references_and_time_expire(merchant) -> None:
    m = merchant
    expires = datetime.now(timezone.utc) + timedelta(minutes=30)
    o = with_expiry(order("REF_PC_1", "2.22"), expires)
    prep = m.provider.prepare(o, "pc")
    assert prep.reference == "REF_PC_1" and prep.extra == {"method": "alipay.trade.precreate",
                                                          "timeExpire": time_expire(expires)[0]}
    assert prep.expiresAt == expires.replace(microsecond=0)

    # not scanned: Alipay does not know it; query_trades reports it pending (documented), with its reference
    trades = m.provider.query_trades(o)
    assert [(s.reference, s.status, s.raw.get("sub_code")) for s in trades] == [
        ("REF_PC_1", "pending", "ACQ.TRADE_NOT_EXIST")]
    httpx.get(prep.payUrl, timeout=5)
    assert m.provider.query(o).reference == "REF_PC_1"
    assert m.sandbox.pay("REF_PC_1") is True
    notified = m.wait_notified()[0]
    assert notified.reference == "REF_PC_1" and notified.status == "success"
    state, = m.provider.query_trades(o)
    assert (state.reference, state.status, state.tradeNo) == ("REF_PC_1", "success", notified.tradeNo)


@pytest.mark.parametrize("pay_type", ["mobile", "page"])
def test_links_carry_time_expire(merchant, pay_type: str) -> None:
    expires = datetime(2031, 1, 1, tzinfo=timezone.utc)
    prep = merchant.provider.prepare(with_expiry(order(f"REF_{pay_type.upper()}"), expires), pay_type)
    biz = json.loads(dict(parse_qsl(urlsplit(prep.payUrl).query))["biz_content"])
    assert biz["time_expire"] == "2031-01-01 08:00:00" and "timeout_express" not in biz
    assert prep.reference == f"REF_{pay_type.upper()}" and prep.extra["timeExpire"] == "2031-01-01 08:00:00"
    assert prep.expiresAt is None


def test_refund_by_trade_no_and_reference(merchant) -> None:
    m = merchant
    o = order("REF_REFUND", "5.00")
    m.provider.prepare(o, "pc")
    m.sandbox.pay("REF_REFUND")
    trade_no = m.wait_notified()[0].tradeNo
    named = dataclasses.replace(o, tradeNo=trade_no, reference="REF_REFUND")
    result = m.provider.refund(named, "RR-1", Decimal("5.00"), Decimal("5.00"))
    assert result.raw["trade_no"] == trade_no and result.raw["out_trade_no"] == "REF_REFUND"
    assert m.sandbox.refunded("REF_REFUND") == Decimal("5.00")
    # a trade number Alipay does not have for this out_trade_no is refused: trade_no is really sent
    with pytest.raises(ProviderError) as info:
        m.provider.refund(dataclasses.replace(named, tradeNo="2099010122001000000000000"), "RR-2", Decimal("1.00"),
                          Decimal("1.00"))
    assert info.value.provider_code == "ACQ.TRADE_NOT_EXIST"
    # a reference that is not an Alipay out_trade_no (PaySvc's own bookkeeping) falls back to the order id
    ledger = dataclasses.replace(named, reference="REF_REFUND#x")
    assert m.provider.refund(ledger, "RR-1", Decimal("5.00"), Decimal("5.00")).raw["fund_change"] == "N"
