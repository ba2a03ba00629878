"""``pays.WechatPayV3Type``: WeChat Pay API v3 (JSON, RSA signatures, AES-256-GCM callbacks) as a
:class:`~elements.pays.Meta.PayProvider`.

payTypes: ``pc`` → ``POST /v3/pay/transactions/native`` (``payUrl`` is the ``code_url`` the buyer scans, plus a QR
image); ``mobile`` → ``POST /v3/pay/transactions/h5`` (``payUrl`` is the ``h5_url`` link). Query, close, refund and
refund query use the v3 endpoints; callbacks arrive through PaySvc's generic route ``.../notify/wechatv3``. Protocol
notes: the WeChat Pay v3 section of PROTOCOLS.md. Amounts cross the contract as ``Decimal`` yuan and go on the wire
as integer fen.

**References.** Each trade type of an order is its own WeChat Pay order (one ``out_trade_no`` cannot be reused with
other parameters). Both are derived from the order id and carry it in ``attach``: ``{orderId}-V3N`` (native) and
``{orderId}-V3H`` (H5) for order ids of up to 28 characters, ``V3N-``/``V3H-`` and 28 characters of a SHA-256 digest
for longer ones. They never equal an ``out_trade_no`` of ``pays.WechatPayType`` (the order id itself and ``H-…``),
whose trades live in the same merchant account: while a merchant moves from v2 to v3 with both elements configured,
neither element ever reports the other's trade as its own payment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Mapping
from urllib.parse import quote

from elements.pays.errors import (NotifyInvalid, OrderIdInvalid, ProviderError, RefundInvalid, SignatureInvalid,
                                  SubjectInvalid, UnsupportedPayType)
from elements.pays.helpers import cut_utf8
from elements.pays.Meta import (NotifyHeaders, NotifyReply, NotifyRequest, OrderView, PaymentPrep, PayProvider,
                               RefundResult, RefundStatus, TradeState, expiry_text)
from elements.pays.money import from_fen, yuan_to_fen

from .client import VerifyFailure, WechatV3Api
from .config import WechatV3Config, read_config
from .crypto import DecryptError, aes_gcm_decrypt

__all__ = ["WechatPayV3Type", "out_trade_nos", "order_id_of", "rfc3339", "parse_rfc3339", "yuan_to_fen",
           "fen_to_yuan", "TRADE_STATES", "CALLBACK_HEADERS"]

log = logging.getLogger(__name__)

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
CURRENCY = "CNY"
#: how long WeChat Pay keeps a ``code_url`` (the prepay) and an ``h5_url`` valid, and how much earlier we stop
#: reusing them, so a buyer never gets a link that dies while they look at it
PREPAY_VALIDITY, PREPAY_MARGIN = timedelta(hours=2), timedelta(minutes=10)
H5_VALIDITY, H5_MARGIN = timedelta(minutes=5), timedelta(minutes=1)
#: ``trade_state`` → the contract's status
TRADE_STATES = {
    "SUCCESS": "success",
    "REFUND": "refunded",
    "NOTPAY": "pending",
    "USERPAYING": "pending",
    "CLOSED": "closed",
    "REVOKED": "closed",
    "PAYERROR": "failed",
}
#: the headers of a callback that its verification needs (kept in the parsed fields and the audit log)
CALLBACK_HEADERS = ("Wechatpay-Serial", "Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce",
                    "Wechatpay-Signature-Type", "Request-ID")
#: the refund events; the payment event is ``TRANSACTION.SUCCESS``
REFUND_EVENTS = ("REFUND.SUCCESS", "REFUND.ABNORMAL", "REFUND.CLOSED")
#: a refund's ``status`` as WeChat Pay reports it → :attr:`RefundResult.status`
REFUND_STATUSES: dict[str, RefundStatus] = {"SUCCESS": "success", "PROCESSING": "processing", "CLOSED": "closed",
                                            "ABNORMAL": "abnormal"}
# error codes (both spellings seen in WeChat Pay's documentation, so either works)
NOT_FOUND = ("ORDER_NOT_EXIST", "ORDERNOTEXIST")
PAID = ("ORDERPAID", "ORDER_PAID")
CLOSED = ("ORDER_CLOSED", "ORDERCLOSED")
REFUND_NOT_FOUND = ("RESOURCE_NOT_EXISTS", "RESOURCE_NOT_EXIST")

_ORDER_ID = re.compile(r"[A-Za-z0-9_]{1,32}")
_REFUND_ID = re.compile(r"[A-Za-z0-9_\-|*@]{1,64}")
_SUFFIX = {"NATIVE": "-V3N", "H5": "-V3H"}
_READABLE_MAX = 32 - 4
_DIGEST_DOMAIN = b"jitpay/wechatpay-v3/out_trade_no\x00"


# -- pure helpers ------------------------------------------------------------------------------------------------------
def fen_to_yuan(fen: Any) -> Decimal:
    """A JSON integer of fen (``9999``) → ``Decimal`` yuan with two places (``99.99``). ``ValueError`` for anything
    that is not a non-negative JSON integer (a string, a float, a boolean)."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen < 0:
        raise ValueError(f"not an amount in fen: {fen!r}"[:80])
    return from_fen(fen)


