"""Asynchronous notifications: safe parsing of the raw form body, and verification that refuses forged, tampered or
misaddressed notifications."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from urllib.parse import urlencode

import pytest

from elements.pays.AliPayType.signing import load_rsa_key, sign_notify
from elements.pays.errors import NotifyInvalid, SignatureInvalid

from .conftest import APP_ID, SELLER_ID

FORM = "application/x-www-form-urlencoded; charset=utf-8"


def _fields(**overrides: str) -> dict[str, str]:
    fields = {
        "notify_time": "2024-05-01 12:00:10", "notify_type": "trade_status_sync", "notify_id": "n1",
        "app_id": APP_ID, "charset": "utf-8", "version": "1.0", "trade_no": "2024050122001400001",
        "out_trade_no": "ORDER_1", "trade_status": "TRADE_SUCCESS", "total_amount": "9.99",
        "receipt_amount": "9.99", "buyer_pay_amount": "9.99", "gmt_create": "2024-05-01 11:59:00",
        "gmt_payment": "2024-05-01 12:00:05", "seller_id": SELLER_ID, "buyer_id": "2088102177846880",
        "subject": "测试 a+b&c=d%e", "fund_bill_list": '[{"amount":"9.99","fundChannel":"ALIPAYACCOUNT"}]',
    }
    fields.update(overrides)
    return fields


def _signed(keys, key: str = "gateway_private", **overrides: str) -> dict[str, str]:
    return sign_notify(_fields(**overrides), load_rsa_key(keys[key]))


@pytest.fixture
def provider(provider_factory):
    return provider_factory(sellerId=SELLER_ID)


def test_round_trip_through_the_form_body(provider, keys):
    body = urlencode(_signed(keys)).encode()
    fields = provider.parse_notify_body(body, FORM)
    assert fields["subject"] == "测试 a+b&c=d%e"
    state = provider.verify_notify(fields)
    assert state.status == "success" and state.orderId == "ORDER_1" and state.tradeNo == "2024050122001400001"
    assert state.paidAmount == Decimal("9.99")
    assert state.payTime == datetime(2024, 5, 1, 4, 0, 5, tzinfo=timezone.utc)
    assert state.raw["notify_id"] == "n1"


def test_status_mapping(provider, keys):
    assert provider.verify_notify(_signed(keys, trade_status="TRADE_FINISHED")).status == "success"
    pending = provider.verify_notify(_signed(keys, trade_status="WAIT_BUYER_PAY"))
    assert pending.status == "pending" and pending.paidAmount is None
    assert provider.verify_notify(_signed(keys, trade_status="TRADE_CLOSED", gmt_payment="")).status == "closed"
    refunded = provider.verify_notify(_signed(keys, trade_status="TRADE_CLOSED", refund_fee="9.99"))
    assert refunded.status == "refunded"
    with pytest.raises(NotifyInvalid):
        provider.verify_notify(_signed(keys, trade_status="SOMETHING_NEW"))


@pytest.mark.parametrize("body,content_type", [
    (b"", FORM),
    (b"a=1&a=2", FORM),
    (b"a=%FF", FORM),
    (b"\xff\xfe=1", FORM),
    (b"a=1&&b", FORM),
    (b"a=1", "application/json"),
    (b"a=1", "application/x-www-form-urlencoded; charset=gbk"),
    (b"&".join(b"k%d=v" % i for i in range(500)), FORM),
])
def test_unsafe_bodies(provider, body, content_type):
    with pytest.raises(NotifyInvalid):
        provider.parse_notify_body(body, content_type)


def test_blank_values_are_kept(provider):
    assert provider.parse_notify_body(b"a=&b=%2B+x", None) == {"a": "", "b": "+ x"}


def test_forged_and_tampered(provider, keys):
    with pytest.raises(SignatureInvalid):
        provider.verify_notify(_fields())  # unsigned
    with pytest.raises(SignatureInvalid):
        provider.verify_notify({**_signed(keys), "total_amount": "0.01"})
    with pytest.raises(SignatureInvalid):
        provider.verify_notify({**_signed(keys), "trade_status": "TRADE_SUCCESS", "out_trade_no": "ORDER_2"})
    with pytest.raises(SignatureInvalid):
        provider.verify_notify(_signed(keys, key="app_private"))  # signed by the merchant's own key: not Alipay
    with pytest.raises(SignatureInvalid):
        provider.verify_notify(_signed(keys, key="other_private"))
    with pytest.raises(SignatureInvalid):
        provider.verify_notify({**_signed(keys), "sign_type": "RSA"})
    with pytest.raises(SignatureInvalid):
        provider.verify_notify({**_signed(keys), "sign": "bm90IGEgc2lnbmF0dXJl"})


def test_misaddressed(provider, keys):
    with pytest.raises(NotifyInvalid, match="app_id"):
        provider.verify_notify(_signed(keys, app_id="2021000000009999"))
    with pytest.raises(NotifyInvalid, match="seller_id"):
        provider.verify_notify(_signed(keys, seller_id="2088000000009999"))
    with pytest.raises(NotifyInvalid):
        provider.verify_notify(_signed(keys, out_trade_no=""))
    with pytest.raises(NotifyInvalid):
        provider.verify_notify(_signed(keys, total_amount="lots"))
    with pytest.raises(NotifyInvalid):
        provider.verify_notify({**_signed(keys), "subject": ["a", "b"]})


def test_seller_not_checked_when_not_configured(provider_factory, keys):
    provider = provider_factory()
    assert provider.verify_notify(_signed(keys, seller_id="2088000000009999")).status == "success"


def test_reply(provider):
    assert provider.notify_reply(True).body == b"success"
    assert provider.notify_reply(False).body == b"failure"
    assert provider.notify_reply(True).mediaType == "text/plain"
