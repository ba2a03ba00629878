"""Verifying WeChat Pay's signatures in both key modes (the WeChat Pay public key, platform certificates from
``GET /v3/certificates``) and during a migration, and callbacks through the provider contract, cross-checked against
``wechatpayv3``."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest

from elements.pays.errors import NotifyInvalid, SignatureInvalid
from elements.pays.Meta import NotifyRequest
from jitpay_wechatpay_v3 import client as client_module
from jitpay_wechatpay_v3.client import SignatureVerifier, VerifyFailure
from jitpay_wechatpay_v3.provider import out_trade_nos

from . import keys
from .conftest import (APP_ID, MCH_ID, callback_body, certificate_listing, make_provider, settings, signed_headers,
                       transaction)

wechatpayv3 = pytest.importorskip("wechatpayv3")


class FakeCertificates:
    """Stands in for ``GET /v3/certificates``: a listing signed by ``signer`` (default its first certificate)."""

    def __init__(self, *certified: keys.CertifiedKey, signer: keys.CertifiedKey | None = None, **listing: Any) -> None:
        self.certified = list(certified)
        self.signer = signer
        self.listing = listing
        self.calls = 0

    def __call__(self) -> tuple[bytes, dict[str, str]]:
        self.calls += 1
        body = certificate_listing(*self.certified, **self.listing)
        signer = self.signer or self.certified[0]
        return body, signed_headers(body, key=signer.key, serial=signer.serial)


def test_public_key_mode_verifies_by_the_public_key_id() -> None:
    verifier = SignatureVerifier(settings("publicKey"))
    body = b'{"code_url":"weixin://wxpay/bizpayurl?pr=x"}'
    assert verifier.verify(signed_headers(body), body) == keys.PUBLIC_KEY_ID
    with pytest.raises(VerifyFailure) as info:  # a platform certificate is nothing to a public-key-only merchant
        verifier.verify(signed_headers(body, key=keys.platform().key, serial=keys.platform().serial), body)
    assert info.value.kind == "unknown_serial"


@pytest.mark.parametrize("tamper", ["body", "timestamp", "nonce", "signature", "serial", "probe", "stale", "future",
                                    "missing", "type"])
def test_what_does_not_verify(tamper: str) -> None:
    verifier = SignatureVerifier(settings("publicKey"))
    body = b'{"trade_state":"SUCCESS"}'
    headers = signed_headers(body)
    if tamper == "body":
        body = b'{"trade_state":"SUCCESS" }'
    elif tamper == "timestamp":
        headers["Wechatpay-Timestamp"] = str(int(headers["Wechatpay-Timestamp"]) + 1)
    elif tamper == "nonce":
        headers["Wechatpay-Nonce"] += "0"
    elif tamper == "signature":
        headers["Wechatpay-Signature"] = signed_headers(b"{}")["Wechatpay-Signature"]
    elif tamper == "serial":
        headers["Wechatpay-Serial"] = "PUB_KEY_ID_0119000000012026112700000000000002"
    elif tamper == "probe":
        headers["Wechatpay-Signature"] = "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]
    elif tamper in ("stale", "future"):
        headers = signed_headers(body, timestamp=int(time.time()) + (-301 if tamper == "stale" else 301))
    elif tamper == "missing":
        del headers["Wechatpay-Signature"]
    elif tamper == "type":
        headers["Wechatpay-Signature-Type"] = "WECHATPAY2-SM2-WITH-SM3"
    with pytest.raises(VerifyFailure) as info:
        verifier.verify(headers, body)
    assert "-----BEGIN" not in info.value.message


def test_certificate_mode_downloads_decrypts_and_verifies() -> None:
    fetch = FakeCertificates(keys.platform(0))
    verifier = SignatureVerifier(settings("certificate"), fetch)
    body = b"{}"
    assert verifier.verify(signed_headers(body, key=keys.platform(0).key, serial=keys.platform(0).serial),
                           body) == keys.platform(0).serial
    assert fetch.calls == 1 and verifier.platform_serials() == [keys.platform(0).serial]
    verifier.verify(signed_headers(body, key=keys.platform(0).key, serial=keys.platform(0).serial.lower()), body)
    assert fetch.calls == 1  # known now; serials compare as hex numbers


def test_an_unknown_serial_refreshes_the_certificates_at_most_once_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    fetch = FakeCertificates(keys.platform(0))
    verifier = SignatureVerifier(settings("certificate"), fetch)
    body = b"{}"
    verifier.verify(signed_headers(body, key=keys.platform(0).key, serial=keys.platform(0).serial), body)
    # WeChat Pay rotates its certificate: the new serial shows up in a callback
    fetch.certified = [keys.platform(0), keys.platform(1)]
    rotated = signed_headers(body, key=keys.platform(1).key, serial=keys.platform(1).serial)
    with pytest.raises(VerifyFailure):  # within a minute of the last download: no new one
        verifier.verify(rotated, body)
    assert fetch.calls == 1
    clock = time.monotonic() + client_module.CERTIFICATE_REFRESH_INTERVAL + 1
    monkeypatch.setattr(client_module.time, "monotonic", lambda: clock)
    assert verifier.verify(rotated, body) == keys.platform(1).serial
    assert fetch.calls == 2
    # a forged serial costs at most one download a minute
    for _ in range(5):
        with pytest.raises(VerifyFailure):
            verifier.verify(signed_headers(body, key=keys.platform(1).key, serial="ABCDEF"), body)
    assert fetch.calls == 2


def test_a_certificate_listed_under_another_serial_is_skipped() -> None:
    fetch = FakeCertificates(keys.platform(0), keys.platform(1), signer=keys.platform(0),
                             serial_override={1: keys.platform(2).serial})
    verifier = SignatureVerifier(settings("certificate"), fetch)
    assert verifier.refresh_certificates() == [keys.platform(0).serial]


def test_a_listing_that_does_not_verify_installs_nothing() -> None:
    from elements.pays.errors import ProviderError

    forged = FakeCertificates(keys.platform(0), signer=keys.platform(1))  # signed by a key not in the list
    verifier = SignatureVerifier(settings("certificate"), forged)
    with pytest.raises(ProviderError, match="does not verify"):
        verifier.refresh_certificates()
    assert verifier.platform_serials() == []


def test_a_listing_encrypted_with_another_apiv3_key_has_no_usable_certificate() -> None:
    from elements.pays.errors import ProviderError

    verifier = SignatureVerifier(settings("certificate"),
                                 FakeCertificates(keys.platform(0), apiv3_key="X" * 32))
    with pytest.raises(ProviderError, match="apiV3Key"):
        verifier.refresh_certificates()


def test_migration_chooses_the_key_by_wechatpay_serial() -> None:
    fetch = FakeCertificates(keys.platform(0))
    verifier = SignatureVerifier(settings("both"), fetch)
    body = b'{"a":1}'
    assert verifier.verify(signed_headers(body), body) == keys.PUBLIC_KEY_ID
    assert fetch.calls == 0  # the public key needs no download
    assert verifier.verify(signed_headers(body, key=keys.platform(0).key, serial=keys.platform(0).serial),
                           body) == keys.platform(0).serial
    # the public key's id with a certificate's signature (or the other way round) does not verify
    with pytest.raises(VerifyFailure):
        verifier.verify(signed_headers(body, key=keys.platform(0).key), body)
    with pytest.raises(VerifyFailure):
        verifier.verify(signed_headers(body, serial=keys.platform(0).serial), body)


# -- callbacks through the provider contract ---------------------------------------------------------------------------
def request(body: bytes, headers: dict[str, str]) -> NotifyRequest:
    # as the generic route hands it over: raw bytes, headers as they came (any case)
    return NotifyRequest(body=body, headers=[(k.lower(), v) for k, v in headers.items()], client="127.0.0.1")


def test_a_paid_callback_verifies_decrypts_and_reports_the_trade() -> None:
    provider = make_provider()
    reference = out_trade_nos("ORDER20261127")["NATIVE"]
    body = callback_body(transaction(reference, "ORDER20261127", total=9999))
    fields = provider.parse_notify(request(body, signed_headers(body)))
    json.dumps(fields)  # the audit log keeps the fields as JSON
    assert fields["event_type"] == "TRANSACTION.SUCCESS" and fields["body"].encode() == body
    state = provider.verify_notify(fields)
    assert (state.orderId, state.status, state.paidAmount, state.reference) == \
        ("ORDER20261127", "success", Decimal("99.99"), reference)
    assert state.tradeNo and state.payTime is not None and state.payTime.tzinfo is not None
    assert provider.notify_reply(True).status in (200, 204)
    reply = provider.notify_reply(False, "order not found")
    assert reply.status >= 400 and json.loads(reply.body) == {"code": "FAIL", "message": "order not found"}


def test_the_same_callback_decrypts_with_wechatpayv3(monkeypatch: pytest.MonkeyPatch) -> None:
    from wechatpayv3.core import Core

    provider = make_provider()
    reference = out_trade_nos("ORDER20261127")["H5"]
    resource = transaction(reference, "ORDER20261127", trade_type="MWEB")
    body = callback_body(resource)
    headers = signed_headers(body)
    core = Core(mchid=MCH_ID, cert_serial_no=keys.merchant().serial, private_key=keys.merchant().private_pem,
                apiv3_key=keys.APIV3_KEY, public_key=keys.wechatpay().public_pem, public_key_id=keys.PUBLIC_KEY_ID)
    theirs = core.callback(headers, body)
    state = provider.verify_notify(provider.parse_notify(request(body, headers)))
    assert theirs["resource"] == resource
    assert {k: v for k, v in state.raw.items() if k != "callback"} == resource
    # and what either refuses, both refuse
    tampered = body.replace(b'"summary"', b'"Summary"')
    assert core.callback(headers, tampered) is None
    with pytest.raises(SignatureInvalid):
        provider.verify_notify(provider.parse_notify(request(tampered, headers)))


def test_a_platform_certificate_callback_in_certificate_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = make_provider(mode="certificate")
    fetch = FakeCertificates(keys.platform(0))
    monkeypatch.setattr(provider.api.verifier, "_fetch", fetch)
    reference = out_trade_nos("ORDER20261127")["NATIVE"]
    body = callback_body(transaction(reference, "ORDER20261127"))
    state = provider.verify_notify(provider.parse_notify(
        request(body, signed_headers(body, key=keys.platform(0).key, serial=keys.platform(0).serial))))
    assert state.status == "success" and state.raw["callback"]["signedBy"] == keys.platform(0).serial


@pytest.mark.parametrize("case", ["stale", "forged", "probe", "wrong_apiv3_key", "other_mchid", "other_appid",
                                  "not_ours", "other_currency", "no_transaction_id", "unknown_event", "not_json"])
def test_callbacks_that_are_refused(case: str) -> None:
    provider = make_provider()
    reference = out_trade_nos("ORDER20261127")["NATIVE"]
    resource = transaction(reference, "ORDER20261127")
    event, key, apiv3, timestamp = "TRANSACTION.SUCCESS", None, keys.APIV3_KEY, None
    if case == "stale":
        timestamp = int(time.time()) - 6 * 60  # a replay of a callback six minutes old
    elif case == "forged":
        key = keys.merchant().key  # signed by someone who is not WeChat Pay
    elif case == "wrong_apiv3_key":
        apiv3 = "Z" * 32
    elif case == "other_mchid":
        resource["mchid"] = "1900000099"
    elif case == "other_appid":
        resource["appid"] = "wx9999999999999999"
    elif case == "not_ours":
        resource["out_trade_no"] = "ORDER20261127"  # a v2 trade's out_trade_no: not a v3 reference
    elif case == "other_currency":
        resource["amount"]["currency"] = "USD"
    elif case == "no_transaction_id":
        del resource["transaction_id"]
    elif case == "unknown_event":
        event = "TRANSACTION.CLOSED"
    body = b"\xff not json" if case == "not_json" else callback_body(resource, event, apiv3_key=apiv3)
    headers = signed_headers(body, key=key, timestamp=timestamp)
    if case == "probe":
        headers["Wechatpay-Signature"] = "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]
    expected = SignatureInvalid if case in ("stale", "forged", "probe") else NotifyInvalid
    with pytest.raises(expected):
        provider.verify_notify(provider.parse_notify(request(body, headers)))


def test_refund_events_report_the_refunded_trade() -> None:
    provider = make_provider()
    reference = out_trade_nos("ORDER20261127")["NATIVE"]
    resource = {"mchid": MCH_ID, "out_trade_no": reference, "transaction_id": "4200000000" + "2" * 18,
                "out_refund_no": "R1", "refund_id": "50000000000000000000000000001", "refund_status": "SUCCESS",
                "success_time": "2026-11-27T13:00:00+08:00", "user_received_account": "支付用户零钱",
                "amount": {"total": 1234, "refund": 234, "payer_total": 1234, "payer_refund": 234}}
    body = callback_body(resource, "REFUND.SUCCESS")
    state = provider.verify_notify(provider.parse_notify(request(body, signed_headers(body))))
    assert (state.orderId, state.status, state.paidAmount, state.reference) == \
        ("ORDER20261127", "refunded", Decimal("12.34"), reference)
    body = callback_body({**resource, "refund_status": "ABNORMAL"}, "REFUND.ABNORMAL")
    assert provider.verify_notify(provider.parse_notify(request(body, signed_headers(body)))).status == "success"


def test_the_verified_body_is_what_counts_not_the_parsed_fields() -> None:
    provider = make_provider()
    reference = out_trade_nos("ORDER20261127")["NATIVE"]
    body = callback_body(transaction(reference, "ORDER20261127"))
    fields = provider.parse_notify(request(body, signed_headers(body)))
    fields["event_type"] = "REFUND.SUCCESS"  # edited fields change nothing: only the signed body is read
    fields["resource"] = {"ciphertext": "x"}
    assert provider.verify_notify(fields).status == "success"
    assert APP_ID in json.dumps(provider.verify_notify(fields).raw)
