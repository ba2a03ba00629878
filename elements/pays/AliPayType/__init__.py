"""``pays.AliPayType``: the Alipay Open API provider (RSA2).

Configuration (``self.config``, checked at load by :meth:`AliPayType.jit_setup`):

``appId``
    the merchant app's id at Alipay.
``privateKey``
    the app's RSA private key (PEM, PKCS#1 or PKCS#8, or the bare base64 body); signs requests.
``alipayPublicKey``
    *Alipay's* public key (PEM or the bare base64 body the console shows), not the app's; verifies responses and
    notifications.
``gateway``
    URL of ``gateway.do`` (default production; the sandbox plugin serves one at ``/sandbox/alipay/gateway.do``).
``notifyUrl``
    where Alipay posts notifications; default ``{baseUrl}/api/{appId}/pays/services/PaySvc/alipayNotify``.
``returnUrl``
    optional: where the buyer's browser goes after paying (``mobile``/``page``).
``sellerId``
    optional: the merchant's Alipay user id (``2088...``); when set, notifications for another seller are refused.
    Without it a warning at load explains the risk.
``timeout``
    seconds per gateway call (default 10).
``payTimeoutMinutes``
    how long a trade can be paid, sent as ``timeout_express`` (default 120, Alipay's own default for a QR code) when
    the order carries no absolute expiry; an order's ``expiresAt`` is sent as ``time_expire`` instead.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar, Mapping
from urllib.parse import parse_qsl, urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa

from elements.pays.errors import (AmountInvalid, NotifyInvalid, ProviderError, RefundInvalid, SignatureInvalid,
                                  UnsupportedPayType)
from elements.pays.Meta import (NotifyReply, NotifyRequest, OrderView, PaymentPrep, PayProvider, RefundResult,
                               TradeState, expiry_text)
from jitcore.errors import ConfigError

from .gateway import BEIJING, TIME_FORMAT, AlipayGateway, format_amount, parse_amount, parse_beijing_time
from .signing import KeyFormatError, load_rsa_key, public_key_fingerprint, verify_notify_signature

__all__ = ["AliPayType", "time_expire"]

log = logging.getLogger(__name__)

#: Alipay's ``trade_status`` → our trade status
TRADE_STATUS = {
    "WAIT_BUYER_PAY": "pending",
    "TRADE_SUCCESS": "success",
    "TRADE_FINISHED": "success",
    "TRADE_CLOSED": "closed",
}
TRADE_NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
#: what Alipay takes as an ``out_trade_no``
OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_]{1,64}")
MIN_AMOUNT = Decimal("0.01")
MAX_AMOUNT = Decimal("100000000.00")
#: cap on the number of fields in a notification body
MAX_NOTIFY_FIELDS = 200
#: the only currency JitPay's amounts are in
CURRENCY = "CNY"
#: Alipay fields naming the currency of the trade's amounts (cross-border trades carry them): when present, CNY.
#: ``pay_currency`` (what the buyer's wallet paid in) is not among them: it does not change what the merchant gets.
CURRENCY_FIELDS = ("currency", "trans_currency", "settle_currency")


def time_expire(expiresAt: datetime) -> tuple[str, datetime]:
    """The order's expiry as Alipay's ``time_expire`` (``yyyy-MM-dd HH:mm:ss``, Beijing time) and the moment that
    text stands for: :func:`~elements.pays.Meta.expiry_text` (rounded down to the second)."""
    return expiry_text(expiresAt, TIME_FORMAT, BEIJING)


#: every key the element's ``config`` may hold
CONFIG_KEYS = ("appId", "privateKey", "alipayPublicKey", "gateway", "notifyUrl", "returnUrl", "sellerId", "timeout",
               "payTimeoutMinutes")


class AliPayType(PayProvider):
    """Alipay: ``pc`` (face-to-face QR code via ``alipay.trade.precreate``), ``mobile`` (``alipay.trade.wap.pay``
    link) and ``page`` (``alipay.trade.page.pay`` link)."""

    providerName: ClassVar[str] = "alipay"
    payTypes: ClassVar[tuple[str, ...]] = ("pc", "mobile", "page")
    #: JitAi's path for Alipay's notification (the generic ``notify/alipay`` works as well)
    notifyPath: ClassVar[str] = "alipayNotify"

    appId: str
    notifyUrl: str
    returnUrl: str | None
    sellerId: str | None
    gateway: AlipayGateway

    # -- load -------------------------------------------------------------------------------------------------------
    def jit_setup(self) -> None:
        """Check the config (see the module docstring) and build the gateway client. A missing or malformed value is
        a :class:`ConfigError` naming the element and the key, never showing a key's content."""
        config = self.config or {}
        unknown = [key for key in config if key not in CONFIG_KEYS]
        if unknown:
            close = difflib.get_close_matches(unknown[0], CONFIG_KEYS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(CONFIG_KEYS)}"
            raise self._config_error(unknown[0], f"is not a setting of Alipay ({hint})")
        self.appId = self._text(config, "appId", required=True)  # type: ignore[assignment]
        private_key = self._key(config, "privateKey")
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise self._config_error("privateKey", "holds a public key; it must be the app's RSA private key "
                                     "(the one whose public half you uploaded to Alipay)")
        alipay_key = self._key(config, "alipayPublicKey")
        if isinstance(alipay_key, rsa.RSAPrivateKey):
            raise self._config_error("alipayPublicKey", "holds a private key; it must be Alipay's public key "
                                     "(shown in the Alipay console), never a private key")
        if public_key_fingerprint(alipay_key) == public_key_fingerprint(private_key):
            raise self._config_error("alipayPublicKey", "is the app's own public key; it must be Alipay's public key "
                                     "(the console shows both: take the one labelled Alipay public key)")
        if private_key.key_size < 2048:
            raise self._config_error("privateKey", f"is a {private_key.key_size}-bit key; RSA2 needs 2048 bits")
        gateway_url = self._url(config, "gateway", required=True)

        self.notifyUrl = self._url(config, "notifyUrl", required=False) or self.notify_url()
        self.returnUrl = self._url(config, "returnUrl", required=False)
        self.sellerId = self._text(config, "sellerId", required=False)
        if not self.sellerId:
            log.warning("%s: sellerId is not set, so notifications are not checked against your Alipay merchant id "
                        "(seller_id, 2088...). Anything Alipay signs for app %s is then believed, also a "
                        "trade paid to another merchant using the same app (a service provider's app, or another "
                        "merchant account bound to it) whose out_trade_no matches one of your orders: that order "
                        "would be marked paid while the money went elsewhere. Set sellerId to your merchant id.",
                        self.fullName, self.appId)
        timeout = self._number(config, "timeout", default=10, low=0.1, high=300)
        self.payTimeoutMinutes = int(self._number(config, "payTimeoutMinutes", default=120, low=1, high=21600,
                                                  integer=True))
        self.gateway = AlipayGateway(app_id=self.appId, private_key=private_key, alipay_public_key=alipay_key,
                                     gateway=gateway_url, timeout=timeout)
        self._alipay_public_key = alipay_key

    def _config_error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.fullName}: config {key} {problem}", details={"element": self.fullName, "key": key})

    def _text(self, config: Mapping[str, Any], key: str, *, required: bool) -> str | None:
        value = config.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise self._config_error(key, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self._config_error(key, "must be text")
        return str(value).strip()

    def _url(self, config: Mapping[str, Any], key: str, *, required: bool) -> str | None:
        value = self._text(config, key, required=required)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
            raise self._config_error(key, "must be an http(s) URL")
        return value

    def _key(self, config: Mapping[str, Any], key: str) -> Any:
        value = config.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise self._config_error(key, "is required (PEM or base64; give it with {$file: ...} or {$env: ...})")
        if not isinstance(value, (str, bytes)):
            raise self._config_error(key, "must be PEM or base64 text")
        try:
            return load_rsa_key(value)
        except KeyFormatError as exc:
            raise self._config_error(key, f"is not a usable key: {exc}") from None

    def _number(self, config: Mapping[str, Any], key: str, *, default: float, low: float, high: float,
                integer: bool = False) -> float:
        value = config.get(key, default)
        if value is None:
            value = default
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise self._config_error(key, "must be a number") from None
        if not math.isfinite(number) or not low <= number <= high or (integer and number != int(number)):
            raise self._config_error(key, f"must be {'a whole number ' if integer else ''}between {low:g} and "
                                     f"{high:g}")
        return number

    # -- the provider contract --------------------------------------------------------------------------------------
    def jit_close(self) -> None:
        """Close the gateway's connection pool."""
        gateway = getattr(self, "gateway", None)
        if gateway is not None:
            gateway.close()

    def prepare(self, order: OrderView, payType: str, *, clientIp: str | None = None) -> PaymentPrep:
        """``pc``: create a face-to-face trade (``alipay.trade.precreate``) and return its QR content and image;
        ``mobile``/``page``: the signed ``alipay.trade.wap.pay``/``alipay.trade.page.pay`` URL (no call is made;
        ``expiresAt`` is ``None``, so the link is signed afresh each time).

        The trade's expiry: ``order.expiresAt`` when set, sent as the absolute ``time_expire`` (Beijing time, whole
        seconds, rounded down so the trade never outlives the order) for every payType, and then also the QR code's
        ``expiresAt``; otherwise ``timeout_express`` = ``payTimeoutMinutes``. ``reference`` is the order id (Alipay's
        ``out_trade_no``: one trade per order)."""
        if payType not in self.payTypes:
            raise UnsupportedPayType(f"{self.fullName} supports payTypes {', '.join(self.payTypes)}, not {payType!r}",
                                     details={"payType": payType, "supported": list(self.payTypes)})
        biz: dict[str, Any] = {
            "out_trade_no": order.orderId,
            "total_amount": self._amount(order.amount),
            "subject": order.subject,
        }
        expiry = time_expire(order.expiresAt) if order.expiresAt is not None else None
        if expiry is not None:
            biz["time_expire"] = expiry[0]
            extra: dict[str, Any] = {"timeExpire": expiry[0]}
        else:
            biz["timeout_express"] = f"{self.payTimeoutMinutes}m"
            extra = {"timeoutExpress": biz["timeout_express"]}
        if payType == "pc":
            biz["product_code"] = "FACE_TO_FACE_PAYMENT"
            started = datetime.now(timezone.utc)
            content = self.gateway.call("alipay.trade.precreate", biz, notify_url=self.notifyUrl)
            qr_code = content.get("qr_code")
            if not isinstance(qr_code, str) or not qr_code:
                raise ProviderError("Alipay alipay.trade.precreate: the response carries no qr_code",
                                    details={"failure": "invalid_response", "method": "alipay.trade.precreate"})
            self._check_out_trade_no(content, order.orderId, "alipay.trade.precreate")
            if expiry is not None:
                expires = expiry[1]
            else:
                # The trade times out payTimeoutMinutes after Alipay created it, which is no earlier than `started`.
                expires = started + timedelta(minutes=self.payTimeoutMinutes)
            return PaymentPrep(payUrl=qr_code, qrCode=self.qr_data_uri(qr_code), expiresAt=expires,
                               extra={"method": "alipay.trade.precreate", **extra}, reference=order.orderId)
        if payType == "mobile":
            method = "alipay.trade.wap.pay"
            biz["product_code"] = "QUICK_WAP_WAY"
            if self.returnUrl:
                biz["quit_url"] = self.returnUrl
        else:
            method = "alipay.trade.page.pay"
            biz["product_code"] = "FAST_INSTANT_TRADE_PAY"
        url = self.gateway.page_url(method, biz, notify_url=self.notifyUrl, return_url=self.returnUrl)
        return PaymentPrep(payUrl=url, qrCode=None, expiresAt=None, extra={"method": method, **extra},
                           reference=order.orderId)

    def query(self, order: OrderView) -> TradeState:
        """``alipay.trade.query``: paid (``TRADE_SUCCESS``/``TRADE_FINISHED``) → success with Alipay's trade number,
        amount and pay time; ``TRADE_CLOSED`` → closed (refunded when it had been paid); ``WAIT_BUYER_PAY`` or no
        trade yet (``ACQ.TRADE_NOT_EXIST``: a QR code nobody scanned) → pending."""
        method = "alipay.trade.query"
        content = self.gateway.call(method, {"out_trade_no": order.orderId}, accept_sub_codes={TRADE_NOT_EXIST})
        if content.get("sub_code") == TRADE_NOT_EXIST:
            return TradeState(orderId=order.orderId, status="pending", raw=content, reference=order.orderId)
        self._check_out_trade_no(content, order.orderId, method)
        currency = self._foreign_currency(content)
        if currency is not None:
            raise ProviderError(f"Alipay {method}: the trade is in {currency}, not {CURRENCY}",
                                details={"failure": "invalid_response", "method": method})
        trade_status = content.get("trade_status")
        status = TRADE_STATUS.get(str(trade_status))
        if status is None:
            raise ProviderError(f"Alipay {method}: unknown trade_status {trade_status!r}",
                                provider_code=str(trade_status),
                                details={"failure": "invalid_response", "method": method})
        pay_time = parse_beijing_time(content.get("send_pay_date"))
        if status == "closed" and pay_time is not None:
            status = "refunded"  # a paid trade is closed only by refunding it in full
        paid = parse_amount(content.get("total_amount")) if status in ("success", "refunded") else None
        if status == "success" and paid is None:
            raise ProviderError(f"Alipay {method}: a paid trade without a valid total_amount",
                                details={"failure": "invalid_response", "method": method})
        return TradeState(orderId=order.orderId, status=status, tradeNo=content.get("trade_no") or None,
                          paidAmount=paid, payTime=pay_time if status in ("success", "refunded") else None,
                          raw=content, reference=order.orderId)

    def query_trades(self, order: OrderView) -> list[TradeState]:
        """Alipay holds at most one trade per order (``out_trade_no`` = the order id, whatever the payType), so this
        is ``[self.query(order)]``. A trade Alipay does not know (``ACQ.TRADE_NOT_EXIST``: a precreated QR code
        nobody has scanned yet, or a link nobody opened) is *not* left out: it is reported ``pending`` with
        ``reference`` = the order id and ``raw["sub_code"] == "ACQ.TRADE_NOT_EXIST"``, because Alipay cannot tell "not
        yet" from "never" and such a QR code stays payable until its ``time_expire``, even after ``close``."""
        return [self.query(order)]

    def close(self, order: OrderView) -> None:
        """``alipay.trade.close``. A trade Alipay does not know (an unscanned QR code) needs no closing. A paid trade
        cannot be closed: Alipay's ``ACQ.TRADE_STATUS_ERROR`` comes back as :class:`ProviderError`."""
        self.gateway.call("alipay.trade.close", {"out_trade_no": order.orderId}, accept_sub_codes={TRADE_NOT_EXIST})

    def refund(self, order: OrderView, refundId: str, amount: Decimal, totalRefunded: Decimal,
               reason: str | None = None) -> RefundResult:
        """``alipay.trade.refund`` with ``out_request_no=refundId``: Alipay refunds each ``out_request_no`` once, so a
        retried refund is harmless. The trade is named by ``trade_no=order.tradeNo`` when given (Alipay's own key,
        which it prefers), together with ``out_trade_no`` = ``order.reference`` (the order id when the reference is
        absent or not an Alipay ``out_trade_no``); Alipay refuses the pair if they are not one trade.
        ``order.amount`` is what that trade captured.

        Alipay's ``10000`` only says the call went through: the money moved if the answer says ``fund_change: "Y"``.
        Any other answer (``"N"``: nothing moved by this call, e.g. the same ``out_request_no`` again, or a refund
        not made yet) is ``processing``, and :meth:`refund_state` finds out."""
        refund_amount = self._amount(amount)
        if totalRefunded > order.amount:
            raise RefundInvalid(f"refunds of order {order.orderId} would total {totalRefunded}, more than its "
                                f"{order.amount}")
        if not refundId or len(refundId) > 64:
            raise RefundInvalid("refundId must be 1 to 64 characters (Alipay's out_request_no)")
        out_trade_no = self._refund_out_trade_no(order)
        biz: dict[str, Any] = {**self._trade_key(order, out_trade_no), "refund_amount": refund_amount,
                               "out_request_no": refundId}
        if reason:
            biz["refund_reason"] = reason[:256]
        content = self.gateway.call("alipay.trade.refund", biz)
        self._check_trade_echo(content, order, out_trade_no, "alipay.trade.refund")
        return RefundResult(refundId=refundId, amount=Decimal(refund_amount), refundNo=None, raw=content,
                            status="success" if content.get("fund_change") == "Y" else "processing")

    def refund_state(self, order: OrderView, refundId: str, amount: Decimal) -> RefundResult:
        """Where refund ``refundId`` stands, by ``alipay.trade.fastpay.refund.query``: Alipay made it if the answer
        carries the refund (its ``refund_amount``; ``refund_status``, when present, ``REFUND_SUCCESS``). An answer
        without it means the refund was not made (Alipay: "not received, or failed"; a query within seconds of the
        refund may not see it yet). Alipay's advice is to send the refund again with the same ``out_request_no``,
        which it makes at most once: that is done here, and its answer says ``success`` (``fund_change: "Y"``) or
        ``processing``. If Alipay definitely refuses it (a business error other than a system error) and the query
        still finds nothing, nothing was refunded: ``closed``. A refund the query reports in another state than
        ``REFUND_SUCCESS`` is ``processing`` (never sent again). Anything else raises :class:`ProviderError` (PaySvc
        asks again later)."""
        found = self._query_refund(order, refundId)
        if found is not None:
            return found
        try:
            return self.refund(order, refundId, amount, amount)
        except ProviderError as exc:
            details = exc.details or {}
            definite = (details.get("failure") == "business" and details.get("signed")
                        and not (exc.provider_code or "").upper().endswith("SYSTEM_ERROR"))
            if not definite:
                raise
            found = self._query_refund(order, refundId)  # made after all, since the first question?
            if found is not None:
                return found
            return RefundResult(refundId=refundId, amount=amount, refundNo=None, status="closed",
                                raw={"sub_code": exc.provider_code, "sub_msg": exc.provider_message})

    def _query_refund(self, order: OrderView, refundId: str) -> RefundResult | None:
        """``alipay.trade.fastpay.refund.query`` for refund ``refundId``: ``success`` when Alipay reports it made,
        ``processing`` when it reports it in another state (each with the amount Alipay gives), None when it reports
        nothing of it."""
        out_trade_no = self._refund_out_trade_no(order)
        method = "alipay.trade.fastpay.refund.query"
        content = self.gateway.call(method, {**self._trade_key(order, out_trade_no), "out_request_no": refundId})
        self._check_trade_echo(content, order, out_trade_no, method)
        text, status = content.get("refund_amount"), content.get("refund_status")
        if text in (None, ""):
            return None
        refunded = parse_amount(text)
        if refunded is None or content.get("out_request_no") not in (None, refundId):
            raise ProviderError(f"Alipay {method}: the response is about another refund, or its refund_amount is "
                                f"not an amount", details={"failure": "invalid_response", "method": method})
        if status not in (None, "", "REFUND_SUCCESS"):
            return RefundResult(refundId=refundId, amount=refunded, refundNo=None, raw=content, status="processing")
        return RefundResult(refundId=refundId, amount=refunded, refundNo=None, raw=content)

    @staticmethod
    def _refund_out_trade_no(order: OrderView) -> str:
        """The ``out_trade_no`` of the trade a refund is about: ``order.reference`` if it is one, else the order id."""
        return order.reference if order.reference and OUT_TRADE_NO.fullmatch(order.reference) else order.orderId

    @staticmethod
    def _trade_key(order: OrderView, out_trade_no: str) -> dict[str, str]:
        """The trade's names in a request: ``out_trade_no``, and ``trade_no`` when known (Alipay prefers it)."""
        return {"out_trade_no": out_trade_no, **({"trade_no": order.tradeNo} if order.tradeNo else {})}

    def _check_trade_echo(self, content: Mapping[str, Any], order: OrderView, out_trade_no: str, method: str) -> None:
        """An answer about another trade than the one asked about is refused (:class:`ProviderError`)."""
        self._check_out_trade_no(content, out_trade_no, method)
        echoed_trade_no = content.get("trade_no")
        if order.tradeNo and echoed_trade_no is not None and echoed_trade_no != order.tradeNo:
            raise ProviderError(f"Alipay {method}: the response is about another trade_no",
                                details={"failure": "invalid_response", "method": method})

    def notify_url(self) -> str:
        """``config.notifyUrl``, else ``{baseUrl}/api/{appId}/pays/services/PaySvc/alipayNotify``."""
        return getattr(self, "notifyUrl", None) or super().notify_url()

    def parse_notify(self, request: NotifyRequest) -> dict[str, str]:
        """Alipay posts ``application/x-www-form-urlencoded`` UTF-8 (no headers matter: the signature is a field).
        Returns the decoded fields exactly as sent; a repeated field, bad percent-encoding, non-UTF-8 text or another
        content type is :class:`NotifyInvalid`."""
        body, contentType = request.body, request.contentType
        if contentType:
            media_type = contentType.split(";", 1)[0].strip().lower()
            if media_type != "application/x-www-form-urlencoded":
                raise NotifyInvalid(f"an Alipay notification is a form post, not {media_type or 'empty'}")
            params = dict(p.strip().split("=", 1) for p in contentType.split(";")[1:] if "=" in p)
            charset = params.get("charset", "utf-8").strip().strip('"').lower()
            if charset not in ("utf-8", "utf8"):
                raise NotifyInvalid(f"an Alipay notification must be UTF-8, not {charset}")
        if not body:
            raise NotifyInvalid("the Alipay notification is empty")
        try:
            text = body.decode("utf-8")
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, encoding="utf-8",
                              errors="strict", max_num_fields=MAX_NOTIFY_FIELDS)
        except (UnicodeDecodeError, ValueError):
            raise NotifyInvalid("the Alipay notification is not a valid UTF-8 form body") from None
        fields: dict[str, str] = {}
        for key, value in pairs:
            if key in fields:
                raise NotifyInvalid(f"the Alipay notification repeats the field {key!r}")
            fields[key] = value
        return fields

    def verify_notify(self, fields: Mapping[str, Any]) -> TradeState:
        """Verify an asynchronous notification: the signature with Alipay's public key (over every field but ``sign``
        and ``sign_type``, as received), then that it is for this ``app_id`` (and ``seller_id`` when configured), in
        CNY (:data:`CURRENCY_FIELDS`, when present), with amounts as Alipay writes them (``"12.34"``; text that only
        means the same number is refused). Returns the trade state it reports. Checking ``out_trade_no`` and the
        amount against the order is the caller's (``PaySvc``)."""
        for key, value in fields.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise NotifyInvalid("notification fields must be single text values (give the raw form, not lists)")
        signature = fields.get("sign")
        if not signature:
            raise SignatureInvalid("the Alipay notification is not signed")
        sign_type = fields.get("sign_type")
        if sign_type not in (None, "", "RSA2"):
            raise SignatureInvalid(f"the Alipay notification uses sign_type {sign_type!r}; only RSA2 is accepted")
        if not verify_notify_signature(fields, self._alipay_public_key):
            raise SignatureInvalid("the Alipay notification's signature does not verify with alipayPublicKey")
        if fields.get("app_id") != self.appId:
            raise NotifyInvalid("the Alipay notification is for another app_id",
                                details={"app_id": fields.get("app_id")})
        if self.sellerId and fields.get("seller_id") != self.sellerId:
            raise NotifyInvalid("the Alipay notification is for another seller_id",
                                details={"seller_id": fields.get("seller_id")})
        out_trade_no = fields.get("out_trade_no")
        if not out_trade_no:
            raise NotifyInvalid("the Alipay notification carries no out_trade_no")
        currency = self._foreign_currency(fields)
        if currency is not None:
            raise NotifyInvalid(f"the Alipay notification is in {currency}, not {CURRENCY}",
                                details={"currency": currency})
        trade_status = fields.get("trade_status")
        status = TRADE_STATUS.get(str(trade_status))
        if status is None:
            raise NotifyInvalid(f"the Alipay notification has an unknown trade_status {trade_status!r}")
        pay_time = parse_beijing_time(fields.get("gmt_payment"))
        refunded = parse_amount(fields.get("refund_fee"))
        if fields.get("refund_fee") not in (None, "") and refunded is None:
            raise NotifyInvalid("the Alipay notification's refund_fee is not an amount as Alipay writes it (\"12.34\")")
        if status == "closed" and refunded is not None and refunded > 0:
            status = "refunded"  # the closing notification of a fully refunded trade
        paid: Decimal | None = None
        if status in ("success", "refunded"):
            paid = parse_amount(fields.get("total_amount"))
            if paid is None:
                raise NotifyInvalid("the Alipay notification's total_amount is missing or not an amount as Alipay "
                                    "writes it (\"12.34\")")
        # a refund's notification names the refund by its out_request_no in out_biz_no: PaySvc asks where it stands
        return TradeState(orderId=out_trade_no, status=status, tradeNo=fields.get("trade_no") or None,
                          paidAmount=paid, payTime=pay_time if status in ("success", "refunded") else None,
                          raw=dict(fields), reference=out_trade_no, refundId=fields.get("out_biz_no") or None)

    def notify_reply(self, ok: bool, message: str = "") -> NotifyReply:
        """``success`` (Alipay stops retrying) or ``failure`` (it will notify again), as ``text/plain``."""
        return NotifyReply(body=b"success" if ok else b"failure", mediaType="text/plain")

    # -- helpers ----------------------------------------------------------------------------------------------------
    def _amount(self, amount: Decimal) -> str:
        try:
            text = format_amount(amount)
        except (TypeError, ValueError) as exc:
            raise AmountInvalid(f"amount {amount!r} is not valid for Alipay: {exc}") from None
        if not MIN_AMOUNT <= Decimal(text) <= MAX_AMOUNT:
            raise AmountInvalid(f"Alipay amounts go from {MIN_AMOUNT} to {MAX_AMOUNT} yuan, not {text}")
        return text

    @staticmethod
    def _foreign_currency(fields: Mapping[str, Any]) -> str | None:
        """The first currency field (:data:`CURRENCY_FIELDS`) present with another value than CNY (cut short), or
        None."""
        for name in CURRENCY_FIELDS:
            value = fields.get(name)
            if value not in (None, "", CURRENCY):
                return f"{name}={str(value)[:16]}"
        return None

    @staticmethod
    def _check_out_trade_no(content: Mapping[str, Any], out_trade_no: str, method: str) -> None:
        echoed = content.get("out_trade_no")
        if echoed is not None and echoed != out_trade_no:
            raise ProviderError(f"Alipay {method}: the response is about another out_trade_no",
                                details={"failure": "invalid_response", "method": method})
