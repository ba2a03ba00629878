"""WeChat Pay v2 signatures, cross-checked with the official documentation's worked example and with wechatpy."""

from __future__ import annotations

import random
import string

import pytest
from wechatpy.pay.utils import calculate_signature, calculate_signature_hmac

from elements.pays.WechatPayType.signing import calculate_sign, string_to_sign, verify_sign

# The worked example of the v2 "安全规范" (security rules) page, pay.weixin.qq.com/wiki/doc/api/*.php?chapter=4_3.
OFFICIAL_FIELDS = {"appid": "wxd930ea5d5a258f4f", "mch_id": "10000100", "device_info": "1000", "body": "test",
                   "nonce_str": "ibuaiVcKdpRxkhJA"}
OFFICIAL_KEY = "192006250b4c09247ec02edce69f6a2d"


def test_official_example_string_to_sign() -> None:
    assert string_to_sign(OFFICIAL_FIELDS, OFFICIAL_KEY) == (
        "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA"
        "&key=192006250b4c09247ec02edce69f6a2d")


def test_official_example_md5() -> None:
    assert calculate_sign(OFFICIAL_FIELDS, OFFICIAL_KEY, "MD5") == "9A0A8659F005D6984697E2CA0A9CF3B7"


def test_official_example_hmac_sha256() -> None:
    assert calculate_sign(OFFICIAL_FIELDS, OFFICIAL_KEY, "HMAC-SHA256") == (
        "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6")


def _random_fields(rng: random.Random) -> dict[str, str]:
    alphabet = string.ascii_letters + string.digits + "-_.:/?=&+ 中文商品￥（）"
    # wechatpy signs values as they are, the official rule trims them: they agree on values without whitespace at
    # either end, which are the only ones JitPay sends (test_signing_official_rule.py covers the others)
    fields = {f"{rng.choice(string.ascii_lowercase)}{rng.choice(string.ascii_lowercase)}_{i}":
              "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))).strip()
              for i in range(rng.randint(1, 15))}
    fields["body"] = "腾讯充值中心-QQ会员充值"
    fields["total_fee"] = str(rng.randint(1, 10**6))
    return fields


@pytest.mark.parametrize("seed", range(25))
def test_matches_wechatpy(seed: int) -> None:
    rng = random.Random(seed)
    fields, key = _random_fields(rng), "".join(rng.choice(string.ascii_letters) for _ in range(32))
    assert calculate_sign(fields, key, "MD5") == calculate_signature(fields, key)
    assert calculate_sign(fields, key, "HMAC-SHA256") == calculate_signature_hmac(fields, key)


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_verify_covers_every_field(sign_type: str) -> None:
    fields = dict(OFFICIAL_FIELDS, unknown_future_field="x")
    fields["sign"] = calculate_sign(fields, OFFICIAL_KEY, sign_type)
    assert verify_sign(fields, OFFICIAL_KEY, sign_type)
    assert verify_sign({**fields, "sign": fields["sign"].lower()}, OFFICIAL_KEY, sign_type)
    assert not verify_sign({**fields, "unknown_future_field": "y"}, OFFICIAL_KEY, sign_type)
    assert not verify_sign({**fields, "added": "1"}, OFFICIAL_KEY, sign_type)
    assert not verify_sign({k: v for k, v in fields.items() if k != "body"}, OFFICIAL_KEY, sign_type)
    assert not verify_sign(fields, OFFICIAL_KEY[:-1] + "x", sign_type)
    # Empty fields are not signed, so adding one changes nothing (WeChat's rule, not a loophole: it carries nothing).
    assert verify_sign({**fields, "attach": ""}, OFFICIAL_KEY, sign_type)
    # The configured algorithm verifies, never the one the signature's length suggests.
    other = "HMAC-SHA256" if sign_type == "MD5" else "MD5"
    assert not verify_sign(fields, OFFICIAL_KEY, other)


def test_verify_rejects_missing_or_misshapen_signatures() -> None:
    fields = dict(OFFICIAL_FIELDS)
    assert not verify_sign(fields, OFFICIAL_KEY, "MD5")
    assert not verify_sign({**fields, "sign": ""}, OFFICIAL_KEY, "MD5")
    assert not verify_sign({**fields, "sign": "9A0A8659F005D6984697E2CA0A9CF3B"}, OFFICIAL_KEY, "MD5")  # 31 chars
    assert not verify_sign({**fields, "sign": "Z" * 32}, OFFICIAL_KEY, "MD5")
    md5 = calculate_sign(fields, OFFICIAL_KEY, "MD5")
    assert verify_sign({**fields, "sign": md5}, OFFICIAL_KEY, "MD5")
    assert not verify_sign({**fields, "sign": md5}, OFFICIAL_KEY, "HMAC-SHA256")
    # A declared sign_type is itself signed, and must be the configured algorithm.
    with_type = {**fields, "sign_type": "HMAC-SHA256"}
    hmac_sign = calculate_sign(with_type, OFFICIAL_KEY, "HMAC-SHA256")
    assert verify_sign({**with_type, "sign": hmac_sign}, OFFICIAL_KEY, "HMAC-SHA256")
    assert not verify_sign({**with_type, "sign": hmac_sign}, OFFICIAL_KEY, "MD5")
    md5_with_type = calculate_sign(with_type, OFFICIAL_KEY, "MD5")
    assert not verify_sign({**with_type, "sign": md5_with_type}, OFFICIAL_KEY, "MD5")
    assert not verify_sign({**with_type, "sign": md5_with_type}, OFFICIAL_KEY, "HMAC-SHA256")


def test_unknown_sign_type() -> None:
    with pytest.raises(ValueError):
        calculate_sign(OFFICIAL_FIELDS, OFFICIAL_KEY, "SHA1")
    with pytest.raises(ValueError):
        verify_sign({**OFFICIAL_FIELDS, "sign": "A" * 32}, OFFICIAL_KEY, "SHA1")
