"""Fuzzing the HTTP face (issue 11, acceptance): generated arguments to every declared function, generated bodies to
every notification route, over real HTTP against the sandbox app. Nothing is ever answered with a 5xx, and no
unsigned notification changes an order, a payment or a refund.

Arguments are any JSON: wrong types, huge and hostile strings, C0 controls, NUL, lone surrogates (escaped, as JSON
carries them), numbers past every range, nesting as deep as the 1 MiB body limit allows; and bodies that are not
JSON at all. Notification bodies are forms and XML built from the providers' own field names (real order ids,
"paid" states, forged signatures), hostile XML (entities, DTDs, processing instructions, deep nesting), junk bytes
and oversized bodies, each under a random content type.

Examples per route: ``JITPAY_FUZZ_EXAMPLES`` (default 30 per function, 60 per notification route: bounded for CI).
``JITPAY_FUZZ_REPORT=path`` writes the figures of the run (inputs per route, 5xx, state changes) as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import string
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.support.live import API_KEY, LiveApp, start_live_app

EXAMPLES = int(os.environ.get("JITPAY_FUZZ_EXAMPLES", "0")) or None
FUNCTION_EXAMPLES = EXAMPLES or 30
NOTIFY_EXAMPLES = EXAMPLES or 60
MONEY_TABLES = ("jitpay_order", "jitpay_payment", "jitpay_refund")
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True)

#: what was tried and what came back, per route (the module's figures)
TRIED: Counter[str] = Counter()
SERVER_ERRORS: list[dict[str, Any]] = []
FIVE_XX: Counter[str] = Counter()


# -- hostile values ---------------------------------------------------------------------------------------------------
HOSTILE = [
    "", " ", "\x00", "a\x00b", "\x1f", "\x07bell", "\x1b[31mred", "\r\n", "line\nbreak", "\t", "\u2028", "\ufeff",
    "\u202etxt.exe", "\ud800", "\udfff", "\U0010ffff", "🙂" * 50, "é" * 200, "<a>", "</xml>", "<![CDATA[x]]>",
    "]]>", "&amp;", "&xxe;", "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>", "' OR 1=1 --",
    "'; DROP TABLE jitpay_order; --", "%s%s%n", "{0}", "${jndi:ldap://x}", "{{7*7}}", "../../etc/passwd", "C:\\con",
    "null", "true", "[]", "{}", "NaN", "-Infinity", "Infinity", "1e400", "-1e400", "1e-400", "0.001", "-0", "-0.00",
    "0x10", "1_000", "١٢٣", "９９.９９", " 99.99", "99.99 ", "99,99", "99.999", "1" * 400, "9" * 30 + ".99",
    "2026-13-45", "127.0.0.1", "::1", "999.1.1.1", "1.1.1.1\n", "pays.AliPayType", "pays.WechatPayType",
    "pays.services.PaySvc", "pays.Meta", "services.Meta", "pc", "mobile", "page", "PC", "success",
]
control_text = st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=20)
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=80)  # surrogates included
huge_text = st.builds(lambda unit, count: unit * count, st.sampled_from(["A", "é", "\x00", "9", "<a>", "🙂", " "]),
                      st.integers(256, 60_000))
hostile_text = st.one_of(st.sampled_from(HOSTILE), control_text, any_text, huge_text,
                         st.builds(lambda a, b: a + b, st.sampled_from(HOSTILE), st.sampled_from(HOSTILE)))
numbers = st.one_of(st.integers(), st.integers(min_value=-(10 ** 60), max_value=10 ** 60),
                    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0, -1, 1, 2 ** 63, -2 ** 63]))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), numbers, hostile_text),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
                           max_leaves=12)


def deep(depth: int, opener: str, closer: str) -> bytes:
    return (opener * depth + closer * depth).encode()


#: bodies that are not a JSON object of arguments (nesting up to the 1 MiB limit, truncated, invalid UTF-8, ...)
junk_json_bodies = st.one_of(
    st.builds(deep, st.integers(50, 450_000), st.just("["), st.just("]")),
    st.builds(lambda d: ('{"a":' * d + "1" + "}" * d).encode(), st.integers(50, 150_000)),
    st.sampled_from([b"", b"null", b"[]", b"1", b'"x"', b"{", b'{"subject": "x"', b'{"a": 1}{"b": 2}', b"\xff\xfe",
                     b'{"subject": "\xff"}', b'{"amount": 1' + b"0" * 5000 + b"}", b'{"amount": 1e999999}',
                     b'{"a": NaN}', b'{"a": Infinity}', b"\x00" * 100, b'{"__proto__": {"x": 1}}',
                     b'{"subject": "a", "subject": "b", "amount": "1.00"}']),
    st.binary(max_size=300),
)


# -- the app under test -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    # no background runner: nothing but the requests themselves may change the tables
    with start_live_app(tmp_path_factory.mktemp("fuzz"), run_jobs=False) as live_app:
        yield live_app
    report = os.environ.get("JITPAY_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps({"tried": dict(sorted(TRIED.items())), "5xx": dict(sorted(FIVE_XX.items())),
                                            "stateChanges": STATE_CHANGES}, indent=2, default=str))


@pytest.fixture(scope="module")
def orders(live: LiveApp) -> list[str]:
    """Real orders for the arguments and notifications to point at: pending, offered at both providers, closed."""
    pay = live.pay_service
    ids = []
    for i in range(3):
        order = pay.create(subject=f"Fuzz order {i}", amount="12.34")
        ids.append(order["orderId"])
    pay.getPayUrl(orderId=ids[0], fullName="pays.AliPayType", payType="pc")
    pay.getPayUrl(orderId=ids[0], fullName="pays.WechatPayType", payType="pc")
    pay.getPayUrl(orderId=ids[1], fullName="pays.WechatPayType", payType="mobile")
    pay.close(orderId=ids[2])
    return ids


@pytest.fixture(scope="module")
def client(live: LiveApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as http:
        yield http


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR)
    return caplog


def post(client: httpx.Client, route: str, body: bytes, headers: dict[str, Any], query: str = "") -> httpx.Response:
    """POST ``body`` to ``route`` (counted under the route, whatever ``query`` is added)."""
    TRIED[route] += 1
    try:
        response = client.post(route + query, content=body, headers=headers)
    except httpx.TransportError as exc:  # the server dropped the connection: as bad as a 500
        response = httpx.Response(599, text=f"{type(exc).__name__}: {exc}")
    if response.status_code >= 500:
        FIVE_XX[route] += 1
        SERVER_ERRORS.append({"route": route + query, "status": response.status_code, "body": body[:500],
                              "headers": headers, "answer": response.text[:500]})
    return response


def assert_no_server_errors(caplog: pytest.LogCaptureFixture) -> None:
    """No 5xx answer and no exception logged by the server. Every input is tried (no stop at the first failure),
    so that a failure lists each distinct cause once: its routes, an input and the exception."""
    causes: dict[str, dict[str, Any]] = {}
    for record in caplog.records:
        if record.exc_info:
            exc = record.exc_info[1]
            cause = f"{type(exc).__name__}: {str(exc)[:200]!r} (logged by {record.name})"
            trace = "".join(traceback.format_exception(exc))[-2500:]
            causes.setdefault(cause, {"count": 0, "traceback": trace})["count"] += 1
    errors = list(SERVER_ERRORS)
    SERVER_ERRORS.clear()
    summary = {}
    for error in errors:
        key = f"{error['route']} -> {error['status']}"
        summary.setdefault(key, {"count": 0, "example": error})["count"] += 1
    assert not errors and not causes, json.dumps({"5xx": summary, "exceptions": causes}, indent=1, default=str)


# -- every declared function ------------------------------------------------------------------------------------------
def declared_functions(live: LiveApp) -> dict[str, dict[str, Any]]:
    document = httpx.get(f"{live.url}/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    return {path: item["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
            for path, item in document["paths"].items() if "post" in item}


def payment_elements(live: LiveApp) -> list[str]:
    """Every payment element the app can name: configured or not (an installed plugin's Type), and the Meta."""
    return sorted(name for name in live.app.elementNames() if live.app.isA(name, "pays.Meta"))


def plausible(name: str, orders: list[str], payment_names: list[str]) -> st.SearchStrategy[Any]:
    """Values an argument of that name might meet in use, to get past the first checks now and then."""
    known = {
        "orderId": st.sampled_from(orders) | st.text(string.ascii_letters + string.digits + "_", min_size=6,
                                                       max_size=32),
        "fullName": st.sampled_from([*payment_names, "pays.services.PaySvc", "services.NormalType", "shop.Nope"]),
        "payType": st.sampled_from(["pc", "mobile", "page", "app", "PC", ""]),
        "amount": st.sampled_from(["0.01", "12.34", "99.99", "100000000.00", 12.34, 1, "0", "-1.00"]),
        "refundId": st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=64),
        "clientIp": st.sampled_from(["127.0.0.1", "::1", "2001:db8::1", "10.0.0.1 ", "999.1.1.1"]),
        "paymentId": st.integers(-5, 50),
        "subject": st.sampled_from(["VIP", "a" * 255, "会员 月卡", "subject "]),
    }
    return known.get(name, st.nothing())


