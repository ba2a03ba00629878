"""The declared functions as an HTTP API, over real HTTP against a live server: the documented flow, the API key, and
every error status with its JSON shape, stable code and no secret in it."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any, Iterable, Iterator

import httpx
import pytest

from tests.support.live import API_KEY, LiveApp, pay_in_wallet, start_live_app, wait_for

SVC = "/api/shop/pays/services/PaySvc"
PAYSVC = "pays.services.PaySvc"


# -- helpers shared with the other HTTP test modules ----------------------------------------------------------------
def sandbox_secrets(live: LiveApp) -> list[str]:
    """Every secret the live app holds: the API key, the private keys (each line of their PEM bodies) and the WeChat
    Pay API key, as read from the app's ``.sandbox`` folder."""
    keys = live.yaml_path.parent / ".sandbox"
    found = [API_KEY, (keys / "wechat_api_key.txt").read_text().strip()]
    for pem in sorted(keys.glob("*private_key.pem")):
        found += [line.strip() for line in pem.read_text().splitlines()
                  if line.strip() and not line.startswith("-----")]
    return found


def assert_no_secret(live: LiveApp, text: str) -> None:
    assert "PRIVATE KEY" not in text
    for secret in sandbox_secrets(live):
        assert secret not in text, "a secret appears in a response"


