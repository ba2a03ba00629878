"""Notifications pinned to the merchant's settings (issue 11, item 3), Alipay's side: CNY only, amounts only as Alipay
writes them, and a warning at load when sellerId is missing. Every notification here is properly signed: what is
refused is refused for its content."""

from __future__ import annotations

import json
import logging
from decimal import Decimal

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from elements.pays.AliPayType.gateway import parse_amount
from elements.pays.AliPayType.signing import load_rsa_key, rsa2_sign
from elements.pays.errors import NotifyInvalid, ProviderError

from .conftest import SELLER_ID, order
from .test_notify import _signed


@pytest.fixture
def provider(provider_factory):
    return provider_factory(sellerId=SELLER_ID)


@pytest.mark.parametrize("text", ["1234E-2", " 12.34", "12.34 ", "12.34\n", "12.340", "12.3", "12", "+12.34",
                                  "012.34", "1,234.00", "12.34.", "１２.34", "NaN", "Infinity", "-12.34", ""])
def test_only_canonical_total_amounts(provider, keys, text):
    with pytest.raises(NotifyInvalid, match="total_amount"):
        provider.verify_notify(_signed(keys, total_amount=text))


@pytest.mark.parametrize("text", ["12.34", "0.01", "100000000.00", "0.00"])
def test_canonical_amounts(provider, keys, text):
    assert parse_amount(text) == Decimal(text)
    assert provider.verify_notify(_signed(keys, total_amount=text)).paidAmount == Decimal(text)


def test_only_canonical_refund_fee(provider, keys):
    refunded = provider.verify_notify(_signed(keys, trade_status="TRADE_CLOSED", refund_fee="9.99"))
    assert refunded.status == "refunded"
    with pytest.raises(NotifyInvalid, match="refund_fee"):
        provider.verify_notify(_signed(keys, trade_status="TRADE_CLOSED", refund_fee="999E-2"))


@pytest.mark.parametrize("field", ["trans_currency", "settle_currency", "currency"])
def test_another_currency_is_refused(provider, keys, field):
    assert provider.verify_notify(_signed(keys, **{field: "CNY"})).status == "success"
    for other in ("USD", "HKD", "cny", "CNY "):
        with pytest.raises(NotifyInvalid, match="not CNY"):
            provider.verify_notify(_signed(keys, **{field: other}))


def test_the_buyers_payment_currency_is_not_the_merchants(provider, keys):
    # pay_currency: what the buyer's wallet paid in; the trade (and what the merchant gets) is still CNY
    assert provider.verify_notify(_signed(keys, pay_currency="HKD", trans_currency="CNY")).status == "success"


def test_a_query_in_another_currency_is_refused(loopback, keys, provider_factory):
    gateway_key = load_rsa_key(keys["gateway_private"])

    async def endpoint(request: Request) -> Response:
        content = {"code": "10000", "msg": "Success", "out_trade_no": "CUR_1", "trade_no": "T1",
                   "trade_status": "TRADE_SUCCESS", "total_amount": "1.00", "send_pay_date": "2024-05-01 12:00:00",
                   "trans_currency": request.path_params["currency"]}
        text = json.dumps(content, separators=(",", ":"))
        return Response(('{"alipay_trade_query_response":' + text + ',"sign":"' + rsa2_sign(gateway_key, text)
                         + '"}').encode(), media_type="application/json")

    server = loopback(lambda url: Starlette(routes=[Route("/{currency}/gateway.do", endpoint, methods=["POST"])]))
    usd = provider_factory(gateway=f"{server.url}/USD/gateway.do")
    with pytest.raises(ProviderError) as info:
        usd.query(order("CUR_1"))
    assert info.value.details["failure"] == "invalid_response" and "USD" in info.value.message
    cny = provider_factory(gateway=f"{server.url}/CNY/gateway.do")
    assert cny.query(order("CUR_1")).status == "success"


def test_a_query_with_a_non_canonical_amount_is_refused(loopback, keys, provider_factory):
    gateway_key = load_rsa_key(keys["gateway_private"])

    async def endpoint(request: Request) -> Response:
        text = ('{"code":"10000","msg":"Success","out_trade_no":"AMT_1","trade_no":"T1",'
                '"trade_status":"TRADE_SUCCESS","total_amount":"1E0"}')
        return Response(('{"alipay_trade_query_response":' + text + ',"sign":"' + rsa2_sign(gateway_key, text)
                         + '"}').encode(), media_type="application/json")

    server = loopback(lambda url: Starlette(routes=[Route("/gateway.do", endpoint, methods=["POST"])]))
    with pytest.raises(ProviderError, match="total_amount"):
        provider_factory(gateway=f"{server.url}/gateway.do").query(order("AMT_1"))


def test_no_seller_id_warns_at_load(provider_factory, caplog):
    def alipay_records():  # (another test's sandbox thread may still log meanwhile)
        return [r for r in caplog.records if r.name.startswith("elements.pays.AliPayType")]

    with caplog.at_level(logging.WARNING, logger="elements.pays.AliPayType"):
        provider_factory(sellerId=SELLER_ID)
    assert alipay_records() == []
    with caplog.at_level(logging.WARNING, logger="elements.pays.AliPayType"):
        provider_factory()
    warning, = alipay_records()
    assert warning.levelno == logging.WARNING
    text = warning.getMessage()
    assert "sellerId is not set" in text and "seller_id" in text and "another merchant" in text
    assert "Set sellerId" in text and "PRIVATE KEY" not in text