def argument_bodies(properties: dict[str, Any], orders: list[str],
                    payment_names: list[str]) -> st.SearchStrategy[bytes]:
    optional = {name: st.one_of(plausible(name, orders, payment_names), json_values) for name in properties}
    objects = st.builds(lambda declared, extra: {**declared, **extra},
                        st.fixed_dictionaries({}, optional=optional),
                        st.dictionaries(hostile_text, json_values, max_size=2))
    encoded = st.builds(lambda value, ascii_only: json.dumps(value, ensure_ascii=ascii_only).encode("utf-8",
                                                                                                    "surrogatepass"),
                        objects, st.booleans())
    return st.one_of(encoded, encoded, encoded, junk_json_bodies)


WITH_KEY = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
api_headers = st.fixed_dictionaries({
    "Content-Type": st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                     "application/x-www-form-urlencoded", "application/xml", "", "*/*; x=y"]),
    "Authorization": st.sampled_from([f"Bearer {API_KEY}"] * 6 + ["", "Bearer", "Bearer wrong-key-0123456789",
                                                                   f"Basic {API_KEY}", f"bearer  {API_KEY}"]),
})


def test_no_declared_function_answers_5xx_to_any_arguments(live: LiveApp, orders: list[str], client: httpx.Client,
                                                            server_log: pytest.LogCaptureFixture) -> None:
    SERVER_ERRORS.clear()
    functions = declared_functions(live)
    assert any(path.endswith("/PaySvc/create") for path in functions) and len(functions) >= 8
    payment_names = payment_elements(live)
    unconfigured = [name for name in payment_names if name.startswith("acmepay.")] or ["pays.Meta"]
    for route, properties in sorted(functions.items()):
        pending = live.pay_service.create(subject="Fuzz order", amount="1.00")["orderId"]  # whatever ran before

        @settings(FUZZ, max_examples=FUNCTION_EXAMPLES)
        @given(body=argument_bodies(properties, orders, payment_names), headers=api_headers)
        @example(body=b'{"\\udfff": 1}', headers=WITH_KEY)  # a lone surrogate in an argument's name
        @example(body=b'{"subject": "\\ud800", "amount": "1.00", "orderId": "\\udfff"}', headers=WITH_KEY)
        @example(body=deep(400_000, "[", "]"), headers=WITH_KEY)
        # an installed provider plugin's Type that this app does not configure
        @example(body=json.dumps({"orderId": pending, "fullName": unconfigured[0], "payType": "pc"}).encode(),
                 headers=WITH_KEY)
        @example(body=json.dumps({"orderId": pending, "fullName": unconfigured[0]}).encode(), headers=WITH_KEY)
        def call(body: bytes, headers: dict[str, str]) -> None:
            response = post(client, route, body, headers)
            if 400 <= response.status_code < 500 and response.headers.get("content-type", "").startswith("application/json"):
                assert set(response.json()["error"]) >= {"code", "message"}

        call()
    assert_no_server_errors(server_log)


