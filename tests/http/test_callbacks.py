"""The providers' notify callbacks over real HTTP: hostile bodies (malformed, oversized, entity-laden XML, forged or
tampered notifications, misaddressed ones) are answered in the provider's own format (or 413), never with a 500, change
no order and leave a row in the audit log; a correctly signed notification moves the order exactly once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from elements.pays.AliPayType.signing import load_rsa_key, sign_notify
from elements.pays.WechatPayType.signing import calculate_sign
from elements.pays.WechatPayType.wirexml import build_cdata_xml, build_xml, parse_xml
from tests.http.test_api import assert_error, assert_no_secret
from tests.support.live import (ALIPAY_APP_ID, ALIPAY_SELLER_ID, WECHAT_APP_ID, WECHAT_MCH_ID, LiveApp,
                                start_live_app)

SVC = "/api/shop/pays/services/PaySvc"
ALIPAY = f"{SVC}/alipayNotify"
WECHAT = f"{SVC}/wechatNotify"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
XML = "text/xml; charset=utf-8"
LIMIT = 64 * 1024


# -- fixtures and helpers -------------------------------------------------------------------------------------------
#: this module sends far more rejected notifications a minute than the audit log stores by default (20 per source):
#: each test checks the row its rejection left (test_audit_limits.py checks the limits)
UNLIMITED = {"pays": {"rejectedNotifications": {"perSource": 1_000_000, "total": 1_000_000}}}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    with start_live_app(tmp_path_factory.mktemp("callbacks"), settings=UNLIMITED) as live_app:
        yield live_app


@pytest.fixture
def provider_client(live: LiveApp) -> Iterator[httpx.Client]:
    """The provider calling back: no API key."""
    with httpx.Client(base_url=live.url, timeout=10) as client:
        yield client


@pytest.fixture
def api(live: LiveApp) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


@pytest.fixture
def order(api: httpx.Client) -> dict:
    response = api.post(f"{SVC}/create", json={"subject": "Callback test 回调", "amount": "99.99"})
    assert response.status_code == 200, response.text
    return response.json()


def keys_dir(live: LiveApp):
    return live.yaml_path.parent / ".sandbox"


def alipay_fields(order_id: str, **overrides: str) -> dict[str, str]:
    fields = {
        "notify_time": "2024-05-01 12:00:10", "notify_type": "trade_status_sync", "notify_id": "n-" + order_id,
        "app_id": ALIPAY_APP_ID, "seller_id": ALIPAY_SELLER_ID, "charset": "utf-8", "version": "1.0",
        "trade_no": "2024050122001" + order_id[-12:], "out_trade_no": order_id, "trade_status": "TRADE_SUCCESS",
        "total_amount": "99.99", "receipt_amount": "99.99", "buyer_pay_amount": "99.99",
        "gmt_create": "2024-05-01 11:59:00", "gmt_payment": "2024-05-01 12:00:05", "buyer_id": "2088102177846880",
        "subject": "Callback test 回调 a+b&c=d%e",
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def alipay_signed(live: LiveApp, order_id: str, key: str = "alipay_gateway_private_key.pem",
                  **overrides: str) -> dict[str, str]:
    """A notification as Alipay signs it (with the sandbox gateway's private key, unless ``key`` says otherwise)."""
    private = load_rsa_key((keys_dir(live) / key).read_text())
    return sign_notify(alipay_fields(order_id, **overrides), private)


def wechat_api_key(live: LiveApp) -> str:
    return (keys_dir(live) / "wechat_api_key.txt").read_text().strip()


def wechat_fields(order_id: str, **overrides: str) -> dict[str, str]:
    fields = {
        "appid": WECHAT_APP_ID, "mch_id": WECHAT_MCH_ID, "nonce_str": "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
        "return_code": "SUCCESS", "result_code": "SUCCESS", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        "is_subscribe": "N", "trade_type": "NATIVE", "bank_type": "OTHERS", "total_fee": "9999", "fee_type": "CNY",
        "cash_fee": "9999", "out_trade_no": order_id, "transaction_id": "42000" + order_id[-20:],
        "time_end": "20240501120005",
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def wechat_signed(live: LiveApp, order_id: str, sign_type: str = "MD5", api_key: str | None = None,
                  **overrides: str) -> dict[str, str]:
    fields = wechat_fields(order_id, **overrides)
    fields["sign"] = calculate_sign(fields, api_key or wechat_api_key(live), sign_type)
    return fields


def post_alipay(client: httpx.Client, fields: dict[str, str]) -> httpx.Response:
    return client.post(ALIPAY, content=urlencode(fields).encode(), headers={"content-type": FORM})


def post_wechat(client: httpx.Client, fields: dict[str, str], cdata: bool = True) -> httpx.Response:
    body = build_cdata_xml(fields) if cdata else build_xml(fields)
    return client.post(WECHAT, content=body, headers={"content-type": XML})


def assert_alipay_reply(live: LiveApp, response: httpx.Response, ok: bool) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == ("success" if ok else "failure")
    assert_no_secret(live, response.text)


def assert_wechat_reply(live: LiveApp, response: httpx.Response, ok: bool) -> dict[str, str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] in ("application/xml", "text/xml")
    reply = parse_xml(response.content)
    assert reply["return_code"] == ("SUCCESS" if ok else "FAIL"), reply
    assert reply.get("return_msg"), reply
    assert "root:" not in response.text  # nothing of /etc/passwd ever comes back
    assert_no_secret(live, response.text)
    return reply


class Snapshot:
    """An order as queried and the audit log, before a request: to show what the request changed."""

    def __init__(self, live: LiveApp, api: httpx.Client, order_id: str) -> None:
        self.live, self.api, self.order_id = live, api, order_id
        self.ledger = live.app.loadElement("pays.services.PaySvc").ledger
        self.order = self.query()
        rows = self.ledger.audit_log()
        self.last_id = rows[-1].id if rows else 0

    def query(self) -> dict:
        response = self.api.post(f"{SVC}/query", json={"orderId": self.order_id})
        assert response.status_code == 200, response.text
        return response.json()

    def new_rows(self) -> list[Any]:
        return [row for row in self.ledger.audit_log() if row.id > self.last_id]

    def assert_unchanged_and_recorded(self, *, error_code: str | None = None, verified: bool | None = None,
                                      order_id: str | None = None) -> Any:
        """The order is exactly as before, and exactly one notify row recorded the rejection (rows the background
        jobs write meanwhile, e.g. settling an earlier test's order, are not the request's)."""
        assert self.query() == self.order
        rows = [row for row in self.new_rows() if row.kind == "notify"]
        assert len(rows) == 1, [(r.kind, r.outcome, r.errorCode) for r in rows]
        row = rows[0]
        assert row.kind == "notify" and row.outcome == "rejected", (row.outcome, row.errorCode, row.message)
        if error_code is not None:
            assert row.errorCode == error_code, (row.errorCode, row.message)
        if verified is not None:
            assert row.verified is verified
        if order_id is not None:
            assert row.orderId == order_id
        assert "root:" not in (row.payload or "") and "root:" not in (row.message or "")
        assert_no_secret(self.live, f"{row.message} {row.payload}")
        return row


# -- malformed bodies -----------------------------------------------------------------------------------------------
ALIPAY_MALFORMED: list[tuple[str, bytes, str | None]] = [
    ("bad-percent", b"out_trade_no={oid}&trade_status=TRADE_SUCCESS&total_amount=99.99&x=%FF", FORM),
    ("not-utf8", b"out_trade_no={oid}&trade_status=TRADE_SUCCESS&subject=\xff\xfe", FORM),
    ("surrogate", b"out_trade_no={oid}&trade_status=TRADE_SUCCESS&subject=%ED%A0%80", FORM),
    ("repeated-field", b"out_trade_no={oid}&out_trade_no=OTHER_1&trade_status=TRADE_SUCCESS", FORM),
    ("not-a-form", b"out_trade_no={oid}&&trade_status", FORM),
    ("empty", b"", FORM),
    ("no-content-type-empty", b"", None),
    ("json", b'{"out_trade_no": "{oid}", "trade_status": "TRADE_SUCCESS"}', "application/json"),
    ("xml", b"<xml><out_trade_no>{oid}</out_trade_no></xml>", "text/xml"),
    ("gbk", b"out_trade_no={oid}&trade_status=TRADE_SUCCESS", "application/x-www-form-urlencoded; charset=gbk"),
    ("multipart", b"--b\r\nContent-Disposition: form-data; name=\"out_trade_no\"\r\n\r\n{oid}\r\n--b--\r\n",
     "multipart/form-data; boundary=b"),
    ("too-many-fields", b"out_trade_no={oid}&" + b"&".join(b"k%d=v" % i for i in range(3000)), FORM),
]


@pytest.mark.parametrize("body, content_type", [(b, c) for _, b, c in ALIPAY_MALFORMED],
                         ids=[name for name, _, _ in ALIPAY_MALFORMED])
def test_alipay_malformed_body(live: LiveApp, api: httpx.Client, provider_client: httpx.Client, order: dict,
                               body: bytes, content_type: str | None) -> None:
    before = Snapshot(live, api, order["orderId"])
    headers = {"content-type": content_type} if content_type else {}
    response = provider_client.post(ALIPAY, content=body.replace(b"{oid}", order["orderId"].encode()),
                                    headers=headers)
    assert_alipay_reply(live, response, ok=False)
    before.assert_unchanged_and_recorded(error_code="NOTIFY_INVALID", verified=False)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE xml [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<xml><out_trade_no>{oid}</out_trade_no><return_code>SUCCESS</return_code><attach>&lol9;</attach></xml>"""

WECHAT_MALFORMED: list[tuple[str, bytes]] = [
    ("unclosed", b"<xml><out_trade_no>{oid}</out_trade_no><return_code>SUCCESS"),
    ("mismatched-tags", b"<xml><out_trade_no>{oid}</return_code></xml>"),
    ("not-xml", b"out_trade_no={oid}&return_code=SUCCESS"),
    ("empty", b""),
    ("whitespace", b" \r\n\t "),
    ("json", b'{"out_trade_no": "{oid}"}'),
    ("billion-laughs", BILLION_LAUGHS),
    ("quadratic-blowup", b'<!DOCTYPE xml [<!ENTITY a "' + b"a" * 20000 + b'">]><xml><out_trade_no>{oid}'
                         b"</out_trade_no><attach>" + b"&a;" * 4000 + b"</attach></xml>"),
    ("xxe-file", b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                 b"<xml><out_trade_no>{oid}</out_trade_no><attach>&xxe;</attach></xml>"),
    ("xxe-http", b'<!DOCTYPE xml [<!ENTITY xxe SYSTEM "http://127.0.0.1:9/secret">]>'
                 b"<xml><out_trade_no>{oid}</out_trade_no><attach>&xxe;</attach></xml>"),
    ("xxe-parameter", b'<!DOCTYPE xml [<!ENTITY % remote SYSTEM "file:///etc/passwd"> %remote;]>'
                      b"<xml><out_trade_no>{oid}</out_trade_no></xml>"),
    ("external-dtd", b'<!DOCTYPE xml SYSTEM "file:///etc/passwd"><xml><out_trade_no>{oid}</out_trade_no></xml>'),
    ("doctype", b"<!DOCTYPE xml><xml><out_trade_no>{oid}</out_trade_no></xml>"),
    ("doctype-lowercase-spaced", b"<! DOCTYPE xml><xml><out_trade_no>{oid}</out_trade_no></xml>"),
    ("undefined-entity", b"<xml><out_trade_no>{oid}</out_trade_no><attach>&xxe;</attach></xml>"),
    ("processing-instruction", b'<?xml-stylesheet href="file:///etc/passwd"?><xml><out_trade_no>{oid}'
                               b"</out_trade_no></xml>"),
    ("utf16-doctype", '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM '
                      '"file:///etc/passwd">]><xml><out_trade_no>{oid}</out_trade_no><attach>&xxe;</attach></xml>'
                      .encode("utf-16")),
    ("latin1", '<?xml version="1.0" encoding="ISO-8859-1"?><xml><out_trade_no>{oid}</out_trade_no>'
               "<attach>\u00e9</attach></xml>".encode("latin-1")),
    ("bad-char-ref", b"<xml><out_trade_no>{oid}</out_trade_no><attach>&#xD800;</attach></xml>"),
    ("nul-char-ref", b"<xml><out_trade_no>{oid}</out_trade_no><attach>&#0;</attach></xml>"),
    ("nested", b"<xml><out_trade_no><a>{oid}</a></out_trade_no></xml>"),
    ("attributes", b'<xml><out_trade_no id="1">{oid}</out_trade_no></xml>'),
    ("repeated-field", b"<xml><out_trade_no>{oid}</out_trade_no><out_trade_no>OTHER_1</out_trade_no></xml>"),
    ("wrong-root", b"<root><out_trade_no>{oid}</out_trade_no></root>"),
    ("two-roots", b"<xml><out_trade_no>{oid}</out_trade_no></xml><xml></xml>"),
    ("deep-nesting", b"<xml>" + b"<a>" * 5000 + b"</a>" * 5000 + b"</xml>"),
]


@pytest.mark.parametrize("body", [b for _, b in WECHAT_MALFORMED], ids=[name for name, _ in WECHAT_MALFORMED])
def test_wechat_malformed_or_entity_laden_body(live: LiveApp, api: httpx.Client, provider_client: httpx.Client,
                                               order: dict, body: bytes) -> None:
    before = Snapshot(live, api, order["orderId"])
    response = provider_client.post(WECHAT, content=body.replace(b"{oid}", order["orderId"].encode()),
                                    headers={"content-type": XML})
    assert_wechat_reply(live, response, ok=False)
    before.assert_unchanged_and_recorded(error_code="NOTIFY_INVALID", verified=False)


# -- oversized bodies -----------------------------------------------------------------------------------------------
def signed_padded_body(live: LiveApp, provider: str, order_id: str, over: bool) -> bytes:
    """A correctly signed notification for ``order_id``, padded (inside a signed field) to just over the limit
    (``over``) or to within a few bytes under it: the most that is still accepted."""
    def build(pad: int) -> bytes:
        if provider == "alipay":
            return urlencode(alipay_signed(live, order_id, passback_params="p" * pad)).encode()
        return build_xml(wechat_signed(live, order_id, attach="p" * pad))

    pad = LIMIT - len(build(1)) + 1
    if over:
        body = build(pad + 1)
        while len(body) <= LIMIT:  # an Alipay signature's URL-encoded length varies by a few bytes
            pad += 4
            body = build(pad)
        assert len(body) < LIMIT + 64
        return body
    body = build(pad)
    while len(body) > LIMIT:
        pad -= 4
        body = build(pad)
    assert len(body) > LIMIT - 64
    return body


@pytest.mark.parametrize("provider", ["alipay", "wechat"])
@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_is_413(live: LiveApp, api: httpx.Client, provider_client: httpx.Client, order: dict,
                               provider: str, streamed: bool) -> None:
    before = Snapshot(live, api, order["orderId"])
    body = signed_padded_body(live, provider, order["orderId"], over=True)
    path, content_type = (ALIPAY, FORM) if provider == "alipay" else (WECHAT, XML)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start:start + 4096]

    response = provider_client.post(path, content=chunks() if streamed else body,
                                    headers={"content-type": content_type})
    if streamed:
        assert "content-length" not in response.request.headers
    else:
        assert int(response.request.headers["content-length"]) == len(body) > LIMIT
    assert_error(live, response, 413, "BODY_TOO_LARGE")
    before.assert_unchanged_and_recorded(error_code="BODY_TOO_LARGE", verified=False)


@pytest.mark.parametrize("provider", ["alipay", "wechat"])
def test_huge_streamed_body_is_cut_off(live: LiveApp, api: httpx.Client, provider_client: httpx.Client,
                                       order: dict, provider: str) -> None:
    before = Snapshot(live, api, order["orderId"])

    def chunks() -> Iterator[bytes]:  # 8 MiB, never all held by the server
        for _ in range(128):
            yield b"a" * 65536

    path = ALIPAY if provider == "alipay" else WECHAT
    try:
        response = provider_client.post(path, content=chunks())
    except httpx.TransportError:
        pass  # the server may stop reading and close the connection: also a refusal
    else:
        assert_error(live, response, 413, "BODY_TOO_LARGE")
    before.assert_unchanged_and_recorded(error_code="BODY_TOO_LARGE")


@pytest.mark.parametrize("provider", ["alipay", "wechat"])
def test_a_signed_body_at_the_limit_is_accepted(live: LiveApp, api: httpx.Client, provider_client: httpx.Client,
                                                order: dict, provider: str) -> None:
    body = signed_padded_body(live, provider, order["orderId"], over=False)
    if provider == "alipay":
        assert_alipay_reply(live, provider_client.post(ALIPAY, content=body, headers={"content-type": FORM}), True)
    else:
        assert_wechat_reply(live, provider_client.post(WECHAT, content=body, headers={"content-type": XML}), True)
    assert Snapshot(live, api, order["orderId"]).order["status"] == "success"


# -- forged and tampered notifications ------------------------------------------------------------------------------
def _other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


ALIPAY_FORGERIES: list[tuple[str, Callable[[LiveApp, str], dict[str, str]]]] = [
    ("unsigned", lambda live, oid: alipay_fields(oid)),
    ("empty-sign", lambda live, oid: {**alipay_fields(oid), "sign": "", "sign_type": "RSA2"}),
    ("garbage-sign", lambda live, oid: {**alipay_fields(oid), "sign": "bm90IGEgc2lnbmF0dXJl", "sign_type": "RSA2"}),
    ("not-base64-sign", lambda live, oid: {**alipay_fields(oid), "sign": "!!!%%%", "sign_type": "RSA2"}),
    ("merchant-key", lambda live, oid: alipay_signed(live, oid, key="alipay_app_private_key.pem")),
    ("attacker-key", lambda live, oid: sign_notify(alipay_fields(oid), _other_rsa_key())),
    ("sign-type-rsa", lambda live, oid: {**alipay_signed(live, oid), "sign_type": "RSA"}),
    ("tampered-amount", lambda live, oid: {**alipay_signed(live, oid, total_amount="0.01"), "total_amount": "99.99"}),
    ("tampered-status", lambda live, oid: {**alipay_signed(live, oid, trade_status="WAIT_BUYER_PAY"),
                                           "trade_status": "TRADE_SUCCESS"}),
    ("retargeted", lambda live, oid: {**alipay_signed(live, "SOMEONE_ELSES_ORDER"), "out_trade_no": oid}),
    ("extra-field", lambda live, oid: {**alipay_signed(live, oid), "refund_fee": "99.99"}),
]


@pytest.mark.parametrize("forge", [f for _, f in ALIPAY_FORGERIES], ids=[name for name, _ in ALIPAY_FORGERIES])
def test_alipay_forged_signature(live: LiveApp, api: httpx.Client, provider_client: httpx.Client, order: dict,
                                 forge: Callable[[LiveApp, str], dict[str, str]]) -> None:
    before = Snapshot(live, api, order["orderId"])
    assert_alipay_reply(live, post_alipay(provider_client, forge(live, order["orderId"])), ok=False)
    before.assert_unchanged_and_recorded(error_code="SIGNATURE_INVALID", verified=False, order_id=order["orderId"])


WECHAT_FORGERIES: list[tuple[str, Callable[[LiveApp, str], dict[str, str]]]] = [
    ("unsigned", lambda live, oid: wechat_fields(oid)),
    ("empty-sign", lambda live, oid: {**wechat_fields(oid), "sign": ""}),
    ("wrong-key", lambda live, oid: wechat_signed(live, oid, api_key="x" * 32)),
    ("wrong-key-hmac", lambda live, oid: wechat_signed(live, oid, "HMAC-SHA256", api_key="y" * 32)),
    ("tampered-amount", lambda live, oid: {**wechat_signed(live, oid, total_fee="1"), "total_fee": "9999"}),
    ("tampered-result", lambda live, oid: {**wechat_signed(live, oid, result_code="FAIL"), "result_code": "SUCCESS"}),
    ("retargeted", lambda live, oid: {**wechat_signed(live, "SOMEONE_ELSES_ORDER"), "out_trade_no": oid}),
    ("extra-field", lambda live, oid: {**wechat_signed(live, oid), "coupon_fee": "9999"}),
    ("short-sign", lambda live, oid: {**wechat_fields(oid), "sign": "ABCDEF"}),
    ("md5-declared-hmac", lambda live, oid: {**wechat_signed(live, oid), "sign_type": "HMAC-SHA256"}),
    ("unsigned-key-in-field", lambda live, oid: {**wechat_fields(oid), "key": "x",
                                                 "sign": calculate_sign(wechat_fields(oid), "", "MD5")}),
]


@pytest.mark.parametrize("forge", [f for _, f in WECHAT_FORGERIES], ids=[name for name, _ in WECHAT_FORGERIES])
def test_wechat_forged_signature(live: LiveApp, api: httpx.Client, provider_client: httpx.Client, order: dict,
                                 forge: Callable[[LiveApp, str], dict[str, str]]) -> None:
    before = Snapshot(live, api, order["orderId"])
    assert_wechat_reply(live, post_wechat(provider_client, forge(live, order["orderId"])), ok=False)
    before.assert_unchanged_and_recorded(error_code="SIGNATURE_INVALID", verified=False, order_id=order["orderId"])


# -- validly signed but wrong ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("amount", ["0.01", "99.98", "100.00", "999.90"])
def test_alipay_signed_with_another_amount(live: LiveApp, api: httpx.Client, provider_client: httpx.Client,
                                           order: dict, amount: str) -> None:
    before = Snapshot(live, api, order["orderId"])
    fields = alipay_signed(live, order["orderId"], total_amount=amount, receipt_amount=amount,
                           buyer_pay_amount=amount)
    assert_alipay_reply(live, post_alipay(provider_client, fields), ok=False)
    before.assert_unchanged_and_recorded(error_code="AMOUNT_MISMATCH", verified=True, order_id=order["orderId"])


@pytest.mark.parametrize("fee", ["1", "9998", "10000", "999900"])
def test_wechat_signed_with_another_amount(live: LiveApp, api: httpx.Client, provider_client: httpx.Client,
                                           order: dict, fee: str) -> None:
    before = Snapshot(live, api, order["orderId"])
    fields = wechat_signed(live, order["orderId"], total_fee=fee, cash_fee=fee)
    assert_wechat_reply(live, post_wechat(provider_client, fields), ok=False)
    before.assert_unchanged_and_recorded(error_code="AMOUNT_MISMATCH", verified=True, order_id=order["orderId"])


def test_signed_for_an_unknown_order(live: LiveApp, api: httpx.Client, provider_client: httpx.Client,
                                     order: dict) -> None:
    store = live.app.loadElement("pays.services.PaySvc").ledger
    for provider, unknown in (("alipay", "NO_SUCH_ORDER_ALI"), ("wechat", "NO_SUCH_ORDER_WX")):
        before = Snapshot(live, api, order["orderId"])
        if provider == "alipay":
            assert_alipay_reply(live, post_alipay(provider_client, alipay_signed(live, unknown)), ok=False)
        else:
            assert_wechat_reply(live, post_wechat(provider_client, wechat_signed(live, unknown)), ok=False)
        before.assert_unchanged_and_recorded(error_code="ORDER_NOT_EXIST", verified=True, order_id=unknown)
        missing = api.post(f"{SVC}/query", json={"orderId": unknown})
        assert missing.status_code == 404  # and no order was made up from it
        assert [row.outcome for row in store.audit_log(unknown)] == ["rejected"]


ALIPAY_MISADDRESSED = [
    ("other-app-id", {"app_id": "2021000000009999"}),
    ("no-app-id", {"app_id": None}),
    ("other-seller", {"seller_id": "2088000000009999"}),
    ("unknown-status", {"trade_status": "TRADE_SOMETHING_NEW"}),
    ("bad-amount", {"total_amount": "lots"}),
]


@pytest.mark.parametrize("overrides", [o for _, o in ALIPAY_MISADDRESSED],
                         ids=[name for name, _ in ALIPAY_MISADDRESSED])
def test_alipay_signed_for_another_app(live: LiveApp, api: httpx.Client, provider_client: httpx.Client,
                                       order: dict, overrides: dict) -> None:
    before = Snapshot(live, api, order["orderId"])
    assert_alipay_reply(live, post_alipay(provider_client, alipay_signed(live, order["orderId"], **overrides)),
                        ok=False)
    before.assert_unchanged_and_recorded(error_code="NOTIFY_INVALID", verified=True, order_id=order["orderId"])


WECHAT_MISADDRESSED = [
    ("other-appid", {"appid": "wx0000000000009999"}),
    ("other-mch-id", {"mch_id": "1900009999"}),
    ("no-mch-id", {"mch_id": None}),
    ("return-code-fail", {"return_code": "FAIL"}),
    ("no-transaction-id", {"transaction_id": None}),
    ("bad-fee", {"total_fee": "99.99"}),
]


@pytest.mark.parametrize("overrides", [o for _, o in WECHAT_MISADDRESSED],
                         ids=[name for name, _ in WECHAT_MISADDRESSED])
def test_wechat_signed_for_another_app(live: LiveApp, api: httpx.Client, provider_client: httpx.Client,
                                       order: dict, overrides: dict) -> None:
    before = Snapshot(live, api, order["orderId"])
    assert_wechat_reply(live, post_wechat(provider_client, wechat_signed(live, order["orderId"], **overrides)),
                        ok=False)
    before.assert_unchanged_and_recorded(error_code="NOTIFY_INVALID", verified=True, order_id=order["orderId"])


# -- a correct notification is accepted once ------------------------------------------------------------------------
def paid_rows(store: Any, order_id: str) -> list[Any]:
    return [row for row in store.audit_log(order_id, kinds=["notify"]) if row.outcome == "pending->success"]


def test_a_notification_signed_with_another_sign_type_is_refused(
        live: LiveApp, api: httpx.Client, provider_client: httpx.Client, order: dict) -> None:
    """The merchant signs with MD5: an HMAC-SHA256 signature, however valid for the key, is not accepted (the
    configured sign type decides, never the signature's length)."""
    before = Snapshot(live, api, order["orderId"])
    assert_wechat_reply(live, post_wechat(provider_client, wechat_signed(live, order["orderId"], "HMAC-SHA256")),
                        False)
    before.assert_unchanged_and_recorded(error_code="SIGNATURE_INVALID", verified=False,
                                         order_id=order["orderId"])


@pytest.mark.parametrize("provider, sign_type", [("alipay", None), ("wechat", "MD5")])
def test_correct_notification_accepted_once_and_replay_changes_nothing(
        live: LiveApp, api: httpx.Client, provider_client: httpx.Client, order: dict, provider: str,
        sign_type: str | None) -> None:
    order_id = order["orderId"]
    store = live.app.loadElement("pays.services.PaySvc").ledger
    if provider == "alipay":
        fields = alipay_signed(live, order_id)
        send = lambda f: post_alipay(provider_client, f)  # noqa: E731
        check = lambda r, ok: assert_alipay_reply(live, r, ok)  # noqa: E731
        full_name, trade_no = "pays.AliPayType", fields["trade_no"]
    else:
        fields = wechat_signed(live, order_id, sign_type or "MD5")
        send = lambda f: post_wechat(provider_client, f)  # noqa: E731
        check = lambda r, ok: assert_wechat_reply(live, r, ok)  # noqa: E731
        full_name, trade_no = "pays.WechatPayType", fields["transaction_id"]

    check(send(fields), True)
    paid = Snapshot(live, api, order_id)
    assert paid.order["status"] == "success" and paid.order["provider"] == full_name
    assert paid.order["tradeNo"] == trade_no and paid.order["amount"] == "99.99" and paid.order["payTime"]
    rows = paid_rows(store, order_id)
    assert len(rows) == 1 and rows[0].verified is True

    # the same notification again (the provider retries): acknowledged, nothing changes
    for _ in range(2):
        check(send(fields), True)
    assert paid.query() == paid.order
    assert len(paid_rows(store, order_id)) == 1
    assert [(row.outcome, row.verified) for row in paid.new_rows() if row.kind == "notify"] == [("unchanged", True)] * 2

    # a forged "closed" after the payment changes nothing either
    before = Snapshot(live, api, order_id)
    if provider == "alipay":
        forged = {**alipay_signed(live, order_id, trade_status="TRADE_CLOSED"), "sign": fields["sign"]}
    else:
        forged = {**wechat_signed(live, order_id, result_code="FAIL"), "sign": fields["sign"]}
    check(send(forged), False)
    before.assert_unchanged_and_recorded(error_code="SIGNATURE_INVALID", verified=False, order_id=order_id)


@pytest.mark.parametrize("provider", ["alipay", "wechat"])
def test_concurrent_duplicate_notifications_move_the_order_once(live: LiveApp, api: httpx.Client, order: dict,
                                                                 provider: str) -> None:
    order_id = order["orderId"]
    store = live.app.loadElement("pays.services.PaySvc").ledger
    if provider == "alipay":
        body, path, content_type = urlencode(alipay_signed(live, order_id)).encode(), ALIPAY, FORM
    else:
        body, path, content_type = build_cdata_xml(wechat_signed(live, order_id)), WECHAT, XML

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=live.url, timeout=10) as client:
            return client.post(path, content=body, headers={"content-type": content_type})

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(send, range(8)))
    for response in responses:  # every copy is acknowledged
        if provider == "alipay":
            assert_alipay_reply(live, response, ok=True)
        else:
            assert_wechat_reply(live, response, ok=True)
    assert len(paid_rows(store, order_id)) == 1
    outcomes = sorted(row.outcome for row in store.audit_log(order_id, kinds=["notify"]))
    assert outcomes == ["pending->success"] + ["unchanged"] * 7
    response = api.post(f"{SVC}/query", json={"orderId": order_id})
    assert response.json()["status"] == "success"


def test_notifications_for_the_same_order_from_both_providers(live: LiveApp, api: httpx.Client,
                                                              provider_client: httpx.Client, order: dict) -> None:
    """A second, genuine payment of a paid order (the buyer also paid with WeChat) is acknowledged so the provider
    stops retrying, recorded as a surplus payment (to be refunded), and does not change the order."""
    order_id = order["orderId"]
    assert_alipay_reply(live, post_alipay(provider_client, alipay_signed(live, order_id)), True)
    before = Snapshot(live, api, order_id)
    assert before.order["provider"] == "pays.AliPayType"
    assert_wechat_reply(live, post_wechat(provider_client, wechat_signed(live, order_id)), True)
    after = before.query()
    assert {k: v for k, v in after.items() if k not in ("payments", "refunds")} == \
        {k: v for k, v in before.order.items() if k not in ("payments", "refunds")}
    assert [(p["fullName"], p["role"]) for p in after["payments"]] == [("pays.AliPayType", "accepted"),
                                                                       ("pays.WechatPayType", "surplus")]
    rows = [row for row in before.new_rows() if row.kind == "notify"]
    assert [(row.outcome, row.errorCode) for row in rows] == [("surplus", "SURPLUS_PAYMENT")]


def test_no_500_for_odd_methods_and_paths(live: LiveApp, provider_client: httpx.Client) -> None:
    for path in (ALIPAY, WECHAT):
        assert provider_client.get(path).status_code == 405
        assert provider_client.put(path, content=b"x").status_code == 405
    # another app id in the path is not our callback
    response = provider_client.post("/api/other/pays/services/PaySvc/alipayNotify", content=b"a=1",
                                    headers={"content-type": FORM})
    assert response.status_code in (401, 404) and response.status_code != 500


# -- NUL bytes, on every supported database -------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def any_db_live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """The live app on embedded SQLite and on PostgreSQL (whose text columns cannot hold NUL)."""
    database = request.getfixturevalue("postgres_server").new_database() if request.param == "postgresql" else None
    with start_live_app(tmp_path_factory.mktemp(f"nul-{request.param}"), database=database) as live_app:
        yield live_app


NUL_BODIES = [
    ("alipay-encoded-nul-in-order-id", ALIPAY, b"out_trade_no={oid}%00&trade_status=TRADE_SUCCESS&total_amount=99.99",
     FORM),
    ("alipay-raw-nul", ALIPAY, b"out_trade_no={oid}\x00&trade_status=TRADE_SUCCESS", FORM),
    ("alipay-nul-in-malformed", ALIPAY, b"out_trade_no={oid}&x=%FF\x00", FORM),
    ("wechat-raw-nul", WECHAT, b"<xml><out_trade_no>{oid}\x00</out_trade_no></xml>", XML),
    ("wechat-nul-char-ref", WECHAT, b"<xml><out_trade_no>{oid}&#0;</out_trade_no></xml>", XML),
]


@pytest.mark.parametrize("path, body, content_type", [(p, b, c) for _, p, b, c in NUL_BODIES],
                         ids=[name for name, _, _, _ in NUL_BODIES])
def test_nul_bytes_are_refused_without_a_500(any_db_live: LiveApp, path: str, body: bytes,
                                             content_type: str) -> None:
    live = any_db_live
    with live.client() as api, httpx.Client(base_url=live.url, timeout=10) as provider_client:
        response = api.post(f"{SVC}/create", json={"subject": "NUL test", "amount": "99.99"})
        assert response.status_code == 200, response.text
        order_id = response.json()["orderId"]
        before = Snapshot(live, api, order_id)
        response = provider_client.post(path, content=body.replace(b"{oid}", order_id.encode()),
                                        headers={"content-type": content_type})
        if path == ALIPAY:
            assert_alipay_reply(live, response, ok=False)
        else:
            assert_wechat_reply(live, response, ok=False)
        before.assert_unchanged_and_recorded()
