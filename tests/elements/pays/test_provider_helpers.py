"""The helpers the provider contract gives providers (docs/PROVIDERS.md, "Helpers"): ``expiry_text`` of
``pays.Meta``, ``yuan_to_fen``/``from_fen`` of ``elements.pays.money``, ``ConfigReader`` and ``cut_utf8`` of
``elements.pays.helpers``; and that the WeChat Pay v3 plugin imports nothing of JitPay's but the contract."""

from __future__ import annotations

import ast
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from elements.pays.errors import AmountInvalid
from elements.pays.helpers import ConfigReader, cut_utf8
from elements.pays.Meta import expiry_text
from elements.pays.money import from_fen, yuan_to_fen
from jitcore.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
#: what a provider plugin may import of JitPay (docs/PROVIDERS.md, "Helpers")
CONTRACT = {"elements.pays.Meta", "elements.pays.errors", "elements.pays.money", "elements.pays.helpers",
            "jitcore", "jitcore.errors", "jitcore.element"}
BEIJING = timezone(timedelta(hours=8))


# -- expiry_text -------------------------------------------------------------------------------------------------------
def test_expiry_text_rounds_down_to_the_second_in_the_providers_timezone() -> None:
    text, moment = expiry_text(datetime(2026, 1, 1, 15, 59, 59, 999999, tzinfo=timezone.utc), "%Y%m%d%H%M%S",
                               BEIJING)
    assert text == "20260101235959"
    assert moment == datetime(2026, 1, 1, 15, 59, 59, tzinfo=timezone.utc) and moment.tzinfo is timezone.utc


def test_expiry_text_takes_the_format_and_reads_naive_times_as_utc() -> None:
    naive = datetime(2026, 1, 1, 16, 0, 0, 1)
    assert expiry_text(naive, "%Y-%m-%d %H:%M:%S", BEIJING)[0] == "2026-01-02 00:00:00"
    assert expiry_text(naive, "%Y-%m-%dT%H:%M:%S+08:00", BEIJING)[0] == "2026-01-02T00:00:00+08:00"
    assert expiry_text(naive, "%H:%M", timezone.utc) == ("16:00", datetime(2026, 1, 1, 16, tzinfo=timezone.utc))


def test_the_providers_expiries_are_the_contracts() -> None:
    from elements.pays.AliPayType import time_expire as alipay
    from elements.pays.WechatPayType import time_expire as wechat
    from jitpay_wechatpay_v3.provider import rfc3339

    moment = datetime(2026, 3, 1, 4, 5, 6, 700000, tzinfo=timezone.utc)
    exact = moment.replace(microsecond=0)
    assert alipay(moment) == ("2026-03-01 12:05:06", exact)
    assert wechat(moment) == ("20260301120506", exact)
    assert rfc3339(moment) == ("2026-03-01T12:05:06+08:00", exact)


# -- money -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("amount, fen", [(Decimal("0.01"), 1), (Decimal("99.99"), 9999), (Decimal("1E+2"), 10000),
                                         (Decimal("0.1"), 10), (5, 500), ("12.30", 1230)])
def test_yuan_to_fen_is_exact(amount: object, fen: int) -> None:
    assert yuan_to_fen(amount) == fen  # type: ignore[arg-type]
    assert from_fen(fen) == Decimal(amount).quantize(Decimal("0.01"))  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", [Decimal("1.005"), Decimal("0"), Decimal("-1"), Decimal("NaN"),
                                    Decimal("Infinity"), 0.1, True, "abc", None])
def test_yuan_to_fen_refuses(amount: object) -> None:
    with pytest.raises(AmountInvalid):
        yuan_to_fen(amount)  # type: ignore[arg-type]


def test_the_providers_convert_money_with_the_contracts_helper() -> None:
    import elements.pays.WechatPayType as v2
    import jitpay_wechatpay_v3.provider as v3

    assert v2.yuan_to_fen is v3.yuan_to_fen is yuan_to_fen
    assert v2.fen_to_yuan("9999") == v3.fen_to_yuan(9999) == Decimal("99.99")


# -- ConfigReader ------------------------------------------------------------------------------------------------------
def test_config_reader_refuses_an_unknown_key_naming_the_closest() -> None:
    with pytest.raises(ConfigError) as caught:
        ConfigReader("shop.Pay", {"appid": "x"}, ("appId", "timeout"), what="Acme")
    assert caught.value.message == "shop.Pay: config key 'appid' is not a Acme setting (did you mean 'appId'?)"
    assert caught.value.details == {"element": "shop.Pay", "key": "appid"}
    with pytest.raises(ConfigError, match=r"known keys: appId, timeout"):
        ConfigReader("shop.Pay", {7: "x"}, ("appId", "timeout"), what="Acme")


def test_config_reader_text() -> None:
    config = ConfigReader("shop.Pay", {"a": " v\n", "n": 12, "e": "", "b": True, "l": ["secret"]}, "aneblx",
                          what="Acme")
    assert config.text("a") == "v" and config.text("n") == "12"
    assert config.text("e", required=False) is None and config.text("x", required=False) is None
    with pytest.raises(ConfigError, match="config key 'x' is required"):
        config.text("x")
    for key, kind in (("b", "bool"), ("l", "list")):
        with pytest.raises(ConfigError) as caught:
            config.text(key)
        assert f"must be text, not {kind}" in str(caught.value) and "secret" not in str(caught.value)


def test_config_reader_ip_address_and_seconds() -> None:
    keys = ("ip", "v6", "bad", "timeout", "slow", "word", "zero", "flag")
    config = ConfigReader("shop.Pay", {"ip": "10.0.0.1", "v6": "::1", "bad": "10.0.0.256", "timeout": "2.5",
                                       "slow": 301, "word": "soon", "zero": 0, "flag": True}, keys, what="Acme")
    assert config.ip_address("ip") == "10.0.0.1" and config.ip_address("v6") == "::1"
    assert config.ip_address("none", default="127.0.0.1") == "127.0.0.1"
    with pytest.raises(ConfigError, match="'bad' must be an IP address"):
        config.ip_address("bad")
    assert config.seconds("timeout") == 2.5 and config.seconds("none", default=10) == 10
    with pytest.raises(ConfigError, match="'slow' must be more than 0 and at most 300 seconds"):
        config.seconds("slow")
    for key in ("word", "flag"):
        with pytest.raises(ConfigError, match=f"'{key}' must be a number of seconds"):
            config.seconds(key)
    with pytest.raises(ConfigError, match="at most 60 seconds"):
        config.seconds("zero", most=60)


def test_cut_utf8_never_splits_a_character() -> None:
    assert cut_utf8("abc", 2) == "ab" and cut_utf8("abc", 3) == "abc"
    assert cut_utf8("商品", 5) == "商"


# -- the v3 plugin imports only the contract ---------------------------------------------------------------------------
def test_the_wechatpay_v3_plugin_imports_only_the_provider_contract() -> None:
    package = REPO / "plugins" / "jitpay-wechatpay-v3" / "jitpay_wechatpay_v3"
    outside = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            outside += [f"{path.relative_to(package)}: {name}" for name in names
                        if name.split(".")[0] in ("elements", "jitcore") and name not in CONTRACT]
    assert not outside, outside
