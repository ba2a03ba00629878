"""Every way the WeChat Pay API can fail, played by small real servers on loopback: each becomes PROVIDER_ERROR with
WeChat's code and message, and nothing secret in it."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from elements.pays.errors import ProviderError
from elements.pays.Meta import OrderView
from elements.pays.WechatPayType import mweb_out_trade_no
from elements.pays.WechatPayType.signing import calculate_sign
from elements.pays.WechatPayType.wirexml import build_cdata_xml, parse_xml

from .conftest import APP_ID, MCH_ID, LoopbackServer, make_app, make_provider, random_key

KEY = random_key()
ORDER = OrderView(orderId="T202401010001", subject="商品", amount=Decimal("12.34"),
                  createdAt=dt.datetime.now(dt.timezone.utc))


def signed(fields: dict[str, str], key: str = KEY, sign_type: str = "MD5") -> bytes:
    fields = {"return_code": "SUCCESS", "return_msg": "OK", "appid": APP_ID, "mch_id": MCH_ID,
              "nonce_str": "abc", **fields}
    fields["sign"] = calculate_sign(fields, key, sign_type)
    return build_cdata_xml(fields)


class Misbehaving:
    """A server whose answer to every POST is whatever ``behave(request_fields)`` returns (a Response, or bytes)."""

    def __init__(self) -> None:
        self.behave: Callable[[dict[str, str]], Any] = lambda fields: Response(b"")
        self.requests: list[dict[str, str]] = []

    async def endpoint(self, request: Request) -> Response:
        fields = parse_xml(await request.body())
        self.requests.append(fields)
        result = self.behave(fields)
        if asyncio.iscoroutine(result):
            result = await result
        return result if isinstance(result, Response) else Response(result, media_type="text/xml")


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[tuple[Misbehaving, str]]:
    server = Misbehaving()
    asgi = Starlette(routes=[Route("/{path:path}", server.endpoint, methods=["POST"])])
    with LoopbackServer(asgi) as loop:
        yield server, loop.url


@pytest.fixture
def provider(misbehaving, tmp_path: Path):
    server, url = misbehaving
    server.requests.clear()
    return make_provider(make_app(tmp_path, "http://127.0.0.1:9"), appId=APP_ID, mchId=MCH_ID, apiKey=KEY,
                         gateway=url + "/", timeout=0.5)


def failure(provider, call: str = "query") -> ProviderError:
    """Run ``call`` against the misbehaving server; it must fail with PROVIDER_ERROR and no secret in it."""
    with pytest.raises(ProviderError) as info:
        provider.prepare(ORDER, "pc") if call == "prepare" else getattr(provider, call)(ORDER)
    error = info.value
    assert error.code == "PROVIDER_ERROR" and error.http_status == 502
    assert KEY not in str(error) and KEY not in repr(error.to_dict())
    return error


def test_timeout(misbehaving, provider) -> None:
    async def slow(fields):
        await asyncio.sleep(2)
        return signed({"result_code": "SUCCESS", "trade_state": "NOTPAY"})

    misbehaving[0].behave = slow
    error = failure(provider)
    assert error.provider_code == "TIMEOUT" and "0.5 s" in error.message
    # The request may have been carried out: PaySvc must keep a refund reserved and retry it under the same id.
    assert error.details["outcomeUnknown"] is True and isinstance(error.__cause__, httpx.TransportError)


def test_connection_refused(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    provider = make_provider(make_app(tmp_path, "http://127.0.0.1:9"), appId=APP_ID, mchId=MCH_ID, apiKey=KEY,
                             gateway=f"http://127.0.0.1:{port}", timeout=2)
    error = failure(provider)
    assert error.provider_code == "NETWORK_ERROR" and error.details["outcomeUnknown"] is True
    assert isinstance(error.__cause__, httpx.TransportError)


@pytest.mark.parametrize("status", [500, 502, 503, 404, 302])
def test_http_error_status(misbehaving, provider, status) -> None:
    misbehaving[0].behave = lambda f: Response(signed({"result_code": "SUCCESS"}), status_code=status,
                                               headers={"location": "http://127.0.0.1:9/"} if status == 302 else None)
    assert failure(provider).provider_code == f"HTTP_{status}"


@pytest.mark.parametrize("body", [b"<html>Bad gateway</html>", b"", b"{\"return_code\":\"SUCCESS\"}",
                                  b"<!DOCTYPE x [<!ENTITY a SYSTEM 'file:///etc/passwd'>]><xml><a>&a;</a></xml>",
                                  b"<xml>" + b"x" * 300_000 + b"</xml>"])
def test_not_xml(misbehaving, provider, body) -> None:
    misbehaving[0].behave = lambda f: Response(body, media_type="text/xml")
    assert failure(provider).provider_code == "INVALID_RESPONSE"


@pytest.mark.parametrize("call", ["query", "prepare", "close"])
def test_bad_response_signature(misbehaving, provider, call) -> None:
    misbehaving[0].behave = lambda f: signed({"result_code": "SUCCESS", "trade_state": "SUCCESS",
                                              "code_url": "weixin://x", "transaction_id": "42", "total_fee": "1234",
                                              "out_trade_no": ORDER.orderId}, key=random_key())
    assert failure(provider, call).provider_code == "SIGNATURE_INVALID"


def test_unsigned_success_is_refused(misbehaving, provider) -> None:
    misbehaving[0].behave = lambda f: build_cdata_xml({"return_code": "SUCCESS", "result_code": "SUCCESS",
                                                       "trade_state": "SUCCESS", "transaction_id": "42",
                                                       "total_fee": "1", "out_trade_no": ORDER.orderId})
    assert failure(provider).provider_code == "SIGNATURE_INVALID"


def test_tampered_response(misbehaving, provider) -> None:
    def tamper(fields):
        body = signed({"result_code": "SUCCESS", "trade_state": "SUCCESS", "transaction_id": "42",
                       "total_fee": "1234", "out_trade_no": ORDER.orderId})
        return body.replace(b"1234", b"1")

    misbehaving[0].behave = tamper
    assert failure(provider).provider_code == "SIGNATURE_INVALID"


def test_return_code_fail(misbehaving, provider) -> None:
    misbehaving[0].behave = lambda f: build_cdata_xml({"return_code": "FAIL", "return_msg": "参数格式校验错误"})
    error = failure(provider, "prepare")
    assert error.provider_code == "FAIL" and error.provider_message == "参数格式校验错误"
    assert error.details == {"providerCode": "FAIL", "providerMessage": "参数格式校验错误"}


@pytest.mark.parametrize("call", ["query", "prepare", "close"])
def test_result_code_fail(misbehaving, provider, call) -> None:
    misbehaving[0].behave = lambda f: signed({"result_code": "FAIL", "err_code": "SYSTEMERROR",
                                              "err_code_des": "系统错误"})
    error = failure(provider, call)
    assert error.provider_code == "SYSTEMERROR" and error.provider_message == "系统错误"
    assert error.details["outcomeUnknown"] is True  # WeChat: "retry with the same parameters"


def test_answer_for_another_merchant(misbehaving, provider) -> None:
    misbehaving[0].behave = lambda f: signed({"result_code": "SUCCESS", "trade_state": "NOTPAY", "mch_id": "999"})
    assert failure(provider).provider_code == "INVALID_RESPONSE"


def test_unknown_trade_state_and_missing_urls(misbehaving, provider) -> None:
    misbehaving[0].behave = lambda f: signed({"result_code": "SUCCESS", "trade_state": "MYSTERY"})
    assert failure(provider).provider_code == "INVALID_RESPONSE"
    misbehaving[0].behave = lambda f: signed({"result_code": "SUCCESS", "prepay_id": "wx1"})
    assert failure(provider, "prepare").provider_code == "INVALID_RESPONSE"


def test_request_shape(misbehaving, provider) -> None:
    """What goes on the wire: exact fen, the cut body, NATIVE's product_id, a fresh 32-char nonce, a valid sign."""
    server = misbehaving[0]
    server.behave = lambda f: signed({"result_code": "SUCCESS", "prepay_id": "wx1", "code_url": "weixin://wxpay/x"})
    long_subject = OrderView(orderId=ORDER.orderId, subject="商" * 50, amount=Decimal("0.07"),
                             createdAt=ORDER.createdAt)
    prep = provider.prepare(long_subject, "pc")
    assert prep.payUrl == "weixin://wxpay/x" and prep.extra["prepay_id"] == "wx1"
    sent = server.requests[-1]
    assert sent["total_fee"] == "7" and sent["body"] == "商" * 42 and sent["trade_type"] == "NATIVE"
    assert sent["product_id"] == ORDER.orderId and sent["out_trade_no"] == ORDER.orderId
    assert sent["attach"] == ORDER.orderId
    assert sent["spbill_create_ip"] == "127.0.0.1"
    assert sent["notify_url"] == "http://127.0.0.1:9/api/shop/pays/services/PaySvc/wechatNotify"
    assert len(sent["nonce_str"]) == 32 and "sign_type" not in sent
    assert sent["sign"] == calculate_sign(sent, KEY, "MD5")
    provider.prepare(long_subject, "pc")
    assert server.requests[-1]["nonce_str"] != sent["nonce_str"]


def test_hmac_requests_declare_their_sign_type(misbehaving, tmp_path: Path) -> None:
    server, url = misbehaving
    provider = make_provider(make_app(tmp_path, "https://shop.example.com"), appId=APP_ID, mchId=MCH_ID,
                             apiKey=KEY, signType="HMAC-SHA256", gateway=url)
    server.behave = lambda f: signed({"result_code": "SUCCESS", "prepay_id": "wx1", "mweb_url": "https://m/x"},
                                     sign_type="HMAC-SHA256")
    provider.prepare(ORDER, "mobile", clientIp="2001:db8::1")
    sent = server.requests[-1]
    assert sent["sign_type"] == "HMAC-SHA256" and sent["sign"] == calculate_sign(sent, KEY, "HMAC-SHA256")
    assert sent["trade_type"] == "MWEB" and sent["spbill_create_ip"] == "2001:db8::1"
    assert sent["out_trade_no"] == mweb_out_trade_no(ORDER.orderId) and sent["attach"] == ORDER.orderId
    assert "product_id" not in sent
    assert sent["scene_info"] == ('{"h5_info":{"type":"Wap","wap_url":"https://shop.example.com",'
                                  '"wap_name":"演示商店 Demo shop"}}')
