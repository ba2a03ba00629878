"""The cashier's HTTP routes against a live server: the token guard, the security headers, the status JSON and the
pay endpoint's answers and errors."""

from __future__ import annotations

import re
from decimal import Decimal
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.live import ALIPAY_APP_ID, ALIPAY_SELLER_ID, start_live_app, wait_for

SUBJECT = "Cashier test order 收银台测试"
MOBILE_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Version/17.0 Mobile/15E148 Safari/604.1")


def cashier_paths(order: dict) -> tuple[str, str]:
    """(path of the cashier page, its token) from an order's cashierUrl."""
    link = urlsplit(order["cashierUrl"])
    token = dict(p.split("=", 1) for p in link.query.split("&"))["token"]
    return link.path, token


@pytest.fixture
def order(live_app):
    return live_app.pay_service.create(subject=SUBJECT, amount=Decimal("99.99"))


@pytest.fixture
def buyer(live_app):
    """An httpx client without the API key: the cashier needs none."""
    with httpx.Client(base_url=live_app.url, timeout=10) as client:
        yield client


def pay_in_wallet(client: httpx.Client, pay_url: str) -> None:
    """What a buyer does in the sandbox wallet page: press the pay button (post the page's first form)."""
    page = client.get(pay_url, follow_redirects=True)
    assert page.status_code == 200
    action = re.search(r'<form method="post" action="([^"]+)"', page.text).group(1)
    assert client.post(str(page.url.join(action))).status_code in (200, 303)


# -- the token guard ------------------------------------------------------------------------------------------------
def test_page_with_its_token_shows_the_order(buyer, order):
    path, token = cashier_paths(order)
    response = buyer.get(path, params={"token": token})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert SUBJECT in response.text and "99.99" in response.text
    assert 'data-testid="choose-alipay"' in response.text and 'data-testid="choose-wechat"' in response.text


@pytest.mark.parametrize("suffix", ["", "/status"])
@pytest.mark.parametrize("token", [None, "", "wrong-token", "x" * 500])
def test_without_the_token_nothing_is_revealed(buyer, order, suffix, token):
    path, _ = cashier_paths(order)
    params = {} if token is None else {"token": token}
    response = buyer.get(path + suffix, params=params)
    assert response.status_code == 404
    assert SUBJECT not in response.text and "99.99" not in response.text and order["orderId"] not in response.text
    # an order that does not exist looks exactly the same
    missing = buyer.get(path.replace(order["orderId"], "20200101000000000000ABCDEFGH") + suffix, params=params)
    assert missing.status_code == 404
    # the same bytes, but for the page's fresh CSP nonce
    assert re.sub(r'nonce[=-]"?[\w-]+', "", missing.text) == re.sub(r'nonce[=-]"?[\w-]+', "", response.text)


def test_a_token_of_another_order_is_refused(live_app, buyer, order):
    other = live_app.pay_service.create(subject="another", amount=Decimal("1.00"))
    path, _ = cashier_paths(order)
    _, other_token = cashier_paths(other)
    assert buyer.get(path, params={"token": other_token}).status_code == 404
    assert buyer.get(path + "/status", params={"token": other_token}).status_code == 404
    assert buyer.post(path + "/pay", params={"token": other_token},
                      json={"fullName": "pays.AliPayType", "payType": "pc"}).status_code == 404


@pytest.mark.parametrize("order_id", ["..", "not-an-order-id", "%00", "x" * 200, "20200101000000000000ABCDEFG%27"])
def test_malformed_order_ids_are_a_plain_404(buyer, order_id):
    response = buyer.get(f"/pays/cashier/{order_id}/status", params={"token": "t"})
    assert response.status_code == 404


def test_the_token_in_a_header_keeps_it_out_of_urls(buyer, order):
    # what the page's script does: status and pay with X-Cashier-Token, no token in the URL (so none in a log)
    path, token = cashier_paths(order)
    status = buyer.get(path + "/status", headers={"X-Cashier-Token": token})
    assert status.status_code == 200 and status.json()["orderId"] == order["orderId"]
    prep = buyer.post(path + "/pay", headers={"X-Cashier-Token": token},
                      json={"fullName": "pays.AliPayType", "payType": "pc"})
    assert prep.status_code == 200 and prep.json()["payUrl"], prep.text
    for wrong in ("wrong-token", token[:-1], ""):
        assert buyer.get(path + "/status", headers={"X-Cashier-Token": wrong}).status_code == 404
        assert buyer.post(path + "/pay", headers={"X-Cashier-Token": wrong},
                          json={"fullName": "pays.AliPayType", "payType": "pc"}).status_code == 404
    # a wrong header is not rescued by a right query parameter
    assert buyer.get(path + "/status", params={"token": token},
                     headers={"X-Cashier-Token": "wrong-token"}).status_code == 404
    # the page hands its script the token, and the script never puts it in a URL
    page = buyer.get(path, params={"token": token}).text  # its script is inline
    assert f'data-token="{token}"' in page
    assert "?token=" not in page and "X-Cashier-Token" in page


