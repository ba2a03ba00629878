"""Cutting the signed ``..._response`` text out of a synchronous response, and verifying it, without ever
re-serialising JSON."""

from __future__ import annotations

import json

import pytest

from elements.pays.AliPayType.gateway import AlipayGateway
from elements.pays.AliPayType.signing import (ResponseFormatError, extract_response_content, load_rsa_key, rsa2_sign,
                                              top_level_spans)
from elements.pays.errors import ProviderError

KEY = "alipay_trade_query_response"


@pytest.mark.parametrize("content", [
    '{"code":"10000","msg":"Success"}',
    '{"code":"10000","subject":"a } b { c"}',
    '{"code":"10000","subject":"quote \\" inside } and \\\\"}',
    '{"code":"10000","subject":"\\\\\\"}{"}',
    '{"code":"10000","subject":"中文商品 ¥9.99 🎉"}',
    '{"code":"10000","subject":"\\u4e2d\\u6587"}',
    '{ "code" : "10000" , "nested" : {"list":[{"a":"}"},{"b":"{"}], "n": 1.5, "t": true, "z": null} }',
    '{}',
])
def test_extracts_the_exact_text(content):
    body = '{"' + KEY + '":' + content + ',"sign":"abc"}'
    assert extract_response_content(body, KEY) == content
    body = '{"sign":"abc", "' + KEY + '" :\n ' + content + '\n}'
    assert extract_response_content(body, KEY) == content


def test_key_inside_a_string_is_not_the_key():
    decoy = '{"sign":"x","note":"\\"alipay_trade_query_response\\":{\\"code\\":\\"10000\\"}",'
    body = decoy + '"' + KEY + '":{"code":"40004"}}'
    assert extract_response_content(body, KEY) == '{"code":"40004"}'
    assert extract_response_content('{"error_response":{"code":"40002"}}', KEY) is None
    # a nested key of the same name is not the top-level one
    assert extract_response_content('{"x":{"' + KEY + '":{"a":1}}}', KEY) is None


@pytest.mark.parametrize("body", ["", "[]", '{"a":1', '{"a":"unterminated}', '{"a":{"b":1}', '{"a":1} trailing',
                                  '{"a":1,"a":2}', '{a:1}'])
def test_malformed_bodies(body):
    with pytest.raises(ResponseFormatError):
        top_level_spans(body)


def _gateway(keys) -> AlipayGateway:
    return AlipayGateway(app_id="1", private_key=load_rsa_key(keys["app_private"]),
                         alipay_public_key=load_rsa_key(keys["gateway_public"]), gateway="http://127.0.0.1:9/",
                         timeout=1)


def test_verifies_raw_text_not_reserialised_json(keys):
    private = load_rsa_key(keys["gateway_private"])
    # Escaped non-ASCII and odd spacing: re-serialising would change the bytes and break the signature.
    content = '{ "code":"10000", "msg":"Success", "trade_status":"TRADE_SUCCESS", "subject":"\\u5546\\u54c1 } {" }'
    body = ('{"' + KEY + '":' + content + ',"sign":"' + rsa2_sign(private, content) + '"}').encode()
    parsed = _gateway(keys).verify_response("alipay.trade.query", body)
    assert parsed["subject"] == "商品 } {"
    tampered = body.replace(b"TRADE_SUCCESS", b"TRADE_CLOSED")
    with pytest.raises(ProviderError) as info:
        _gateway(keys).verify_response("alipay.trade.query", tampered)
    assert info.value.details["failure"] == "signature_invalid"


def test_business_errors_and_unsigned_answers(keys):
    private = load_rsa_key(keys["gateway_private"])
    content = json.dumps({"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST",
                          "sub_msg": "交易不存在"}, ensure_ascii=False)
    body = ('{"' + KEY + '":' + content + ',"sign":"' + rsa2_sign(private, content) + '"}').encode()
    gateway = _gateway(keys)
    assert gateway.verify_response("alipay.trade.query", body,
                                   accept_sub_codes={"ACQ.TRADE_NOT_EXIST"})["sub_code"] == "ACQ.TRADE_NOT_EXIST"
    with pytest.raises(ProviderError) as info:
        gateway.verify_response("alipay.trade.query", body)
    assert info.value.provider_code == "ACQ.TRADE_NOT_EXIST" and info.value.provider_message == "交易不存在"
    # unsigned: an error is reported as such, but never accepted as a trusted answer
    unsigned = ('{"' + KEY + '":' + content + '}').encode()
    with pytest.raises(ProviderError) as info:
        gateway.verify_response("alipay.trade.query", unsigned, accept_sub_codes={"ACQ.TRADE_NOT_EXIST"})
    assert info.value.details["signed"] is False
    error = b'{"error_response":{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-app-id"}}'
    with pytest.raises(ProviderError) as info:
        gateway.verify_response("alipay.trade.query", error)
    assert info.value.provider_code == "isv.invalid-app-id"
    success_unsigned = b'{"' + KEY.encode() + b'":{"code":"10000","trade_status":"TRADE_SUCCESS"}}'
    with pytest.raises(ProviderError) as info:
        gateway.verify_response("alipay.trade.query", success_unsigned)
    assert info.value.details["failure"] == "signature_missing"
