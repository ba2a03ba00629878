"""The demo switched to WeChat Pay v3 by configuration (app.example.yaml's ``#v3`` lines, as its comment says), served
for real: the cashier offers v3 and hides v2, and a buyer pays through it in a real browser (Chromium, Playwright)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

import jitcore
from jitcore.http import build_asgi_app
from tests.http.test_browser import (browser, buy, context, order_row_delivered, pay_in_wallet,  # noqa: F401
                                     watch_console)
from tests.support.live import LiveApp, ServerThread, bind_loopback, generate_sandbox_keys

from .sandbox_support import copy_keys

ROOT = Path(__file__).resolve().parents[2]


def switched_to_v3(text: str) -> str:
    """What the comment in app.example.yaml says to do: ``sed 's/^\\( *\\)#v3 /\\1/'``."""
    return re.sub(r"(?m)^( *)#v3 ", r"\1", text)


@pytest.fixture
def demo_v3(tmp_path: Path, v3_keys: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveApp]:
    sock = bind_loopback()
    port = sock.getsockname()[1]
    text = switched_to_v3((ROOT / "app.example.yaml").read_text(encoding="utf-8"))
    (tmp_path / "app.yaml").write_text(text.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), encoding="utf-8")
    generate_sandbox_keys(tmp_path / ".sandbox")  # what `jit-sandbox init` writes (the v3 keys below)
    copy_keys(v3_keys, tmp_path / ".sandbox")
    monkeypatch.setenv("JITPAY_API_KEY", "jitpay-demo-key-local-only")
    app = jitcore.load_app(tmp_path / "app.yaml")
    app.title = "JitPay demo shop · 演示商店"
    server = ServerThread(build_asgi_app(app), sock).start()
    app.jobs.start()
    try:
        yield LiveApp(app, f"http://127.0.0.1:{port}", tmp_path / "app.yaml")
    finally:
        app.close()
        server.stop()


def test_the_example_yaml_has_v3_commented_out() -> None:
    text = (ROOT / "app.example.yaml").read_text(encoding="utf-8")
    import yaml

    plain, switched = yaml.safe_load(text), yaml.safe_load(switched_to_v3(text))
    assert "pays.WechatPayV3Type" not in plain["elements"] and "wechatV3" not in plain["settings"]["sandbox"]
    assert set(switched["elements"]) == {"pays.AliPayType", "pays.WechatPayType", "pays.WechatPayV3Type"}
    assert switched["settings"]["cashier"]["elements"]["pays.WechatPayType"] == {"hidden": True}
    v3 = switched["elements"]["pays.WechatPayV3Type"]["config"]
    sandbox = switched["settings"]["sandbox"]["wechatV3"]
    assert (v3["appId"], v3["mchId"]) == (sandbox["appId"], sandbox["mchId"]) == \
        (switched["elements"]["pays.WechatPayType"]["config"]["appId"], "1900000001")  # the same merchant
    assert v3["wechatpayPublicKeyId"] == sandbox["publicKeyId"]


def test_the_switched_demo_offers_v3_only(demo_v3: LiveApp) -> None:
    from elements.pays.services.PaySvc.choices import cashier_choices

    service = demo_v3.app.loadElement("pays.services.PaySvc")
    assert [p.fullName for p in service.notify_providers("wechatv3")] == ["pays.WechatPayV3Type"]
    assert [p.fullName for p in service.notify_providers("wechat")] == ["pays.WechatPayType"]  # still there
    offered = [c["testid"] for c in cashier_choices(service)]
    assert offered == ["choose-alipay", "choose-wechatv3"]
    assert service.provider("pays.WechatPayV3Type").notify_url() == \
        f"{demo_v3.url}/api/shop/pays/services/PaySvc/notify/wechatv3"


def test_a_buyer_pays_with_wechat_pay_v3_through_the_cashier(context: Any, demo_v3: LiveApp) -> None:  # noqa: F811
    shop = demo_v3
    page = context.new_page()
    errors = watch_console(page)
    cashier_url = buy(page, shop, "ebook")
    order_id = urlsplit(cashier_url).path.rsplit("/", 1)[-1]
    button = page.get_by_test_id("choose-wechatv3")
    assert "微信支付" in button.inner_text()
    button.click()
    qr = page.locator("#qr-image")
    qr.wait_for(state="visible")
    assert qr.evaluate("img => img.complete && img.naturalWidth > 0")
    pay_url = qr.get_attribute("data-pay-url")
    assert pay_url.startswith(shop.url + "/sandbox/wechatpay-v3/wallet/")
    pay_in_wallet(context, pay_url, shop)  # the wallet page of the v3 sandbox; its callback is signed and encrypted
    page.locator("#paid-view").wait_for(state="visible")
    paid = shop.pay_service.query(orderId=order_id)
    assert paid["status"] == "success" and paid["provider"] == "pays.WechatPayV3Type"
    page.get_by_test_id("return-link").click()
    page.wait_for_url(shop.url + "/")
    assert order_row_delivered(page, shop, order_id)
    assert errors == []