def assert_error(live: LiveApp, response: httpx.Response, status: int, code: str | Iterable[str]) -> dict[str, Any]:
    """``response`` is ``{"error": {"code", "message"}}`` with ``status`` and the stable ``code``, and no secret."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    codes = {code} if isinstance(code, str) else set(code)
    assert error["code"] in codes, body
    assert isinstance(error["message"], str) and error["message"].strip(), body
    assert_no_secret(live, response.text)
    return error


# -- fixtures -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """One live app for the module (every test makes its own orders)."""
    with start_live_app(tmp_path_factory.mktemp("api")) as live_app:
        yield live_app


@pytest.fixture
def api(live: LiveApp) -> Iterator[httpx.Client]:
    """A client with the API key."""
    with live.client() as client:
        yield client


@pytest.fixture
def anonymous(live: LiveApp) -> Iterator[httpx.Client]:
    """A client without any Authorization header."""
    with httpx.Client(base_url=live.url, timeout=10) as client:
        yield client


def create(api: httpx.Client, subject: str = "HTTP test order", amount: Any = "12.34", **extra: Any) -> dict:
    response = api.post(f"{SVC}/create", json={"subject": subject, "amount": amount, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def query(api: httpx.Client, order_id: str) -> dict:
    response = api.post(f"{SVC}/query", json={"orderId": order_id})
    assert response.status_code == 200, response.text
    return response.json()


# -- the documented flow --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("full_name", ["pays.AliPayType", "pays.WechatPayType"])
def test_documented_flow_over_http(live: LiveApp, api: httpx.Client, full_name: str) -> None:
    created = api.post(f"{SVC}/create", json={"subject": "Product Purchase Order", "amount": 99.99})
    assert created.status_code == 200, created.text
    assert created.headers["content-type"].startswith("application/json")
    order = created.json()
    # money is the exact string with two places, never a JSON number
    assert order["amount"] == "99.99" and isinstance(order["amount"], str)
    assert '"amount":99.99' not in created.text.replace(" ", "")
    assert order["status"] == "pending" and order["refundedAmount"] == "0.00"
    order_id = order["orderId"]

    url = api.post(f"{SVC}/getPayUrl", json={"orderId": order_id, "fullName": full_name, "payType": "pc"})
    assert url.status_code == 200, url.text
    prepared = url.json()
    assert prepared["orderId"] == order_id and prepared["payUrl"].startswith(live.url)
    assert prepared["qrCode"].startswith("data:image/png;base64,")
    assert isinstance(prepared["expiresAt"], str)

    assert query(api, order_id)["status"] == "pending"
    pay_in_wallet(prepared["payUrl"])
    paid = wait_for(lambda: (q := query(api, order_id))["status"] == "success" and q)
    assert paid["amount"] == "99.99" and paid["provider"] == full_name and paid["tradeNo"]
    assert isinstance(paid["payTime"], str) and paid["payTime"]

    checked = api.post(f"{SVC}/check", json={"orderId": order_id, "fullName": full_name})
    assert checked.status_code == 200, checked.text
    assert checked.json()["status"] == "success" and checked.json()["providerStatus"] == "success"


@pytest.mark.parametrize("raw, shown", [(b"19.9", "19.90"), (b"0.1", "0.10"), (b"100", "100.00"),
                                        (b'"7.05"', "7.05"), (b"1E+2", "100.00")])
def test_amount_is_exact_both_ways(api: httpx.Client, raw: bytes, shown: str) -> None:
    response = api.post(f"{SVC}/create", content=b'{"subject": "exact", "amount": ' + raw + b"}",
                        headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["amount"] == shown
    assert query(api, response.json()["orderId"])["amount"] == shown


# -- 400 --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("function, body, code, mentions", [
    ("create", {}, "ARGUMENT_INVALID", "subject"),
    ("create", {"subject": "x"}, "ARGUMENT_INVALID", "amount"),
    ("create", {"subject": "x", "amount": "1.00", "colour": "red"}, "ARGUMENT_INVALID", "colour"),
    ("create", {"subject": 5, "amount": "1.00"}, "ARGUMENT_INVALID", "subject"),
    ("create", {"subject": "x", "amount": "abc"}, "ARGUMENT_INVALID", "amount"),
    ("create", {"subject": "x", "amount": True}, "ARGUMENT_INVALID", "amount"),
    ("create", {"subject": "x", "amount": [1]}, "ARGUMENT_INVALID", "amount"),
    ("create", {"subject": "x" * 256, "amount": "1.00"}, "ARGUMENT_INVALID", "subject"),
    ("create", {"subject": "x", "amount": "1.00", "orderId": 12345678}, "ARGUMENT_INVALID", "orderId"),
    ("getPayUrl", {"orderId": "ORDER_X1", "fullName": "pays.AliPayType"}, "ARGUMENT_INVALID", "payType"),
    ("query", {"orderId": ["a"]}, "ARGUMENT_INVALID", "orderId"),
    ("query", {"orderId": {"$ne": 1}}, "ARGUMENT_INVALID", "orderId"),
    ("refund", {"orderId": "ORDER_X1", "amount": {"v": 1}}, "ARGUMENT_INVALID", "amount"),
    ("create", {"subject": "x", "amount": 0}, "AMOUNT_INVALID", None),
    ("create", {"subject": "x", "amount": "-1.00"}, "AMOUNT_INVALID", None),
    ("create", {"subject": "x", "amount": "1.001"}, "AMOUNT_INVALID", None),
    ("create", {"subject": "x", "amount": "NaN"}, "AMOUNT_INVALID", None),
    ("create", {"subject": "x", "amount": "100000000000"}, "AMOUNT_INVALID", None),
    ("create", {"subject": "x", "amount": "1.00", "orderId": "a b/../c"}, "ORDER_ID_INVALID", None),
    ("create", {"subject": "   ", "amount": "1.00"}, "SUBJECT_INVALID", None),
    # text a provider cannot carry (issue 11, item 1): refused at the door, naming the argument
    ("create", {"subject": "VIP\x1f", "amount": "1.00"}, "ARGUMENT_INVALID", "subject"),
    ("create", {"subject": "a\x07b", "amount": "1.00"}, "ARGUMENT_INVALID", "subject"),
    ("create", {"subject": "two\nlines", "amount": "1.00"}, "ARGUMENT_INVALID", "subject"),
    ("create", {"subject": "VIP\r", "amount": "1.00"}, "ARGUMENT_INVALID", "subject"),
    ("create", {"subject": "VIP\ufffe", "amount": "1.00"}, "SUBJECT_INVALID", "subject"),
    ("create", {"subject": "VIP\uffff", "amount": "1.00"}, "SUBJECT_INVALID", "subject"),
    ("refund", {"orderId": "ORDER_X1", "reason": "a\x1fb"}, "ARGUMENT_INVALID", "reason"),
    ("refund", {"orderId": "ORDER_X1", "reason": "\uffff"}, "ARGUMENT_INVALID", "reason"),
    ("getPayUrl", {"orderId": "ORDER_X1", "fullName": "pays.WechatPayType", "payType": "pc",
                   "clientIp": "999.1.1.1"}, "ARGUMENT_INVALID", "clientIp"),
    ("getPayUrl", {"orderId": "ORDER_X1", "fullName": "pays.WechatPayType", "payType": "pc",
                   "clientIp": "<a>"}, "ARGUMENT_INVALID", "clientIp"),
    ("getPayUrl", {"orderId": "ORDER_X1", "fullName": "pays.WechatPayType", "payType": "pc",
                   "clientIp": "1.2.3.4\n"}, "ARGUMENT_INVALID", "clientIp"),
    ("getPayUrl", {"orderId": "ORDER_X1", "fullName": "pays.WechatPayType", "payType": "pc",
                   "clientIp": "fe80::1%eth0"}, "ARGUMENT_INVALID", "clientIp"),
    ("getPayUrl", {"orderId": "ORDER_X1", "fullName": "pays.WechatPayType", "payType": "pc",
                   "clientIp": ""}, "ARGUMENT_INVALID", "clientIp"),
])
def test_bad_arguments_are_400(live: LiveApp, api: httpx.Client, function: str, body: dict, code: str,
                               mentions: str | None) -> None:
    error = assert_error(live, api.post(f"{SVC}/{function}", json=body), 400, code)
    if mentions:  # the message names the element, the function and the argument
        assert PAYSVC in error["message"] and function in error["message"] and mentions in error["message"]


@pytest.mark.parametrize("raw", [b"{", b"not json", b"{'subject': 'x'}", b'{"subject": "x",}', b"\xff\xfe\x00",
                                 b'{"subject": "x", "amount": 1' + b"1" * 5000 + b"}"])
def test_body_not_json_is_400(live: LiveApp, api: httpx.Client, raw: bytes) -> None:
    response = api.post(f"{SVC}/create", content=raw, headers={"content-type": "application/json"})
    assert_error(live, response, 400, "BAD_REQUEST")


@pytest.mark.parametrize("raw", [b"[]", b'[{"subject": "x", "amount": 1}]', b'"x"', b"42", b"null", b"true"])
def test_body_not_an_object_is_400(live: LiveApp, api: httpx.Client, raw: bytes) -> None:
    response = api.post(f"{SVC}/create", content=raw, headers={"content-type": "application/json"})
    assert_error(live, response, 400, "BAD_REQUEST")


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 50_000 + b"1" + b"}" * 50_000],
                         ids=["nested-arrays", "nested-objects"])
def test_deeply_nested_json_is_400_not_500(live: LiveApp, api: httpx.Client, raw: bytes) -> None:
    # Valid JSON, well under the body limit, but nested deeper than Python's json module recurses.
    response = api.post(f"{SVC}/create", content=raw, headers={"content-type": "application/json"})
    assert_error(live, response, 400, "BAD_REQUEST")


@pytest.mark.parametrize("function, raw", [
    ("create", b'{"subject": "\\ud800", "amount": "1.00"}'),
    ("query", b'{"orderId": "ORDER_\\udfff"}'),
    ("create", b'{"\\udfff": 1}'),  # echoed in the error message: written as a JSON escape, not a 500
    ("check", b'{"orderId": "ORDER_X1", "fullName": "pays.AliPayType", "x\\ud800": 1}'),
], ids=["create-subject", "query-orderId", "argument-name", "argument-name-2"])
def test_lone_surrogate_in_text_is_400_not_500(live: LiveApp, api: httpx.Client, function: str, raw: bytes) -> None:
    # JSON allows the escape "\ud800"; Python decodes it to a lone surrogate, which is not text any database stores.
    response = api.post(f"{SVC}/{function}", content=raw, headers={"content-type": "application/json"})
    assert_error(live, response, 400, ("BAD_REQUEST", "ARGUMENT_INVALID"))


def test_text_a_provider_cannot_carry_is_refused_before_anything_is_stored_or_sent(
        live: LiveApp, api: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from jitpay_sandbox.registry import sandbox_of

    wechat = sandbox_of(live.app, "wechat")
    provider = live.app.loadElement("pays.WechatPayType")
    handed: dict[str, Any] = {}
    prepare = provider.prepare

    def recording_prepare(order: Any, payType: str, *, clientIp: str | None = None) -> Any:
        handed[order.orderId] = clientIp
        return prepare(order, payType, clientIp=clientIp)

    monkeypatch.setattr(provider, "prepare", recording_prepare)
    order_id = create(api, "Carry me", "2.22")["orderId"]
    sent = list(wechat.references())
    for client_ip in ("999.1.1.1", "<a>", "1.2.3", "::g", "1.2.3.4/24", "a\x1fb"):
        response = api.post(f"{SVC}/getPayUrl", json={"orderId": order_id, "fullName": "pays.WechatPayType",
                                                      "payType": "pc", "clientIp": client_ip})
        error = assert_error(live, response, 400, "ARGUMENT_INVALID")
        assert "clientIp" in error["message"]
    assert wechat.references() == sent  # nothing went to WeChat Pay
    # an address is sent in its canonical form (an IPv4-mapped IPv6 address as IPv4)
    for client_ip, expected in (("::ffff:10.1.2.3", "10.1.2.3"), (" 2001:DB8::1 ", "2001:db8::1")):
        mine = create(api, "Carry me", "2.22")["orderId"]
        response = api.post(f"{SVC}/getPayUrl", json={"orderId": mine, "fullName": "pays.WechatPayType",
                                                      "payType": "pc", "clientIp": client_ip})
        assert response.status_code == 200, response.text
        assert handed[mine] == expected

    # a refund reason with a control character is refused before the refund is reserved or sent
    paid_id = create(api, "Refund me", "3.33")["orderId"]
    prepared = api.post(f"{SVC}/getPayUrl", json={"orderId": paid_id, "fullName": "pays.WechatPayType",
                                                  "payType": "pc"})
    pay_in_wallet(prepared.json()["payUrl"])
    wait_for(lambda: query(api, paid_id)["status"] == "success")
    for reason in ("oops\x07", "line\nbreak", "\ufffe"):
        response = api.post(f"{SVC}/refund", json={"orderId": paid_id, "reason": reason, "refundId": "RF-CTRL"})
        error = assert_error(live, response, 400, "ARGUMENT_INVALID")
        assert "reason" in error["message"]
    assert query(api, paid_id)["refunds"] == [] and wechat.captured(paid_id) == Decimal("3.33")
    assert wechat.trade(paid_id)["refunded_fee"] == 0
    refunded = api.post(f"{SVC}/refund", json={"orderId": paid_id, "reason": "tab\tis fine", "refundId": "RF-CTRL"})
    assert refunded.status_code == 200 and refunded.json()["status"] == "confirmed", refunded.text


# -- 401 / 403 and public functions --------------------------------------------------------------------------------
def declared(live: LiveApp) -> list[tuple[str, Any]]:
    """(fullName, function spec) of every declared function of every element of the app."""
    found = []
    for name in live.app.elementNames():
        for spec in live.app.getDefine(name).functionList:
            found.append((name, spec))
    return found


@pytest.mark.parametrize("headers", [{}, {"Authorization": ""}, {"Authorization": "Bearer"},
                                     {"Authorization": f"Basic {API_KEY}"},
                                     {"Authorization": API_KEY}, {"X-Api-Key": API_KEY}],
                         ids=["none", "empty", "bearer-only", "basic", "bare-key", "other-header"])
def test_api_key_required(live: LiveApp, headers: dict) -> None:
    with httpx.Client(base_url=live.url, timeout=10, headers=headers) as client:
        order_id = "NOKEY_" + uuid.uuid4().hex[:16]
        response = client.post(f"{SVC}/create", json={"subject": "x", "amount": "1.00", "orderId": order_id})
        assert_error(live, response, 401, "UNAUTHORIZED")
    with live.client() as api:  # nothing was created
        assert_error(live, api.post(f"{SVC}/query", json={"orderId": order_id}), 404, "ORDER_NOT_EXIST")


@pytest.mark.parametrize("key", ["wrong-key", API_KEY[:-1], API_KEY + "0", API_KEY.upper(), f"{API_KEY} extra"])
def test_wrong_api_key_refused(live: LiveApp, key: str) -> None:
    with httpx.Client(base_url=live.url, timeout=10, headers={"Authorization": f"Bearer {key}"}) as client:
        response = client.post(f"{SVC}/create", json={"subject": "x", "amount": "1.00", "orderId": "WRONGKEY_1"})
        assert_error(live, response, 403, "FORBIDDEN")
        assert key not in response.text
    with live.client() as api:
        assert_error(live, api.post(f"{SVC}/query", json={"orderId": "WRONGKEY_1"}), 404, "ORDER_NOT_EXIST")


def test_every_protected_function_needs_the_key(live: LiveApp, anonymous: httpx.Client) -> None:
    protected = [(name, spec) for name, spec in declared(live) if not spec.public]
    assert {spec.name for name, spec in protected if name == PAYSVC} == {
        "create", "getPayUrl", "query", "check", "close", "refund"}
    for name, spec in protected:
        path = f"/api/shop/{name.replace('.', '/')}/{spec.name}"
        assert_error(live, anonymous.post(path, json={}), 401, "UNAUTHORIZED")
        assert_error(live, anonymous.post(path, json={}, headers={"Authorization": "Bearer nope"}), 403, "FORBIDDEN")


ANONYMOUS_PATHS = [
    "/api/shop/pays/services/PaySv/create",        # a typo of an element: no "did you mean"
    "/api/shop/pays/services/PaySvc/create",       # a protected function
    "/api/shop/pays/services/PaySvc/nope",         # an undeclared function of an element that exists
    "/api/shop/pays/services/PaySvc/jit_setup",    # a Python method that is not declared
    "/api/shop/pays/AliPayType/query",             # a Type element
    "/api/shop/pays/Meta/query",                   # a Meta element
    "/api/shop/nothing/here/at/all",               # no such element
    "/api/shop/query",                             # no element path
    "/api/shop/",                                  # nothing at all
    "/api/other/pays/services/PaySvc/query",       # another app id
    "/api/shop/pays/services/PaySvc/alipayNotify/x",  # a public function's name as an element path
]


@pytest.mark.parametrize("headers, status, code", [({}, 401, "UNAUTHORIZED"),
                                                   ({"Authorization": "Bearer wrong-key"}, 403, "FORBIDDEN")],
                         ids=["no-key", "wrong-key"])
def test_anonymous_callers_learn_nothing(live: LiveApp, headers: dict, status: int, code: str) -> None:
    """The key is checked before the path is looked up: without a valid key every path but a public function's
    answers the very same 401/403, whether it names an element, a function, a typo or nothing at all."""
    bodies = set()
    with httpx.Client(base_url=live.url, timeout=10, headers=headers) as client:
        for path in ANONYMOUS_PATHS:
            response = client.post(path, json={"orderId": "ORDER_X1", "subject": "x", "amount": "1.00"})
            error = assert_error(live, response, status, code)
            assert "PaySvc" not in error["message"] and "mean" not in error["message"], (path, error)
            bodies.add(response.content)
    assert len(bodies) == 1, bodies
    with live.client() as api:  # with the key the same typo is a 404 with a suggestion, as before
        error = assert_error(live, api.post(ANONYMOUS_PATHS[0], json={}), 404, "ELEMENT_NOT_FOUND")
        assert "pays.services.PaySvc" in error["message"]


def test_the_openapi_document_shows_anonymous_callers_the_public_functions_only(live: LiveApp) -> None:
    with httpx.Client(base_url=live.url, timeout=10) as anonymous:
        public = anonymous.get("/openapi.json")
        wrong = anonymous.get("/openapi.json", headers={"Authorization": "Bearer wrong-key"})
    assert public.status_code == wrong.status_code == 200 and public.json() == wrong.json()
    assert set(public.json()["paths"]) == {f"{SVC}/alipayNotify", f"{SVC}/wechatNotify"}
    with live.client() as api:
        everything = api.get("/openapi.json").json()
    assert f"{SVC}/create" in everything["paths"] and set(public.json()["paths"]) < set(everything["paths"])


def test_the_key_is_accepted_in_any_scheme_case(live: LiveApp) -> None:
    with httpx.Client(base_url=live.url, timeout=10, headers={"Authorization": f"bearer {API_KEY}"}) as client:
        assert client.post(f"{SVC}/create", json={"subject": "x", "amount": "1.00"}).status_code == 200


def test_public_functions_need_no_key(live: LiveApp, anonymous: httpx.Client) -> None:
    public = [(name, spec) for name, spec in declared(live) if spec.public]
    assert {spec.name for name, spec in public if name == PAYSVC} == {"alipayNotify", "wechatNotify"}
    for name, spec in public:
        path = f"/api/shop/{name.replace('.', '/')}/{spec.name}"
        for headers in ({}, {"Authorization": "Bearer wrong-key"}):
            response = anonymous.post(path, content=b"", headers=headers)
            assert response.status_code not in (401, 403, 404, 500), (path, response.text)
    # and they answer in the provider's own format, not with an auth error
    alipay = anonymous.post(f"{SVC}/alipayNotify", content=b"a=1",
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert alipay.status_code == 200 and alipay.text == "failure"
    wechat = anonymous.post(f"{SVC}/wechatNotify", content=b"<xml><a>1</a></xml>")
    assert wechat.status_code == 200 and "<return_code><![CDATA[FAIL]]></return_code>" in wechat.text


def test_healthz(anonymous: httpx.Client) -> None:
    response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


# -- 404 --------------------------------------------------------------------------------------------------------------
def test_unknown_element_is_404(live: LiveApp, api: httpx.Client) -> None:
    error = assert_error(live, api.post("/api/shop/pays/services/PaySvx/query", json={"orderId": "x"}), 404,
                         "ELEMENT_NOT_FOUND")
    assert "pays.services.PaySvx" in error["message"] and "pays.services.PaySvc" in error["message"]  # a suggestion
    assert_error(live, api.post("/api/shop/nothing/here/at/all", json={}), 404, "ELEMENT_NOT_FOUND")


@pytest.mark.parametrize("function", ["nope", "jit_setup", "handle_notify", "provider", "order_dict", "_order",
                                      "__init__", "store"])
def test_unknown_or_undeclared_function_is_404(live: LiveApp, api: httpx.Client, function: str) -> None:
    # only functionList functions are callable: public Python methods that are not declared are not reachable
    error = assert_error(live, api.post(f"{SVC}/{function}", json={}), 404, "FUNCTION_NOT_FOUND")
    assert function in error["message"]


def test_type_and_meta_elements_have_no_functions(live: LiveApp, api: httpx.Client) -> None:
    assert_error(live, api.post("/api/shop/pays/AliPayType/query", json={}), 404, "FUNCTION_NOT_FOUND")
    assert_error(live, api.post("/api/shop/pays/Meta/query", json={}), 404, "FUNCTION_NOT_FOUND")
    assert_error(live, api.post("/api/shop/query", json={}), 404, "FUNCTION_NOT_FOUND")


@pytest.mark.parametrize("function, body", [
    ("query", {"orderId": "NO_SUCH_ORDER_1"}),
    ("getPayUrl", {"orderId": "NO_SUCH_ORDER_1", "fullName": "pays.AliPayType", "payType": "pc"}),
    ("check", {"orderId": "NO_SUCH_ORDER_1", "fullName": "pays.WechatPayType"}),
    ("close", {"orderId": "NO_SUCH_ORDER_1"}),
    ("refund", {"orderId": "NO_SUCH_ORDER_1"}),
])
def test_unknown_order_is_404(live: LiveApp, api: httpx.Client, function: str, body: dict) -> None:
    assert_error(live, api.post(f"{SVC}/{function}", json=body), 404, "ORDER_NOT_EXIST")


def test_wrong_app_id_in_path_is_404(live: LiveApp, api: httpx.Client) -> None:
    order = create(api)
    for app_id in ("other", "SHOP", "shop2"):
        response = api.post(f"/api/{app_id}/pays/services/PaySvc/query", json={"orderId": order["orderId"]})
        assert_error(live, response, 404, "ELEMENT_NOT_FOUND")
        assert order["orderId"] not in response.text


def test_unknown_pay_type_and_payment_element_are_400(live: LiveApp, api: httpx.Client) -> None:
    order = create(api)
    for full_name in ("pays.NoSuchPay", "pays.services.PaySvc", "pays.Meta"):
        response = api.post(f"{SVC}/getPayUrl", json={"orderId": order["orderId"], "fullName": full_name,
                                                      "payType": "pc"})
        assert_error(live, response, 400, "UNKNOWN_PAY_TYPE")
    response = api.post(f"{SVC}/getPayUrl", json={"orderId": order["orderId"], "fullName": "pays.WechatPayType",
                                                  "payType": "page"})
    assert_error(live, response, 400, "UNSUPPORTED_PAY_TYPE")


# -- 409 --------------------------------------------------------------------------------------------------------------
def test_duplicate_order_is_409(live: LiveApp, api: httpx.Client) -> None:
    first = create(api, "Duplicate me", "5.00", orderId="DUP_ORDER_1")
    # the same order again is idempotent
    again = create(api, "Duplicate me", "5.00", orderId="DUP_ORDER_1")
    assert again["orderId"] == first["orderId"] and again["createdAt"] == first["createdAt"]
    for other in ({"subject": "Duplicate me", "amount": "5.01"}, {"subject": "Something else", "amount": "5.00"}):
        response = api.post(f"{SVC}/create", json={**other, "orderId": "DUP_ORDER_1"})
        assert_error(live, response, 409, "DUPLICATE_ORDER")
    assert query(api, "DUP_ORDER_1")["amount"] == "5.00" and query(api, "DUP_ORDER_1")["subject"] == "Duplicate me"


def test_closed_order_is_409(live: LiveApp, api: httpx.Client) -> None:
    order = create(api)
    order_id = order["orderId"]
    prepared = api.post(f"{SVC}/getPayUrl", json={"orderId": order_id, "fullName": "pays.AliPayType", "payType": "pc"})
    assert prepared.status_code == 200, prepared.text
    closed = api.post(f"{SVC}/close", json={"orderId": order_id})
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    for full_name in ("pays.AliPayType", "pays.WechatPayType"):
        response = api.post(f"{SVC}/getPayUrl", json={"orderId": order_id, "fullName": full_name, "payType": "pc"})
        assert_error(live, response, 409, "ORDER_CLOSED")
    assert_error(live, api.post(f"{SVC}/refund", json={"orderId": order_id}), 409, "ORDER_STATE_CONFLICT")
    assert query(api, order_id)["status"] == "closed"


def test_paid_order_is_409(live: LiveApp, api: httpx.Client) -> None:
    order_id = create(api, "Pay me", "3.21")["orderId"]
    prepared = api.post(f"{SVC}/getPayUrl", json={"orderId": order_id, "fullName": "pays.WechatPayType",
                                                  "payType": "pc"})
    assert prepared.status_code == 200, prepared.text
    pay_in_wallet(prepared.json()["payUrl"])
    wait_for(lambda: query(api, order_id)["status"] == "success")
    for full_name in ("pays.AliPayType", "pays.WechatPayType"):
        response = api.post(f"{SVC}/getPayUrl", json={"orderId": order_id, "fullName": full_name, "payType": "pc"})
        assert_error(live, response, 409, "ORDER_PAID")
    assert_error(live, api.post(f"{SVC}/close", json={"orderId": order_id}), 409, "ORDER_PAID")
    assert query(api, order_id)["status"] == "success"


def test_refund_of_an_unpaid_order_is_409(live: LiveApp, api: httpx.Client) -> None:
    order_id = create(api)["orderId"]
    assert_error(live, api.post(f"{SVC}/refund", json={"orderId": order_id}), 409, "ORDER_STATE_CONFLICT")


# -- 413 --------------------------------------------------------------------------------------------------------------
def test_body_too_large_is_413(live: LiveApp, api: httpx.Client) -> None:
    big = json.dumps({"subject": "x" * (1024 * 1024), "amount": "1.00"}).encode()
    response = api.post(f"{SVC}/create", content=big, headers={"content-type": "application/json"})
    assert_error(live, response, 413, "BODY_TOO_LARGE")


def test_streamed_body_too_large_is_413(live: LiveApp, api: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"subject": "'
        for _ in range(1100):
            yield b"x" * 1024
        yield b'", "amount": "1.00"}'

    response = api.post(f"{SVC}/create", content=chunks(), headers={"content-type": "application/json"})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_error(live, response, 413, "BODY_TOO_LARGE")


def test_a_body_under_the_limit_is_read(api: httpx.Client) -> None:
    body = json.dumps({"subject": "x", "amount": "1.00", "padding": " " * 1000}).encode()
    response = api.post(f"{SVC}/create", content=body + b" " * (900 * 1024))
    assert response.status_code == 400 and "padding" in response.json()["error"]["message"]


# -- 502 --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def provider_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """An app whose providers' gateways are a closed loopback port."""
    elements = {"pays.AliPayType": {"config": {"gateway": "http://127.0.0.1:9/gateway.do", "timeout": 1}},
                "pays.WechatPayType": {"config": {"gateway": "http://127.0.0.1:9/wechat", "timeout": 1}}}
    with start_live_app(tmp_path_factory.mktemp("down"), elements=elements) as live_app:
        yield live_app


