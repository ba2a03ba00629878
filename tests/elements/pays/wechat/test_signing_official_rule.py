"""WeChat Pay v2 signing exactly as WeChat's official SDKs do it (issue 11, item 2): every value trimmed, values empty
after trimming left out. Cross-checked against a port of ``WXPayUtil.generateSignature`` (WeChat's Java SDK) written
here, apart from the production code; and JitPay never sends a value with whitespace at either end, so WeChat computes
the same signature however it trims."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import random
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest

from elements.pays.errors import SubjectInvalid
from elements.pays.Meta import OrderView
from elements.pays.WechatPayType.api import WechatApi
from elements.pays.WechatPayType.signing import calculate_sign, string_to_sign, verify_sign
from elements.pays.WechatPayType.wirexml import build_xml, parse_xml
from jitcore.errors import ArgumentError

from .conftest import APP_ID, MCH_ID, SandboxWorld

# Java's String.trim() removes every char <= '\u0020' from both ends: these, and nothing else.
_JAVA_TRIMMED = "".join(chr(c) for c in range(0x21))


def official_sign(data: dict[str, str], key: str, sign_type: str) -> str:
    """WXPayUtil.generateSignature, line by line: sort the keys; skip "sign"; append k=v.trim()& for every value whose
    trim() is not empty; append key=KEY; MD5 or HMAC-SHA256 of the UTF-8 bytes, upper-case hex."""
    key_array = sorted(data.keys())
    sb = []
    for k in key_array:
        if k == "sign":
            continue
        v = data[k].strip(_JAVA_TRIMMED)
        if len(v) > 0:
            sb.append(k + "=" + v + "&")
    sb.append("key=" + key)
    text = "".join(sb).encode("utf-8")
    if sign_type == "MD5":
        return hashlib.md5(text).hexdigest().upper()
    return hmac.new(key.encode("utf-8"), text, hashlib.sha256).hexdigest().upper()


def untrimmed_sign(data: dict[str, str], key: str) -> str:
    """How JitPay signed before: values as they are (MD5)."""
    text = "&".join(f"{k}={data[k]}" for k in sorted(data) if k != "sign" and data[k] != "") + f"&key={key}"
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()


EDGES = [" ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\u3000", "\xa0", ""]


def random_fields(rng: random.Random) -> dict[str, str]:
    core = "abcXYZ019-_.:/?=&+中文商品￥（） "
    fields = {}
    for i in range(rng.randint(1, 12)):
        body = "".join(rng.choice(core) for _ in range(rng.randint(0, 12)))
        fields[f"f{rng.randint(0, 99):02d}_{i}"] = rng.choice(EDGES) + body + rng.choice(EDGES)
    fields["blank"] = rng.choice([" ", "\t\n", "", "  \r\n "])
    return fields


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_matches_the_official_rule(seed: int, sign_type: str) -> None:
    rng = random.Random(seed)
    fields, key = random_fields(rng), "".join(rng.choice("abcdefXYZ0123456789") for _ in range(32))
    assert calculate_sign(fields, key, sign_type) == official_sign(fields, key, sign_type)
    signed = {**fields, "sign": official_sign(fields, key, sign_type)}
    assert verify_sign(signed, key, sign_type)


def test_what_trimming_means() -> None:
    key = "k" * 32
    assert string_to_sign({"a": " x ", "b": " ", "c": "\t\n", "d": "y"}, key) == f"a=x&d=y&key={key}"
    # Java's trim stops at U+0020: an ideographic or no-break space at an end stays, in the official rule too
    assert string_to_sign({"a": "\u3000x\xa0"}, key) == f"a=\u3000x\xa0&key={key}"
    assert calculate_sign({"a": "\u3000x"}, key) == official_sign({"a": "\u3000x"}, key, "MD5")
    # a value trimmed to nothing is like no value at all
    assert calculate_sign({"a": "1", "b": "  "}, key) == calculate_sign({"a": "1"}, key)


def test_a_notification_with_untrimmed_values_verifies_by_the_official_rule() -> None:
    key = "Q" * 32
    fields = {"appid": APP_ID, "mch_id": MCH_ID, "attach": " ORDER_1 ", "return_code": "SUCCESS", "memo": " "}
    assert verify_sign({**fields, "sign": official_sign(fields, key, "MD5")}, key, "MD5")
    assert not verify_sign({**fields, "sign": untrimmed_sign(fields, key)}, key, "MD5")


# -- never send a value with whitespace at an end ---------------------------------------------------------------------
def test_signed_request_refuses_edge_whitespace() -> None:
    api = WechatApi(gateway="http://127.0.0.1:9", appId=APP_ID, mchId=MCH_ID, apiKey="K" * 32)
    for value in (" x", "x ", "x\n", "\tx", "\u3000x", "x\xa0"):
        with pytest.raises(ArgumentError) as info:
            api.signed_request({"attach": value})
        assert info.value.details == {"field": "attach"}
    request = api.signed_request({"attach": "x y", "empty": "", "none": None})
    assert "empty" not in request and "none" not in request and request["attach"] == "x y"
    assert request["sign"] == official_sign({k: v for k, v in request.items() if k != "sign"}, "K" * 32, "MD5")


class Recorder:
    """Every request body the provider sends, parsed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[dict[str, str]] = []
        real = WechatApi._post

        def spy(api: WechatApi, path: str, body: bytes, *, use_cert: bool) -> bytes:
            self.sent.append({"path": path, **parse_xml(body)})
            return real(api, path, body, use_cert=use_cert)

        monkeypatch.setattr(WechatApi, "_post", spy)


