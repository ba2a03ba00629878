"""Alipay RSA2 signatures: key loading, the string to sign, signing and verifying, and cutting the signed part out of a
synchronous response.

Everything here follows the Alipay Open API rules (see ``PROTOCOLS.md``):

* a **request** is signed over every parameter except ``sign`` and those with an empty value, sorted by key, joined
  as ``k=v`` with ``&`` using the raw values; ``sign_type`` is part of the signed string;
* an **asynchronous notification** is verified the same way but with ``sign`` *and* ``sign_type`` left out, over the
  form-decoded values exactly as received, with Alipay's public key;
* a **synchronous response** is verified over the exact raw text of its ``<method>_response`` value, cut out of the
  body (never re-serialised).

The algorithm is SHA256withRSA (PKCS#1 v1.5), the signature base64 without line breaks.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping, Union

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

RsaKey = Union[rsa.RSAPrivateKey, rsa.RSAPublicKey]

#: keys never part of a request's signed string
REQUEST_UNSIGNED_KEYS = frozenset({"sign"})
#: keys never part of a notification's signed string
NOTIFY_UNSIGNED_KEYS = frozenset({"sign", "sign_type"})


class KeyFormatError(ValueError):
    """A key that cannot be read. The message describes the problem, never the key material."""


def load_rsa_key(text: str | bytes) -> RsaKey:
    """Read an RSA key given as PEM (PKCS#1 or PKCS#8 private key, SubjectPublicKeyInfo or PKCS#1 public key) or as the
    bare base64 body Alipay's console shows. Returns the private or the public key, whichever it is.

    Raises :class:`KeyFormatError` (without any key material in the message) when it is neither, is encrypted, or is
    not an RSA key.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise KeyFormatError("the key is not text (PEM or base64 expected)") from None
    text = text.strip()
    if "\\n" in text and "\n" not in text:
        # A PEM pasted into an environment variable often carries literal "\n" sequences.
        text = text.replace("\\n", "\n")
    if not text:
        raise KeyFormatError("the key is empty")
    key: Any
    if text.startswith("-----BEGIN"):
        data = text.encode("ascii", "replace")
        if "PRIVATE KEY" in text.split("\n", 1)[0]:
            key = _load(serialization.load_pem_private_key, data)
        else:
            key = _load(serialization.load_pem_public_key, data)
    else:
        try:
            der = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFormatError("the key is neither PEM nor base64") from None
        try:
            key = serialization.load_der_private_key(der, password=None)
        except TypeError:
            raise KeyFormatError("the private key is encrypted; give it unencrypted") from None
        except (ValueError, UnsupportedAlgorithm):
            key = _load(serialization.load_der_public_key, der)
    if not isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        raise KeyFormatError("the key is not an RSA key (Alipay RSA2 needs RSA)")
    return key


def _load(loader: Any, data: bytes) -> Any:
    try:
        if loader in (serialization.load_pem_private_key, serialization.load_der_private_key):
            return loader(data, password=None)
        return loader(data)
    except TypeError:
        raise KeyFormatError("the private key is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFormatError("the key does not parse (PEM or base64 of an RSA key expected)") from None


def public_key_fingerprint(key: RsaKey) -> bytes:
    """The DER SubjectPublicKeyInfo of ``key`` (or of its public half): a way to compare two keys."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def sign_content(params: Mapping[str, Any], exclude: frozenset[str] | set[str] = REQUEST_UNSIGNED_KEYS) -> str:
    """The string Alipay signs: every parameter not in ``exclude`` and not empty, sorted by key (by code point, which
    is ASCII order for Alipay's keys), ``k=v`` joined with ``&``, values raw (not URL-encoded)."""
    items = sorted((str(k), "" if v is None else str(v)) for k, v in params.items() if k not in exclude)
    return "&".join(f"{k}={v}" for k, v in items if v != "")


def rsa2_sign(private_key: rsa.RSAPrivateKey, content: str) -> str:
    """SHA256withRSA (PKCS#1 v1.5) signature of the UTF-8 bytes of ``content``, base64 without line breaks."""
    signature = private_key.sign(content.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def rsa2_verify(public_key: rsa.RSAPublicKey, content: str | bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is a valid SHA256withRSA signature of ``content`` (text is taken as UTF-8).
    Never raises for a malformed signature: it simply does not verify."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        raw = base64.b64decode("".join(signature.split()), validate=True)
    except (binascii.Error, ValueError, AttributeError):
        return False
    try:
        public_key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def sign_request(params: Mapping[str, Any], private_key: rsa.RSAPrivateKey) -> dict[str, str]:
    """A copy of the request ``params`` (common parameters plus ``biz_content``) with ``sign`` added."""
    signed = {str(k): str(v) for k, v in params.items() if v is not None and str(v) != "" and k != "sign"}
    signed["sign"] = rsa2_sign(private_key, sign_content(signed, REQUEST_UNSIGNED_KEYS))
    return signed


def verify_request(params: Mapping[str, str], public_key: rsa.RSAPublicKey) -> bool:
    """Whether a request's ``sign`` verifies (over everything but ``sign``, ``sign_type`` included)."""
    signature = params.get("sign")
    if not signature:
        return False
    return rsa2_verify(public_key, sign_content(params, REQUEST_UNSIGNED_KEYS), signature)


def sign_notify(fields: Mapping[str, Any], private_key: rsa.RSAPrivateKey) -> dict[str, str]:
    """A copy of notification ``fields`` with ``sign_type=RSA2`` and ``sign`` (over everything but both) added."""
    signed = {str(k): str(v) for k, v in fields.items() if k not in NOTIFY_UNSIGNED_KEYS}
    signed["sign"] = rsa2_sign(private_key, sign_content(signed, NOTIFY_UNSIGNED_KEYS))
    signed["sign_type"] = "RSA2"
    return signed


def verify_notify_signature(fields: Mapping[str, str], public_key: rsa.RSAPublicKey) -> bool:
    """Whether a notification's ``sign`` verifies over its fields without ``sign`` and ``sign_type``, exactly as
    received."""
    signature = fields.get("sign")
    if not signature:
        return False
    return rsa2_verify(public_key, sign_content(fields, NOTIFY_UNSIGNED_KEYS), signature)


# -- synchronous responses --------------------------------------------------------------------------------------------

class ResponseFormatError(ValueError):
    """A response body that is not a JSON object of the shape Alipay sends."""


def response_key(method: str) -> str:
    """The top-level key of a method's response: ``alipay.trade.query`` → ``alipay_trade_query_response``."""
    return method.replace(".", "_") + "_response"


def top_level_spans(body: str) -> dict[str, tuple[int, int]]:
    """Map each top-level key of the JSON object ``body`` to the ``(start, end)`` span of its raw value text.

    A small scanner that understands JSON strings (escapes included), so braces and quotes inside string values never
    confuse it; nested objects and arrays are skipped by depth. Raises :class:`ResponseFormatError` when ``body`` is
    not one JSON object (validate with :func:`json.loads` as well: this scanner only finds spans).
    """
    n = len(body)
    i = _skip_ws(body, 0)
    if i >= n or body[i] != "{":
        raise ResponseFormatError("the body is not a JSON object")
    i = _skip_ws(body, i + 1)
    spans: dict[str, tuple[int, int]] = {}
    if i < n and body[i] == "}":
        return spans
    while True:
        if i >= n or body[i] != '"':
            raise ResponseFormatError("expected a key")
        key_end = _string_end(body, i)
        try:
            key = json.loads(body[i:key_end])
        except ValueError:
            raise ResponseFormatError("a key is not a valid JSON string") from None
        i = _skip_ws(body, key_end)
        if i >= n or body[i] != ":":
            raise ResponseFormatError("expected ':' after a key")
        i = _skip_ws(body, i + 1)
        start = i
        end = _value_end(body, i)
        if key in spans:
            raise ResponseFormatError(f"duplicate top-level key {key!r}")
        spans[key] = (start, end)
        i = _skip_ws(body, end)
        if i < n and body[i] == ",":
            i = _skip_ws(body, i + 1)
            continue
        if i < n and body[i] == "}":
            if _skip_ws(body, i + 1) != n:
                raise ResponseFormatError("text after the JSON object")
            return spans
        raise ResponseFormatError("expected ',' or '}'")


def extract_response_content(body: str, key: str) -> str | None:
    """The exact raw text of the top-level ``key``'s value in the response ``body`` (from its ``{`` to the matching
    ``}``), or ``None`` when the body has no such key. This is what Alipay signs."""
    spans = top_level_spans(body)
    span = spans.get(key)
    if span is None:
        return None
    return body[span[0]:span[1]]


_WS = " \t\r\n"


def _skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _WS:
        i += 1
    return i


def _string_end(s: str, i: int) -> int:
    """Index just past the JSON string starting at ``s[i] == '"'``."""
    n = len(s)
    i += 1
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise ResponseFormatError("unterminated string")


def _value_end(s: str, i: int) -> int:
    """Index just past the JSON value starting at ``s[i]``."""
    n = len(s)
    if i >= n:
        raise ResponseFormatError("missing value")
    c = s[i]
    if c == '"':
        return _string_end(s, i)
    if c in "{[":
        depth = 0
        while i < n:
            c = s[i]
            if c == '"':
                i = _string_end(s, i)
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        raise ResponseFormatError("unbalanced braces")
    # a number, true, false or null: up to the next delimiter
    while i < n and s[i] not in ",}]" + _WS:
        i += 1
    return i
