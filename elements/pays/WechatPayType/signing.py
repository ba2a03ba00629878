"""WeChat Pay v2 signatures (the "安全规范" of the v2 API).

The string to sign is every field with a non-empty value except ``sign`` itself, sorted by field name (byte order),
joined as ``k=v`` with ``&``, followed by ``&key=<API key>``. ``MD5`` signs it with MD5, ``HMAC-SHA256`` with
HMAC-SHA256 keyed by the API key; either way the result is upper-case hex. Verification uses every field received,
known or not, so a field WeChat adds later is still covered.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Literal, Mapping

SignType = Literal["MD5", "HMAC-SHA256"]
SIGN_TYPES: tuple[SignType, ...] = ("MD5", "HMAC-SHA256")


def string_to_sign(fields: Mapping[str, Any], api_key: str) -> str:
    """The exact string WeChat Pay signs for ``fields`` (empty values and ``sign`` left out, ``&key=`` appended)."""
    items = sorted((k, v) for k, v in fields.items() if k != "sign" and v is not None and str(v) != "")
    return "&".join(f"{k}={v}" for k, v in items) + f"&key={api_key}"


def calculate_sign(fields: Mapping[str, Any], api_key: str, sign_type: str = "MD5") -> str:
    """Sign ``fields`` with ``api_key``: upper-case hex MD5 or HMAC-SHA256 (``sign_type``)."""
    data = string_to_sign(fields, api_key).encode("utf-8")
    if sign_type == "MD5":
        return hashlib.md5(data).hexdigest().upper()
    if sign_type == "HMAC-SHA256":
        return hmac.new(api_key.encode("utf-8"), data, hashlib.sha256).hexdigest().upper()
    raise ValueError(f"unknown WeChat Pay sign type {sign_type!r} (use MD5 or HMAC-SHA256)")


def sign_type_for(sign: str, declared: str | None = None) -> str | None:
    """Which algorithm a received ``sign`` was made with. The length decides (32 hex digits: MD5, 64: HMAC-SHA256),
    which is how a notification, which carries no ``sign_type``, is read whatever the configured type; a declared
    ``sign_type`` must agree with it. ``None`` when the length fits no algorithm or contradicts the declaration."""
    by_length = {32: "MD5", 64: "HMAC-SHA256"}.get(len(sign))
    if declared is not None and declared != by_length:
        return None
    return by_length


def verify_sign(fields: Mapping[str, Any], api_key: str) -> bool:
    """True if ``fields["sign"]`` is the signature of all the other fields. Constant-time comparison; a missing
    sign, an unknown ``sign_type`` or a signature of the wrong length is simply ``False``."""
    sign = fields.get("sign")
    if not isinstance(sign, str) or not sign:
        return False
    declared = fields.get("sign_type")
    if declared is not None and not isinstance(declared, str):
        return False
    sign_type = sign_type_for(sign, declared or None)
    if sign_type is None:
        return False
    expected = calculate_sign(fields, api_key, sign_type)
    return hmac.compare_digest(expected.encode("ascii"), sign.upper().encode("utf-8", "replace"))
