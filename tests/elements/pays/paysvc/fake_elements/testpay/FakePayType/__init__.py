"""A test-only payment provider implementing the pays.Meta contract, as a third-party plugin would.

Its "trades" live in a class-level dict shared by every instance in the process, so a test can play the provider:
``FakePayType.trades[orderId] = TradeState(...)``. Notifications are signed with HMAC-SHA256 over the sorted fields.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar, Mapping
from urllib.parse import parse_qsl

from elements.pays.errors import NotifyInvalid, ProviderError, SignatureInvalid
from elements.pays.Meta import NotifyReply, OrderView, PaymentPrep, PayProvider, RefundResult, TradeState


def sign_fields(fields: Mapping[str, str], secret: str) -> str:
    content = "&".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "sign")
    return hmac.new(secret.encode(), content.encode(), hashlib.sha256).hexdigest()


class FakePayType(PayProvider):
    providerName: ClassVar[str] = "fake"
    payTypes: ClassVar[tuple[str, ...]] = ("pc", "mobile")
    trades: ClassVar[dict[str, TradeState]] = {}
    prepared: ClassVar[list[tuple[str, str, str]]] = []
    closed: ClassVar[list[str]] = []
    refunds: ClassVar[dict[str, Decimal]] = {}
    fail_next: ClassVar[list[ProviderError]] = []

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def prepare(self, order: OrderView, payType: str, *, clientIp: str | None = None) -> PaymentPrep:
        self._maybe_fail()
        self.prepared.append((self.fullName, order.orderId, payType))
        url = f"fakepay://{self.fullName}/{order.orderId}/{payType}/{len(self.prepared)}"
        return PaymentPrep(payUrl=url, qrCode=self.qr_data_uri(url) if payType == "pc" else None,
                           expiresAt=datetime.now(timezone.utc) + timedelta(minutes=30))

    def query(self, order: OrderView) -> TradeState:
        self._maybe_fail()
        return self.trades.get(f"{self.fullName}:{order.orderId}", TradeState(order.orderId, "pending"))

    def close(self, order: OrderView) -> None:
        self._maybe_fail()
        self.closed.append(order.orderId)

    def refund(self, order: OrderView, refundId: str, amount: Decimal, totalRefunded: Decimal,
               reason: str | None = None) -> RefundResult:
        self._maybe_fail()
        self.refunds[refundId] = amount
        return RefundResult(refundId, amount, refundNo=f"FR{refundId}")

    def parse_notify_body(self, body: bytes, contentType: str | None = None) -> dict[str, str]:
        try:
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
        except (UnicodeDecodeError, ValueError):
            raise NotifyInvalid("not a form body") from None

    def verify_notify(self, fields: Mapping[str, Any]) -> TradeState:
        given = str(fields.get("sign", ""))
        if not hmac.compare_digest(given, sign_fields(fields, self.config["secret"])):
            raise SignatureInvalid("bad signature")
        if fields.get("merchant") != self.config.get("merchant", "m1"):
            raise NotifyInvalid("another merchant")
        return TradeState(orderId=str(fields["out_trade_no"]), status=str(fields["status"]),  # type: ignore[arg-type]
                          tradeNo=str(fields.get("trade_no")), paidAmount=Decimal(str(fields["amount"])),
                          raw=dict(fields))

    def notify_reply(self, ok: bool, message: str = "") -> NotifyReply:
        return NotifyReply(b"ok" if ok else f"fail:{message}".encode(), "text/plain")