# -- every notification route -----------------------------------------------------------------------------------------
ALIPAY_FIELDS = ["notify_time", "notify_type", "notify_id", "app_id", "charset", "version", "sign_type", "sign",
                 "trade_no", "out_trade_no", "out_biz_no", "buyer_id", "seller_id", "trade_status", "total_amount",
                 "receipt_amount", "buyer_pay_amount", "refund_fee", "gmt_payment", "gmt_refund", "currency",
                 "trans_currency", "passback_params", "fund_bill_list"]
WECHAT_FIELDS = ["return_code", "return_msg", "appid", "mch_id", "nonce_str", "sign", "sign_type", "result_code",
                 "err_code", "openid", "trade_type", "bank_type", "total_fee", "cash_fee", "fee_type",
                 "transaction_id", "out_trade_no", "attach", "time_end", "req_info", "refund_status"]


def header_value(value: str) -> bytes:
    """Any text as the bytes of a header value HTTP can carry (no controls: the client refuses those)."""
    raw = value.encode("utf-8", "surrogatepass")[:200]
    return bytes(b for b in raw if b >= 0x20 and b != 0x7F).strip() or b"x"


def field_values(orders: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(orders), st.sampled_from([
        "TRADE_SUCCESS", "TRADE_FINISHED", "TRADE_CLOSED", "WAIT_BUYER_PAY", "SUCCESS", "FAIL", "12.34", "1234",
        "0.01", "1", "CNY", "USD", "2021000000000001", "2088000000000001", "wx0000000000000001", "1900000001",
        "MD5", "HMAC-SHA256", "RSA2", "RSA", "NATIVE", "MWEB", "2026-11-25 12:00:00", "20261125120000",
        "A" * 344, "=" * 40, "dGVzdA==",
    ]), hostile_text)


