"""``acmepay.AcmePayType``: AcmePay as a JitPay payment provider (the ``pays.Meta`` contract, docs/PROVIDERS.md).

Config: ``merchantId``, ``apiKey`` (Bearer), ``webhookSecret`` (signs webhooks), ``gateway`` (API base URL),
``notifyUrl`` (default: PaySvc's generic route ``.../notify/acmepay``), ``timeout`` (seconds),
``signatureToleranceSeconds`` (how old a webhook's signature may be, default 300).

One AcmePay payment per order (``reference`` = the order id), whatever the payType: ``pc`` shows its checkout URL as
a QR code, ``mobile`` links to it.
"""

from __future__ import annotations

import difflib
import hmac
import json
import time
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Mapping

import httpx

from acmepay.protocol import AMOUNT_RE, SIGNATURE_HEADER, parse_signature_header, signature
from elements.pays.errors import NotifyInvalid, ProviderError, SignatureInvalid, UnsupportedPayType
from elements.pays.Meta import (NotifyReply, NotifyRequest, OrderView, PaymentPrep, PayProvider, RefundResult,
                                TradeState)
from jitcore.errors import ConfigError

CONFIG_KEYS = ("merchantId", "apiKey", "webhookSecret", "gateway", "notifyUrl", "timeout",
               "signatureToleranceSeconds")
#: AcmePay's payment status -> the contract's trade status
STATUS = {"pending": "pending", "succeeded": "success", "failed": "failed", "canceled": "closed",
          "refunded": "refunded"}
#: webhook type -> the payment status it reports
EVENTS = {"payment.succeeded": "succeeded", "payment.failed": "failed", "payment.canceled": "canceled",
          "payment.refunded": "refunded"}


