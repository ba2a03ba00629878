"""WeChat Pay v2 signatures (the "安全规范" of the v2 API), by the rule of WeChat's official SDKs.

The string to sign is every field except ``sign`` itself, each value *trimmed*, those empty after trimming left out,
sorted by field name (byte order), joined as ``k=v`` with ``&``, followed by ``&key=<API key>``. ``MD5`` signs it with
MD5, ``HMAC-SHA256`` with HMAC-SHA256 keyed by the API key; either way the result is upper-case hex. Verification uses
every field received, known or not, so a field WeChat adds later is still covered, and always the merchant's
configured algorithm: a signature never chooses its own.

Trimming is Java's ``String.trim()``, as in ``WXPayUtil.generateSignature`` of WeChat's Java SDK (whose server side
signs the same way): every character up to U+0020 (space and the ASCII control characters) comes off both ends, and
nothing else (not U+3000 nor U+00A0). JitPay never *sends* a value with whitespace at either end by any definition
(:func:`has_edge_whitespace`), so what it signs is what WeChat computes whichever way WeChat trims.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, Literal, Mapping

SignType = Literal["MD5", "HMAC-SHA256"]
SIGN_TYPES: tuple[SignType, ...] = ("MD5", "HMAC-SHA256")

#: whitespace at an end of a value, by Python's definition (Unicode) and Java's ``trim`` (up to U+0020)
_EDGE = re.compile(r"\A[\s\x00-\x20]|[\s\x00-\x20]\Z")
_EDGES = re.compile(r"\A[\s\x00-\x20]+|[\s\x00-\x20]+\Z")


def java_trim(value: str) -> str:
    """``value`` without the characters up to U+0020 at either end (Java's ``String.trim()``)."""
    start, end = 0, len(value)
    while start < end and value[start] <= " ":
        start += 1
    while end > start and value[end - 1] <= " ":
        end -= 1
    return value[start:end]


def has_edge_whitespace(value: str) -> bool:
    """True if ``value`` starts or ends with whitespace (Unicode) or an ASCII control character."""
    return bool(_EDGE.search(value))


def strip_edges(value: str) -> str:
    """``value`` without whitespace (Unicode) or ASCII control characters at either end: safe to send."""
    return _EDGES.sub("", value)


def string_to_sign(fields: Mapping[str, Any], api_key: str) -> str:
    """The exact string WeChat Pay signs for ``fields`` (values trimmed, empty ones and ``sign`` left out, ``&key=``
    appended)."""
    items = []
    for key in sorted(fields):
        value = fields[key]
        if key == "sign" or value is None:
            continue
        trimmed = java_trim(str(value))
        if trimmed:
            items.append(f"{key}={trimmed}")
    return "&".join(items) + f"&key={api_key}"


def calculate_sign(fields: Mapping[str, Any], api_key: str, sign_type: str = "MD5") -> str:
    """Sign ``fields`` with ``api_key``: upper-case hex MD5 or HMAC-SHA256 (``sign_type``)."""
    data = string_to_sign(fields, api_key).encode("utf-8")
    if sign_type == "MD5":
        return hashlib.md5(data).hexdigest().upper()
    if sign_type == "HMAC-SHA256":
        return hmac.new(api_key.encode("utf-8"), data, hashlib.sha256).hexdigest().upper()
    raise ValueError(f"unknown WeChat Pay sign type {sign_type!r} (use MD5 or HMAC-SHA256)")


def verify_sign(fields: Mapping[str, Any], api_key: str, sign_type: str) -> bool:
    """True if ``fields["sign"]`` is the ``sign_type`` signature (the merchant's configured algorithm) of all the other
    fields. A ``sign_type`` field, when present, must name that same algorithm. Constant-time comparison; a missing
    sign, another algorithm (whatever the signature's length) or an unknown ``sign_type`` is simply ``False``."""
    if sign_type not in SIGN_TYPES:
        raise ValueError(f"unknown WeChat Pay sign type {sign_type!r} (use MD5 or HMAC-SHA256)")
    sign = fields.get("sign")
    if not isinstance(sign, str) or not sign:
        return False
    declared = fields.get("sign_type")
    if declared not in (None, "") and declared != sign_type:
        return False
    expected = calculate_sign(fields, api_key, sign_type)
    return hmac.compare_digest(expected.encode("ascii"), sign.upper().encode("utf-8", "replace"))
