"""Configuration checks at load: every bad key is a ConfigError naming the element and the key, never the secret."""

from __future__ import annotations

import pytest

from jitcore.errors import ConfigError

from .conftest import make_app, make_provider


def _bare(pem: str) -> str:
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


def _load_error(keys, base_url="https://shop.example", **config) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        make_provider(make_app(base_url), keys, fullName="pays.ShopAliPay", **config)
    error = info.value
    message = str(error)
    assert "pays.ShopAliPay" in message
    for pem in (keys["app_private"], keys["gateway_public"], keys["app_public"]):
        assert _bare(pem)[20:60] not in message  # no key material, ever
    return error


def test_valid_config_and_defaults(keys):
    provider = make_provider(make_app("https://shop.example"), keys)
    assert provider.appId == "2021000000000001"
    assert provider.notifyUrl == "https://shop.example/api/shop/pays/services/PaySvc/alipayNotify"
    assert provider.gateway.gateway == "https://openapi.alipay.com/gateway.do"  # e.yaml's defaults
    assert provider.gateway.timeout == 10 and provider.payTimeoutMinutes == 120
    assert provider.returnUrl is None and provider.sellerId is None
    assert provider.providerName == "alipay" and provider.payTypes == ("pc", "mobile", "page")


def test_bare_base64_keys_and_numeric_app_id(keys):
    provider = make_provider(make_app(None), keys, appId=2021000000000002, privateKey=_bare(keys["app_private"]),
                             alipayPublicKey=_bare(keys["gateway_public"]), notifyUrl="https://n.example/alipay",
                             timeout="3.5")
    assert provider.appId == "2021000000000002"
    assert provider.notifyUrl == "https://n.example/alipay"
    assert provider.gateway.timeout == 3.5


@pytest.mark.parametrize("key", ["appId", "privateKey", "alipayPublicKey", "gateway"])
def test_required(keys, key):
    error = _load_error(keys, **{key: None})
    assert error.details["key"] == key and key in str(error)


def test_swapped_keys_say_which_is_wrong(keys):
    error = _load_error(keys, privateKey=keys["app_public"])
    assert error.details["key"] == "privateKey" and "public key" in error.message
    error = _load_error(keys, alipayPublicKey=keys["gateway_private"])
    assert error.details["key"] == "alipayPublicKey" and "private key" in error.message
    error = _load_error(keys, alipayPublicKey=keys["app_public"])
    assert error.details["key"] == "alipayPublicKey" and "app's own public key" in error.message


def test_unparseable_keys(keys):
    error = _load_error(keys, privateKey="-----BEGIN PRIVATE KEY-----\nMIIBroken\n-----END PRIVATE KEY-----")
    assert error.details["key"] == "privateKey"
    error = _load_error(keys, alipayPublicKey=_bare(keys["gateway_public"])[:-12])
    assert error.details["key"] == "alipayPublicKey"


def test_notify_url_needs_base_url(keys):
    error = _load_error(keys, base_url=None)
    assert error.details["key"] == "notifyUrl" and "baseUrl" in error.message


@pytest.mark.parametrize("key,value", [("gateway", "openapi.alipay.com/gateway.do"), ("gateway", "ftp://x/y"),
                                       ("notifyUrl", "not a url"), ("returnUrl", "javascript:alert(1)"),
                                       ("timeout", 0), ("timeout", "soon"), ("timeout", True),
                                       ("payTimeoutMinutes", 1.5), ("payTimeoutMinutes", 0)])
def test_bad_values(keys, key, value):
    assert _load_error(keys, **{key: value}).details["key"] == key


def test_unknown_config_key_is_a_load_error_with_a_hint(tmp_path):
    import pytest
    import yaml

    import jitcore
    from jitcore.errors import ConfigError
    from tests.support.live import generate_sandbox_keys

    generate_sandbox_keys(tmp_path / "keys")
    (tmp_path / "app.yaml").write_text(yaml.safe_dump({"appId": "shop", "baseUrl": "http://127.0.0.1:1", "elements": {
        "pays.AliPayType": {"config": {"appId": "2021", "privateKey": {"$file": "keys/alipay_app_private_key.pem"},
                                       "alipayPublicKey": {"$file": "keys/alipay_gateway_public_key.pem"},
                                       "sellerID": "2088"}}}}))
    with pytest.raises(ConfigError) as info:  # the app configures it, so loading the app checks it
        jitcore.load_app(tmp_path / "app.yaml")
    assert "sellerID" in info.value.message and "did you mean 'sellerId'" in info.value.message
