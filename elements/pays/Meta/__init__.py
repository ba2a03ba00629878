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
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from decimal import Decimal
from typing import Any, ClassVar, Iterable, Iterator, Literal, Mapping
from urllib.parse import parse_qsl

from jitcore.element import Element
from jitcore.errors import ConfigError

TradeStatus = Literal["pending", "success", "failed", "closed", "refunded"]
#: where a refund the provider accepted stands (:class:`RefundResult`)
RefundStatus = Literal["success", "processing", "closed", "abnormal"]


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
    #: a notification about one refund of the trade (WeChat Pay v3's ``REFUND.*``): its ``refundId`` (the
    #: ``out_refund_no``). PaySvc then asks the provider where that refund stands (:meth:`PayProvider.refund_state`)
    #: instead of waiting for its next follow-up.
    refundId: str | None = None


@dataclass(frozen=True)
class RefundResult:
    """A refund the provider accepted (``refundNo`` is its reference, when it gives one), and where it stands:

    - ``success``: refunded;
    - ``processing``: accepted, not finished (WeChat Pay: the money is on its way back). PaySvc keeps it counted
      against the payment, not yet in the order's ``refundedAmount``, and asks :meth:`PayProvider.refund_state`
      again until it is final;
    - ``closed``: the provider gave up after accepting it: nothing was refunded, the money stayed with the merchant;
    - ``abnormal``: the provider could not pay it back the way it came (WeChat Pay: the buyer's card was cancelled);
      the money waits at the provider for the merchant's hand (WeChat Pay's merchant platform). Not final: PaySvc
      keeps it counted, announces it, and confirms it once the provider reports it ``success``.

    :meth:`PayProvider.refund` answers ``success`` or ``processing``; :meth:`PayProvider.refund_state` any of them."""

    refundId: str
    amount: Decimal
    refundNo: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    status: RefundStatus = "success"


class NotifyHeaders(Mapping[str, str]):
    """A notification's HTTP headers, read-only and case-insensitive (``headers["Acme-Signature"]`` and
    ``headers["acme-signature"]`` are the same). A header sent more than once reads as its values joined by ``", "``
    (as HTTP allows); :meth:`getlist` gives them one by one. Iterating gives the lower-case names."""

    def __init__(self, headers: "Mapping[str, str] | Iterable[tuple[str, str]] | None" = None) -> None:
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            name = name.decode("latin-1") if isinstance(name, bytes) else str(name)
            value = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            self._values.setdefault(name.lower(), []).append(value)

    def __getitem__(self, name: str) -> str:
        return ", ".join(self._values[name.lower()])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def getlist(self, name: str) -> list[str]:
        """Every value of header ``name``, in the order received (empty if it was not sent)."""
        return list(self._values.get(name.lower(), ()))

    def __repr__(self) -> str:  # values may be signatures: names only
        return f"NotifyHeaders({sorted(self._values)})"


