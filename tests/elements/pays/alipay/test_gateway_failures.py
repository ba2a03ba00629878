"""Every way the gateway can fail becomes PROVIDER_ERROR, tested against small misbehaving servers on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
from decimal import Decimal

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from elements.pays.AliPayType.signing import load_rsa_key, rsa2_sign
from elements.pays.errors import ProviderError

from .conftest import order


@pytest.fixture
def bad_gateway(loopback, keys):
    """One server, one misbehaviour per path: ``{url}/{kind}/gateway.do``."""
    gateway_key = load_rsa_key(keys["gateway_private"])
    stranger_key = load_rsa_key(keys["other_private"])

    def signed(method: str, content: dict, key=gateway_key) -> bytes:
        text = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
        name = method.replace(".", "_") + "_response"
        return ('{"' + name + '":' + text + ',"sign":"' + rsa2_sign(key, text) + '"}').encode()

    async def endpoint(request: Request) -> Response:
        kind = request.path_params["kind"]
        method = request.query_params.get("method", "")
        ok = {"code": "10000", "msg": "Success", "out_trade_no": "F1", "qr_code": "https://qr.example/x",
              "trade_status": "TRADE_SUCCESS", "total_amount": "1.00", "trade_no": "T1"}
        if kind == "slow":
            await asyncio.sleep(1.5)
            return Response(signed(method, ok))
        if kind == "status500":
            return Response(b"<html>Internal Server Error</html>", status_code=500)
        if kind == "status503":
            return Response(b"", status_code=503)
        if kind == "html":
            return Response(b"<html><body>maintenance</body></html>", media_type="text/html")
        if kind == "truncated":
            return Response(signed(method, ok)[:-7])
        if kind == "badsig":
            return Response(signed(method, ok, key=stranger_key))
        if kind == "tampered":
            return Response(signed(method, ok).replace(b'"1.00"', b'"0.01"'))
        if kind == "nosig":
            body = signed(method, ok)
            return Response(body[:body.index(b',"sign"')] + b"}")
        if kind == "business":
            return Response(signed(method, {"code": "40004", "msg": "Business Failed",
                                            "sub_code": "ACQ.SYSTEM_ERROR", "sub_msg": "系统错误"}))
        if kind == "unavailable":
            return Response(signed(method, {"code": "20000", "msg": "Service Currently Unavailable",
                                            "sub_code": "isp.unknow-error", "sub_msg": "系统繁忙"}))
        if kind == "othertrade":
            return Response(signed(method, {**ok, "out_trade_no": "SOMEONE_ELSE"}))
        if kind == "wrongkey":
            return Response(signed("alipay.trade.other", ok))
        raise AssertionError(kind)

    server = loopback(lambda url: Starlette(routes=[Route("/{kind}/gateway.do", endpoint, methods=["POST"])]))
    return server.url


def _calls(provider):
    o = order("F1", "1.00")
    return {
        "prepare": lambda: provider.prepare(o, "pc"),
        "query": lambda: provider.query(o),
        "close": lambda: provider.close(o),
        "refund": lambda: provider.refund(o, "R1", Decimal("1.00"), Decimal("1.00")),
    }


def _assert_clean(error: ProviderError, keys) -> None:
    assert error.code == "PROVIDER_ERROR" and error.http_status == 502
    text = str(error) + json.dumps(error.to_dict(), ensure_ascii=False)
    for name in ("app_private", "gateway_public", "gateway_private"):
        body = "".join(keys[name].splitlines()[1:-1])
        assert body[10:50] not in text
    assert "sign=" not in text and "biz_content" not in text


@pytest.mark.parametrize("kind,failure,provider_code", [
    ("slow", "timeout", None),
    ("status500", "http_status", None),
    ("status503", "http_status", None),
    ("html", "invalid_response", None),
    ("truncated", "invalid_response", None),
    ("wrongkey", "invalid_response", None),
    ("badsig", "signature_invalid", None),
    ("tampered", "signature_invalid", None),
    ("nosig", "signature_missing", None),
    ("business", "business", "ACQ.SYSTEM_ERROR"),
    ("unavailable", "business", "isp.unknow-error"),
])
def test_each_failure_is_a_provider_error(bad_gateway, provider_factory, keys, kind, failure, provider_code):
    provider = provider_factory(gateway=f"{bad_gateway}/{kind}/gateway.do", timeout=0.5)
    for name, call in _calls(provider).items():
        with pytest.raises(ProviderError) as info:
            call()
        error = info.value
        assert error.details["failure"] == failure, (name, error)
        assert error.provider_code == provider_code
        if provider_code:
            assert error.provider_message in ("系统错误", "系统繁忙")
            assert provider_code in error.message
        _assert_clean(error, keys)


def test_response_about_another_trade(bad_gateway, provider_factory):
    provider = provider_factory(gateway=f"{bad_gateway}/othertrade/gateway.do")
    for name in ("prepare", "query", "refund"):
        with pytest.raises(ProviderError) as info:
            _calls(provider)[name]()
        assert info.value.details["failure"] == "invalid_response"


def test_connection_refused(provider_factory, keys):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = provider_factory(gateway=f"http://127.0.0.1:{port}/gateway.do", timeout=2)
    for call in _calls(provider).values():
        with pytest.raises(ProviderError) as info:
            call()
        assert info.value.details["failure"] == "connection"
        _assert_clean(info.value, keys)


def test_links_need_no_gateway(provider_factory):
    provider = provider_factory(gateway="http://127.0.0.1:9/gateway.do")  # nothing listens there
    assert provider.prepare(order("F2"), "mobile").payUrl.startswith("http://127.0.0.1:9/gateway.do?")
