"""Third-party providers' notifications and routes (issue 12): the header-aware contract (NotifyRequest, NotifyReply),
PaySvc's generic notify route for every configured provider, handleNotify for apps with their own web framework (the
FastAPI example of docs/PROVIDERS.md, run as written), and plugin routes only in apps that configure the plugin's
elements. AcmePay (tests/plugins/jitpay-acmepay, an installed distribution) is the third-party provider."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from acmepay.fake import FakeAcmePay
from acmepay.protocol import SIGNATURE_HEADER, signature_header
from elements.pays.Meta import NotifyHeaders, NotifyReply, NotifyRequest
from elements.pays.testing import served_app
from tests.support.live import ServerThread

MERCHANTS = {"m_shop": ("sk_test_shop_0123456789", "whsec_shop_0123456789")}
NOTIFY = "/api/shop/pays/services/PaySvc/notify"
DOC = Path(__file__).resolve().parents[3] / "docs" / "PROVIDERS.md"


def acmepay_config(gateway_url: str) -> dict[str, Any]:
    api_key, secret = MERCHANTS["m_shop"]
    return {"appId": "shop", "jobs": {"runner": False}, "elements": {"acmepay.AcmePayType": {"config": {
        "merchantId": "m_shop", "apiKey": api_key, "webhookSecret": secret, "gateway": gateway_url}}}}


@pytest.fixture
def acme(tmp_path: Path) -> Iterator[tuple[Any, str, FakeAcmePay]]:
    """An app configuring AcmePay, served, with the fake gateway holding its webhooks."""
    with FakeAcmePay(MERCHANTS).serve() as fake, served_app(tmp_path, acmepay_config(fake.url)) as (app, url):
        fake.notify_mode = "hold"
        yield app, url, fake


def paid_webhook(app: Any, fake: FakeAcmePay) -> tuple[str, Any]:
    svc = app.getElement("pays.services.PaySvc")
    order = svc.create(subject="Routes", amount=Decimal("8.88"))
    svc.getPayUrl(orderId=order["orderId"], fullName="acmepay.AcmePayType", payType="pc")
    assert fake.pay(order["orderId"])
    return order["orderId"], fake.take_notifications()[0]


# -- the contract's request and reply ---------------------------------------------------------------------------------
def test_notify_request_headers_are_case_insensitive_and_keep_repeats() -> None:
    request = NotifyRequest(body=b"{}", headers=[(b"Content-Type", b"application/json; charset=utf-8"),
                                                 ("X-Sig", "a"), ("x-sig", "b")], query="a=1&b=2", client="10.0.0.1")
    assert request.headers["content-type"] == request.headers["CONTENT-TYPE"] == "application/json; charset=utf-8"
    assert request.mediaType == "application/json" and request.contentType.endswith("utf-8")
    assert request.headers.getlist("X-SIG") == ["a", "b"] and request.headers["x-sig"] == "a, b"
    assert "X-Sig" in request.headers and list(request.headers) == ["content-type", "x-sig"]
    assert request.queryParams == {"a": "1", "b": "2"} and request.client == "10.0.0.1"
    assert "a" not in repr(request.headers).split("[")[1].replace("'x-sig'", "").replace("'content-type'", "")
    assert NotifyRequest.of(b"x=1", "text/plain").contentType == "text/plain"
    assert isinstance(NotifyRequest(body=b"", headers={"A": "1"}).headers, NotifyHeaders)
    with pytest.raises(TypeError):
        NotifyRequest(body="text")  # type: ignore[arg-type]


def test_notify_reply_carries_status_json_and_headers() -> None:
    reply = NotifyReply.json({"code": "FAIL", "message": "签名错误"}, status=401)
    assert (reply.status, reply.mediaType) == (401, "application/json")
    assert json.loads(reply.body) == {"code": "FAIL", "message": "签名错误"}
    assert NotifyReply.empty().status == 204 and NotifyReply.empty().body == b""
    assert NotifyReply.text("success").body == b"success"


# -- the generic route -----------------------------------------------------------------------------------------------
def test_a_third_party_webhook_pays_through_the_generic_route(acme: Any) -> None:
    app, url, fake = acme
    provider = app.loadElement("acmepay.AcmePayType")
    assert provider.notify_url() == f"{url}{NOTIFY}/acmepay"  # the default notifyUrl
    assert app.classOf(app.getDefine("pays.AliPayType")).notifyPath == "alipayNotify"  # JitAi's paths stay
    order_id, hook = paid_webhook(app, fake)
    assert hook.url == f"{url}{NOTIFY}/acmepay"
    response = hook.deliver()
    assert (response.status_code, response.json()) == (200, {"received": True})
    assert app.getElement("pays.services.PaySvc").query(orderId=order_id)["status"] == "success"
    # the provider got the headers: without its signature header the same body is refused, in its own format
    refused = httpx.post(hook.url, content=hook.body, headers={"Content-Type": "application/json"})
    assert refused.status_code == 400 and "signature" in refused.json()["error"].lower()


@pytest.mark.parametrize("body, content_type", [
    (b"\xff\xfe\x00", "application/json"), (b"[1, 2", "application/json"), (b"a=b", "application/x-www-form-urlencoded"),
    (b"", "application/json"), (b"{\"payment\": 5}", "application/json"),
])
def test_hostile_bodies_are_refused_in_the_providers_format_and_recorded(acme: Any, body: bytes,
                                                                         content_type: str) -> None:
    app, url, _ = acme
    ledger = app.loadElement("pays.services.PaySvc").ledger
    before = len(ledger.audit_log())
    response = httpx.post(f"{url}{NOTIFY}/acmepay", content=body, headers={"Content-Type": content_type,
                                                                          SIGNATURE_HEADER: "t=1,v1=" + "0" * 64})
    assert response.status_code == 400 and "error" in response.json()
    rows = ledger.audit_log()[before:]
    assert [r.outcome for r in rows] == ["rejected"] and rows[0].provider == "acmepay.AcmePayType"


def test_unknown_provider_is_a_404_json_error_and_a_big_body_a_413(acme: Any) -> None:
    app, url, _ = acme
    for name in ("nosuchpay", "wechat"):  # WeChat Pay is installed but not configured in this app
        response = httpx.post(f"{url}{NOTIFY}/{name}", content=b"{}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "UNKNOWN_PAY_TYPE"
    ledger = app.loadElement("pays.services.PaySvc").ledger
    before = len(ledger.audit_log())
    big = httpx.post(f"{url}{NOTIFY}/acmepay", content=b"{" + b" " * (16 * 1024) + b"}",
                     headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "BODY_TOO_LARGE"
    assert [r.errorCode for r in ledger.audit_log()[before:]] == ["BODY_TOO_LARGE"]


def test_handle_notify_never_raises_for_what_a_request_holds(acme: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _, fake = acme
    svc = app.loadElement("pays.services.PaySvc")
    order_id, hook = paid_webhook(app, fake)
    request = NotifyRequest(body=hook.body, headers=hook.headers)
    monkeypatch.setattr(svc.ledger, "apply_paid", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("db away")))
    reply = svc.handleNotify("acmepay", request)
    assert reply.status == 400 and json.loads(reply.body) == {"error": "internal error"}
    monkeypatch.undo()
    assert svc.handleNotify("acmepay", request).status == 200
    assert svc.query(order_id)["status"] == "success"


# -- handleNotify in an app's own FastAPI ------------------------------------------------------------------------------
def fastapi_example() -> str:
    """The FastAPI example of docs/PROVIDERS.md, as written."""
    text = DOC.read_text(encoding="utf-8")
    return re.search(r"```python\n(# fastapi_shop\.py\n.*?)```", text, re.DOTALL).group(1)


def test_the_fastapi_example_of_the_docs_takes_notifications(acme: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    app, _, fake = acme
    order_id, hook = paid_webhook(app, fake)
    monkeypatch.chdir(tmp_path)  # the example loads app.yaml from the working directory: the served app's YAML
    namespace: dict[str, Any] = {}
    exec(compile(fastapi_example(), "fastapi_shop.py", "exec"), namespace)
    try:
        with ServerThread(namespace["api"]) as server, httpx.Client(base_url=server.url, timeout=10) as client:
            unknown = client.post("/payments/notify/nosuchpay", content=b"{}")
            assert unknown.status_code == 404
            paid = client.post("/payments/notify/acmepay", content=hook.body, headers=hook.headers)
            assert (paid.status_code, paid.json()) == (200, {"received": True})
            again = client.post("/payments/notify/acmepay", content=hook.body, headers=hook.headers)
            assert again.status_code == 200
            forged = dict(hook.headers, **{SIGNATURE_HEADER: signature_header("not-the-secret", hook.body)})
            assert client.post("/payments/notify/acmepay", content=hook.body, headers=forged).status_code == 400
    finally:
        namespace["shop"].close()
    assert namespace["pay_service"].query(order_id)["status"] == "success"


# -- plugin routes only where they belong --------------------------------------------------------------------------
def test_a_plugin_route_is_mounted_only_in_apps_that_configure_its_elements(acme: Any, tmp_path: Path) -> None:
    app, url, _ = acme
    assert app.configures("acmepay.AcmePayType") and not app.configures("pays.AliPayType")
    assert not app.configures("no.such.Element")
    assert httpx.get(f"{url}/acmepay/return").status_code == 200
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    with served_app(other_dir, {"appId": "shop", "jobs": {"runner": False}}) as (other, other_url):
        assert "acmepay.AcmePayType" in other.elementNames()  # installed everywhere...
        assert not other.configures("acmepay.AcmePayType")    # ...configured here only by the first app
        assert httpx.get(f"{other_url}/acmepay/return").status_code == 404
        response = httpx.post(f"{other_url}{NOTIFY}/acmepay", content=b"{}",
                              headers={"Content-Type": "application/json"})
        assert response.status_code == 404 and response.json()["error"]["code"] == "UNKNOWN_PAY_TYPE"
        assert other.loadElement("pays.services.PaySvc").configured_providers() == []
