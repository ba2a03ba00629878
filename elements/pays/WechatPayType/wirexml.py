"""WeChat Pay v2 wire XML: ``<xml>`` with one child element per field.

Parsing is the dangerous half. Everything that reaches :func:`parse_xml` may come from an attacker (a forged
notification, a hijacked gateway), so it refuses, before or while expat sees the document:

- bodies over a hard size limit (checked on the raw bytes, before any parsing);
- anything that is not UTF-8 (WeChat Pay speaks UTF-8 only; refusing other encodings also keeps the DOCTYPE check
  below honest);
- any document type declaration, entity declaration or external entity reference (billion laughs, XXE), and any
  processing instruction: expat is told never to parse parameter entities and every handler that would see one raises;
- anything that is not a flat ``<xml>`` of text-only children: nested elements, attributes, a repeated field.

It never expands an entity beyond XML's five predefined ones.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, Mapping
from xml.parsers import expat as _expat

import xmltodict

#: The default size limit for a notification body (64 KiB); WeChat's notifications are well under 4 KiB.
NOTIFY_MAX_BYTES = 64 * 1024

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters XML 1.0 cannot carry at all, even escaped.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_DECLARATIONS = re.compile(r"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)", re.IGNORECASE)


class XmlRejected(ValueError):
    """The body is not a safe, well-formed WeChat Pay XML document. The message says why (no content is quoted)."""


def _refuse(what: str):
    def handler(*_args: Any, **_kwargs: Any) -> None:
        raise XmlRejected(f"{what} are not allowed")

    return handler


def _safe_parser_create(encoding: str | None = None, namespace_separator: str | None = None) -> Any:
    parser = _expat.ParserCreate(encoding, namespace_separator)
    # Never read the external DTD subset or parameter entities, and fail on anything DTD-shaped.
    parser.SetParamEntityParsing(_expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse("document type declarations")
    parser.EntityDeclHandler = _refuse("entity declarations")
    parser.UnparsedEntityDeclHandler = _refuse("entity declarations")
    parser.ExternalEntityRefHandler = _refuse("external entities")
    parser.NotationDeclHandler = _refuse("notation declarations")
    parser.ProcessingInstructionHandler = _refuse("processing instructions")
    return parser


# xmltodict takes the expat module as a parameter; this stand-in hands it pre-hardened parsers.
_SAFE_EXPAT = SimpleNamespace(ParserCreate=_safe_parser_create)


def parse_xml(body: bytes | str, *, max_bytes: int = NOTIFY_MAX_BYTES, root: str = "xml") -> dict[str, str]:
    """Parse a WeChat Pay XML document into ``{field: text}``, exactly as received (no whitespace stripped).

    Raises :class:`XmlRejected` for a body over ``max_bytes``, a non-UTF-8 body, a DOCTYPE / entity declaration /
    processing instruction, malformed XML, a root element other than ``<{root}>`` (``<xml>``; a refund
    notification's decrypted ``req_info`` is a ``<root>``), or children that are not plain text. An empty element
    gives ``""``.
    """
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if len(raw) > max_bytes:
        raise XmlRejected(f"body of {len(raw)} bytes is over the limit of {max_bytes} bytes")
    if not raw.strip():
        raise XmlRejected("empty body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise XmlRejected("body is not UTF-8") from None
    if _DECLARATIONS.search(text):
        raise XmlRejected("document type and entity declarations are not allowed")
    try:
        # encoding="utf-8" overrides whatever the XML declaration claims: the bytes were just checked as UTF-8.
        doc = xmltodict.parse(raw, encoding="utf-8", expat=_SAFE_EXPAT, disable_entities=True,
                              strip_whitespace=False, process_comments=False)
    except XmlRejected:
        raise
    except (_expat.ExpatError, ValueError) as exc:
        raise XmlRejected(f"malformed XML ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or list(doc) != [root]:
        raise XmlRejected(f"the root element must be <{root}>")
    element = doc[root]
    if element is None:
        return {}
    if isinstance(element, str):
        if element.strip():
            raise XmlRejected(f"<{root}> must contain fields, not text")
        return {}
    fields: dict[str, str] = {}
    for name, value in element.items():
        if name == "#text":
            if value.strip():
                raise XmlRejected(f"<{root}> must contain fields, not text")
            continue
        if name.startswith("@"):
            raise XmlRejected("attributes are not allowed")
        if isinstance(value, list):
            raise XmlRejected(f"field {name!r} appears more than once")
        if value is None:
            fields[name] = ""
        elif isinstance(value, str):
            fields[name] = value
        else:
            raise XmlRejected(f"field {name!r} must be plain text")
    return fields


def _check_field(name: str, value: Any) -> str:
    if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
        raise ValueError(f"invalid XML field name {name!r}")
    text = value if isinstance(value, str) else str(value)
    if _XML_FORBIDDEN.search(text):
        raise ValueError(f"field {name!r} holds characters XML cannot carry")
    return text


def build_xml(fields: Mapping[str, Any]) -> bytes:
    """Serialise ``fields`` as ``<xml><k>v</k>...</xml>`` (UTF-8, text escaped, no declaration) with xmltodict.

    ``None`` values are left out; other values are turned into text with ``str``. Raises ``ValueError`` for a field
    name that is not a plain XML name or a value holding characters XML cannot carry."""
    clean = {name: _check_field(name, value) for name, value in fields.items() if value is not None}
    return xmltodict.unparse({"xml": clean}, full_document=False).encode("utf-8")


def build_cdata_xml(fields: Mapping[str, Any], *, root: str = "xml") -> bytes:
    """Serialise ``fields`` the way WeChat Pay itself writes XML: every value in a CDATA section, in ``<{root}>``.

    Used for notification replies (whose exact shape WeChat documents) and by the sandbox for notifications (and,
    with ``root="root"``, the plain text of a refund notification's ``req_info``). ``None`` values are left out."""
    if not _FIELD_NAME.fullmatch(root):
        raise ValueError(f"invalid XML root name {root!r}")
    parts = [f"<{root}>"]
    for name, value in fields.items():
        if value is None:
            continue
        text = _check_field(name, value).replace("]]>", "]]]]><![CDATA[>")
        parts.append(f"<{name}><![CDATA[{text}]]></{name}>")
    parts.append(f"</{root}>")
    return "".join(parts).encode("utf-8")