def _order(subject: str, amount: str = "10.00") -> OrderView:
    return OrderView(orderId=f"W{time.time_ns()}"[:32], subject=subject, amount=Decimal(amount),
                     createdAt=dt.datetime.now(dt.timezone.utc))


def test_the_provider_trims_what_it_sends(world: SandboxWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    # a subject cut at 128 bytes just after a space; padded text; a client IP with a newline
    cut_after_space = "a" * 127 + " b"
    padded = _order("  演示 商品 Demo \n")
    cut = _order(cut_after_space)
    world.provider.prepare(padded, "pc", clientIp=" 203.0.113.7\n")
    world.provider.prepare(padded, "mobile", clientIp="203.0.113.7 ")
    world.provider.prepare(cut, "pc")
    world.sandbox.pay(cut.orderId)
    world.provider.refund(cut, "RTRIM1", Decimal("1.00"), Decimal("1.00"), reason=" 退货 return \t")
    world.provider.refund(cut, "RTRIM2", Decimal("1.00"), Decimal("2.00"), reason="x" * 79 + " y")
    sent = recorder.sent
    assert [s["path"] for s in sent] == ["pay/unifiedorder"] * 3 + ["secapi/pay/refund"] * 2
    for request in sent:  # the sandbox accepted every one: signed as WeChat computes it
        for name, value in request.items():
            assert value == value.strip() and value == value.strip("".join(chr(c) for c in range(0x21))), name
        fields = {k: v for k, v in request.items() if k != "path"}
        assert fields["sign"] == official_sign(fields, world.apiKey, world.signType)
    assert sent[0]["body"] == "演示 商品 Demo" and sent[0]["spbill_create_ip"] == "203.0.113.7"
    assert sent[1]["spbill_create_ip"] == "203.0.113.7"
    assert sent[2]["body"] == "a" * 127
    assert sent[3]["refund_desc"] == "退货 return" and sent[4]["refund_desc"] == "x" * 79
    assert world.sandbox.trade(padded.orderId)["state"] == "NOTPAY"


def test_a_blank_subject_is_refused(world: SandboxWorld) -> None:
    with pytest.raises(SubjectInvalid):
        world.provider.prepare(_order(" \t\u3000 "), "pc")


def _raw(world: SandboxWorld, fields: dict[str, Any], sign: str) -> dict[str, str]:
    response = httpx.post(f"{world.server.url}/sandbox/wechat/pay/orderquery",
                          content=build_xml({**fields, "sign": sign}))
    return parse_xml(response.content)


def test_the_sandbox_checks_signatures_as_wechat_does(world_factory) -> None:
    """What the issue reproduced: a value with whitespace at an end, signed untrimmed, gets 签名错误."""
    world = world_factory("MD5")
    fields = {"appid": APP_ID, "mch_id": MCH_ID, "nonce_str": "n" * 32, "out_trade_no": "NOPE_1", "attach": "x "}
    refused = _raw(world, fields, untrimmed_sign(fields, world.apiKey))
    assert (refused["return_code"], refused["return_msg"]) == ("FAIL", "签名错误")
    accepted = _raw(world, fields, official_sign(fields, world.apiKey, "MD5"))
    assert accepted["return_code"] == "SUCCESS" and accepted["err_code"] == "ORDERNOTEXIST"
