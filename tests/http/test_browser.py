"""The demo in a real browser (Debian's Chromium, headless, driven by Playwright): shop → buy → cashier → choose a
provider → the sandbox wallet → pay → the cashier flips to paid by itself → the shop shows the purchase delivered.

Set ``JITPAY_SCREENSHOTS=1`` to write ``docs/cashier.png`` and ``docs/cashier-paid.png`` from the Alipay run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.live import start_live_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DOCS = Path(__file__).resolve().parents[2] / "docs"
SCREENSHOTS = os.environ.get("JITPAY_SCREENSHOTS") == "1"
IPHONE_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Version/17.0 Mobile/15E148 Safari/604.1")
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `make sysdeps` (apt-get install chromium)",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shop(tmp_path):
    """The demo shop (app plugin demo.shop) with both providers on the sandbox, served on a free port."""
    with start_live_app(tmp_path, plugins=["demo.shop"], settings={"cashier": {"returnUrl": "/"}}) as live:
        live.app.title = "JitPay demo shop · 演示商店"  # as in app.example.yaml (the fixture's YAML says "Test shop")
        yield live


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1024, "height": 800}, locale="zh-CN")
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


def watch_console(page) -> list[str]:
    """Collect the page's console errors (a CSP violation shows up here); the browser's own favicon request is no
    error of ours."""
    errors: list[str] = []
    def on_console(message) -> None:
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            errors.append(f"{message.text} ({message.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def buy(page, shop, product: str) -> str:
    """From the shop page, buy ``product``; returns the cashier URL the shop redirected to."""
    page.goto(shop.url + "/")
    page.get_by_test_id(f"buy-{product}").click()
    page.wait_for_url("**/pays/cashier/**")
    return page.url


def pay_in_wallet(context, pay_url: str, shop) -> None:
    """Open the QR code's content (the sandbox wallet page) in another tab and press pay."""
    assert pay_url.startswith(shop.url + "/sandbox/"), pay_url
    wallet = context.new_page()
    wallet.goto(pay_url)
    wallet.locator("#pay-button").click()
    wallet.wait_for_load_state()
    wallet.close()


def order_row_delivered(page, shop, order_id: str, timeout: float = 10) -> bool:
    """Whether the shop lists ``order_id`` as delivered (the paid event runs right after the payment is recorded)."""
    deadline = time.monotonic() + timeout
    while True:
        page.goto(shop.url + "/")
        row = page.locator(f'tr[data-order-id="{order_id}"]')
        if row.get_by_test_id("delivered").count():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


@pytest.mark.parametrize("provider,product,amount", [
    ("alipay", "vip", "99.99"),
    ("wechat", "ebook", "19.90"),
])
def test_click_through_pays_and_delivers(context, shop, provider, product, amount):
    page = context.new_page()
    errors = watch_console(page)
    requests = []
    page.on("request", lambda request: requests.append((request.url, request.headers)))
    cashier_url = buy(page, shop, product)
    order_id = urlsplit(cashier_url).path.rsplit("/", 1)[-1]

    assert amount in page.get_by_test_id("amount").inner_text()
    assert page.locator("#status").get_attribute("data-status") == "pending"
    page.get_by_test_id(f"choose-{provider}").click()

    qr = page.locator("#qr-image")
    qr.wait_for(state="visible")
    assert qr.get_attribute("src").startswith("data:image/png;base64,")
    assert qr.evaluate("img => img.complete && img.naturalWidth > 0")  # the image really rendered
    pay_url = qr.get_attribute("data-pay-url")
    assert page.get_by_test_id("qr-link").get_attribute("href") == pay_url
    if SCREENSHOTS and provider == "alipay":
        page.locator("main").screenshot(path=str(DOCS / "cashier.png"))

    # mark this document: if the page reloaded or navigated, the mark is gone
    page.evaluate("window.__sameDocument = true")
    pay_in_wallet(context, pay_url, shop)

    page.locator("#paid-view").wait_for(state="visible")
    assert page.evaluate("window.__sameDocument === true")
    assert page.locator("#status").get_attribute("data-status") == "success"
    assert page.locator("#pay-view").is_hidden()
    # the page's script sends the token in a header, never in a URL (URLs end up in access logs): only the link
    # the shop redirected to carries it
    token = urlsplit(cashier_url).query.removeprefix("token=")
    scripted = [(url, headers) for url, headers in requests if url.startswith(cashier_url.split("?")[0] + "/")]
    assert {urlsplit(url).path.rsplit("/", 1)[-1] for url, _ in scripted} == {"pay", "status"}
    assert all(headers.get("x-cashier-token") == token for _, headers in scripted)
    assert [url for url, _ in requests if token in url] == [cashier_url]
    assert page.locator("#pay-time").inner_text().strip()
    if SCREENSHOTS and provider == "alipay":
        page.locator("main").screenshot(path=str(DOCS / "cashier-paid.png"))

    # back to the shop through the paid view's link: the purchase is delivered
    page.get_by_test_id("return-link").click()
    page.wait_for_url(shop.url + "/")
    assert order_row_delivered(page, shop, order_id)
    expected = {"alipay": "pays.AliPayType", "wechat": "pays.WechatPayType"}[provider]
    assert shop.pay_service.query(orderId=order_id)["provider"] == expected
    assert errors == []


