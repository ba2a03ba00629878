"""``pays.Meta``: the provider contract every payment Type implements.

``PaySvc`` knows providers only through :class:`PayProvider`. A provider (Alipay, WeChat Pay, a third party's plugin)
turns an order into a payment the buyer can make, asks the provider about a trade, closes and refunds trades, and
verifies and parses the provider's asynchronous notifications. It never touches the order table: it reports facts
(:class:`TradeState`), and ``PaySvc`` applies them through the order life cycle.

Money crosses this boundary as :class:`~decimal.Decimal` yuan with two places; each provider converts to its own wire
format (Alipay: ``"99.99"``; WeChat Pay: integer fen).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal, Mapping

from jitcore.element import Element

TradeStatus = Literal["pending", "success", "failed", "closed", "refunded"]


@dataclass(frozen=True)
class OrderView:
    """What a provider may know about an order."""

    orderId: str
    subject: str
    amount: Decimal  # yuan, exactly two places
    createdAt: datetime
    #: the provider's trade number of the payment, once the order is paid (refunds may need it). When PaySvc asks a
    #: provider to refund one payment of the order (the accepted one or a surplus), it is that payment's trade number.
    tradeNo: str | None = None
    #: the absolute moment after which no trade of this order may be paid: providers send it as their own expiry
    #: (Alipay ``time_expire``, WeChat Pay ``time_expire``) so that the provider enforces it. Derived from the order
    #: alone (its creation time plus the app's ``settings.pays.payTimeoutMinutes``), so a repeated ``prepare`` sends
    #: identical parameters. ``None``: the provider's own default.
    expiresAt: datetime | None = None
    #: when PaySvc refunds one payment: the reference that payment was prepared with (:attr:`TradeState.reference`)
    reference: str | None = None


@dataclass(frozen=True)
class PaymentPrep:
    """A payment the buyer can make: ``payUrl`` (QR content for ``pc``, a link for ``mobile``/``page``), ``qrCode``
    (a ``data:image/png;base64,...`` URI when the payType is scanned), and until when it stays valid (``expiresAt``,
    aware UTC; ``None`` when the provider gives no validity, then it is never reused)."""

    payUrl: str
    qrCode: str | None = None
    expiresAt: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the reference this trade carries at the provider (Alipay/WeChat ``out_trade_no``); ``None`` means the order
    #: id itself. One order may have several trades at one provider (WeChat's NATIVE and MWEB orders); PaySvc keeps
    #: one payment record per (payment element, reference).
    reference: str | None = None


@dataclass(frozen=True)
class TradeState:
    """What the provider says about the trade of one order, from a query or a verified notification.

    ``paidAmount`` is what the buyer paid (for ``success``), checked by ``PaySvc`` against the order before anything
    changes. ``raw`` is the provider's payload, kept in the audit record."""

    orderId: str
    status: TradeStatus
    tradeNo: str | None = None
    paidAmount: Decimal | None = None
    payTime: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    #: which trade of the order this is about (the ``out_trade_no`` it was prepared with, see
    #: :attr:`PaymentPrep.reference`); ``None`` means the order id itself
    reference: str | None = None


@dataclass(frozen=True)
class RefundResult:
    """The provider accepted a refund (``refundNo`` is its reference, when it gives one)."""

    refundId: str
    amount: Decimal
    refundNo: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NotifyReply:
    """The exact HTTP body a provider expects in answer to its notification."""

    body: bytes
    mediaType: str
    status: int = 200


