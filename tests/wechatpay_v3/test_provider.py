"""``pays.WechatPayV3Type`` against the v3 sandbox, through the provider contract: native (pc) and H5 (mobile), query
and query_trades, close, refund and refund query, ``time_expire`` from ``OrderView.expiresAt`` in RFC 3339,
references, amounts in integer fen, ``trade_state`` mapping, and errors whose outcome is unknown."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest

from elements.pays.errors import OrderIdInvalid, ProviderError, RefundInvalid, SubjectInvalid, UnsupportedPayType
from elements.pays.Meta import NotifyRequest, OrderView
from jitpay_wechatpay_v3 import client as client_module
from jitpay_wechatpay_v3.client import WechatV3Api
from jitpay_wechatpay_v3.provider import TRADE_STATES, fen_to_yuan, out_trade_nos, rfc3339, yuan_to_fen

from . import keys
from .sandbox_support import Harness, sandbox_provider

_count = iter(range(10**9))


def order(amount: str = "12.34", subject: str = "沙箱测试 Sandbox test", *, expires_in: timedelta | None = None,
          orderId: str | None = None, **extra: Any) -> OrderView:
    now = datetime.now(timezone.utc)
    return OrderView(orderId=orderId or f"O{time.time_ns()}{next(_count)}"[:28], subject=subject,
                     amount=Decimal(amount), createdAt=now,
                     expiresAt=now + expires_in if expires_in is not None else None, **extra)


def unknown(exc: ProviderError) -> bool:
    return bool((exc.details or {}).get("outcomeUnknown"))


# -- pure parts --------------------------------------------------------------------------------------------------------
def test_references_are_derived_from_the_order_and_never_v2s() -> None:
    refs = out_trade_nos("20261127123456789012ABCDEFGH")
    assert refs == {"NATIVE": "20261127123456789012ABCDEFGH-V3N", "H5": "20261127123456789012ABCDEFGH-V3H"}
    long = out_trade_nos("A" * 32)
    assert long["NATIVE"].startswith("V3N-") and long["H5"].startswith("V3H-") and long != out_trade_nos("A" * 31)
    for ref in (*refs.values(), *long.values()):
        assert 6 <= len(ref) <= 32 and ref not in ("20261127123456789012ABCDEFGH",) and not ref.startswith("H-")
    for bad in ("", "has space", "H-xyz", "a" * 33, "订单"):
        with pytest.raises(OrderIdInvalid):
            out_trade_nos(bad)


def test_amounts_in_integer_fen_and_rfc3339_times() -> None:
    assert yuan_to_fen(Decimal("99.99")) == 9999 and fen_to_yuan(9999) == Decimal("99.99")
    for bad in (Decimal("0.001"), Decimal("0"), Decimal("-1"), 1.5, Decimal("NaN")):
        with pytest.raises(Exception):
            yuan_to_fen(bad)  # type: ignore[arg-type]
    for bad in ("9999", 99.99, True, -1, None):
        with pytest.raises(ValueError):
            fen_to_yuan(bad)
    text, moment = rfc3339(datetime(2026, 11, 27, 3, 59, 59, 999999, tzinfo=timezone.utc))
    assert text == "2026-11-27T11:59:59+08:00" and moment == datetime(2026, 11, 27, 3, 59, 59, tzinfo=timezone.utc)
    assert TRADE_STATES == {"SUCCESS": "success", "REFUND": "refunded", "NOTPAY": "pending", "USERPAYING": "pending",
                            "CLOSED": "closed", "REVOKED": "closed", "PAYERROR": "failed"}


# -- against the sandbox -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["publicKey", "certificate", "both"])
def test_pc_native_then_paid(harness_factory, mode: str) -> None:
    h: Harness = harness_factory(mode)
    provider = sandbox_provider(h)
    o = order("99.99", expires_in=timedelta(minutes=30))
    prep = provider.prepare(o, "pc")
    assert prep.reference == f"{o.orderId}-V3N" and prep.payUrl.startswith(h.gateway + "/wallet/")
    assert prep.qrCode and prep.qrCode.startswith("data:image/png;base64,")
    assert prep.expiresAt is not None and prep.expiresAt <= o.expiresAt
    trade = h.sandbox.trade(prep.reference)
    assert trade["total"] == 9999 and trade["attach"] == o.orderId and trade["trade_type"] == "NATIVE"
    assert trade["time_expire"] == rfc3339(o.expiresAt)[0] and trade["time_expire"].endswith("+08:00")
    assert provider.prepare(o, "pc").payUrl == prep.payUrl  # the same WeChat Pay order again
    assert provider.query(o).status == "pending"
    assert h.sandbox.pay(prep.reference)
    state = provider.query(o)
    assert (state.status, state.paidAmount, state.reference, state.orderId) == \
        ("success", Decimal("99.99"), prep.reference, o.orderId)
    assert state.tradeNo == h.sandbox.trade(prep.reference)["transaction_id"] and state.payTime is not None
    assert [s.status for s in provider.query_trades(o)] == ["success"]


def test_mobile_h5_with_the_buyers_address(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    provider = sandbox_provider(h)
    o = order()
    prep = provider.prepare(o, "mobile", clientIp="203.0.113.7")
    assert prep.reference == f"{o.orderId}-V3H" and "prepay_id=" in prep.payUrl and prep.qrCode is None
    assert prep.expiresAt is not None and prep.expiresAt - datetime.now(timezone.utc) <= timedelta(minutes=4)
    scene = h.sandbox.trade(prep.reference)["scene_info"]
    assert scene["payer_client_ip"] == "203.0.113.7" and scene["h5_info"]["type"] == "Wap"
    assert provider.prepare(o, "mobile", clientIp="198.51.100.1").reference == prep.reference  # another address
    assert sandbox_provider(h).prepare(order(), "mobile").reference  # without one: payerClientIp
    # both trade types of one order, each its own WeChat Pay order
    provider.prepare(o, "pc")
    assert sorted(s.reference for s in provider.query_trades(o)) == sorted(out_trade_nos(o.orderId).values())
    h.sandbox.pay(prep.reference)
    assert provider.query(o).reference == prep.reference and provider.query(o).status == "success"
    h.sandbox.fail(out_trade_nos(o.orderId)["NATIVE"])
    assert {s.reference: s.status for s in provider.query_trades(o)} == {
        out_trade_nos(o.orderId)["NATIVE"]: "failed", prep.reference: "success"}


def test_what_cannot_be_prepared(harness_factory) -> None:
    provider = sandbox_provider(harness_factory("publicKey"))
    with pytest.raises(UnsupportedPayType):
        provider.prepare(order(), "page")
    with pytest.raises(SubjectInvalid):
        provider.prepare(order(subject="  \t "), "pc")
    with pytest.raises(OrderIdInvalid):
        provider.prepare(order(orderId="has-dash"), "pc")
    long = provider.prepare(order(subject="长" * 200), "pc")  # cut to 127 bytes of UTF-8
    assert long.reference


def test_an_order_wechat_pay_does_not_know_is_pending(harness_factory) -> None:
    provider = sandbox_provider(harness_factory("publicKey"))
    o = order()
    assert provider.query(o).status == "pending" and provider.query_trades(o) == []
    provider.close(o)  # nothing to close is fine


def test_close_and_settle(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    provider = sandbox_provider(h)
    o = order()
    provider.prepare(o, "pc")
    provider.prepare(o, "mobile")
    provider.close(o)
    assert provider.query(o).status == "closed"
    assert {s.status for s in provider.query_trades(o)} == {"closed"}
    provider.close(o)  # closing again is fine
    paid = order()
    native = provider.prepare(paid, "pc").reference
    provider.prepare(paid, "mobile")
    h.sandbox.pay(native)
    with pytest.raises(ProviderError) as info:
        provider.close(paid)
    assert info.value.provider_code == "ORDERPAID" and not unknown(info.value)
    provider.settle(paid, paidHere=True)  # closes the H5 one, the paid one is expected to refuse
    assert h.sandbox.trade(out_trade_nos(paid.orderId)["H5"])["state"] == "CLOSED"
    with pytest.raises(ProviderError):
        provider.settle(paid, paidHere=False)


def test_an_expired_order_cannot_be_paid(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    provider = sandbox_provider(h)
    o = order(expires_in=timedelta(seconds=1.2))
    prep = provider.prepare(o, "pc")
    assert prep.expiresAt <= o.expiresAt
    time.sleep(1.3)
    assert not h.sandbox.pay(prep.reference)
    assert provider.query(o).status == "closed"


def test_partial_and_full_refunds(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    provider = sandbox_provider(h)
    o = order("10.00")
    ref = provider.prepare(o, "pc").reference
    h.sandbox.pay(ref)
    paid = provider.query(o)
    view = OrderView(**{**o.__dict__, "tradeNo": paid.tradeNo, "reference": ref})
    first = provider.refund(view, "RF1", Decimal("3.00"), Decimal("3.00"), reason="部分退款 partial")
    assert (first.refundId, first.amount) == ("RF1", Decimal("3.00")) and first.refundNo
    assert provider.refund(view, "RF1", Decimal("3.00"), Decimal("3.00")).refundNo == first.refundNo  # idempotent
    with pytest.raises(ProviderError):  # the same id, another amount
        provider.refund(view, "RF1", Decimal("4.00"), Decimal("4.00"))
    with pytest.raises(ProviderError) as info:  # more than is left
        provider.refund(view, "RF2", Decimal("7.01"), Decimal("10.01"))
    assert not unknown(info.value)
    provider.refund(view, "RF2", Decimal("7.00"), Decimal("10.00"))
    assert h.sandbox.refunded(ref) == Decimal("10.00") and h.sandbox.captured(ref) == Decimal("10.00")
    assert provider.query(o).status == "refunded"
    assert provider.query_refund("RF2")["status"] == "SUCCESS" and provider.query_refund("NOPE") is None
    with pytest.raises(RefundInvalid):
        provider.refund(view, "bad id!", Decimal("1.00"), Decimal("1.00"))
    # by out_trade_no when the transaction id is not known
    o2 = order("1.00")
    h5 = provider.prepare(o2, "mobile").reference
    h.sandbox.pay(h5)
    assert provider.refund(OrderView(**{**o2.__dict__, "reference": h5}), "RF3", Decimal("1.00"),
                           Decimal("1.00")).amount == Decimal("1.00")


def test_long_order_ids_use_digest_references(harness_factory) -> None:
    h: Harness = harness_factory("publicKey", notifyMode="hold")
    provider = sandbox_provider(h)
    o = order(orderId="L" * 32)
    prep = provider.prepare(o, "pc")
    assert prep.reference.startswith("V3N-")
    h.sandbox.pay(prep.reference)
    (held,) = h.sandbox.take_notifications()
    fields = provider.parse_notify(NotifyRequest(body=held.body, headers=held.headers))
    assert provider.verify_notify(fields).orderId == o.orderId
    paid = provider.query(o)
    provider.refund(OrderView(**{**o.__dict__, "tradeNo": paid.tradeNo}), "RFL", Decimal("1.00"), Decimal("1.00"))
    (refund_callback,) = h.sandbox.take_notifications()
    state = provider.verify_notify(provider.parse_notify(NotifyRequest(body=refund_callback.body,
                                                                       headers=refund_callback.headers)))
    assert (state.orderId, state.status) == (o.orderId, "refunded")  # found through a query of the trade's attach


# -- errors ------------------------------------------------------------------------------------------------------------
def with_transport(provider: Any, handler: Any) -> Any:
    provider.api.close()
    provider.api = WechatV3Api(provider.settings, transport=httpx.MockTransport(handler))
    return provider


@pytest.mark.parametrize("case", ["timeout", "connection", "500", "SYSTEM_ERROR", "unsigned", "bad_signature",
                                  "probe", "not_json", "stale"])
def test_errors_after_which_the_request_may_have_happened(harness_factory, case: str) -> None:
    h: Harness = harness_factory("publicKey")
    provider = sandbox_provider(h)
    from .conftest import signed_headers

    def handler(request: httpx.Request) -> httpx.Response:
        body = b'{"code_url":"weixin://x"}'
        if case == "timeout":
            raise httpx.ReadTimeout("slow", request=request)
        if case == "connection":
            raise httpx.ConnectError("refused", request=request)
        if case == "500":
            return httpx.Response(500, content=b'{"code":"SYSTEM_ERROR","message":"busy"}')
        if case == "SYSTEM_ERROR":
            return httpx.Response(400, content=b'{"code":"SYSTEM_ERROR","message":"retry"}')
        if case == "unsigned":
            return httpx.Response(200, content=body)
        if case == "not_json":
            return httpx.Response(200, content=b"<html>", headers=signed_headers(b"<html>", key=key,
                                                                              serial=serial))
        headers = signed_headers(body, key=key, serial=serial,
                                 timestamp=int(time.time()) - 400 if case == "stale" else None)
        if case == "bad_signature":
            body = b'{"code_url":"weixin://y"}'
        if case == "probe":
            headers["Wechatpay-Signature"] = "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]
        return httpx.Response(200, content=body, headers=headers)

    from cryptography.hazmat.primitives import serialization

    from .sandbox_support import PUBLIC_KEY_ID, read

    key = serialization.load_pem_private_key(read(h.keys, "publicKeyPrivateKey").encode(), None)
    serial = PUBLIC_KEY_ID
    with_transport(provider, handler)
    with pytest.raises(ProviderError) as info:
        provider.prepare(order(), "pc")
    assert unknown(info.value), info.value
    with pytest.raises(ProviderError) as info:
        provider.refund(order(tradeNo="4200"), "RFX", Decimal("1.00"), Decimal("1.00"))
    assert unknown(info.value)  # and the refund was asked about, which failed too


def test_a_refusal_is_not_an_unknown_outcome(harness_factory) -> None:
    provider = sandbox_provider(harness_factory("publicKey"))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, content=b'{"code":"NOT_ENOUGH","message":"\xe4\xbd\x99\xe9\xa2\x9d\xe4\xb8\x8d\xe8'
                                            b'\xb6\xb3"}')

    with_transport(provider, handler)
    with pytest.raises(ProviderError) as info:
        provider.refund(order(tradeNo="4200"), "RFX", Decimal("1.00"), Decimal("1.00"))
    assert info.value.provider_code == "NOT_ENOUGH" and not unknown(info.value)
    assert info.value.provider_message == "余额不足"


def test_a_refund_whose_answer_was_lost_is_found_by_its_id(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    provider = sandbox_provider(h)
    o = order("5.00")
    ref = provider.prepare(o, "pc").reference
    h.sandbox.pay(ref)
    paid = provider.query(o)
    real = httpx.HTTPTransport()
    lost = []

    def handler(request: httpx.Request) -> httpx.Response:
        response = real.handle_request(request)
        response.read()
        if request.url.path.endswith("/v3/refund/domestic/refunds") and not lost:
            lost.append(True)  # WeChat Pay made the refund; its answer never arrived
            raise httpx.ReadTimeout("lost", request=request)
        return response

    with_transport(provider, handler)
    result = provider.refund(OrderView(**{**o.__dict__, "tradeNo": paid.tradeNo}), "RFLOST", Decimal("5.00"),
                             Decimal("5.00"))
    assert lost and result.amount == Decimal("5.00") and h.sandbox.refunded(ref) == Decimal("5.00")


def test_a_wrong_public_key_id_is_refused_at_the_first_call(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    provider = sandbox_provider(h, wechatpayPublicKeyId="PUB_KEY_ID_0119000000032026112799999999999999")
    with pytest.raises(ProviderError) as info:
        provider.prepare(order(), "pc")
    assert "Wechatpay-Serial" in (info.value.provider_message or "")


def test_a_wrong_public_key_makes_every_answer_unverifiable(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    provider = sandbox_provider(h, wechatpayPublicKey=keys.wechatpay().public_pem)
    with pytest.raises(ProviderError) as info:
        provider.prepare(order(), "pc")
    assert info.value.provider_code == "SIGNATURE_INVALID" and unknown(info.value)


def test_a_wrong_merchant_key_is_a_sign_error(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    provider = sandbox_provider(h, privateKey=keys.merchant().private_pem)
    with pytest.raises(ProviderError) as info:
        provider.prepare(order(), "pc")
    assert info.value.provider_code == "SIGN_ERROR" and not unknown(info.value)


def test_platform_certificates_are_fetched_again_when_wechat_pay_rotates(harness_factory,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    h: Harness = harness_factory("certificate")
    provider = sandbox_provider(h)
    provider.query(order())
    (first,) = provider.api.verifier.platform_serials()
    new = h.sandbox.rotate_platform_certificate()
    monkeypatch.setattr(client_module, "CERTIFICATE_REFRESH_INTERVAL", 0)
    provider.query(order())
    assert sorted(provider.api.verifier.platform_serials()) == sorted([first, new])


def test_requests_carry_the_serial_of_the_public_key_in_public_key_mode(harness_factory) -> None:
    h: Harness = harness_factory("both")
    seen: list[httpx.Request] = []
    real = httpx.HTTPTransport()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return real.handle_request(request)

    for mode, expected in (("both", True), ("certificate", False)):
        provider = with_transport(sandbox_provider(h, mode), handler)
        seen.clear()
        provider.prepare(order(), "pc")
        assert ("wechatpay-serial" in seen[0].headers) is expected
        assert seen[0].headers["authorization"].startswith("WECHATPAY2-SHA256-RSA2048 mchid=")
        assert json.loads(seen[0].content)["amount"]["currency"] == "CNY"