@pytest.mark.parametrize("provider", ["alipay", "wechat"])
def test_on_a_phone_the_cashier_links_to_the_wallet(browser, shop, provider):
    context = browser.new_context(viewport={"width": 390, "height": 844}, user_agent=IPHONE_UA, is_mobile=True,
                                  has_touch=True, locale="zh-CN")
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        errors = watch_console(page)
        cashier_url = buy(page, shop, "sticker")
        page.get_by_test_id(f"choose-{provider}").click()
        link = page.get_by_test_id("pay-link")
        link.wait_for(state="visible")
        assert page.locator("#qr-view").is_hidden()
        link.click()  # to the sandbox (Alipay's wap.pay goes through the gateway, WeChat's MWEB link directly)
        page.wait_for_url("**/sandbox/**/wallet/**")
        page.locator("#pay-button").click()
        page.wait_for_load_state()
        page.goto(cashier_url)  # the buyer comes back to the cashier
        page.locator("#paid-view").wait_for(state="visible")
        assert errors == []
    finally:
        context.close()


def test_switching_between_qr_code_and_link(context, shop):
    # Alipay: one order offered both ways (precreate, then wap.pay).
    page = context.new_page()
    buy(page, shop, "sticker")
    page.get_by_test_id("choose-alipay").click()
    page.locator("#qr-image").wait_for(state="visible")
    page.get_by_test_id("mode-toggle").click()  # "pay on this phone"
    page.get_by_test_id("pay-link").wait_for(state="visible")
    assert page.locator("#qr-view").is_hidden()
    page.get_by_test_id("mode-toggle").click()  # back to the QR code
    page.locator("#qr-image").wait_for(state="visible")
    assert page.get_by_test_id("choose-alipay").get_attribute("aria-pressed") == "true"
    assert page.get_by_test_id("error").is_hidden()


def test_switching_wechat_between_qr_code_and_link_then_paying_through_the_link(context, shop):
    # WeChat Pay refuses a second trade type for one out_trade_no ("201 商户订单号重复"); the provider gives the QR
    # code (NATIVE) and the link (MWEB) separate WeChat orders joined by attach, so switching works both ways.
    page = context.new_page()
    errors = watch_console(page)
    cashier_url = buy(page, shop, "sticker")
    order_id = urlsplit(cashier_url).path.rsplit("/", 1)[-1]
    page.get_by_test_id("choose-wechat").click()
    qr = page.locator("#qr-image")
    qr.wait_for(state="visible")
    qr_url = qr.get_attribute("data-pay-url")
    page.get_by_test_id("mode-toggle").click()  # "pay on this phone"
    link = page.get_by_test_id("pay-link")
    link.wait_for(state="visible")
    assert page.locator("#qr-view").is_hidden() and page.get_by_test_id("error").is_hidden()
    page.get_by_test_id("mode-toggle").click()  # back to the QR code: still the same one
    qr.wait_for(state="visible")
    assert qr.get_attribute("data-pay-url") == qr_url and page.get_by_test_id("error").is_hidden()
    page.get_by_test_id("mode-toggle").click()  # and the link again
    link.wait_for(state="visible")
    pay_url = link.get_attribute("href")
    assert pay_url != qr_url and page.get_by_test_id("error").is_hidden()

    pay_in_wallet(context, pay_url, shop)  # pay through the link
    page.locator("#paid-view").wait_for(state="visible")
    assert page.locator("#status").get_attribute("data-status") == "success"
    paid = shop.pay_service.query(orderId=order_id)
    assert paid["status"] == "success" and paid["provider"] == "pays.WechatPayType"
    assert 'data-state="SUCCESS"' not in context.request.get(qr_url).text()  # the QR code's trade was not paid
    assert errors == []