class AcmePayType(PayProvider):
    """AcmePay: ``pc`` (QR code of the checkout page) and ``mobile`` (a link to it)."""

    providerName: ClassVar[str] = "acmepay"
    payTypes: ClassVar[tuple[str, ...]] = ("pc", "mobile")
    notifyMaxBytes: ClassVar[int] = 16 * 1024

    def jit_setup(self) -> None:
        """Check the config; every problem is a ConfigError naming the key (never its value)."""
        config = self.config or {}
        for key in config:
            if key not in CONFIG_KEYS:
                close = difflib.get_close_matches(key, CONFIG_KEYS, n=1)
                raise self._config_error(key, "is not an AcmePay setting" +
                                         (f" (did you mean '{close[0]}'?)" if close else ""))
        for key in ("merchantId", "apiKey", "webhookSecret", "gateway"):
            if not isinstance(config.get(key), str) or not config[key].strip():
                raise self._config_error(key, "is required (text)")
        self.merchantId = config["merchantId"].strip()
        self.webhookSecret = config["webhookSecret"].strip()
        self.tolerance = float(config.get("signatureToleranceSeconds", 300))
        self.notifyUrl = self.notify_url()
        self.client = httpx.Client(base_url=config["gateway"].rstrip("/"), timeout=float(config.get("timeout", 10)),
                                   headers={"Authorization": f"Bearer {config['apiKey'].strip()}"}, trust_env=False)

    def jit_close(self) -> None:
        """Close the HTTP client."""
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def _config_error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.fullName}: config {key} {problem}", details={"element": self.fullName, "key": key})

    # -- the API ------------------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              accept: tuple[str, ...] = ()) -> dict[str, Any]:
        """One API call. A 4xx is a definite no (``ProviderError`` with AcmePay's code), unless its code is in
        ``accept`` (then the error body is returned); no answer, a 5xx or an unreadable answer may have been
        carried out: ``outcomeUnknown``."""
        where = f"AcmePay {method} {path}"
        try:
            response = self.client.request(method, path, json=body)
        except httpx.TimeoutException:
            raise ProviderError(f"{where}: no answer in time", details={"failure": "timeout"}) from None
        except httpx.HTTPError as exc:
            raise ProviderError(f"{where}: {type(exc).__name__}", details={"failure": "connection"}) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ProviderError(f"{where}: HTTP {response.status_code} with an unreadable body",
                                details={"failure": "invalid_response", "outcomeUnknown": True})
        if response.status_code >= 500:
            raise ProviderError(f"{where}: HTTP {response.status_code}", provider_code=_code(data),
                                details={"failure": "http_status", "outcomeUnknown": True})
        if response.status_code >= 400:
            if _code(data) in accept:
                return data
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            raise ProviderError(f"{where}: {_code(data)}", provider_code=_code(data),
                                provider_message=str(error.get("message", ""))[:200])
        return data

    def _payment(self, orderId: str) -> dict[str, Any] | None:
        data = self._call("GET", f"/v1/payments/by-reference/{orderId}", accept=("not_found",))
        if "error" in data:
            return None
        if data.get("reference") != orderId or data.get("merchant") != self.merchantId:
            raise ProviderError("AcmePay answered about another payment",
                                details={"failure": "invalid_response"})
        return data

    # -- the contract ---------------------------------------------------------------------------------------------
    def prepare(self, order: OrderView, payType: str, *, clientIp: str | None = None) -> PaymentPrep:
        """``POST /v1/payments`` (``qr`` for ``pc``, ``link`` for ``mobile``): the checkout URL, valid until the
        order's ``expiresAt``. Repeated with the same fields, AcmePay returns the same payment."""
        if payType not in self.payTypes:
            raise UnsupportedPayType(f"{self.fullName} supports payTypes {', '.join(self.payTypes)}, not {payType!r}")
        data = self._call("POST", "/v1/payments", {
            "merchant": self.merchantId, "reference": order.orderId, "amount": f"{order.amount:.2f}",
            "currency": "CNY", "description": order.subject, "method": "qr" if payType == "pc" else "link",
            "expires_at": order.expiresAt.isoformat() if order.expiresAt else None, "notify_url": self.notifyUrl})
        url = data.get("checkout_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ProviderError("AcmePay answered without a checkout_url", details={"failure": "invalid_response"})
        expires = datetime.fromisoformat(data["expires_at"]) if data.get("expires_at") else None
        return PaymentPrep(payUrl=url, qrCode=self.qr_data_uri(url) if payType == "pc" else None, expiresAt=expires,
                           reference=order.orderId)

    def query(self, order: OrderView) -> TradeState:
        """``GET /v1/payments/by-reference/{orderId}``; a payment AcmePay does not know is pending."""
        data = self._payment(order.orderId)
        if data is None:
            return TradeState(orderId=order.orderId, status="pending", reference=order.orderId)
        return self._state(order.orderId, data, ProviderError)

    def close(self, order: OrderView) -> None:
        """``POST /v1/payments/{id}/cancel``; nothing to do for a payment AcmePay does not know."""
        data = self._payment(order.orderId)
        if data is not None:
            self._call("POST", f"/v1/payments/{data['id']}/cancel")

    def refund(self, order: OrderView, refundId: str, amount: Decimal, totalRefunded: Decimal,
               reason: str | None = None) -> RefundResult:
        """``POST /v1/refunds`` with ``idempotency_key=refundId``: AcmePay refunds a key once."""
        data = self._payment(order.orderId)
        if data is None:
            raise ProviderError(f"AcmePay has no payment for order {order.orderId}", provider_code="not_found")
        answer = self._call("POST", "/v1/refunds", {"payment": data["id"], "amount": f"{amount:.2f}",
                                                     "idempotency_key": refundId})
        if answer.get("status") != "succeeded" or answer.get("amount") != f"{amount:.2f}":
            raise ProviderError("AcmePay answered a refund it did not make as asked",
                                details={"failure": "invalid_response", "outcomeUnknown": True})
        return RefundResult(refundId=refundId, amount=amount, refundNo=answer.get("id"), raw=answer)

    # -- notifications --------------------------------------------------------------------------------------------
    def parse_notify(self, request: NotifyRequest) -> dict[str, Any]:
        """A webhook: JSON, signed in the ``Acme-Signature`` header. The fields are the header and the exact body
        text (what :meth:`verify_notify` checks), and the order it names (unverified, for PaySvc's routing)."""
        if request.mediaType != "application/json":
            raise NotifyInvalid(f"an AcmePay webhook is JSON, not {request.mediaType or 'untyped'}")
        try:
            text = request.body.decode("utf-8")
            data = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise NotifyInvalid("the AcmePay webhook is not UTF-8 JSON") from None
        payment = data.get("payment") if isinstance(data, dict) else None
        reference = payment.get("reference") if isinstance(payment, dict) else None
        return {"signature": request.headers.get(SIGNATURE_HEADER, ""), "body": text,
                "reference": reference if isinstance(reference, str) else None}

    def notify_order_id(self, fields: Mapping[str, Any]) -> str | None:
        """The payment's ``reference`` (the order id), unverified."""
        return fields.get("reference")

    def verify_notify(self, fields: Mapping[str, Any]) -> TradeState:
        """The signature (HMAC-SHA256 of ``<t>.<body>`` with the webhook secret, at most
        ``signatureToleranceSeconds`` old), then the merchant, the currency and the amount's form; the state comes
        from the signed body only."""
        parsed = parse_signature_header(str(fields.get("signature") or ""))
        body = fields.get("body")
        if parsed is None or not isinstance(body, str):
            raise SignatureInvalid("the AcmePay webhook carries no valid Acme-Signature header")
        timestamp, given = parsed
        if not hmac.compare_digest(given, signature(self.webhookSecret, timestamp, body.encode("utf-8"))):
            raise SignatureInvalid("the AcmePay webhook's signature does not verify with webhookSecret")
        if abs(time.time() - timestamp) > self.tolerance:
            raise SignatureInvalid("the AcmePay webhook's signature is too old (a replay?)")
        data = json.loads(body)
        payment = data.get("payment")
        if not isinstance(payment, dict) or EVENTS.get(data.get("type")) is None:
            raise NotifyInvalid(f"the AcmePay webhook has an unknown type {str(data.get('type'))[:40]!r}")
        if payment.get("merchant") != self.merchantId:
            raise NotifyInvalid("the AcmePay webhook is for another merchant")
        if not isinstance(payment.get("reference"), str) or not payment["reference"]:
            raise NotifyInvalid("the AcmePay webhook names no payment reference")
        return self._state(payment["reference"], payment, NotifyInvalid)

    def notify_reply(self, ok: bool, message: str = "") -> NotifyReply:
        """``200 {"received": true}``; otherwise ``400 {"error": message}`` (AcmePay then sends it again)."""
        return NotifyReply.json({"received": True}) if ok else NotifyReply.json({"error": message or "failed"}, 400)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _state(self, orderId: str, payment: Mapping[str, Any], error: type[Exception]) -> TradeState:
        status = STATUS.get(str(payment.get("status")))
        if status is None:
            raise error(f"AcmePay reports an unknown status {str(payment.get('status'))[:40]!r}")
        if payment.get("currency") != "CNY":
            raise error("AcmePay reports a payment in another currency than CNY")
        paid = None
        if status in ("success", "refunded"):
            if not AMOUNT_RE.fullmatch(str(payment.get("amount"))):
                raise error("AcmePay reports a paid payment without an amount as it writes them (\"12.34\")")
            paid = Decimal(payment["amount"])
        paid_at = payment.get("paid_at")
        return TradeState(orderId=orderId, status=status, tradeNo=payment.get("id"),  # type: ignore[arg-type]
                          paidAmount=paid, payTime=datetime.fromisoformat(paid_at) if paid_at else None,
                          raw=dict(payment), reference=payment.get("reference") or orderId)


def _code(data: Mapping[str, Any]) -> str:
    error = data.get("error")
    return str(error.get("code")) if isinstance(error, dict) and error.get("code") else "unknown"