@pytest.mark.parametrize("full_name", ["pays.AliPayType", "pays.WechatPayType"])
def test_provider_failure_is_502(provider_down: LiveApp, full_name: str) -> None:
    with provider_down.client() as api:
        order_id = create(api)["orderId"]
        response = api.post(f"{SVC}/getPayUrl", json={"orderId": order_id, "fullName": full_name, "payType": "pc"})
        assert_error(provider_down, response, 502, "PROVIDER_ERROR")
        response = api.post(f"{SVC}/check", json={"orderId": order_id, "fullName": full_name})
        assert_error(provider_down, response, 502, "PROVIDER_ERROR")
        assert query(api, order_id)["status"] == "pending"
        # the failed check is on record
        store = provider_down.app.loadElement(PAYSVC).ledger
        assert [row.outcome for row in store.audit_log(order_id, kinds=["check"])] == ["provider-error"]


def test_the_secret_check_knows_the_secrets(live: LiveApp) -> None:
    # guard for the helpers above: they really look for the secrets
    found = sandbox_secrets(live)
    assert API_KEY in found and len(found) > 10 and all(len(s) >= 16 for s in found)


def test_error_bodies_are_json_even_for_a_path_without_function(live: LiveApp, api: httpx.Client) -> None:
    assert_error(live, api.post("/api/shop/", json={}), 404, ("FUNCTION_NOT_FOUND", "ELEMENT_NOT_FOUND"))