def forms(orders: list[str]) -> st.SearchStrategy[bytes]:
    pairs = st.lists(st.tuples(st.sampled_from(ALIPAY_FIELDS) | hostile_text, field_values(orders)), max_size=30)

    def encode(items: list[tuple[str, str]], charset: str) -> bytes:
        encoded = [(quote(k.encode("utf-8", "surrogatepass")), quote(v.encode("utf-8", "surrogatepass")))
                   for k, v in items]
        body = "&".join(f"{k}={v}" for k, v in encoded)
        return body.encode() if charset == "utf-8" else urlencode(
            [(k.encode("gbk", "replace"), v.encode("gbk", "replace")) for k, v in items]).encode()

    return st.builds(encode, pairs, st.sampled_from(["utf-8", "utf-8", "gbk"]))


def xml_text(value: str) -> str:
    return (value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
            .replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def xmls(orders: list[str]) -> st.SearchStrategy[bytes]:
    element = st.tuples(st.sampled_from(WECHAT_FIELDS) | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True),
                        field_values(orders), st.booleans())

    def build(elements: list[tuple[str, str, bool]], root: str) -> bytes:
        parts = []
        for name, value, cdata in elements:
            inner = f"<![CDATA[{value.replace(']]>', '')}]]>" if cdata else xml_text(value)
            parts.append(f"<{name}>{inner}</{name}>")
        return f"<{root}>{''.join(parts)}</{root}>".encode("utf-8", "surrogatepass")

    hostile_documents = st.sampled_from([
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><xml><return_code>&c;</return_code></xml>',
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><a>&e;</a></xml>',
        b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "http://127.0.0.1:1/x.dtd"><xml/>',
        b'<?xml-stylesheet href="x"?><xml><return_code>SUCCESS</return_code></xml>',
        b"<xml><a><b></a></b></xml>", b"<xml>", b"</xml>", b"<xml/>", b"<xml></xml>", b"<?xml version='1.0'?>",
        b'<?xml version="1.0" encoding="gbk"?><xml><a>\xc4\xe3</a></xml>', b"\xef\xbb\xbf<xml><a>1</a></xml>",
        b'<xml xmlns:x="urn:x"><x:return_code>SUCCESS</x:return_code></xml>', b"<xml><a>\x00</a></xml>",
        b"<xml><a b='1' b='2'/></xml>", b"<xml>" + b"<a>" * 5000 + b"</a>" * 5000 + b"</xml>",
        b"<xml><a>" + b"x" * 65_000 + b"</a></xml>", b"<xml><![CDATA[" + b"]" * 100 + b"</xml>",
    ])
    roots = st.sampled_from(["xml", "xml", "xml", "root", "XML", "x:xml"])
    return st.one_of(st.builds(build, st.lists(element, max_size=30), roots), hostile_documents)


