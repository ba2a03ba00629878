"""Alipay RSA2 signing: keys in every accepted form, the string to sign, sign/verify, money and time formats."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from elements.pays.AliPayType.gateway import format_amount, format_timestamp, parse_beijing_time
from elements.pays.AliPayType.signing import (KeyFormatError, load_rsa_key, rsa2_sign, rsa2_verify, sign_content,
                                              sign_notify, sign_request, verify_notify_signature, verify_request)

TRICKY = "中文 商品 a+b&c=d%20e 100%"


def _bare(pem: str) -> str:
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


def test_private_key_forms(keys):
    private = load_rsa_key(keys["app_private"])
    assert isinstance(private, rsa.RSAPrivateKey)
    pkcs1 = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()).decode()
    assert "BEGIN RSA PRIVATE KEY" in pkcs1
    for form in (pkcs1, _bare(keys["app_private"]), _bare(pkcs1), keys["app_private"].replace("\n", "\\n")):
        loaded = load_rsa_key(form)
        assert isinstance(loaded, rsa.RSAPrivateKey)
        assert loaded.private_numbers() == private.private_numbers()


def test_public_key_forms(keys):
    public = load_rsa_key(keys["gateway_public"])
    assert isinstance(public, rsa.RSAPublicKey)
    pkcs1 = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
    for form in (pkcs1, _bare(keys["gateway_public"]), "  " + keys["gateway_public"] + "\n\n"):
        loaded = load_rsa_key(form)
        assert isinstance(loaded, rsa.RSAPublicKey)
        assert loaded.public_numbers() == public.public_numbers()


@pytest.mark.parametrize("text", ["", "   ", "not a key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
                                  base64.b64encode(b"definitely not DER").decode()])
def test_unreadable_keys(text):
    with pytest.raises(KeyFormatError):
        load_rsa_key(text)


def test_non_rsa_and_encrypted_keys(keys):
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.raises(KeyFormatError, match="not an RSA key"):
        load_rsa_key(ec_pem)
    private = load_rsa_key(keys["app_private"])
    encrypted = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"pw")).decode()
    with pytest.raises(KeyFormatError, match="encrypted") as info:
        load_rsa_key(encrypted)
    assert _bare(encrypted)[:40] not in str(info.value)


def test_sign_content_rules():
    params = {"method": "alipay.trade.query", "app_id": "1", "sign": "SIG", "sign_type": "RSA2", "empty": "",
              "none": None, "biz_content": '{"subject":"a&b=c"}', "B": "upper sorts first"}
    assert sign_content(params) == ('B=upper sorts first&app_id=1&biz_content={"subject":"a&b=c"}'
                                    '&method=alipay.trade.query&sign_type=RSA2')
    assert sign_content(params, frozenset({"sign", "sign_type"})) == (
        'B=upper sorts first&app_id=1&biz_content={"subject":"a&b=c"}&method=alipay.trade.query')


def test_request_sign_and_verify_with_tricky_values(keys):
    private = load_rsa_key(keys["app_private"])
    public = load_rsa_key(keys["app_public"])
    signed = sign_request({"app_id": "1", "sign_type": "RSA2", "biz_content": TRICKY, "notify_url": ""}, private)
    assert "notify_url" not in signed  # empty parameters are neither signed nor sent
    assert verify_request(signed, public)
    assert not verify_request({**signed, "biz_content": TRICKY + " "}, public)
    assert not verify_request({**signed, "sign_type": "RSA"}, public)  # sign_type is signed for requests
    assert not verify_request({k: v for k, v in signed.items() if k != "sign"}, public)
    assert not verify_request(signed, load_rsa_key(keys["other_public"]))


def test_notify_sign_and_verify_drops_sign_type(keys):
    private = load_rsa_key(keys["gateway_private"])
    public = load_rsa_key(keys["gateway_public"])
    signed = sign_notify({"subject": TRICKY, "total_amount": "9.99", "out_trade_no": "A1"}, private)
    assert signed["sign_type"] == "RSA2"
    assert verify_notify_signature(signed, public)
    assert verify_notify_signature({**signed, "sign_type": "anything"}, public)  # not part of the signed string
    assert not verify_notify_signature({**signed, "total_amount": "0.01"}, public)
    assert not verify_notify_signature({**signed, "extra": "added"}, public)


def test_rsa2_verify_tolerates_garbage(keys):
    public = load_rsa_key(keys["app_public"])
    private = load_rsa_key(keys["app_private"])
    signature = rsa2_sign(private, "x")
    assert rsa2_verify(public, "x", signature)
    assert rsa2_verify(public, b"x", signature)
    for bad in ("", "%%%", "YWJj", signature[:-4]):
        assert not rsa2_verify(public, "x", bad)


def test_amounts_are_exact():
    assert format_amount(Decimal("9.9")) == "9.90"
    assert format_amount(Decimal("100000000")) == "100000000.00"
    assert format_amount(Decimal("0.01")) == "0.01"
    assert format_amount(5) == "5.00"
    with pytest.raises(TypeError):
        format_amount(9.99)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        format_amount(Decimal("0.001"))
    with pytest.raises(ValueError):
        format_amount(Decimal("NaN"))


def test_beijing_time():
    moment = datetime(2024, 1, 1, 16, 30, 5, tzinfo=timezone.utc)
    assert format_timestamp(moment) == "2024-01-02 00:30:05"
    assert parse_beijing_time("2024-01-02 00:30:05") == moment
    assert parse_beijing_time("2024-01-02 00:30:05").tzinfo is not None
    assert parse_beijing_time("") is None
    assert parse_beijing_time("yesterday") is None


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(
        lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S")),
    st.from_regex(r"\A\d{1,4}-\d{1,2}-\d{1,2} \d{1,2}:\d{1,2}:\d{1,2}\Z"),
    st.text(max_size=25)))
def test_alipay_times_read_as_strptime_reads_them(text: str) -> None:
    """parse_beijing_time's fast reading of ``yyyy-MM-dd HH:mm:ss`` agrees with ``strptime`` on every input."""
    from elements.pays.AliPayType.gateway import BEIJING, TIME_FORMAT

    try:
        expected = (datetime.strptime(text.strip(), TIME_FORMAT).replace(tzinfo=BEIJING).astimezone(timezone.utc)
                    if text else None)
    except (ValueError, OverflowError):
        expected = None
    assert parse_beijing_time(text) == expected
