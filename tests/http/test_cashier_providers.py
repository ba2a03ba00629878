"""The cashier lists every payment element the app configures (issue 12, item 5): a third-party provider's too
(AcmePay, tests/plugins/jitpay-acmepay), with the title, icon, colour and order of its e.yaml cashier: block or the
app's settings.cashier.elements; a buyer pays with AcmePay in a real browser."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Iterator

import httpx
import pytest

from acmepay.fake import FakeAcmePay
from tests.http.test_browser import browser, context, watch_console  # noqa: F401  (fixtures)
from tests.http.test_cashier import cashier_paths
from tests.support.live import LiveApp, start_live_app

MERCHANTS = {"m_shop": ("sk_test_shop_0123456789", "whsec_shop_0123456789")}


def acmepay(gateway_url: str, **extra: Any) -> dict[str, Any]:
    api_key, secret = MERCHANTS["m_shop"]
    return {"acmepay.AcmePayType": {"config": {"merchantId": "m_shop", "apiKey": api_key, "webhookSecret": secret,
                                               "gateway": gateway_url}}, **extra}


@pytest.fixture
def fake() -> Iterator[FakeAcmePay]:
    with FakeAcmePay(MERCHANTS).serve() as gateway:
        yield gateway


@pytest.fixture
def shop(tmp_path: Any, fake: FakeAcmePay) -> Iterator[LiveApp]:
    """Alipay and WeChat Pay on the sandbox, and AcmePay on its fake gateway, in one served app."""
    with start_live_app(tmp_path, elements=acmepay(fake.url)) as live:
        yield live


def page_of(live: LiveApp, order: dict[str, Any]) -> str:
    path, token = cashier_paths(order)
    response = httpx.get(live.url + path, params={"token": token}, timeout=10)
    assert response.status_code == 200
    return response.text


def choices(html: str) -> list[dict[str, str]]:
    """The page's choice buttons: their attributes."""
    return [dict(re.findall(r'(data-[\w-]+)="([^"]*)"', button))
            for button in re.findall(r'<button type="button" class="choice[^>]*>', html)]


def test_every_configured_element_is_offered_in_its_order_with_its_icon(shop: LiveApp) -> None:
    order = shop.pay_service.create(subject="Three ways", amount=Decimal("5.00"))
    html = page_of(shop, order)
    listed = choices(html)
    assert [c["data-fullname"] for c in listed] == ["pays.AliPayType", "pays.WechatPayType", "acmepay.AcmePayType"]
    assert [c["data-testid"] for c in listed] == ["choose-alipay", "choose-wechat", "choose-acmepay"]
    assert listed[2]["data-zh"] == "艾克米支付" and listed[2]["data-en"] == "AcmePay"
    assert 'src="data:image/svg+xml;base64,' in html  # AcmePay's icon.svg, inline (the CSP allows data: images)
    assert ".choice-3 { --accent: #7b3fe4; }" in html and ".choice-1 { --accent: #1677ff; }" in html


def test_the_apps_settings_reorder_rename_and_hide(tmp_path: Any, fake: FakeAcmePay) -> None:
    settings = {"cashier": {"elements": {"acmepay.AcmePayType": {"order": 1, "title": "AcmePay HK"},
                                         "pays.WechatPayType": {"hidden": True}}}}
    extra = {"shop.AliPay2": {"type": "pays.AliPayType", "title": "Alipay (second account)"}}
    with start_live_app(tmp_path, elements=acmepay(fake.url, **extra), settings=settings) as live:
        order = live.pay_service.create(subject="Settings", amount=Decimal("5.00"))
        listed = choices(page_of(live, order))
    assert [c["data-fullname"] for c in listed] == ["acmepay.AcmePayType", "pays.AliPayType", "shop.AliPay2"]
    assert listed[0]["data-zh"] == listed[0]["data-en"] == "AcmePay HK"
    assert listed[2]["data-zh"] == "Alipay (second account)" and listed[2]["data-testid"] == "choose-alipay-2"


def test_a_buyer_pays_with_the_third_party_provider(context: Any, shop: LiveApp, fake: FakeAcmePay) -> None:  # noqa: F811
    order = shop.pay_service.create(subject="AcmePay in a browser", amount=Decimal("23.45"))
    path, token = cashier_paths(order)
    page = context.new_page()
    errors = watch_console(page)
    page.goto(f"{shop.url}{path}?token={token}")
    button = page.get_by_test_id("choose-acmepay")
    assert "AcmePay" in button.inner_text()
    assert button.locator("img.logo").evaluate("img => img.complete && img.naturalWidth > 0")
    button.click()
    qr = page.locator("#qr-image")
    qr.wait_for(state="visible")
    assert qr.get_attribute("src").startswith("data:image/png;base64,")
    pay_url = qr.get_attribute("data-pay-url")
    assert pay_url.startswith(fake.url + "/checkout/")
    assert "AcmePay" in page.locator("#qr-hint").inner_text()
    checkout = context.new_page()  # the buyer opens the QR code's link and pays at AcmePay
    checkout.goto(pay_url)
    checkout.locator("#pay-button").click()
    checkout.wait_for_load_state()
    page.locator("#paid-view").wait_for(state="visible")  # the webhook reached PaySvc's generic notify route
    paid = shop.pay_service.query(orderId=order["orderId"])
    assert paid["status"] == "success" and paid["provider"] == "acmepay.AcmePayType"
    assert errors == []