def rfc3339(moment: datetime) -> tuple[str, datetime]:
    """The order's expiry as WeChat Pay's ``time_expire`` (RFC 3339, Beijing time: ``2026-11-27T12:00:00+08:00``)
    and the moment that text stands for: :func:`~elements.pays.Meta.expiry_text` (rounded down to the second)."""
    return expiry_text(moment, "%Y-%m-%dT%H:%M:%S+08:00", BEIJING)


def parse_rfc3339(value: Any) -> datetime | None:
    """WeChat Pay's RFC 3339 time (``2018-06-08T10:34:56+08:00``) → aware UTC; ``None`` if absent or malformed (or
    without an offset)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.astimezone(timezone.utc) if moment.tzinfo is not None else None


def _digest(orderId: str, trade_type: str) -> str:
    digest = hashlib.sha256(_DIGEST_DOMAIN + trade_type.encode() + b"\x00" + orderId.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii")[:28]


def out_trade_nos(orderId: str) -> dict[str, str]:
    """The ``out_trade_no`` of each WeChat Pay order the order may have, by trade type: ``{"NATIVE": ..., "H5":
    ...}`` (see the module docstring). :class:`OrderIdInvalid` for an order id WeChat Pay cannot carry."""
    if not isinstance(orderId, str) or not _ORDER_ID.fullmatch(orderId):
        raise OrderIdInvalid(f"WeChat Pay v3 needs an order id of 1 to 32 letters, digits or underscores, not "
                             f"{str(orderId)[:40]!r}")
    if len(orderId) <= _READABLE_MAX:
        return {t: orderId + s for t, s in _SUFFIX.items()}
    return {t: s[1:] + "-" + _digest(orderId, t) for t, s in _SUFFIX.items()}


def order_id_of(out_trade_no: str, attach: str | None = None) -> str | None:
    """The order an ``out_trade_no`` of ours belongs to: read from it (``{orderId}-V3N``/``-V3H``), or, for a digest
    reference, ``attach`` when the reference is really derived from it (recomputed, never taken on trust). ``None``
    when it cannot be told."""
    if not isinstance(out_trade_no, str):
        return None
    for suffix in _SUFFIX.values():
        if out_trade_no.endswith(suffix) and _ORDER_ID.fullmatch(out_trade_no[:-len(suffix)]):
            return out_trade_no[:-len(suffix)]
    if attach and _ORDER_ID.fullmatch(attach) and out_trade_no in out_trade_nos(attach).values():
        return attach
    return None


class WechatPayV3Type(PayProvider):
    """WeChat Pay API v3. Configure ``appId``, ``mchId``, ``apiV3Key``, ``merchantSerialNo`` (or
    ``merchantCertificate``), ``privateKey``, and the WeChat Pay public key (``wechatpayPublicKey`` +
    ``wechatpayPublicKeyId``) and/or ``platformCertificates: true``; optionally ``gateway``, ``notifyUrl``,
    ``payerClientIp``, ``timeout``. See the distribution's README."""

    providerName = "wechatv3"
    payTypes = ("pc", "mobile")
    notifyMaxBytes = 64 * 1024

    settings: WechatV3Config
    api: WechatV3Api

    def jit_setup(self) -> None:
        """Check the config (``ConfigError`` naming this element and the setting, never a value) and build the
        client. Nothing is fetched here: platform certificates are downloaded when a signature first needs one."""
        raw = dict(self.config or {})
        configured = raw.get("notifyUrl")
        default = configured.strip() if isinstance(configured, str) and configured.strip() else \
            PayProvider.notify_url(self)
        self.settings = read_config(self.fullName, raw, default)
        self.api = WechatV3Api(self.settings)

    def jit_close(self) -> None:
        """Close the HTTP connection pool."""
        api = getattr(self, "api", None)
        if api is not None:
            api.close()

    def notify_url(self) -> str:
        """``config.notifyUrl``, else ``{baseUrl}/api/{appId}/pays/services/PaySvc/notify/wechatv3``."""
        return self.settings.notifyUrl

    # -- payments ---------------------------------------------------------------------------------------------------
    def prepare(self, order: OrderView, payType: str, *, clientIp: str | None = None) -> PaymentPrep:
        """``pc`` → native (``payUrl`` = ``code_url``, ``qrCode`` its PNG, valid while the prepay is), ``mobile`` →
        H5 (``payUrl`` = ``h5_url``, valid about 5 minutes; ``scene_info.payer_client_ip`` is ``clientIp`` or the
        configured ``payerClientIp``). Everything sent is derived from the order and the config (the client address
        aside), so a repeated ``prepare`` finds the same WeChat Pay order; ``order.expiresAt`` goes out as
        ``time_expire`` (RFC 3339), so WeChat Pay refuses payment after it."""
        if payType not in self.payTypes:
            raise UnsupportedPayType(f"{self.fullName} supports payTypes {', '.join(self.payTypes)}, not {payType!r}")
        trade_type = "NATIVE" if payType == "pc" else "H5"
        out_trade_no = out_trade_nos(order.orderId)[trade_type]
        description = cut_utf8(" ".join(order.subject.split()), 127).strip()
        if not description:
            raise SubjectInvalid("the subject is empty once trimmed; WeChat Pay needs a description")
        s = self.settings
        body: dict[str, Any] = {
            "appid": s.appId,
            "mchid": s.mchId,
            "description": description,
            "out_trade_no": out_trade_no,
            "attach": order.orderId,
            "notify_url": s.notifyUrl,
            "amount": {"total": yuan_to_fen(order.amount), "currency": CURRENCY},
        }
        expiry = rfc3339(order.expiresAt) if order.expiresAt is not None else None
        if expiry is not None:
            body["time_expire"] = expiry[0]
        now = datetime.now(timezone.utc)
        if trade_type == "H5":
            base = (getattr(self.app, "baseUrl", None) or "").rstrip("/") or s.notifyUrl
            title = str(getattr(self.app, "title", None) or getattr(self.app, "appId", None) or "JitPay")
            body["scene_info"] = {"payer_client_ip": (clientIp or "").strip() or s.payerClientIp,
                                  "h5_info": {"type": "Wap", "app_name": cut_utf8(title, 64), "app_url": base}}
            answer = self.api.call("POST", "/v3/pay/transactions/h5", body)
            url = answer.data.get("h5_url")
            expires = now + H5_VALIDITY - H5_MARGIN
        else:
            answer = self.api.call("POST", "/v3/pay/transactions/native", body)
            url = answer.data.get("code_url")
            expires = now + PREPAY_VALIDITY - PREPAY_MARGIN
        if not isinstance(url, str) or not url:
            raise ProviderError(f"WeChat Pay ({trade_type.lower()}) answered without "
                                f"{'h5_url' if trade_type == 'H5' else 'code_url'}", provider_code="INVALID_RESPONSE")
        if expiry is not None:
            expires = min(expires, expiry[1])
        extra = {"trade_type": trade_type, "out_trade_no": out_trade_no, "time_expire": body.get("time_expire")}
        return PaymentPrep(payUrl=url, qrCode=self.qr_data_uri(url) if trade_type == "NATIVE" else None,
                           expiresAt=expires, extra=extra, reference=out_trade_no)

    def _query_one(self, order: OrderView, out_trade_no: str) -> TradeState | None:
        """The state of one WeChat Pay order of ``order``; ``None`` when WeChat Pay does not know it."""
        answer = self.api.call("GET", f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}",
                               query={"mchid": self.settings.mchId}, accept=NOT_FOUND)
        if answer.code in NOT_FOUND:
            return None
        return self._transaction_state(answer.data, ProviderError, expected=(order.orderId, out_trade_no))

    def query(self, order: OrderView) -> TradeState:
        """Query both WeChat Pay orders the order may have (native, then H5) and combine the answers: a paid one
        (the one whose ``transaction_id`` is ``order.tradeNo`` if any, else the first); else a pending one; else,
        when WeChat Pay knows neither, pending; else failed if one says ``PAYERROR``, otherwise closed. A
        ``ProviderError`` of one query is raised unless the other found the order paid."""
        states: list[TradeState] = []
        errors: list[ProviderError] = []
        for out_trade_no in out_trade_nos(order.orderId).values():
            try:
                state = self._query_one(order, out_trade_no)
            except ProviderError as exc:
                errors.append(exc)
                continue
            if state is not None:
                states.append(state)
        paid = [s for s in states if s.status in ("success", "refunded")]
        if paid:
            if len(paid) > 1:
                log.warning("%s: order %s was paid more than once at WeChat Pay (transactions %s)", self.fullName,
                            order.orderId, ", ".join(str(s.tradeNo) for s in paid))
            return next((s for s in paid if order.tradeNo and s.tradeNo == order.tradeNo), paid[0])
        if errors:
            raise errors[0]
        pending = [s for s in states if s.status == "pending"]
        if pending:
            return pending[0]
        if not states:
            return TradeState(orderId=order.orderId, status="pending",
                              reference=out_trade_nos(order.orderId)["NATIVE"])
        return next((s for s in states if s.status == "failed"), states[0])

    def query_trades(self, order: OrderView) -> list[TradeState]:
        """One state per WeChat Pay order of ``order`` that exists (native, then H5), each with its ``reference``.
        Any failure raises: a partial list could hide a payment."""
        states = [self._query_one(order, ref) for ref in out_trade_nos(order.orderId).values()]
        return [s for s in states if s is not None]

    def close(self, order: OrderView) -> None:
        """Close both WeChat Pay orders the order may have (``204``). One WeChat Pay does not know, or one already
        closed, is fine; a paid one raises ``ProviderError`` with ``provider_code="ORDERPAID"``. Both are tried; the
        first error (a paid one first) is raised afterwards."""
        errors: list[ProviderError] = []
        for out_trade_no in out_trade_nos(order.orderId).values():
            try:
                answer = self.api.call("POST", f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}"
                                               f"/close", {"mchid": self.settings.mchId},
                                       accept=NOT_FOUND + CLOSED + PAID)
            except ProviderError as exc:
                errors.append(exc)
                continue
            if answer.code in PAID:
                errors.append(ProviderError(f"WeChat Pay order {out_trade_no} is paid: it cannot be closed",
                                            provider_code="ORDERPAID", provider_message=answer.message))
        if errors:
            raise next((e for e in errors if e.provider_code == "ORDERPAID"), errors[0])

    def settle(self, order: OrderView, paidHere: bool) -> None:
        """Close the order's other WeChat Pay order once one is paid (both when another provider took the payment);
        the paid one answers ``ORDERPAID``, which is expected here."""
        try:
            self.close(order)
        except ProviderError as exc:
            if not (paidHere and exc.provider_code == "ORDERPAID"):
                raise

    def refund(self, order: OrderView, refundId: str, amount: Decimal, totalRefunded: Decimal,
               reason: str | None = None) -> RefundResult:
        """``POST /v3/refund/domestic/refunds`` with ``out_refund_no=refundId`` (WeChat Pay refunds one
        ``out_refund_no`` once), naming the paid trade by ``transaction_id=order.tradeNo`` (else by
        ``out_trade_no`` = ``order.reference``, default the native one), ``amount: {refund, total, currency}`` with
        ``total`` = ``order.amount``. ``SUCCESS`` is a refund made, ``PROCESSING`` one accepted and on its way
        (``status="processing"``), ``ABNORMAL`` one accepted that the buyer's account could not take
        (``status="abnormal"``); ``CLOSED`` is a refusal. When the outcome of the call is unknown, the refund is
        looked up by its ``out_refund_no`` before giving up."""
        if not isinstance(refundId, str) or not _REFUND_ID.fullmatch(refundId):
            raise RefundInvalid("refundId must be 1 to 64 letters, digits or _-|*@ for WeChat Pay")
        reference, checked_reference = self._refund_reference(order)
        fen, total = yuan_to_fen(amount), yuan_to_fen(order.amount)
        body: dict[str, Any] = ({"transaction_id": order.tradeNo} if order.tradeNo else {"out_trade_no": reference})
        body["out_refund_no"] = refundId
        if reason and reason.strip():
            body["reason"] = cut_utf8(" ".join(reason.split()), 80).strip()
        body["notify_url"] = self.settings.notifyUrl
        body["amount"] = {"refund": fen, "total": total, "currency": CURRENCY}
        try:
            answer = self.api.call("POST", "/v3/refund/domestic/refunds", body)
            data = answer.data
        except ProviderError as exc:
            if not (exc.details or {}).get("outcomeUnknown"):
                raise
            try:
                found = self.query_refund(refundId)
            except ProviderError:
                found = None
            if found is None:
                raise exc
            log.info("%s: refund %s was made although its answer was lost", self.fullName, refundId)
            data = found
        return self._refund_result(order, refundId, fen, data, checked_reference)

    def refund_state(self, order: OrderView, refundId: str, amount: Decimal) -> RefundResult:
        """``GET /v3/refund/domestic/refunds/{out_refund_no}``: ``SUCCESS``, ``PROCESSING``, ``CLOSED`` (WeChat Pay
        gave up: nothing was refunded) or ``ABNORMAL`` (the buyer's account could not take it: it waits for the
        merchant platform) as the :class:`RefundResult` statuses of the same names. A refund WeChat Pay does not
        know is a :class:`ProviderError` (``REFUND_NOT_FOUND``)."""
        _, checked_reference = self._refund_reference(order)
        data = self.query_refund(refundId)
        if data is None:
            raise ProviderError(f"WeChat Pay has no refund {refundId}", provider_code="REFUND_NOT_FOUND",
                                details={"outcomeUnknown": True})
        return self._refund_result(order, refundId, yuan_to_fen(amount), data, checked_reference, asked=True)

    def _refund_reference(self, order: OrderView) -> tuple[str, str | None]:
        """The ``out_trade_no`` a refund of the order's trade names (when it has no ``tradeNo``), and the one its
        answer must carry (``None``: any; the ``tradeNo`` is checked instead)."""
        refs = out_trade_nos(order.orderId)
        known_reference = order.reference in refs.values()
        if order.reference is not None and not known_reference and not order.tradeNo:
            raise RefundInvalid(f"{order.reference!r} is not a WeChat Pay v3 order of order {order.orderId}")
        reference = order.reference if known_reference else refs["NATIVE"]
        return reference, (reference if known_reference or not order.tradeNo else None)

    def query_refund(self, refundId: str) -> dict[str, Any] | None:
        """``GET /v3/refund/domestic/refunds/{out_refund_no}``: WeChat Pay's record of refund ``refundId`` as it
        answers it, or ``None`` when it has none."""
        answer = self.api.call("GET", f"/v3/refund/domestic/refunds/{quote(refundId, safe='')}",
                               accept=REFUND_NOT_FOUND)
        return None if answer.code in REFUND_NOT_FOUND else answer.data

    def _refund_result(self, order: OrderView, refundId: str, fen: int, data: Mapping[str, Any],
                       reference: str | None, *, asked: bool = False) -> RefundResult:
        """WeChat Pay's record of a refund, checked against what was asked; ``asked``: an answer to a question
        about an accepted refund (``CLOSED`` is then its end, not a refusal of a new refund)."""
        if data.get("out_refund_no") != refundId:
            raise ProviderError(f"WeChat Pay answered refund {refundId} about another refund",
                                provider_code="INVALID_RESPONSE", details={"outcomeUnknown": True})
        if (order.tradeNo and data.get("transaction_id") not in (None, "", order.tradeNo)) or \
                (reference and data.get("out_trade_no") not in (None, "", reference)):
            raise ProviderError("WeChat Pay answered a refund with another trade's transaction_id or out_trade_no",
                                provider_code="INVALID_RESPONSE", details={"outcomeUnknown": True})
        amount = data.get("amount") if isinstance(data.get("amount"), dict) else {}
        try:
            refunded = fen_to_yuan(amount.get("refund"))
        except ValueError:
            raise ProviderError("WeChat Pay answered a refund without a readable amount.refund",
                                provider_code="INVALID_RESPONSE", details={"outcomeUnknown": True}) from None
        if amount.get("currency") not in (None, CURRENCY):
            raise ProviderError("WeChat Pay answered a refund in another currency", provider_code="INVALID_RESPONSE",
                                details={"outcomeUnknown": True})
        status = data.get("status")
        if refunded != fen_to_yuan(fen):
            raise ProviderError(f"WeChat Pay refunded {refunded} instead of {fen_to_yuan(fen)} for refund {refundId} "
                                f"(was this refundId used before with another amount?)",
                                provider_code="REFUND_MISMATCH")
        if status == "CLOSED" and not asked:
            raise ProviderError(f"WeChat Pay closed refund {refundId} without paying it", provider_code="REFUND_CLOSED")
        if status not in REFUND_STATUSES:
            raise ProviderError(f"WeChat Pay answered refund {refundId} with an unknown status "
                                f"{str(status)[:32]!r}", provider_code="INVALID_RESPONSE",
                                details={"outcomeUnknown": True})
        return RefundResult(refundId=refundId, amount=refunded, refundNo=data.get("refund_id") or None,
                            raw=dict(data), status=REFUND_STATUSES[status])

    # -- notifications ----------------------------------------------------------------------------------------------
    def parse_notify(self, request: NotifyRequest) -> dict[str, Any]:
        """The callback as fields: its JSON's top-level members (``id``, ``create_time``, ``event_type``,
        ``resource_type``, ``summary``, ``resource`` still encrypted), ``headers`` (the ``Wechatpay-*`` signature
        headers as sent) and ``body`` (the exact body text, which the signature covers). ``NotifyInvalid`` for a body
        that is not UTF-8 JSON."""
        try:
            text = request.body.decode("utf-8")
            data = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            raise NotifyInvalid("WeChat Pay v3 callback is not UTF-8 JSON") from None
        if not isinstance(data, dict):
            raise NotifyInvalid("WeChat Pay v3 callback is not a JSON object")
        fields: dict[str, Any] = {k: data[k] for k in ("id", "create_time", "event_type", "resource_type", "summary",
                                                       "resource") if k in data}
        fields["headers"] = {name: request.headers[name] for name in CALLBACK_HEADERS if name in request.headers}
        fields["body"] = text
        return fields

    def verify_notify(self, fields: Mapping[str, Any]) -> TradeState:
        """Verify a callback: the signature headers over the exact body (the key chosen by ``Wechatpay-Serial``:
        the public key or a platform certificate), ``Wechatpay-Timestamp`` within 5 minutes, then decrypt
        ``resource`` with the APIv3 key (``SignatureInvalid`` / ``NotifyInvalid``). Only the verified body is read;
        the other fields are ignored.

        ``TRANSACTION.SUCCESS`` reports the trade paid (``mchid``, ``appid``, currency checked; the order from the
        reference and ``attach``). A refund event (``REFUND.SUCCESS``/``ABNORMAL``/``CLOSED``) reports the trade it
        refunds from as captured (``refunded`` after a successful refund), which PaySvc applies idempotently; its
        order is read from the reference (a digest reference is looked up with a query)."""
        headers = fields.get("headers")
        body = fields.get("body")
        if not isinstance(headers, Mapping) or not isinstance(body, str):
            raise NotifyInvalid("WeChat Pay v3 callback fields lack the headers or the body")
        raw = body.encode("utf-8")
        try:
            serial = self.api.verifier.verify(NotifyHeaders(headers), raw)
        except VerifyFailure as exc:
            raise SignatureInvalid(f"WeChat Pay v3 callback rejected: {exc.message}",
                                   details={"failure": exc.kind}) from None
        try:
            data = json.loads(body)
        except ValueError:
            raise NotifyInvalid("WeChat Pay v3 callback is not JSON") from None
        if not isinstance(data, dict) or data.get("resource_type") != "encrypt-resource" \
                or not isinstance(data.get("resource"), dict):
            raise NotifyInvalid("WeChat Pay v3 callback carries no encrypted resource")
        resource = data["resource"]
        if resource.get("algorithm") != "AEAD_AES_256_GCM":
            raise NotifyInvalid(f"WeChat Pay v3 callback resource uses {str(resource.get('algorithm'))[:32]!r}, not "
                                f"AEAD_AES_256_GCM")
        try:
            plain = aes_gcm_decrypt(self.settings.apiV3Key, resource.get("nonce"), resource.get("associated_data"),
                                    resource.get("ciphertext"))
            content = json.loads(plain.decode("utf-8"))
        except DecryptError as exc:
            raise NotifyInvalid(f"WeChat Pay v3 callback resource does not decrypt: {exc} (check apiV3Key)") from None
        except (UnicodeDecodeError, ValueError):
            raise NotifyInvalid("WeChat Pay v3 callback resource is not JSON") from None
        if not isinstance(content, dict):
            raise NotifyInvalid("WeChat Pay v3 callback resource is not a JSON object")
        event = data.get("event_type")
        meta = {"id": data.get("id"), "event_type": event, "create_time": data.get("create_time"),
                "signedBy": serial}
        if event == "TRANSACTION.SUCCESS":
            state = self._transaction_state(content, NotifyInvalid)
            if state.status not in ("success", "refunded"):
                raise NotifyInvalid(f"WeChat Pay v3 TRANSACTION.SUCCESS callback has trade_state "
                                    f"{str(content.get('trade_state'))[:32]!r}")
            return replace(state, raw={**content, "callback": meta})
        if event in REFUND_EVENTS:
            return self._refund_event_state(content, meta)
        raise NotifyInvalid(f"WeChat Pay v3 callback event_type {str(event)[:40]!r} is not one JitPay handles")

    def notify_reply(self, ok: bool, message: str = "") -> NotifyReply:
        """``204 No Content`` when processed (WeChat Pay stops), else ``400`` with ``{"code": "FAIL", "message":
        ...}`` (any 4xx/5xx makes WeChat Pay send the callback again later; 4xx, because PaySvc's notification routes
        never answer 5xx)."""
        if ok:
            return NotifyReply.empty(204)
        return NotifyReply.json({"code": "FAIL", "message": (message or "FAIL")[:200]}, status=400)

    # -- helpers ----------------------------------------------------------------------------------------------------
    def _transaction_state(self, data: Mapping[str, Any], error: type[Exception],
                           expected: tuple[str, str] | None = None) -> TradeState:
        """A transaction (a query answer or a decrypted ``TRANSACTION.SUCCESS`` resource) as a state. ``expected``
        is ``(orderId, out_trade_no)`` for a query answer; a callback's order is derived from its reference."""
        s = self.settings
        out_trade_no = data.get("out_trade_no")
        attach = data.get("attach") if isinstance(data.get("attach"), str) else None
        if data.get("mchid") not in (None, s.mchId) or (error is NotifyInvalid and data.get("mchid") != s.mchId):
            raise error(f"WeChat Pay reports a trade of mchid {str(data.get('mchid'))[:32]!r}, not ours")
        if data.get("appid") not in (None, s.appId) or (error is NotifyInvalid and data.get("appid") != s.appId):
            raise error(f"WeChat Pay reports a trade of appid {str(data.get('appid'))[:40]!r}, not ours")
        if expected is not None:
            orderId, wanted = expected
            if out_trade_no not in (None, wanted):
                raise error(f"WeChat Pay answered about out_trade_no {str(out_trade_no)[:40]!r} when asked about "
                            f"{wanted}")
            if attach not in (None, "", orderId):
                raise error(f"WeChat Pay order {wanted} carries attach {attach[:40]!r}, not order {orderId}")
            out_trade_no = wanted
        else:
            if not isinstance(out_trade_no, str) or not out_trade_no:
                raise error("WeChat Pay reports a trade without out_trade_no")
            orderId = order_id_of(out_trade_no, attach)  # type: ignore[assignment]
            if orderId is None or (attach and attach != orderId):
                raise error(f"WeChat Pay out_trade_no {out_trade_no[:40]!r} is not a reference JitPay made for "
                            f"the order in its attach")
        amount = data.get("amount") if isinstance(data.get("amount"), dict) else {}
        if amount.get("currency") not in (None, CURRENCY):
            raise error(f"WeChat Pay reports a trade in {str(amount.get('currency'))[:8]!r}, not {CURRENCY}")
        trade_state = data.get("trade_state")
        status = TRADE_STATES.get(trade_state) if isinstance(trade_state, str) else None
        if status is None:
            raise error(f"WeChat Pay reports an unknown trade_state {str(trade_state)[:32]!r}")
        if status not in ("success", "refunded"):
            return TradeState(orderId=orderId, status=status,  # type: ignore[arg-type]
                              tradeNo=data.get("transaction_id") or None, raw=dict(data), reference=out_trade_no)
        tradeNo = data.get("transaction_id")
        if not isinstance(tradeNo, str) or not tradeNo:
            raise error(f"WeChat Pay reports order {orderId} paid without a transaction_id")
        try:
            paid = fen_to_yuan(amount.get("total"))
        except ValueError:
            raise error(f"WeChat Pay reports order {orderId} paid without a readable amount.total") from None
        return TradeState(orderId=orderId, status=status, tradeNo=tradeNo, paidAmount=paid,  # type: ignore[arg-type]
                          payTime=parse_rfc3339(data.get("success_time")), raw=dict(data), reference=out_trade_no)

    def _refund_event_state(self, content: Mapping[str, Any], meta: Mapping[str, Any]) -> TradeState:
        if content.get("mchid") != self.settings.mchId:
            raise NotifyInvalid(f"WeChat Pay refund callback is for mchid {str(content.get('mchid'))[:32]!r}, not "
                                f"ours")
        out_trade_no = content.get("out_trade_no")
        tradeNo = content.get("transaction_id")
        if not isinstance(out_trade_no, str) or not isinstance(tradeNo, str) or not tradeNo:
            raise NotifyInvalid("WeChat Pay refund callback lacks out_trade_no or transaction_id")
        orderId = order_id_of(out_trade_no)
        if orderId is None:  # a digest reference: the trade's attach says which order it is
            answer = self.api.call("GET", f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}",
                                   query={"mchid": self.settings.mchId})
            orderId = order_id_of(out_trade_no, answer.data.get("attach"))
            if orderId is None:
                raise NotifyInvalid(f"WeChat Pay refund callback is about out_trade_no {out_trade_no[:40]!r}, which "
                                    f"is not a reference JitPay made")
        amount = content.get("amount") if isinstance(content.get("amount"), dict) else {}
        try:
            total = fen_to_yuan(amount.get("total"))
        except ValueError:
            raise NotifyInvalid("WeChat Pay refund callback has no readable amount.total") from None
        status = "refunded" if content.get("refund_status") == "SUCCESS" else "success"
        refund_id = content.get("out_refund_no")
        return TradeState(orderId=orderId, status=status, tradeNo=tradeNo, paidAmount=total,  # type: ignore[arg-type]
                          raw={**content, "callback": dict(meta)}, reference=out_trade_no,
                          refundId=refund_id if isinstance(refund_id, str) and refund_id else None)