@dataclass(frozen=True)
class NotifyRequest:
    """A provider's notification exactly as it reached us over HTTP: what :meth:`PayProvider.parse_notify` reads.

    ``body`` is the raw request body (never re-encoded: signatures cover these bytes), ``headers`` the request
    headers (any mapping or ``(name, value)`` pairs; kept as case-insensitive :class:`NotifyHeaders`), ``query`` the
    raw query string (without ``?``), ``client`` the address the request came from (``None`` when unknown; behind a
    proxy it is the proxy's unless the server trusts forwarded headers)."""

    body: bytes
    headers: NotifyHeaders = field(default_factory=NotifyHeaders)
    query: str = ""
    client: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.body, bytes):
            raise TypeError("NotifyRequest.body must be the raw bytes of the request body")
        if not isinstance(self.headers, NotifyHeaders):
            object.__setattr__(self, "headers", NotifyHeaders(self.headers))

    @property
    def contentType(self) -> str | None:
        """The ``Content-Type`` header as sent (``None`` without one)."""
        return self.headers.get("content-type")

    @property
    def mediaType(self) -> str:
        """The content type without its parameters, lower case (``"application/json"``; ``""`` without one)."""
        return (self.contentType or "").split(";", 1)[0].strip().lower()

    @property
    def queryParams(self) -> dict[str, str]:
        """The query string's parameters (the last of a repeated one)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))

    @classmethod
    def of(cls, body: bytes, contentType: str | None = None, **kwargs: Any) -> "NotifyRequest":
        """A request of ``body`` with just a ``Content-Type`` header (what older callers hand over)."""
        headers = dict(kwargs.pop("headers", None) or {})
        if contentType:
            headers["Content-Type"] = contentType
        return cls(body=body, headers=NotifyHeaders(headers), **kwargs)


@dataclass(frozen=True)
class NotifyReply:
    """The HTTP answer a provider expects to its notification: status, body, media type and any headers. Use
    :meth:`text`, :meth:`json` or :meth:`empty` to build one."""

    body: bytes = b""
    mediaType: str = "text/plain"
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, text: str, status: int = 200) -> "NotifyReply":
        """A ``text/plain`` UTF-8 reply (Alipay's ``success``)."""
        return cls(text.encode("utf-8"), "text/plain", status)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> "NotifyReply":
        """A JSON reply (``{"code": "FAIL", "message": ...}`` with a 4xx/5xx status, as WeChat Pay v3 wants)."""
        return cls(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), "application/json",
                   status)

    @classmethod
    def empty(cls, status: int = 204) -> "NotifyReply":
        """No body at all (``204 No Content`` by default)."""
        return cls(b"", "text/plain", status)


