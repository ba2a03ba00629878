"""WeChat Pay v3 cryptography: the official AES-256-GCM vector, request signatures, response and callback
verification, cross-checked against ``wechatpayv3`` (an independent implementation, a test extra)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from jitpay_wechatpay_v3 import crypto
from jitpay_wechatpay_v3.crypto import (DecryptError, aes_gcm_decrypt, aes_gcm_encrypt, authorization,
                                        parse_authorization, request_message, response_message, rsa_sign, rsa_verify,
                                        timestamp_fresh)

from . import keys

wechatpayv3_utils = pytest.importorskip("wechatpayv3.utils")

# WeChat Pay's official Java SDK tests (AesUtilTest)
VECTOR = {"key": "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb", "nonce": "uluk4a9R25RW", "associated_data": "associatedData",
          "plaintext": "message", "ciphertext": "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI="}


# -- AES-256-GCM -------------------------------------------------------------------------------------------------------
def test_the_official_vector_decrypts_and_re_encrypts() -> None:
    v = VECTOR
    assert aes_gcm_decrypt(v["key"], v["nonce"], v["associated_data"], v["ciphertext"]) == b"message"
    assert aes_gcm_encrypt(v["key"], v["nonce"], v["associated_data"], v["plaintext"]) == v["ciphertext"]
    # and wechatpayv3 reads it the same way
    assert wechatpayv3_utils.aes_decrypt(nonce=v["nonce"], ciphertext=v["ciphertext"],
                                         associated_data=v["associated_data"], apiv3_key=v["key"]) == "message"


@pytest.mark.parametrize("change", ["key", "nonce", "associated_data", "ciphertext"])
def test_anything_altered_does_not_decrypt(change: str) -> None:
    v = dict(VECTOR)
    if change == "ciphertext":
        raw = bytearray(base64.b64decode(v["ciphertext"]))
        raw[0] ^= 1
        v["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    elif change == "key":
        v["key"] = v["key"][:-1] + "c"
    else:
        v[change] = v[change][:-1] + "X"
    with pytest.raises(DecryptError):
        aes_gcm_decrypt(v["key"], v["nonce"], v["associated_data"], v["ciphertext"])


@pytest.mark.parametrize("ciphertext", ["not base64!", "", "AAAA"])
def test_malformed_ciphertexts_are_decrypt_errors(ciphertext: str) -> None:
    with pytest.raises(DecryptError):
        aes_gcm_decrypt(VECTOR["key"], VECTOR["nonce"], VECTOR["associated_data"], ciphertext)


def test_a_key_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        aes_gcm_encrypt("short", VECTOR["nonce"], "", "x")


def test_a_resource_we_encrypt_decrypts_with_wechatpayv3() -> None:
    plaintext = json.dumps({"out_trade_no": "订单-1", "amount": {"total": 1}}, ensure_ascii=False)
    sealed = aes_gcm_encrypt(keys.APIV3_KEY, "0123456789ab", "transaction", plaintext)
    assert wechatpayv3_utils.aes_decrypt(nonce="0123456789ab", ciphertext=sealed, associated_data="transaction",
                                         apiv3_key=keys.APIV3_KEY) == plaintext


# -- request signatures ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,url,body", [
    ("GET", "/v3/pay/transactions/out-trade-no/20261127123456-V3N?mchid=1900000002", ""),
    ("POST", "/v3/pay/transactions/native",
     json.dumps({"description": "演示 Demo", "amount": {"total": 1, "currency": "CNY"}}, ensure_ascii=False,
                separators=(",", ":"))),
    ("GET", "/v3/certificates", ""),
])
def test_our_authorization_header_is_wechatpayv3s(monkeypatch: pytest.MonkeyPatch, method: str, url: str,
                                                  body: str) -> None:
    merchant = keys.merchant()
    monkeypatch.setattr(wechatpayv3_utils.time, "time", lambda: 1798000000.25)
    theirs = wechatpayv3_utils.build_authorization(url, method, "1900000002", merchant.serial, merchant.key,
                                                   data=body or None, nonce_str="5K8264ILTKCH16CQ2502SI8ZNMTM67VS")
    ours = authorization(mchid="1900000002", serial_no=merchant.serial, private_key=merchant.key, method=method,
                         url=url, body=body.encode("utf-8"), timestamp="1798000000",
                         nonce="5K8264ILTKCH16CQ2502SI8ZNMTM67VS")
    assert ours == theirs  # PKCS#1 v1.5 is deterministic: the same bytes signed give the same signature


def test_the_authorization_header_parses_back() -> None:
    merchant = keys.merchant()
    header = authorization(mchid="1900000002", serial_no=merchant.serial, private_key=merchant.key, method="post",
                           url="/v3/refund/domestic/refunds", body=b"{}")
    params = parse_authorization(header)
    assert params is not None and params["mchid"] == "1900000002" and params["serial_no"] == merchant.serial
    assert timestamp_fresh(params["timestamp"]) and len(params["nonce_str"]) == 32
    message = request_message("POST", "/v3/refund/domestic/refunds", params["timestamp"], params["nonce_str"], b"{}")
    assert rsa_verify(merchant.key.public_key(), message, params["signature"])
    assert parse_authorization("Bearer abc") is None
    assert parse_authorization('WECHATPAY2-SHA256-RSA2048 mchid=1900000002') is None


def test_the_signed_body_is_the_exact_bytes() -> None:
    merchant = keys.merchant()
    sent = '{"description":"演示"}'.encode("utf-8")
    reencoded = json.dumps({"description": "演示"}).encode()  # ASCII escapes, spaces: another serialization
    signature = rsa_sign(merchant.key, request_message("POST", "/v3/x", "1", "N", sent))
    assert rsa_verify(merchant.key.public_key(), request_message("POST", "/v3/x", "1", "N", sent), signature)
    assert not rsa_verify(merchant.key.public_key(), request_message("POST", "/v3/x", "1", "N", reencoded), signature)


def test_line_breaks_cannot_be_smuggled_into_the_signed_message() -> None:
    with pytest.raises(ValueError):
        request_message("GET", "/v3/x\nGET", "1", "N")
    with pytest.raises(ValueError):
        response_message("1\n2", "N")


# -- response and callback signatures ----------------------------------------------------------------------------------
def test_wechatpayv3_verifies_what_we_sign_and_we_verify_what_it_signs() -> None:
    pair = keys.wechatpay()
    body = '{"code_url":"weixin://wxpay/bizpayurl?pr=abc","备注":"中文"}'
    ts, nonce = str(int(time.time())), "593BEC0C930BF1AFEB40B4A08C8FB242"
    ours = rsa_sign(pair.key, response_message(ts, nonce, body.encode()))
    assert wechatpayv3_utils.rsa_verify(ts, nonce, body, ours, pair.key.public_key())
    theirs = wechatpayv3_utils.rsa_sign(pair.key, f"{ts}\n{nonce}\n{body}\n")
    assert theirs == ours
    assert rsa_verify(pair.key.public_key(), response_message(ts, nonce, body.encode()), theirs)
    # an empty body (a 204) is signed as an empty line
    empty = rsa_sign(pair.key, response_message(ts, nonce))
    assert wechatpayv3_utils.rsa_verify(ts, nonce, "", empty, pair.key.public_key())


def test_probe_signatures_never_verify() -> None:
    pair = keys.wechatpay()
    message = response_message("1798000000", "N", b"{}")
    good = rsa_sign(pair.key, message)
    assert rsa_verify(pair.key.public_key(), message, good)
    for probe in (crypto.SIGNTEST_PREFIX + good, crypto.SIGNTEST_PREFIX + "GJ4vTWg1jeRe7h3Vs7o6t3Hd7KSsp2Vtb7xdn",
                  "WECHATPAY/SIGNTEST/"):
        assert not rsa_verify(pair.key.public_key(), message, probe)


@pytest.mark.parametrize("signature", [None, "", "%%%", "AAAA", base64.b64encode(b"x" * 256).decode()])
def test_malformed_signatures_do_not_verify(signature: str | None) -> None:
    assert not rsa_verify(keys.wechatpay().key.public_key(), b"x", signature)


def test_another_key_does_not_verify() -> None:
    message = response_message("1798000000", "N", b"{}")
    assert not rsa_verify(keys.platform().key.public_key(), message, rsa_sign(keys.wechatpay().key, message))


def test_timestamps_within_five_minutes() -> None:
    now = 1798000000
    for fresh in (now, now - 300, now + 300):
        assert timestamp_fresh(str(fresh), now)
    for stale in (str(now - 301), str(now + 301), "", "abc", "1798000000.5", "-1", "１７９８００００００", "9" * 40):
        assert not timestamp_fresh(stale, now), stale