def notification_bodies(orders: list[str]) -> st.SearchStrategy[bytes]:
    json_bodies = st.builds(lambda v: json.dumps(v).encode(), json_values)
    oversized = st.builds(lambda n, unit: unit * n, st.integers(64 * 1024 + 1, 70_000), st.sampled_from([b"a", b"<"]))
    return st.one_of(forms(orders), forms(orders), xmls(orders), xmls(orders), json_bodies, junk_json_bodies,
                     st.binary(max_size=2000), oversized)


notify_headers = st.fixed_dictionaries({"Content-Type": st.sampled_from([
    "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8",
    "application/x-www-form-urlencoded; charset=gbk", "text/xml", "application/xml; charset=utf-8",
    "application/json", "text/plain", "multipart/form-data; boundary=x", "multipart/form-data",
    "application/octet-stream", "", "x/y", "text/xml; charset=nonexistent",
])}, optional={"Wechatpay-Signature": hostile_text.map(header_value),
               "X-Forwarded-For": st.sampled_from(["1.2.3.4", "::1, 10.0.0.1", "<a>"])})

NOTIFY_ROUTES = ["alipayNotify", "wechatNotify", "notify/alipay", "notify/wechat", "notify/acmepay",
                 "notify/nope", "notify/%00", "notify/" + "x" * 300]
STATE_CHANGES: dict[str, Any] = {}


def money_tables(live: LiveApp) -> dict[str, list[tuple[Any, ...]]]:
    with live.app.engine.connect() as conn:
        return {table: [tuple(row) for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
                for table in MONEY_TABLES}


def test_no_notification_route_answers_5xx_or_changes_money_on_unsigned_input(
        live: LiveApp, orders: list[str], client: httpx.Client, server_log: pytest.LogCaptureFixture) -> None:
    SERVER_ERRORS.clear()
    before = money_tables(live)
    assert len(before["jitpay_order"]) >= 3 and len(before["jitpay_payment"]) >= 3
    for name in NOTIFY_ROUTES:
        route = f"/api/shop/pays/services/PaySvc/{name}"

        @settings(FUZZ, max_examples=NOTIFY_EXAMPLES)
        @given(body=notification_bodies(orders), headers=notify_headers,
               query=st.sampled_from(["", "?sign=x", "?out_trade_no=" + orders[0], "?" + "a=1&" * 200]))
        def notify(body: bytes, headers: dict[str, str], query: str) -> None:
            post(client, route, body, headers, query)

        notify()
    after = money_tables(live)
    STATE_CHANGES.update({table: len(set(after[table]) ^ set(before[table])) for table in MONEY_TABLES})
    assert after == before
    assert_no_server_errors(server_log)
