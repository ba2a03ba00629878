"""The wire XML: WeChat's shapes parse exactly, hostile documents never get parsed."""

from __future__ import annotations

import pytest

from elements.pays.errors import NotifyInvalid
from elements.pays.WechatPayType.wirexml import (NOTIFY_MAX_BYTES, XmlRejected, build_cdata_xml, build_xml,
                                                 parse_xml)

from .conftest import make_app, make_provider

WECHAT_STYLE = (b"<xml>\n  <return_code><![CDATA[SUCCESS]]></return_code>\n  <total_fee>1</total_fee>\n"
                b"  <body><![CDATA[ \xe5\x95\x86\xe5\x93\x81 & <x> ]]></body>\n  <attach></attach>\n</xml>")

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<xml><return_code>&lol4;</return_code></xml>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><return_code>&xxe;</return_code></xml>"""
PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY % remote SYSTEM "http://127.0.0.1:1/evil.dtd"> %remote;]>
<xml><return_code>SUCCESS</return_code></xml>"""
PLAIN_DOCTYPE = b"""<!DOCTYPE xml><xml><return_code>SUCCESS</return_code></xml>"""
EXTERNAL_DTD = b"""<!DOCTYPE xml SYSTEM "http://127.0.0.1:1/x.dtd"><xml><a>1</a></xml>"""
HOSTILE = {
    "billion laughs": BILLION_LAUGHS,
    "external entity": EXTERNAL_ENTITY,
    "parameter entity": PARAMETER_ENTITY,
    "doctype": PLAIN_DOCTYPE,
    "external dtd": EXTERNAL_DTD,
    "processing instruction": b"<?xml version='1.0'?><?evil run?><xml><a>1</a></xml>",
    "undefined entity": b"<xml><a>&nbsp;</a></xml>",
    "malformed": b"<xml><a>1</b></xml>",
    "truncated": b"<xml><a>1</a>",
    "not xml": b"return_code=SUCCESS",
    "empty": b"",
    "json": b'{"return_code": "SUCCESS"}',
    "other root": b"<root><a>1</a></root>",
    "nested": b"<xml><a><b>1</b></a></xml>",
    "attribute": b'<xml><a x="1">1</a></xml>',
    "root attribute": b'<xml x="1"><a>1</a></xml>',
    "duplicate field": b"<xml><total_fee>1</total_fee><total_fee>100</total_fee></xml>",
    "text in root": b"<xml>hello<a>1</a></xml>",
    "latin-1": "<xml><a>café</a></xml>".encode("latin-1"),
    "utf-16": '<?xml version="1.0" encoding="UTF-16"?><xml><a>1</a></xml>'.encode("utf-16"),
    "oversized": b"<xml><a>" + b"x" * NOTIFY_MAX_BYTES + b"</a></xml>",
}


def test_parses_wechat_style_exactly() -> None:
    fields = parse_xml(WECHAT_STYLE)
    assert fields == {"return_code": "SUCCESS", "total_fee": "1", "body": " 商品 & <x> ", "attach": ""}


def test_predefined_entities_and_declaration_are_fine() -> None:
    doc = b'<?xml version="1.0" encoding="UTF-8"?><xml><a>1 &lt; 2 &amp;&amp; &#20013;</a></xml>'
    assert parse_xml(doc) == {"a": "1 < 2 && 中"}
    assert parse_xml(b"<xml></xml>") == {}
    assert parse_xml(b"<xml/>") == {}


@pytest.mark.parametrize("name", HOSTILE)
def test_rejects_hostile_or_malformed(name: str) -> None:
    with pytest.raises(XmlRejected):
        parse_xml(HOSTILE[name])


def test_size_limit_is_checked_before_parsing() -> None:
    body = b"<xml><a>" + b"x" * 100 + b"</a></xml>"
    assert parse_xml(body, max_bytes=len(body)) == {"a": "x" * 100}
    with pytest.raises(XmlRejected, match="over the limit"):
        parse_xml(body, max_bytes=len(body) - 1)


@pytest.mark.parametrize("name", HOSTILE)
def test_provider_turns_hostile_notifications_into_notify_invalid(tmp_path, name: str) -> None:
    provider = make_provider(make_app(tmp_path, "http://127.0.0.1:1"), appId="wx1", mchId="1", apiKey="k" * 32)
    with pytest.raises(NotifyInvalid):
        provider.parse_notify_body(HOSTILE[name], "text/xml")


@pytest.mark.parametrize("build", [build_xml, build_cdata_xml])
def test_build_round_trips(build) -> None:
    fields = {"body": "商品 <b> & ]]> \"q\" 'a'", "total_fee": 1, "empty": "", "note": " spaced "}
    wire = build({**fields, "skipped": None})
    assert parse_xml(wire) == {k: str(v) for k, v in fields.items()}
    assert wire.startswith(b"<xml>")


def test_build_refuses_what_xml_cannot_carry() -> None:
    with pytest.raises(ValueError):
        build_xml({"bad name": "1"})
    with pytest.raises(ValueError):
        build_cdata_xml({"a": "\x00"})
    with pytest.raises(ValueError):
        build_xml({"<a>": "1"})


@pytest.mark.parametrize("name", ["billion laughs", "external entity", "parameter entity", "doctype", "external dtd",
                                  "processing instruction"])
def test_hardened_expat_refuses_on_its_own(name: str) -> None:
    """Defence in depth: even without the textual pre-check, the parser xmltodict gets refuses DTDs and PIs."""
    import xmltodict

    from elements.pays.WechatPayType import wirexml

    with pytest.raises((XmlRejected, ValueError)):
        xmltodict.parse(HOSTILE[name], encoding="utf-8", expat=wirexml._SAFE_EXPAT, disable_entities=True)
