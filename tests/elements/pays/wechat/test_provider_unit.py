"""The provider without a network: config checks, money, body cutting, notification verification and replies."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from elements.pays.errors import (AmountInvalid, NotifyInvalid, OrderIdInvalid, ProviderError, SignatureInvalid,
                                  UnsupportedPayType)
from elements.pays.Meta import OrderView
from elements.pays.WechatPayType import cut_utf8, fen_to_yuan, parse_time_end, yuan_to_fen
from elements.pays.WechatPayType.signing import calculate_sign
from jitcore.errors import ConfigError

from .conftest import APP_ID, MCH_ID, make_app, make_provider, random_key

KEY = random_key()


@pytest.fixture
def app(tmp_path: Path):
    return make_app(tmp_path, "https://shop.example.com")


@pytest.fixture
def provider(app):
    return make_provider(app, appId=APP_ID, mchId=MCH_ID, apiKey=KEY)


def order(orderId: str = "T20240101000001", amount: str = "99.99", subject: str = "测试商品") -> OrderView:
    return OrderView(orderId=orderId, subject=subject, amount=Decimal(amount),
                     createdAt=dt.datetime.now(dt.timezone.utc))


# -- money and text -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("amount, fen", [("0.01", 1), ("99.99", 9999), ("100", 10000), ("1E+2", 10000),
                                         ("0.10", 10), ("12345678.90", 1234567890), ("0.1", 10)])
def test_yuan_to_fen_is_exact(amount: str, fen: int) -> None:
    assert yuan_to_fen(Decimal(amount)) == fen


@pytest.mark.parametrize("amount", [Decimal("1.005"), Decimal("0"), Decimal("-1"), Decimal("NaN"), Decimal("Infinity"),
                                    0.1, "abc"])
def test_yuan_to_fen_refuses(amount) -> None:
    with pytest.raises(AmountInvalid):
        yuan_to_fen(amount)


def test_fen_to_yuan() -> None:
    assert fen_to_yuan("9999") == Decimal("99.99")
    assert str(fen_to_yuan("1")) == "0.01"
    for bad in ("", "-1", "1.5", "１２"):
        with pytest.raises(ValueError):
            fen_to_yuan(bad)


def test_cut_utf8_never_splits_a_character() -> None:
    assert cut_utf8("abc", 128) == "abc"
    text = "商" * 43  # 129 bytes
    assert cut_utf8(text, 128) == "商" * 42
    assert cut_utf8("a" + "😀" * 40, 128) == "a" + "😀" * 31  # 1 + 31*4 = 125 bytes
    for n in range(0, 20):
        assert len(cut_utf8("中文ab😀x" * 3, n).encode()) <= n


def test_parse_time_end_is_beijing_time() -> None:
    assert parse_time_end("20240101080000") == dt.datetime(2024, 1, 1, 0, 0, tzinfo=dt.timezone.utc)
    assert parse_time_end("") is None and parse_time_end("2024") is None and parse_time_end(None) is None


# -- config -----------------------------------------------------------------------------------------------------------
def test_defaults_from_e_yaml(provider) -> None:
    s = provider.settings
    assert (s.gateway, s.signType, s.timeout, s.spbillCreateIp) == ("https://api.mch.weixin.qq.com", "MD5", 10.0,
                                                                     "127.0.0.1")
    assert s.notifyUrl == "https://shop.example.com/api/shop/pays/services/PaySvc/wechatNotify"
    assert provider.providerName == "wechat" and provider.payTypes == ("pc", "mobile")
    assert KEY not in repr(s) and KEY not in repr(provider.api)


def test_api_key_from_a_file_loses_its_newline(app) -> None:
    assert make_provider(app, appId=APP_ID, mchId=1900000001, apiKey=KEY + "\n").settings.apiKey == KEY
    assert make_provider(app, appId=APP_ID, mchId=1900000001, apiKey=KEY).settings.mchId == "1900000001"


@pytest.mark.parametrize("change, key", [
    ({"appId": None}, "appId"),
    ({"mchId": ""}, "mchId"),
    ({"apiKey": None}, "apiKey"),
    ({"apiKey": "has a space in it"}, "apiKey"),
    ({"signType": "SHA1"}, "signType"),
    ({"gateway": "ftp://x"}, "gateway"),
    ({"notifyUrl": "/relative"}, "notifyUrl"),
    ({"spbillCreateIp": "localhost"}, "spbillCreateIp"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": "soon"}, "timeout"),
    ({"certPath": "missing.pem"}, "certPath"),
    ({"keyPath": "missing.pem"}, "keyPath"),
    ({"apikey": "x"}, "apikey"),
])
def test_config_errors_name_element_and_key_never_the_secret(app, change, key) -> None:
    config = {"appId": APP_ID, "mchId": MCH_ID, "apiKey": KEY, **change}
    with pytest.raises(ConfigError) as info:
        make_provider(app, **config)
    assert "pays.WechatPayType" in info.value.message and f"'{key}'" in info.value.message
    assert KEY not in str(info.value) and KEY not in repr(info.value.to_dict())


def test_unknown_key_suggests_the_right_one(app) -> None:
    with pytest.raises(ConfigError, match="did you mean 'apiKey'"):
        make_provider(app, appId=APP_ID, mchId=MCH_ID, apikey=KEY)


def test_notify_url_needs_base_url_or_setting(tmp_path) -> None:
    with pytest.raises(ConfigError, match="notifyUrl"):
        make_provider(make_app(tmp_path, ""), appId=APP_ID, mchId=MCH_ID, apiKey=KEY)
    p = make_provider(make_app(tmp_path, ""), appId=APP_ID, mchId=MCH_ID, apiKey=KEY,
                      notifyUrl="https://pay.example.com/n")
    assert p.settings.notifyUrl == "https://pay.example.com/n"


def _write_cert(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, MCH_ID)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "apiclient_cert.pem", folder / "apiclient_key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_client_certificate_relative_to_app_root(app) -> None:
    cert, key = _write_cert(Path(app.root) / "certs")
    p = make_provider(app, appId=APP_ID, mchId=MCH_ID, apiKey=KEY, certPath="certs/apiclient_cert.pem",
                      keyPath="certs/apiclient_key.pem")
    assert p.settings.certPath == str(cert.resolve()) and p.settings.keyPath == str(key.resolve())
    assert p.api.sslContext is not None


def test_client_certificate_that_does_not_load(app) -> None:
    bad = Path(app.root) / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="certPath"):
        make_provider(app, appId=APP_ID, mchId=MCH_ID, apiKey=KEY, certPath="bad.pem")
    cert, _ = _write_cert(Path(app.root) / "c")
    with pytest.raises(ConfigError, match="certPath.*is required"):
        make_provider(app, appId=APP_ID, mchId=MCH_ID, apiKey=KEY, keyPath=str(cert))


# -- calls refused before the network ---------------------------------------------------------------------------------
def test_refund_without_certificate_on_https_gateway(provider) -> None:
    with pytest.raises(ProviderError) as info:
        provider.refund(order(), "R1", Decimal("1.00"), Decimal("1.00"))
    assert info.value.provider_code == "CERT_MISSING" and "certPath" in info.value.message


def test_prepare_checks_pay_type_and_order_id(provider) -> None:
    with pytest.raises(UnsupportedPayType):
        provider.prepare(order(), "page")
    with pytest.raises(OrderIdInvalid):
        provider.prepare(order(orderId="x" * 33), "pc")
    with pytest.raises(OrderIdInvalid):
        provider.query(order(orderId="bad id"))


# -- notifications ----------------------------------------------------------------------------------------------------
def paid_notification(sign_type: str = "MD5", key: str = KEY, **change: str) -> dict[str, str]:
    fields = {"appid": APP_ID, "mch_id": MCH_ID, "nonce_str": "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
              "return_code": "SUCCESS", "result_code": "SUCCESS", "openid": "oUpF8uMEb4qRXf22hE3X68TekukE",
              "is_subscribe": "N", "trade_type": "NATIVE", "bank_type": "CMC", "total_fee": "9999",
              "cash_fee": "9999", "fee_type": "CNY", "transaction_id": "4200000000202401010000000001",
              "out_trade_no": "T20240101000001", "time_end": "20240101120000", "coupon_fee_0": "", **change}
    fields["sign"] = calculate_sign(fields, key, sign_type)
    return fields


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_verify_notify_success(app, sign_type) -> None:
    p = make_provider(app, appId=APP_ID, mchId=MCH_ID, apiKey=KEY, signType=sign_type)
    state = p.verify_notify(paid_notification(sign_type))
    assert state.status == "success" and state.orderId == "T20240101000001"
    assert state.tradeNo == "4200000000202401010000000001" and state.paidAmount == Decimal("99.99")
    assert state.payTime == dt.datetime(2024, 1, 1, 4, 0, tzinfo=dt.timezone.utc)
    assert state.raw["openid"] == "oUpF8uMEb4qRXf22hE3X68TekukE"


def test_verify_notify_uses_the_configured_algorithm(app) -> None:
    # Configured HMAC: an MD5-signed notification is refused, however right its MD5 (issue 11, item 3)...
    p = make_provider(app, appId=APP_ID, mchId=MCH_ID, apiKey=KEY, signType="HMAC-SHA256")
    with pytest.raises(SignatureInvalid):
        p.verify_notify(paid_notification("MD5"))
    # ...and the other way round
    md5 = make_provider(app, appId=APP_ID, mchId=MCH_ID, apiKey=KEY, signType="MD5")
    with pytest.raises(SignatureInvalid):
        md5.verify_notify(paid_notification("HMAC-SHA256"))


def test_verify_notify_result_fail_is_failed(provider) -> None:
    state = provider.verify_notify(paid_notification(result_code="FAIL", err_code="PAYERROR", transaction_id=""))
    assert state.status == "failed" and state.paidAmount is None


@pytest.mark.parametrize("forge", [
    lambda f: {k: v for k, v in f.items() if k != "sign"},
    lambda f: {**f, "sign": ""},
    lambda f: {**f, "total_fee": "1"},
    lambda f: {**f, "out_trade_no": "T20240101000002"},
    lambda f: {**f, "extra": "added by someone"},
    lambda f: {**f, "sign": f["sign"][:-1] + ("0" if f["sign"][-1] != "0" else "1")},
    lambda f: paid_notification(key=random_key()),
    lambda f: paid_notification("HMAC-SHA256", key=random_key()),
])
def test_forged_or_tampered_notifications(provider, forge) -> None:
    with pytest.raises(SignatureInvalid):
        provider.verify_notify(forge(paid_notification()))


@pytest.mark.parametrize("change", [{"appid": "wx_other"}, {"mch_id": "1900000002"}, {"return_code": "FAIL"},
                                    {"out_trade_no": ""}, {"transaction_id": ""}, {"total_fee": "9.99"}])
def test_signed_but_not_for_us_or_malformed(provider, change) -> None:
    with pytest.raises(NotifyInvalid):
        provider.verify_notify(paid_notification(**change))


def test_verify_notify_refuses_non_text_fields(provider) -> None:
    fields = paid_notification()
    with pytest.raises(NotifyInvalid):
        provider.verify_notify({**fields, "total_fee": ["9999"]})


def test_notify_reply(provider) -> None:
    ok = provider.notify_reply(True)
    assert ok.body == b"<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
    assert ok.mediaType == "application/xml" and ok.status == 200
    bad = provider.notify_reply(False, "签名错误 ]]>")
    assert bad.body == ("<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[签名错误 ]]]]><![CDATA[>"
                        "]]></return_msg></xml>").encode()
    assert provider.parse_notify_body(bad.body) == {"return_code": "FAIL", "return_msg": "签名错误 ]]>"}


def test_an_incomplete_configuration_stops_the_app_from_loading(tmp_path):
    import pytest
    import yaml

    import jitcore
    from jitcore.errors import ConfigError
    from tests.support.live import generate_sandbox_keys, sandbox_app_config

    generate_sandbox_keys(tmp_path / ".sandbox")
    config = sandbox_app_config("http://127.0.0.1:1", elements={"pays.WechatPayType": {"config": {"mchId": ""}}})
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="pays.WechatPayType: config key 'mchId' is required"):
        jitcore.load_app(tmp_path / "app.yaml")