def test_a_provider_failure_is_shown_not_swallowed(context, shop):
    page = context.new_page()
    buy(page, shop, "sticker")
    # the gateway is down: the pay endpoint answers as it does for a provider failure
    page.route("**/pay", lambda route: route.fulfill(
        status=502, content_type="application/json",
        body='{"error": {"code": "PROVIDER_ERROR", "message": "WeChat Pay could not be reached"}}'))
    page.get_by_test_id("choose-wechat").click()
    error = page.get_by_test_id("error")
    error.wait_for(state="visible")
    assert "WeChat Pay could not be reached" in error.inner_text()
    assert page.locator("#qr-view").is_hidden() and page.locator("#mobile-view").is_hidden()
    page.unroute("**/pay")
    page.get_by_test_id("choose-wechat").click()  # choosing again retries
    page.locator("#qr-image").wait_for(state="visible")
    assert error.is_hidden()


def test_the_cashier_refuses_a_wrong_token(context, shop):
    page = context.new_page()
    cashier_url = buy(page, shop, "vip")
    path = urlsplit(cashier_url).path
    for url in (f"{shop.url}{path}?token=wrong", f"{shop.url}{path}"):
        response = page.goto(url)
        assert response.status == 404
        text = page.content()
        assert "99.99" not in text and "VIP" not in text and path.rsplit("/", 1)[-1] not in text
        assert page.get_by_test_id("not-found").is_visible()
        assert page.locator("#qr-image").count() == 0
    status = page.request.get(f"{shop.url}{path}/status?token=wrong")
    assert status.status == 404
    assert "99.99" not in status.text() and "pending" not in status.text()
    assert status.json() == {"error": {"code": "NOT_FOUND", "message": "not found"}}


def test_the_shop_page_lists_orders_awaiting_payment(context, shop):
    page = context.new_page()
    cashier_url = buy(page, shop, "ebook")
    order_id = urlsplit(cashier_url).path.rsplit("/", 1)[-1]
    page.goto(shop.url + "/")
    row = page.locator(f'tr[data-order-id="{order_id}"]')
    assert row.get_by_test_id("waiting").is_visible()
    assert "19.90" in row.inner_text()


def test_app_example_yaml_loads_with_fresh_sandbox_keys(tmp_path, monkeypatch):
    """The demo's YAML, as `make run` serves it: sandbox keys from `jit-sandbox init`, the API key from the
    environment, both providers configured, the shop plugin registered."""
    import shutil

    import jitcore
    from tests.support.live import generate_sandbox_keys

    root = Path(__file__).resolve().parents[2]
    shutil.copy(root / "app.example.yaml", tmp_path / "app.yaml")
    generate_sandbox_keys(tmp_path / ".sandbox")
    monkeypatch.setenv("JITPAY_API_KEY", "jitpay-demo-key-local-only")
    app = jitcore.load_app(tmp_path / "app.yaml")
    try:
        assert app.appId == "shop" and app.baseUrl == "http://127.0.0.1:8000"
        assert app.database_url == f"sqlite:///{(tmp_path / 'shop.db').as_posix()}"
        service = app.loadElement("pays.services.PaySvc")
        assert [p.fullName for p in service.notify_providers("alipay")] == ["pays.AliPayType"]
        assert [p.fullName for p in service.notify_providers("wechat")] == ["pays.WechatPayType"]
        assert app.pm.get_plugin("app-plugin:demo.shop") is not None
    finally:
        app.close()