class PayProvider(Element):
    """The provider contract (``pays.Meta``), documented as a whole in ``docs/PROVIDERS.md``. Subclasses implement
    ``prepare``, ``query``, ``close``, ``refund``, ``parse_notify``, ``verify_notify`` and ``notify_reply``; each raises
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
    #: short provider name recorded on payments, e.g. ``"alipay"``: lower-case letters, digits, ``_`` or ``-``. It
    #: names the provider's notification route ``/api/{appId}/pays/services/PaySvc/notify/{providerName}``; every
    #: configured element with this name is tried for a notification that arrives there.
    providerName: ClassVar[str] = ""
    #: the path below ``/api/{appId}/pays/services/PaySvc/`` of the default ``notifyUrl``: the generic route, unless a
    #: provider keeps a JitAi path (Alipay ``alipayNotify``, WeChat Pay ``wechatNotify``)
    notifyPath: ClassVar[str] = "notify/{providerName}"
    #: the largest notification body PaySvc reads for this provider (a bigger one is refused with 413 and recorded)
    notifyMaxBytes: ClassVar[int] = 64 * 1024

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
        captured. ``totalRefunded`` is the sum of that trade's refunds including this one. A refund the provider
        accepted but has not finished is answered with ``status="processing"`` (then implement :meth:`refund_state`);
        a definite refusal raises :class:`~elements.pays.errors.ProviderError`."""
        raise NotImplementedError

    def refund_state(self, order: OrderView, refundId: str, amount: Decimal) -> RefundResult:
        """Where refund ``refundId`` of ``amount`` (one this element accepted earlier, of the trade ``order.tradeNo``
        / ``order.reference``) stands now: a :class:`RefundResult` with any status. PaySvc asks while the refund is
        ``processing`` or ``abnormal``. A refund the provider does not know raises a
        :class:`~elements.pays.errors.ProviderError` (PaySvc asks again later). The default, for providers whose
        refunds are final when accepted: the refund succeeded."""
        return RefundResult(refundId=refundId, amount=amount)

    def settle(self, order: OrderView, paidHere: bool) -> None:
        """The order has been paid (``order.tradeNo``), through this element (``paidHere``) or another: make
        whatever else of it is still payable here unpayable, so that the buyer cannot pay twice. Called by a job
        after the payment is committed, for every payment element the order has a trade with that may still capture
        money, and for the paying element if its class overrides this method (the default does nothing there);
        errors are recorded, never undo the payment. The default closes the trade unless this element took the
        payment."""
        if not paidHere:
            self.close(order)

    def parse_notify(self, request: NotifyRequest) -> Mapping[str, Any]:
        """Turn a notification as it arrived over HTTP (raw body bytes, case-insensitive headers, content type, query
        string, client address) into the provider's fields, exactly as received (no re-encoding). Everything
        :meth:`verify_notify` needs must be in the fields: a provider that signs in headers puts the signature
        headers and the exact signed body text there too. No secret is used here and nothing changes; the fields are
        kept in the audit log. Raises ``NotifyInvalid`` for a request that cannot be parsed safely.

        The default calls :meth:`parse_notify_body` with the body and the content type (the contract before headers
        were passed on)."""
        if type(self).parse_notify_body is PayProvider.parse_notify_body:
            raise NotImplementedError(f"{type(self).__qualname__} implements neither parse_notify nor "
                                      f"parse_notify_body")
        return self.parse_notify_body(request.body, request.contentType)

    def parse_notify_body(self, body: bytes, contentType: str | None = None) -> Mapping[str, Any]:
        """The older form of :meth:`parse_notify` (body and content type only), kept for existing providers; a
        provider that implements :meth:`parse_notify` gets this for free."""
        if type(self).parse_notify is PayProvider.parse_notify:
            raise NotImplementedError(f"{type(self).__qualname__} implements neither parse_notify nor "
                                      f"parse_notify_body")
        return self.parse_notify(NotifyRequest.of(body, contentType))

    def notify_order_id(self, fields: Mapping[str, Any]) -> str | None:
        """The order id a parsed notification names, *unverified*: PaySvc only uses it to try first the element that
        offered that order and to file a rejected notification under its order. The default reads
        ``out_trade_no`` (Alipay's and WeChat Pay's field)."""
        value = fields.get("out_trade_no")
        return value if isinstance(value, str) else None

    def notify_url(self) -> str:
        """Where the provider should post this element's notifications: ``config.notifyUrl`` when set, else the
        app's ``baseUrl`` + ``/api/{appId}/pays/services/PaySvc/`` + :attr:`notifyPath` (the generic route
        ``notify/{providerName}`` unless the provider keeps another). ``ConfigError`` when neither is set."""
        configured = (self.config or {}).get("notifyUrl")
        if isinstance(configured, str) and configured.strip():
            return configured.strip()
        base_url = (getattr(self.app, "baseUrl", None) or "").rstrip("/")
        if not base_url:
            raise ConfigError(f"{self.fullName}: config notifyUrl is not set and the app has no baseUrl to build it "
                              f"from; set the app's baseUrl (its public URL) or notifyUrl",
                              details={"element": self.fullName, "key": "notifyUrl"})
        path = self.notifyPath.format(providerName=self.providerName)
        return f"{base_url}/api/{self.app.appId}/pays/services/PaySvc/{path}"

    def verify_notify(self, fields: Mapping[str, Any]) -> TradeState:
        """Verify a notification's signature and that it is addressed to this merchant (app id, merchant id, seller),
        then return the trade state it reports. Raises ``SignatureInvalid`` or ``NotifyInvalid``; never changes
        anything."""
        raise NotImplementedError

    def notify_reply(self, ok: bool, message: str = "") -> NotifyReply:
        """The answer the provider expects: ``ok`` stops its retries (the notification was processed, or had been
        already); otherwise it will notify again. ``message`` says why not (no secret in it)."""
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


def expiry_text(expiresAt: datetime, fmt: str, tz: tzinfo) -> tuple[str, datetime]:
    """The order's expiry as a provider writes it: ``expiresAt`` rounded down to the second, in the provider's
    timezone ``tz``, formatted with ``fmt`` (``strftime``), and the moment that text stands for (aware UTC). Rounded
    down, so the provider's trade never outlives the order; a naive ``expiresAt`` is taken as UTC (the contract's
    times are UTC). Alipay: ``expiry_text(order.expiresAt, "%Y-%m-%d %H:%M:%S", BEIJING)``."""
    if expiresAt.tzinfo is None:
        expiresAt = expiresAt.replace(tzinfo=timezone.utc)
    moment = expiresAt.astimezone(timezone.utc).replace(microsecond=0)
    return moment.astimezone(tz).strftime(fmt), moment


#: the class of the ``pays.Meta`` element
Meta = PayProvider
