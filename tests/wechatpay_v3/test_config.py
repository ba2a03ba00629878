"""Config checking at load: key sizes, a key that does not match its serial, a public key where a private key belongs
(and the other way round): load errors that name the setting, never its value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import jitcore
from jitcore.errors import ConfigError

from . import keys
from .conftest import NOTIFY_URL, base_config, make_app, make_provider, settings


SECRET_SETTINGS = ("apiV3Key", "privateKey", "wechatpayPublicKey", "merchantCertificate", "k")


def secrets_of(config: dict[str, Any]) -> list[str]:
    """Every secret-looking value of ``config``, cut into pieces that must not appear in an error."""
    pieces = []
    for name, value in config.items():
        if name in SECRET_SETTINGS and isinstance(value, str) and len(value) >= 16:
            body = "".join(line for line in value.splitlines() if not line.startswith("-----"))
            pieces += [body[i:i + 16] for i in range(0, max(len(body) - 16, 1), 16)] or [value]
    return pieces


def check_error(overrides: dict[str, Any], key: str, *fragments: str, mode: str = "publicKey") -> ConfigError:
    config = base_config(mode, **overrides)
    with pytest.raises(ConfigError) as info:
        make_provider(mode=mode, **overrides)
    error = info.value
    assert error.details["key"] == key, error.message
    assert f"'{key}'" in error.message and "pays.WechatPayV3Type" in error.message
    for fragment in fragments:
        assert fragment in error.message, error.message
    text = str(error) + repr(error.to_dict())
    for piece in secrets_of({**config, **{k: v for k, v in overrides.items() if isinstance(v, str)}}):
        assert piece not in text, f"a secret leaked into: {text}"
    return error


def pem_of_ec_key() -> str:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def test_valid_configs_in_every_key_mode() -> None:
    public = settings("publicKey")
    assert public.keyModes == ("publicKey",) and public.wechatpayPublicKeyId == keys.PUBLIC_KEY_ID
    assert settings("certificate").keyModes == ("certificate",)
    assert settings("both").keyModes == ("publicKey", "certificate")
    # platform certificates are the default when there is no public key
    assert settings("publicKey", wechatpayPublicKey=None, wechatpayPublicKeyId=None).keyModes == ("certificate",)
    assert public.gateway == "https://api.mch.weixin.qq.com" and public.notifyUrl == NOTIFY_URL
    assert public.merchantSerialNo == keys.merchant().serial
    text = repr(public)
    assert "PRIVATE" not in text and keys.APIV3_KEY not in text


def test_keys_with_literal_backslash_n_and_bare_base64_are_read() -> None:
    pem = keys.merchant().private_pem
    assert settings(privateKey=pem.replace("\n", "\\n")).privateKey.key_size == 2048
    bare = "".join(line for line in keys.wechatpay().public_pem.splitlines() if not line.startswith("-----"))
    assert settings(wechatpayPublicKey=bare).wechatpayPublicKey is not None


def test_the_serial_can_come_from_the_merchant_certificate() -> None:
    s = settings(merchantSerialNo=None, merchantCertificate=keys.merchant().cert_pem)
    assert s.merchantSerialNo == keys.merchant().serial
    s = settings(merchantSerialNo=keys.merchant().serial.lower(), merchantCertificate=keys.merchant().cert_pem)
    assert s.merchantSerialNo == keys.merchant().serial


@pytest.mark.parametrize("key", ["appId", "mchId", "apiV3Key", "privateKey", "merchantSerialNo"])
def test_required_settings(key: str) -> None:
    check_error({key: None}, key, "required")


@pytest.mark.parametrize("value,length", [("0123456789abcdefghijklmnopqrstu", 31),
                                          ("0123456789abcdefghijklmnopqrstuvw", 33),
                                          ("0123456789abcdefghijklmnopqrst v", 32),
                                          ("0123456789abcdefghijklmnopqrs密", 32)])
def test_an_apiv3_key_of_the_wrong_size(value: str, length: int) -> None:
    check_error({"apiV3Key": value}, "apiV3Key", "32 ASCII characters", f"{length} bytes")


def test_an_apiv3_key_from_a_file_may_end_with_a_line_break() -> None:
    assert settings(apiV3Key=keys.APIV3_KEY + "\n").apiV3Key == keys.APIV3_KEY.encode()


@pytest.mark.parametrize("what,value,fragment", [
    ("a public key", lambda: keys.merchant().public_pem, "holds a public key"),
    ("WeChat Pay's public key", lambda: keys.wechatpay().public_pem, "holds a public key"),
    ("bare base64 of a public key", lambda: "".join(keys.wechatpay().public_pem.splitlines()[1:-1]),
     "holds a public key"),
    ("a certificate", lambda: keys.merchant().cert_pem, "holds a certificate"),
    ("a 1024-bit key", lambda: keys.private_pem(keys.new_key(1024)), "2048-bit"),
    ("a 3072-bit key", lambda: keys.private_pem(keys.new_key(3072)), "2048-bit"),
    ("an EC key", pem_of_ec_key, "not an RSA key"),
    ("garbage", lambda: "this is not a key!", "neither PEM nor base64"),
    ("an encrypted key", lambda: keys.new_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")).decode(), "encrypted"),
])
def test_what_is_not_the_merchant_private_key(what: str, value: Any, fragment: str) -> None:
    check_error({"privateKey": value()}, "privateKey", fragment)


def test_a_serial_that_is_not_the_certificates() -> None:
    check_error({"merchantCertificate": keys.merchant().cert_pem, "merchantSerialNo": keys.platform().serial},
                "merchantSerialNo", "does not match")


def test_a_key_that_is_not_the_certificates() -> None:
    check_error({"merchantCertificate": keys.platform().cert_pem, "merchantSerialNo": None}, "privateKey",
                "does not belong to merchantCertificate")


def test_a_serial_that_is_not_hexadecimal() -> None:
    check_error({"merchantSerialNo": "not-a-serial"}, "merchantSerialNo", "hexadecimal")


@pytest.mark.parametrize("what,value,fragment", [
    ("a private key", lambda: keys.wechatpay().private_pem, "holds a private key"),
    ("the merchant's private key", lambda: keys.merchant().private_pem, "holds a private key"),
    ("bare base64 of a private key", lambda: "".join(keys.wechatpay().private_pem.splitlines()[1:-1]),
     "holds a private key"),
    ("the merchant's own public key", lambda: keys.merchant().public_pem, "merchant's own public key"),
    ("a 1024-bit key", lambda: keys.public_pem(keys.new_key(1024)), "2048-bit"),
    ("garbage", lambda: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "does not parse"),
])
def test_what_is_not_the_wechatpay_public_key(what: str, value: Any, fragment: str) -> None:
    check_error({"wechatpayPublicKey": value()}, "wechatpayPublicKey", fragment)


def test_the_public_key_and_its_id_go_together() -> None:
    check_error({"wechatpayPublicKeyId": None}, "wechatpayPublicKeyId", "required with wechatpayPublicKey")
    check_error({"wechatpayPublicKey": None}, "wechatpayPublicKey", "required with wechatpayPublicKeyId")
    check_error({"wechatpayPublicKeyId": "1234"}, "wechatpayPublicKeyId", "PUB_KEY_ID_")


def test_some_way_to_verify_wechatpay_is_needed() -> None:
    check_error({"wechatpayPublicKey": None, "wechatpayPublicKeyId": None, "platformCertificates": False},
                "platformCertificates", "could not be verified")
    check_error({"platformCertificates": "yes"}, "platformCertificates", "true or false")


@pytest.mark.parametrize("key,value,fragment", [
    ("gateway", "api.mch.weixin.qq.com", "http(s) base URL"),
    ("notifyUrl", "/notify", "absolute"),
    ("timeout", 0, "more than 0"),
    ("timeout", "soon", "number of seconds"),
    ("payerClientIp", "localhost", "IP address"),
    ("mchId", "19000-0002", "digits"),
    ("apiKey", "x", "did you mean 'apiV3Key'"),
    ("wechatpayPublicKeyID", "x", "did you mean 'wechatpayPublicKeyId'"),
])
def test_other_settings(key: str, value: Any, fragment: str) -> None:
    check_error({key: value}, key, fragment)


def test_without_base_url_or_notify_url() -> None:
    with pytest.raises(ConfigError, match="notifyUrl"):
        make_provider(make_app(baseUrl=""), notifyUrl=None)
    provider = make_provider(make_app(baseUrl="https://shop.example/"), notifyUrl=None)
    assert provider.notify_url() == "https://shop.example/api/shop/pays/services/PaySvc/notify/wechatv3"


def test_a_wrong_key_stops_the_app_from_loading_and_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / "apiclient_key.pem").write_text(keys.merchant().private_pem)
    (tmp_path / "pub_key.pem").write_text(keys.wechatpay().private_pem)  # the private half, by mistake
    (tmp_path / "app.yaml").write_text(yaml.safe_dump({
        "appId": "shop", "baseUrl": "http://127.0.0.1:9",
        "elements": {"pays.WechatPayV3Type": {"config": {
            "appId": "wx1", "mchId": "1900000002", "apiV3Key": keys.APIV3_KEY,
            "merchantSerialNo": keys.merchant().serial, "privateKey": {"$file": "apiclient_key.pem"},
            "wechatpayPublicKey": {"$file": "pub_key.pem"}, "wechatpayPublicKeyId": keys.PUBLIC_KEY_ID}}}}))
    with pytest.raises(ConfigError) as info:
        jitcore.load_app(tmp_path / "app.yaml")
    assert "wechatpayPublicKey" in info.value.message and "holds a private key" in info.value.message
    for piece in secrets_of({"k": keys.wechatpay().private_pem}):
        assert piece not in str(info.value)