def test_wrong_token_on_the_pay_endpoint(buyer, order):
    path, _ = cashier_paths(order)
    response = buyer.post(path + "/pay", params={"token": "nope"}, json={"fullName": "pays.AliPayType",
                                                                        "payType": "pc"})
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "NOT_FOUND", "message": "not found"}}


# -- headers --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix,token_ok", [("", True), ("", False), ("/status", True), ("/status", False)])
def test_security_headers(buyer, order, suffix, token_ok):
    path, token = cashier_paths(order)
    response = buyer.get(path + suffix, params={"token": token if token_ok else "bad"})
    headers = response.headers
    assert headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "img-src 'self' data:" in csp
    assert "unsafe-inline" not in csp and "http" not in csp


def test_inline_script_and_style_carry_the_csp_nonce(buyer, order):
    path, token = cashier_paths(order)
    response = buyer.get(path, params={"token": token})
    nonce = re.search(r"'nonce-([\w-]+)'", response.headers["content-security-policy"]).group(1)
    assert response.text.count(f'nonce="{nonce}"') == 2  # the <style> and the <script>
    assert not re.search(r"<script(?![^>]*nonce)", response.text)
    assert not re.search(r"""(src|href)=["']https?://""", response.text)  # nothing from elsewhere
    again = buyer.get(path, params={"token": token})
    assert nonce not in again.headers["content-security-policy"]  # fresh per response


def test_the_subject_is_escaped(live_app, buyer):
    order = live_app.pay_service.create(subject='<script>alert("x")</script>&', amount=Decimal("1.00"))
    path, token = cashier_paths(order)
    text = buyer.get(path, params={"token": token}).text
    assert '<script>alert("x")</script>' not in text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;" in text


def test_phones_get_the_mobile_mode(buyer, order):
    path, token = cashier_paths(order)
    assert 'data-mobile="1"' in buyer.get(path, params={"token": token}, headers={"User-Agent": MOBILE_UA}).text
    assert 'data-mobile="0"' in buyer.get(path, params={"token": token}).text


# -- status ---------------------------------------------------------------------------------------------------------
def test_status_json_follows_the_payment(buyer, order):
    path, token = cashier_paths(order)
    status = buyer.get(path + "/status", params={"token": token})
    assert status.status_code == 200
    assert status.json() == {"orderId": order["orderId"], "status": "pending", "amount": "99.99", "payTime": None}

    prep = buyer.post(path + "/pay", params={"token": token}, json={"fullName": "pays.AliPayType", "payType": "pc"})
    assert prep.status_code == 200, prep.text
    pay_in_wallet(buyer, prep.json()["payUrl"])

    paid = wait_for(lambda: (r := buyer.get(path + "/status", params={"token": token}).json())["status"] == "success"
                    and r)
    assert paid["amount"] == "99.99" and paid["payTime"].endswith("+00:00")
    page = buyer.get(path, params={"token": token}).text
    assert 'data-status="success"' in page
    assert re.search(r'id="paid-view"[^>]*>', page).group(0).find("hidden") == -1


