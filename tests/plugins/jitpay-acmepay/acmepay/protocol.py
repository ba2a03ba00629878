"""AcmePay's wire protocol, shared by the provider and the fake gateway.

API: JSON over HTTPS, ``Authorization: Bearer <apiKey>``; amounts are strings of yuan with two places (``"99.99"``),
times ISO 8601 UTC. Errors are ``{"error": {"code", "message"}}`` with a 4xx (a definite no) or 5xx (try again)
status.

``POST /v1/payments``
    ``{"merchant", "reference", "amount", "currency": "CNY", "description", "method": "qr" | "link", "expires_at",
    "notify_url"}`` → the payment. Idempotent per ``reference``: the same fields give the same payment, other fields
    ``409 reference_in_use``.
``GET /v1/payments/by-reference/{reference}``
    the payment, or ``404 not_found``.
``POST /v1/payments/{id}/cancel``
    the canceled payment (a canceled one again is fine); ``409 payment_succeeded`` for a paid one.
``POST /v1/refunds``
    ``{"payment", "amount", "idempotency_key"}`` → the refund; the same key again gives the same refund, with another
    amount ``409 idempotency_mismatch``; more than is left ``400 amount_too_large``.

A payment: ``{"id", "merchant", "reference", "amount", "currency", "status", "amount_refunded", "checkout_url",
"expires_at", "paid_at"}``; ``status`` is ``pending``, ``succeeded``, ``failed``, ``canceled`` or ``refunded`` (all of
it refunded).

Webhooks: ``POST notify_url`` with ``{"id": "evt_...", "type": "payment.succeeded" | "payment.failed" |
"payment.canceled", "payment": {...}}`` and the header ``Acme-Signature: t=<unix time>,v1=<hex>``, the HMAC-SHA256
with the merchant's webhook secret of ``<t>.<the exact body>``. Any 2xx answer acknowledges it; anything else makes
AcmePay send it again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

SIGNATURE_HEADER = "Acme-Signature"
#: what a payment's ``status`` can be
STATUSES = ("pending", "succeeded", "failed", "canceled", "refunded")
#: an amount as AcmePay writes it
AMOUNT_RE = re.compile(r"(0|[1-9][0-9]{0,8})\.[0-9]{2}")
_SIGNATURE_RE = re.compile(r"t=([0-9]{1,12}),v1=([0-9a-f]{64})")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``<timestamp>.<body>`` with ``secret``."""
    return hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Acme-Signature`` header value for ``body``."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def parse_signature_header(value: str) -> tuple[int, str] | None:
    """``(timestamp, hex signature)`` of a header value, or None if it is not one."""
    match = _SIGNATURE_RE.fullmatch(value.strip())
    return (int(match.group(1)), match.group(2)) if match else None
