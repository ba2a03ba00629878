"""``pays.WechatPayType``: WeChat Pay merchant API v2 (XML) as a :class:`~elements.pays.Meta.PayProvider`.

payTypes: ``pc`` → ``unifiedorder`` with ``trade_type=NATIVE`` (``payUrl`` is the ``code_url`` the buyer scans, plus a
QR image); ``mobile`` → ``trade_type=MWEB`` (``payUrl`` is the ``mweb_url`` H5 link). Protocol notes: the WeChat Pay
v2 section of PROTOCOLS.md. Amounts cross the contract as ``Decimal`` yuan and go on the wire as integer fen.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from elements.pays.errors import (AmountInvalid, NotifyInvalid, OrderIdInvalid, ProviderError, SignatureInvalid,
                                  UnsupportedPayType)
from elements.pays.Meta import NotifyReply, OrderView, PaymentPrep, PayProvider, RefundResult, TradeState

from .api import WechatApi, client_ssl_context
from .config import WechatConfig, read_config
from .signing import verify_sign
from .wirexml import NOTIFY_MAX_BYTES, XmlRejected, build_cdata_xml, parse_xml

__all__ = ["WechatPayType", "yuan_to_fen", "fen_to_yuan", "cut_utf8", "parse_time_end"]

log = logging.getLogger(__name__)

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
#: How long WeChat keeps a ``prepay_id`` (NATIVE ``code_url``) and an ``mweb_url`` valid, and how much earlier we stop
#: reusing them, so a buyer never gets a link that dies while they look at it.
PREPAY_VALIDITY = timedelta(hours=2)
PREPAY_MARGIN = timedelta(minutes=10)
MWEB_VALIDITY = timedelta(minutes=5)
MWEB_MARGIN = timedelta(minutes=1)

_OUT_TRADE_NO = re.compile(r"^[A-Za-z0-9_\-|*]{1,32}$")
_TRADE_STATES = {
    "SUCCESS": "success",
    "REFUND": "refunded",
    "NOTPAY": "pending",
    "USERPAYING": "pending",
    "CLOSED": "closed",
    "REVOKED": "closed",
    "PAYERROR": "failed",
}


def yuan_to_fen(amount: Decimal) -> int:
    """``Decimal`` yuan → integer fen, exactly. Raises :class:`AmountInvalid` for fractions of a fen, non-positive
    or non-finite amounts (and for floats: money never goes through binary floating point here)."""
    if isinstance(amount, float) or not isinstance(amount, (Decimal, int, str)):
        raise AmountInvalid(f"amount must be a Decimal number of yuan, not {type(amount).__name__}")
    try:
        value = Decimal(amount)
        fen = value * 100
        if not value.is_finite() or fen != fen.to_integral_value():
            raise AmountInvalid(f"amount {amount} is not a whole number of fen (at most two decimal places)")
    except InvalidOperation:
        raise AmountInvalid(f"amount {amount!r} is not a number") from None
    if fen <= 0:
        raise AmountInvalid(f"amount {amount} must be at least 0.01 yuan")
    return int(fen)


def fen_to_yuan(fen: str | int) -> Decimal:
    """Integer fen (as WeChat writes it, e.g. ``"9999"``) → ``Decimal`` yuan with two places (``99.99``).
    Raises ``ValueError`` for anything but a non-negative integer."""
    text = str(fen)
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"not an amount in fen: {fen!r}")
    return (Decimal(int(text)) / 100).quantize(Decimal("0.01"))


def cut_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8 without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")


def parse_time_end(value: str | None) -> datetime | None:
    """WeChat's ``time_end`` (``yyyyMMddHHmmss``, Beijing time) → an aware UTC datetime; ``None`` if absent or
    malformed."""
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=BEIJING).astimezone(timezone.utc)
    except ValueError:
        return None


class WechatPayType(PayProvider):
    """WeChat Pay v2. Configure ``appId``, ``mchId``, ``apiKey``; optionally ``signType`` (``MD5`` | ``HMAC-SHA256``),
    ``gateway``, ``notifyUrl``, ``certPath``/``keyPath`` (refunds), ``spbillCreateIp``, ``timeout``."""

    providerName = "wechat"
    payTypes = ("pc", "mobile")

    settings: WechatConfig
    api: WechatApi

    def jit_setup(self) -> None:
        """Check the config (raising ``ConfigError`` naming this element and the key) and build the API client."""
        self.settings = read_config(self.fullName, self.config or {}, self.app)
        s = self.settings
        context = client_ssl_context(s.certPath, s.keyPath) if s.certPath else None
        self.api = WechatApi(gateway=s.gateway, appId=s.appId, mchId=s.mchId, apiKey=s.apiKey, signType=s.signType,
                             timeout=s.timeout, sslContext=context)

    # -- payments -------------------------------------------------------------------------------------------------
    def prepare(self, order: OrderView, payType: str, *, clientIp: str | None = None) -> PaymentPrep:
        """``unifiedorder`` for ``order``: ``pc`` → NATIVE (``payUrl`` = ``code_url``, ``qrCode`` = its PNG, valid
        while the ``prepay_id`` is), ``mobile`` → MWEB (``payUrl`` = ``mweb_url``, valid about 5 minutes).

        WeChat accepts the same ``out_trade_no`` again only with identical parameters (``nonce_str`` and
        ``spbill_create_ip`` aside), so everything sent here is derived from the order and the config alone. A
        second payType for the same order is therefore refused by WeChat (``INVALID_REQUEST``, "201 商户订单号重复")."""
        if payType not in self.payTypes:
            raise UnsupportedPayType(f"{self.fullName} supports payTypes {', '.join(self.payTypes)}, not {payType!r}")
        out_trade_no = self._out_trade_no(order)
        fields: dict[str, Any] = {
            "body": cut_utf8(order.subject, 128),
            "out_trade_no": out_trade_no,
            "total_fee": yuan_to_fen(order.amount),
            "fee_type": "CNY",
            "spbill_create_ip": clientIp or self.settings.spbillCreateIp,
            "notify_url": self.settings.notifyUrl,
        }
        now = datetime.now(timezone.utc)
        if payType == "pc":
            fields.update(trade_type="NATIVE", product_id=out_trade_no)
            answer = self.api.call("pay/unifiedorder", fields)
            code_url = answer.get("code_url")
            if not code_url:
                raise ProviderError("WeChat Pay unifiedorder (NATIVE) answered without code_url",
                                    provider_code="INVALID_RESPONSE")
            return PaymentPrep(payUrl=code_url, qrCode=self.qr_data_uri(code_url),
                               expiresAt=now + PREPAY_VALIDITY - PREPAY_MARGIN,
                               extra={"prepay_id": answer.get("prepay_id"), "trade_type": "NATIVE"})
        base = (getattr(self.app, "baseUrl", None) or "").rstrip("/") or self.settings.notifyUrl
        title = getattr(self.app, "title", None) or getattr(self.app, "appId", None) or "JitPay"
        scene = {"h5_info": {"type": "Wap", "wap_url": base, "wap_name": cut_utf8(str(title), 64)}}
        fields.update(trade_type="MWEB", scene_info=json.dumps(scene, ensure_ascii=False, separators=(",", ":")))
        answer = self.api.call("pay/unifiedorder", fields)
        mweb_url = answer.get("mweb_url")
        if not mweb_url:
            raise ProviderError("WeChat Pay unifiedorder (MWEB) answered without mweb_url",
                                provider_code="INVALID_RESPONSE")
        return PaymentPrep(payUrl=mweb_url, qrCode=None, expiresAt=now + MWEB_VALIDITY - MWEB_MARGIN,
                           extra={"prepay_id": answer.get("prepay_id"), "trade_type": "MWEB"})

    def query(self, order: OrderView) -> TradeState:
        """``orderquery`` by ``out_trade_no``, mapped onto the contract's states (``SUCCESS`` → success,
        ``NOTPAY``/``USERPAYING`` → pending, ``CLOSED``/``REVOKED`` → closed, ``PAYERROR`` → failed, ``REFUND`` →
        refunded, still carrying the payment's transaction id and amount). A trade WeChat does not know
        (``ORDERNOTEXIST``) is pending; it is logged, since ``unifiedorder`` normally creates it."""
        out_trade_no = self._out_trade_no(order)
        answer = self.api.call("pay/orderquery", {"out_trade_no": out_trade_no}, accept_errors={"ORDERNOTEXIST"})
        if answer.get("result_code") != "SUCCESS":
            log.warning("%s: WeChat Pay does not know order %s (ORDERNOTEXIST); treated as pending",
                        self.fullName, order.orderId)
            return TradeState(orderId=order.orderId, status="pending", raw=answer)
        if answer.get("out_trade_no") not in (None, "", out_trade_no):
            raise ProviderError("WeChat Pay orderquery answered about another order", provider_code="INVALID_RESPONSE")
        trade_state = answer.get("trade_state", "")
        status = _TRADE_STATES.get(trade_state)
        if status is None:
            raise ProviderError(f"WeChat Pay orderquery gave an unknown trade_state {trade_state!r}",
                                provider_code="INVALID_RESPONSE", provider_message=answer.get("trade_state_desc"))
        if status in ("success", "refunded"):
            return self._paid_state(order.orderId, status, answer, ProviderError)
        return TradeState(orderId=order.orderId, status=status, raw=answer)  # type: ignore[arg-type]

    def close(self, order: OrderView) -> None:
        """``closeorder``. A trade WeChat does not know, or one already closed, is fine; a paid one raises
        ``ProviderError`` with ``provider_code="ORDERPAID"`` (query it and apply the payment instead). Real WeChat
        refuses to close an order within 5 minutes of creating it (``ProviderError`` too)."""
        self.api.call("pay/closeorder", {"out_trade_no": self._out_trade_no(order)},
                      accept_errors={"ORDERNOTEXIST", "ORDERCLOSED"})

    def refund(self, order: OrderView, refundId: str, amount: Decimal, totalRefunded: Decimal,
               reason: str | None = None) -> RefundResult:
        """``/secapi/pay/refund`` with ``out_refund_no=refundId`` (WeChat refunds an ``out_refund_no`` once), sent
        with the merchant client certificate. Without ``certPath`` this fails before calling an ``https`` gateway."""
        if not self.api.sslContext and self.settings.gateway.startswith("https://"):
            raise ProviderError(f"{self.fullName}: WeChat Pay refunds need the merchant API client certificate; set "
                                f"certPath (and keyPath) in its config", provider_code="CERT_MISSING")
        if not refundId or len(refundId) > 64:
            raise ProviderError("refundId must be 1 to 64 characters for WeChat Pay", provider_code="INVALID_REQUEST")
        fields = {
            "out_trade_no": self._out_trade_no(order),
            "out_refund_no": refundId,
            "total_fee": yuan_to_fen(order.amount),
            "refund_fee": yuan_to_fen(amount),
            "refund_fee_type": "CNY",
            "refund_desc": cut_utf8(reason, 80) if reason else None,
        }
        answer = self.api.call("secapi/pay/refund", fields, use_cert=True)
        try:
            refunded = fen_to_yuan(answer.get("refund_fee", fields["refund_fee"]))
        except ValueError:
            raise ProviderError("WeChat Pay refund answered a malformed refund_fee",
                                provider_code="INVALID_RESPONSE") from None
        if refunded != Decimal(amount).quantize(Decimal("0.01")):
            raise ProviderError(f"WeChat Pay refunded {refunded} instead of {amount} for refund {refundId} (was this "
                                f"refundId used before with another amount?)", provider_code="REFUND_MISMATCH")
        return RefundResult(refundId=refundId, amount=refunded, refundNo=answer.get("refund_id"), raw=answer)

    # -- notifications --------------------------------------------------------------------------------------------
    def parse_notify_body(self, body: bytes, contentType: str | None = None) -> dict[str, str]:
        """The notification XML as ``{field: text}``, exactly as received. Raises ``NotifyInvalid`` for a body over
        64 KiB, any DTD/entity/processing instruction, or anything but a flat ``<xml>`` of text fields."""
        try:
            return parse_xml(body, max_bytes=NOTIFY_MAX_BYTES)
        except XmlRejected as exc:
            raise NotifyInvalid(f"WeChat Pay notification rejected: {exc}") from None

    def verify_notify(self, fields: Mapping[str, Any]) -> TradeState:
        """Verify a payment notification: the signature over every received field (``SignatureInvalid``), then
        ``return_code``, ``appid`` and ``mch_id`` (``NotifyInvalid``). ``result_code=FAIL`` reports ``failed``;
        ``SUCCESS`` reports ``success`` with ``transaction_id``, ``total_fee`` as yuan and ``time_end``. Checking
        the amount against the order is the caller's job."""
        if any(not isinstance(k, str) or not isinstance(v, str) for k, v in fields.items()):
            raise NotifyInvalid("WeChat Pay notification fields must all be text")
        if not fields.get("sign"):
            raise SignatureInvalid("WeChat Pay notification carries no signature")
        if not verify_sign(fields, self.settings.apiKey):
            raise SignatureInvalid("WeChat Pay notification signature does not verify")
        if fields.get("return_code") != "SUCCESS":
            raise NotifyInvalid(f"WeChat Pay notification has return_code {fields.get('return_code')!r}")
        if fields.get("appid") != self.settings.appId:
            raise NotifyInvalid(f"WeChat Pay notification is for appid {fields.get('appid')!r}, not ours")
        if fields.get("mch_id") != self.settings.mchId:
            raise NotifyInvalid(f"WeChat Pay notification is for mch_id {fields.get('mch_id')!r}, not ours")
        orderId = fields.get("out_trade_no")
        if not orderId:
            raise NotifyInvalid("WeChat Pay notification has no out_trade_no")
        if fields.get("result_code") != "SUCCESS":
            return TradeState(orderId=orderId, status="failed", tradeNo=fields.get("transaction_id") or None,
                              raw=dict(fields))
        return self._paid_state(orderId, "success", fields, NotifyInvalid)

    def notify_reply(self, ok: bool, message: str = "") -> NotifyReply:
        """``<xml><return_code>SUCCESS</return_code><return_msg>OK</return_msg></xml>`` (in CDATA) when ``ok``, else
        ``FAIL`` with ``message`` (WeChat then notifies again)."""
        reply = {"return_code": "SUCCESS", "return_msg": "OK"} if ok else \
            {"return_code": "FAIL", "return_msg": message or "FAIL"}
        return NotifyReply(body=build_cdata_xml(reply), mediaType="application/xml")

    # -- helpers --------------------------------------------------------------------------------------------------
    def _out_trade_no(self, order: OrderView) -> str:
        if not _OUT_TRADE_NO.match(order.orderId or ""):
            raise OrderIdInvalid(f"WeChat Pay needs an order id of at most 32 letters, digits or _-|*, "
                                 f"not {order.orderId!r}")
        return order.orderId

    @staticmethod
    def _paid_state(orderId: str, status: str, fields: Mapping[str, str], error: type[Exception]) -> TradeState:
        tradeNo = fields.get("transaction_id")
        if not tradeNo:
            raise error(f"WeChat Pay reports order {orderId} paid without a transaction_id")
        try:
            paid = fen_to_yuan(fields.get("total_fee", ""))
        except ValueError:
            raise error(f"WeChat Pay reports order {orderId} paid with a malformed total_fee") from None
        return TradeState(orderId=orderId, status=status, tradeNo=tradeNo, paidAmount=paid,  # type: ignore[arg-type]
                          payTime=parse_time_end(fields.get("time_end")), raw=dict(fields))