def test_an_unchanged_status_is_a_bodiless_304(buyer, order):
    # what the page's script does: poll with the ETag of the last status it got
    path, token = cashier_paths(order)
    auth = {"X-Cashier-Token": token}
    first = buyer.get(path + "/status", headers=auth)
    etag = first.headers["etag"]
    assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
    again = buyer.get(path + "/status", headers={**auth, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert again.headers["x-frame-options"] == "DENY"  # the security headers on every answer
    assert buyer.get(path + "/status", headers={**auth, "If-None-Match": f'"other", W/{etag}'}).status_code == 304
    # the ETag does not stand in for the token
    assert buyer.get(path + "/status", headers={"X-Cashier-Token": "wrong", "If-None-Match": etag}).status_code == 404
    # a change: the full status, with a new ETag
    prep = buyer.post(path + "/pay", headers=auth, json={"fullName": "pays.AliPayType", "payType": "pc"})
    pay_in_wallet(buyer, prep.json()["payUrl"])
    paid = wait_for(lambda: (r := buyer.get(path + "/status", headers={**auth, "If-None-Match": etag}))
                    .status_code == 200 and r)
    assert paid.json()["status"] == "success" and paid.headers["etag"] != etag


# -- pay ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fullName", ["pays.AliPayType", "pays.WechatPayType"])
def test_pay_pc_gives_qr_code_and_wallet_url(live_app, buyer, order, fullName):
    path, token = cashier_paths(order)
    response = buyer.post(path + "/pay", params={"token": token}, json={"fullName": fullName, "payType": "pc"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["orderId"] == order["orderId"]
    assert body["qrCode"].startswith("data:image/png;base64,")
    assert body["payUrl"].startswith(f"{live_app.url}/sandbox/")
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("fullName", ["pays.AliPayType", "pays.WechatPayType"])
def test_pay_mobile_by_form_gives_a_link(buyer, order, fullName):
    path, token = cashier_paths(order)
    response = buyer.post(path + "/pay", params={"token": token}, data={"fullName": fullName, "payType": "mobile"})
    assert response.status_code == 200, response.text
    assert response.json()["qrCode"] is None
    assert response.json()["payUrl"].startswith("http")


@pytest.mark.parametrize("body,status,code", [
    ({"payType": "pc"}, 400, "ARGUMENT_INVALID"),
    ({"fullName": "pays.AliPayType"}, 400, "ARGUMENT_INVALID"),
    ({"fullName": "pays.AliPayType", "payType": 3}, 400, "ARGUMENT_INVALID"),
    ({"fullName": "pays.services.PaySvc", "payType": "pc"}, 400, "UNKNOWN_PAY_TYPE"),
    ({"fullName": "pays.NoSuchPay", "payType": "pc"}, 400, "UNKNOWN_PAY_TYPE"),
    ({"fullName": "pays.Meta", "payType": "pc"}, 400, "UNKNOWN_PAY_TYPE"),
    ({"fullName": "pays.AliPayType", "payType": "banana"}, 400, "UNSUPPORTED_PAY_TYPE"),
    ({"fullName": "pays.WechatPayType", "payType": "page"}, 400, "UNSUPPORTED_PAY_TYPE"),
])
def test_pay_argument_errors(buyer, order, body, status, code):
    path, token = cashier_paths(order)
    response = buyer.post(path + "/pay", params={"token": token}, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("content,content_type", [
    (b"{not json", "application/json"),
    (b"[1, 2]", "application/json"),
    (b"\xff\xfe", "application/x-www-form-urlencoded"),
])
def test_pay_malformed_bodies(buyer, order, content, content_type):
    path, token = cashier_paths(order)
    response = buyer.post(path + "/pay", params={"token": token}, content=content,
                          headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BAD_REQUEST"


def test_pay_oversized_body(buyer, order):
    path, token = cashier_paths(order)
    response = buyer.post(path + "/pay", params={"token": token}, content=b"a" * 100_000,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "BODY_TOO_LARGE"


def test_pay_for_a_paid_order_is_a_conflict(buyer, order):
    path, token = cashier_paths(order)
    prep = buyer.post(path + "/pay", params={"token": token}, json={"fullName": "pays.WechatPayType",
                                                                    "payType": "pc"}).json()
    pay_in_wallet(buyer, prep["payUrl"])
    wait_for(lambda: buyer.get(path + "/status", params={"token": token}).json()["status"] == "success")
    response = buyer.post(path + "/pay", params={"token": token}, json={"fullName": "pays.AliPayType",
                                                                        "payType": "pc"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "ORDER_PAID"


def test_pay_for_a_closed_order_is_a_conflict(live_app, buyer, order):
    live_app.pay_service.close(orderId=order["orderId"])
    path, token = cashier_paths(order)
    response = buyer.post(path + "/pay", params={"token": token}, json={"fullName": "pays.AliPayType",
                                                                        "payType": "pc"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "ORDER_CLOSED"
    assert buyer.get(path + "/status", params={"token": token}).json()["status"] == "closed"
    page = buyer.get(path, params={"token": token}).text
    assert re.search(r'id="closed-view"[^>]*>', page).group(0).find("hidden") == -1


def test_provider_failure_is_a_502(tmp_path):
    keys = ".sandbox"
    broken = {"pays.AliPayType": {"config": {
        "appId": ALIPAY_APP_ID, "sellerId": ALIPAY_SELLER_ID,
        "privateKey": {"$file": f"{keys}/alipay_app_private_key.pem"},
        "alipayPublicKey": {"$file": f"{keys}/alipay_gateway_public_key.pem"},
        "gateway": "http://127.0.0.1:9/gateway.do", "timeout": 2}}}  # nothing listens on port 9
    with start_live_app(tmp_path, elements=broken) as live:
        order = live.pay_service.create(subject=SUBJECT, amount=Decimal("5.00"))
        path, token = cashier_paths(order)
        with httpx.Client(base_url=live.url, timeout=10) as client:
            response = client.post(path + "/pay", params={"token": token},
                                   json={"fullName": "pays.AliPayType", "payType": "pc"})
    assert response.status_code == 502
    body = response.json()
    assert body["error"]["code"] == "PROVIDER_ERROR"
    assert "PRIVATE KEY" not in response.text


def test_only_configured_providers_are_offered(tmp_path):
    # WeChat Pay is not configured in this app: the cashier offers Alipay alone
    with start_live_app(tmp_path, omit=("pays.WechatPayType",)) as live:
        order = live.pay_service.create(subject=SUBJECT, amount=Decimal("5.00"))
        path, token = cashier_paths(order)
        with httpx.Client(base_url=live.url, timeout=10) as client:
            page = client.get(path, params={"token": token})
    assert page.status_code == 200
    assert 'data-testid="choose-alipay"' in page.text
    assert "choose-wechat" not in page.text