class PayProvider(Element):
    """The provider contract (``pays.Meta``). Subclasses implement every method; each raises
    :class:`elements.pays.errors.ProviderError` when the provider cannot be reached or refuses, and
    :class:`~elements.pays.errors.SignatureInvalid` / :class:`~elements.pays.errors.NotifyInvalid` for a bad
    notification.

    A ``ProviderError`` after which the request may still have been carried out (no answer, an unreadable or
    unverifiable answer, a "system error, retry" answer) carries ``details["outcomeUnknown"] = True`` (or
    ``details["failure"]`` naming a transport-level kind: ``timeout``, ``connection``, ``http_status``,
    ``invalid_response``, ``signature_missing``, ``signature_invalid``); ``PaySvc`` then keeps a refund counted and
    retries it with the same id rather than releasing it."""

    #: payTypes this provider supports, e.g. ``("pc", "mobile", "page")``.
    payTypes: ClassVar[tuple[str, ...]] = ()
    #: short provider name recorded on orders and audit rows, e.g. ``"alipay"``.
    providerName: ClassVar[str] = ""

    def prepare(self, order: OrderView, payType: str, *, clientIp: str | None = None) -> PaymentPrep:
        """Create (or sign) a payment for ``order`` of kind ``payType`` (one of :attr:`payTypes`). The trade must
        expire at the provider no later than ``order.expiresAt`` (when set); ``PaymentPrep.expiresAt`` says when the
        returned ``payUrl`` stops working."""
        raise NotImplementedError

    def query(self, order: OrderView) -> TradeState:
        """Ask the provider about the order's trade. A trade the provider does not know yet is ``pending``."""
        raise NotImplementedError

    def query_trades(self, order: OrderView) -> list[TradeState]:
        """Every trade of the order this provider holds, one :class:`TradeState` each (with its ``reference``), so
        that PaySvc sees a second payment of one order too. Trades the provider does not know are left out; an
        empty list means none. The default is ``[self.query(order)]`` for a provider with one trade per order."""
        return [self.query(order)]

    def close(self, order: OrderView) -> None:
        """Close the unpaid trade at the provider so it can no longer be paid. Closing a trade the provider does not
        know is not an error."""
        raise NotImplementedError

    def refund(self, order: OrderView, refundId: str, amount: Decimal, totalRefunded: Decimal,
               reason: str | None = None) -> RefundResult:
        """Refund ``amount`` of one paid trade of the order, idempotent per ``refundId`` (the same id never refunds
        twice). The trade is ``order.tradeNo`` (with ``order.reference``); ``order.amount`` is what that trade
        captured. ``totalRefunded`` is the sum of that trade's refunds including this one."""
        raise NotImplementedError

    def settle(self, order: OrderView, paidHere: bool) -> None:
        """The order has been paid (``order.tradeNo``), through this element (``paidHere``) or another: make
        whatever else of it is still payable here unpayable, so that the buyer cannot pay twice. Called once, after
        the payment is committed, for every payment element the order was offered with; errors are recorded, never
        undo the payment. The default closes the trade unless this element took the payment."""
        if not paidHere:
            self.close(order)

    def parse_notify_body(self, body: bytes, contentType: str | None = None) -> dict[str, str]:
        """Turn the raw HTTP body of a notification into the provider's field dict, exactly as received (no
        re-encoding). Raises ``NotifyInvalid`` for a body that cannot be parsed safely."""
        raise NotImplementedError

    def verify_notify(self, fields: Mapping[str, Any]) -> TradeState:
        """Verify a notification's signature and that it is addressed to this merchant (app id, merchant id, seller),
        then return the trade state it reports. Raises ``SignatureInvalid`` or ``NotifyInvalid``; never changes
        anything."""
        raise NotImplementedError

    def notify_reply(self, ok: bool, message: str = "") -> NotifyReply:
        """The answer the provider expects: ``ok`` stops its retries; otherwise it will notify again."""
        raise NotImplementedError

    # -- helpers shared by providers ------------------------------------------------------------------------------
    @staticmethod
    def qr_data_uri(content: str) -> str:
        """A PNG QR code of ``content`` as a ``data:image/png;base64,...`` URI."""
        import io

        import segno

        buffer = io.BytesIO()
        segno.make(content, error="m").save(buffer, kind="png", scale=6, border=2)
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


#: the class of the ``pays.Meta`` element
Meta = PayProvider
