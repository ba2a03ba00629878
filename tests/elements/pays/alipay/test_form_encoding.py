"""The query string of a payment link: ``form_encode`` writes exactly what ``urllib.parse.urlencode`` writes."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elements.pays.AliPayType.gateway import form_encode, form_quote

TRICKY = "跨实现 a+b&c=d%20e ü ~_.-!*'()/?:@#[]$,;=\t\n\r\x00\x7f\x80\u00ff\U0001F600"
EVERY_LATIN1 = "".join(chr(code) for code in range(256))


@pytest.mark.parametrize("text", ["", " ", "+", TRICKY, EVERY_LATIN1, "abcXYZ019_.-~", "a" * 1000,
                                  '{"subject":"中文 商品","total_amount":"99.99"}'])
def test_quote_is_quote_plus(text):
    assert form_quote(text) == quote_plus(text)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_quote_is_quote_plus_for_any_text(text):
    try:
        expected = quote_plus(text)
    except UnicodeEncodeError:  # a lone surrogate is not UTF-8: both refuse it
        with pytest.raises(UnicodeEncodeError):
            form_quote(text)
        return
    assert form_quote(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), st.text(), max_size=12))
def test_encode_is_urlencode(params):
    try:
        expected = urlencode(params)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            form_encode(params)
        return
    assert form_encode(params) == expected


def test_a_payment_link_carries_the_signed_parameters(provider_factory):
    gateway = provider_factory().gateway
    biz = {"out_trade_no": "FORM1", "total_amount": "1.00", "subject": TRICKY.replace("\x00", ""),
           "product_code": "QUICK_WAP_WAY"}
    url = gateway.page_url("alipay.trade.wap.pay", biz, notify_url="https://shop.example/notify?x=1&y=2")
    query = urlsplit(url).query
    params = dict(parse_qsl(query, keep_blank_values=True))
    assert query == urlencode(params)
    assert params["notify_url"] == "https://shop.example/notify?x=1&y=2" and params["sign"]