# -- NUL in text, on every supported database -----------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def any_db_live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """The live app on embedded SQLite and on PostgreSQL (whose text columns cannot hold NUL)."""
    database = request.getfixturevalue("postgres_server").new_database() if request.param == "postgresql" else None
    with start_live_app(tmp_path_factory.mktemp(f"nul-{request.param}"), database=database) as live_app:
        yield live_app


@pytest.mark.parametrize("function, body", [
    ("create", {"subject": "a\u0000b", "amount": "1.00"}),
    ("query", {"orderId": "ORDER\u0000X"}),
    ("close", {"orderId": "ORDER\u0000X"}),
], ids=["create-subject", "query-orderId", "close-orderId"])
def test_nul_in_text_is_not_a_500(any_db_live: LiveApp, function: str, body: dict) -> None:
    # "\u0000" is valid JSON; whatever the database, the answer is a result or a 4xx error, never a 500
    with any_db_live.client() as api:
        response = api.post(f"{SVC}/{function}", json=body)
        assert response.status_code != 500, response.text
        if response.status_code != 200:
            assert_error(any_db_live, response, response.status_code,
                         ("ARGUMENT_INVALID", "BAD_REQUEST", "SUBJECT_INVALID", "ORDER_NOT_EXIST", "ORDER_ID_INVALID"))
            assert 400 <= response.status_code < 500
