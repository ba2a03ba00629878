"""Notifications pinned to the merchant's settings (issue 11, item 3), WeChat Pay's side: the configured sign type
decides (a signature's length never does), CNY only, and amounts in fen only as WeChat writes them. Every notification
here is properly signed, with the merchant's key: what is refused is refused for its content or its algorithm."""

from __future__ import annotations

import pytest

from elements.pays.errors import NotifyInvalid, ProviderError, SignatureInvalid
from elements.pays.WechatPayType import fen_to_yuan
from elements.pays.WechatPayType.signing import calculate_sign

from .conftest import APP_ID, MCH_ID, SandboxWorld, make_app, make_provider
from .test_provider_unit import KEY, paid_notification


@pytest.fixture
def providers(tmp_path):
    app = make_app(tmp_path, "https://shop.example.com")
    return {t: make_provider(app, appId=APP_ID, mchId=MCH_ID, apiKey=KEY, signType=t) for t in ("MD5", "HMAC-SHA256")}


def declaring(declared: str, signed_with: str) -> dict[str, str]:
    """A paid notification carrying ``sign_type=declared``, signed with ``signed_with``."""
    fields = {k: v for k, v in paid_notification().items() if k != "sign"}
    fields["sign_type"] = declared
    fields["sign"] = calculate_sign(fields, KEY, signed_with)
    return fields


@pytest.mark.parametrize("configured", ["MD5", "HMAC-SHA256"])
def test_the_configured_sign_type_decides(providers, configured):
    other = "HMAC-SHA256" if configured == "MD5" else "MD5"
    p = providers[configured]
    assert p.verify_notify(paid_notification(configured)).status == "success"
    with pytest.raises(SignatureInvalid, match=configured):
        p.verify_notify(paid_notification(other))
    # declaring the other algorithm (signed, and signed with it) does not help...
    with pytest.raises(SignatureInvalid, match="declares sign_type"):
        p.verify_notify(declaring(other, other))
    # ...and a notification declaring the configured one must be signed with it
    assert p.verify_notify(declaring(configured, configured)).status == "success"
    with pytest.raises(SignatureInvalid):
        p.verify_notify(declaring(configured, other))


def test_an_md5_signature_padded_to_hmac_length_is_refused(providers):
    """The length of the signature is not a hint: 64 characters of which the first 32 are a valid MD5."""
    fields = paid_notification("MD5")
    fields["sign"] = fields["sign"] + "0" * 32
    with pytest.raises(SignatureInvalid):
        providers["HMAC-SHA256"].verify_notify(fields)


@pytest.mark.parametrize("fee_type", ["USD", "HKD", "cny", "CNY ", "RMB"])
def test_another_currency_is_refused(providers, fee_type):
    with pytest.raises(NotifyInvalid, match="fee_type"):
        providers["MD5"].verify_notify(paid_notification(fee_type=fee_type))


def test_cny_or_no_fee_type(providers):
    assert providers["MD5"].verify_notify(paid_notification(fee_type="CNY")).status == "success"
    without = {k: v for k, v in paid_notification().items() if k not in ("fee_type", "sign")}
    without["sign"] = calculate_sign(without, KEY, "MD5")
    assert providers["MD5"].verify_notify(without).status == "success"


@pytest.mark.parametrize("text", ["09999", " 9999", "9999 ", "9999\n", "+9999", "9999.0", "99.99", "9.999e3",
                                  "９９９９", "-9999", "0x270f", "9_999", ""])
def test_only_canonical_fen(providers, text):
    with pytest.raises(NotifyInvalid, match="total_fee"):
        providers["MD5"].verify_notify(paid_notification(total_fee=text))


def test_canonical_fen() -> None:
    assert str(fen_to_yuan("9999")) == "99.99" and str(fen_to_yuan("0")) == "0.00" and str(fen_to_yuan(1)) == "0.01"
    for text in ("01", "1 ", "1\n", "１"):
        with pytest.raises(ValueError):
            fen_to_yuan(text)


def test_a_query_in_another_currency_is_refused(world: SandboxWorld) -> None:
    """Against the sandbox, whose orderquery echoes the fee_type the order was made with."""
    import datetime as dt
    from decimal import Decimal

    from elements.pays.Meta import OrderView

    order = OrderView(orderId="CUR_USD_1", subject="x", amount=Decimal("1.00"),
                      createdAt=dt.datetime.now(dt.timezone.utc))
    world.provider.api.call("pay/unifiedorder", {
        "body": "x", "out_trade_no": order.orderId, "total_fee": 100, "fee_type": "USD", "trade_type": "NATIVE",
        "spbill_create_ip": "127.0.0.1", "notify_url": world.provider.settings.notifyUrl,
        "product_id": order.orderId})
    with pytest.raises(ProviderError) as info:
        world.provider.query_trades(order)
    assert info.value.provider_code == "INVALID_RESPONSE" and "USD" in info.value.message
