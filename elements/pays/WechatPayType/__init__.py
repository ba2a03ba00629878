"""``pays.WechatPayType``: WeChat Pay merchant API v2 (XML) as a :class:`~elements.pays.Meta.PayProvider`.

payTypes: ``pc`` → ``unifiedorder`` with ``trade_type=NATIVE`` (``payUrl`` is the ``code_url`` the buyer scans, plus a
QR image); ``mobile`` → ``trade_type=MWEB`` (``payUrl`` is the ``mweb_url`` H5 link). Protocol notes: the WeChat Pay
v2 section of PROTOCOLS.md. Amounts cross the contract as ``Decimal`` yuan and go on the wire as integer fen.

WeChat refuses a second ``unifiedorder`` for one ``out_trade_no`` with other parameters ("201 商户订单号重复"), so each
trade type of an order is its own WeChat order: NATIVE uses ``out_trade_no = orderId``, MWEB the reference
:func:`mweb_out_trade_no` derives from the order id. Both carry the order id in ``attach``; a notification is mapped
back to the order through ``attach`` only when its ``out_trade_no`` is one derived from it. ``query`` and ``close``
cover both WeChat orders; ``query_trades`` reports each that exists; ``refund`` names a paid one by its
``transaction_id``. Every prepared trade, query answer and notification carries its ``out_trade_no`` as the contract's
``reference``. The order's ``expiresAt`` is sent as ``time_expire``, so WeChat refuses payment after it.
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

from elements.pays.errors import (NotifyInvalid, OrderIdInvalid, ProviderError, RefundInvalid, SignatureInvalid,
                                  SubjectInvalid, UnsupportedPayType)
from elements.pays.helpers import cut_utf8
from elements.pays.Meta import (NotifyReply, NotifyRequest, OrderView, PaymentPrep, PayProvider, RefundResult,
                               RefundStatus, TradeState, expiry_text)
from elements.pays.money import from_fen, yuan_to_fen

from .api import WechatApi, client_ssl_context
from .config import WechatConfig, read_config
from .reqinfo import ReqInfoInvalid, decrypt_req_info
from .signing import strip_edges, verify_sign
from .wirexml import NOTIFY_MAX_BYTES, XmlRejected, build_cdata_xml, parse_xml

__all__ = ["WechatPayType", "yuan_to_fen", "fen_to_yuan", "cut_utf8", "parse_time_end", "mweb_out_trade_no",
           "out_trade_nos", "time_expire", "MWEB_PREFIX"]

log = logging.getLogger(__name__)

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
#: How long WeChat keeps a ``prepay_id`` (NATIVE ``code_url``) and an ``mweb_url`` valid, and how much earlier we stop
#: reusing them, so a buyer never gets a link that dies while they look at it.
PREPAY_VALIDITY = timedelta(hours=2)
PREPAY_MARGIN = timedelta(minutes=10)
MWEB_VALIDITY = timedelta(minutes=5)
MWEB_MARGIN = timedelta(minutes=1)

_OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_\-|*]{1,32}")
_CANONICAL_FEN = re.compile(r"(0|[1-9][0-9]*)")
#: the only currency JitPay's amounts are in (WeChat's ``fee_type``)
CURRENCY = "CNY"
#: ``/pay/refundquery``'s ``refund_status_$n`` → :attr:`RefundResult.status`
REFUND_STATUSES: dict[str, RefundStatus] = {"SUCCESS": "success", "PROCESSING": "processing", "REFUNDCLOSE": "closed",
                                            "CHANGE": "abnormal"}
#: The start of every MWEB ``out_trade_no`` (see :func:`mweb_out_trade_no`); order ids may not start with it.
MWEB_PREFIX = "H-"
_MWEB_DOMAIN = b"jitpay/wechat/MWEB/out_trade_no\x00"
_TRADE_STATES = {
    "SUCCESS": "success",
    "REFUND": "refunded",
    "NOTPAY": "pending",
    "USERPAYING": "pending",
    "CLOSED": "closed",
    "REVOKED": "closed",
    "PAYERROR": "failed",
}


def fen_to_yuan(fen: str | int) -> Decimal:
    """Integer fen as WeChat writes it (plain ASCII digits, no sign, no leading zero, no spaces: ``"9999"``) →
    ``Decimal`` yuan with two places (``99.99``). Raises ``ValueError`` for any other text, even one that means the
    same number (``"09999"``, ``" 9999"``)."""
    text = str(fen)
    if not _CANONICAL_FEN.fullmatch(text):
        raise ValueError(f"not an amount in fen: {fen!r}")
    return from_fen(int(text))


def parse_time_end(value: str | None) -> datetime | None:
    """WeChat's ``time_end`` (``yyyyMMddHHmmss``, Beijing time) → an aware UTC datetime; ``None`` if absent or
    malformed."""
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=BEIJING).astimezone(timezone.utc)
    except ValueError:
        return None


def time_expire(expiresAt: datetime) -> tuple[str, datetime]:
    """The order's expiry as WeChat's ``time_expire`` (``yyyyMMddHHmmss``, Beijing time) and the moment that text
    stands for: :func:`~elements.pays.Meta.expiry_text` (rounded down to the second)."""
    return expiry_text(expiresAt, "%Y%m%d%H%M%S", BEIJING)


def mweb_out_trade_no(orderId: str) -> str:
    """The ``out_trade_no`` of the order's MWEB (H5) WeChat order: ``H-`` and the first 30 characters of the base32
    SHA-256 of the order id (32 characters of ``A-Z2-7-``, valid for WeChat). Deterministic, so a repeated ``mobile``
    finds the same WeChat order; the ``-`` keeps it apart from every order id PaySvc makes or accepts
    (``[A-Za-z0-9_]{6,32}``), and the provider refuses order ids starting with ``H-``; 150 bits of digest keep two
    order ids from sharing a reference."""
    digest = hashlib.sha256(_MWEB_DOMAIN + orderId.encode("utf-8")).digest()
    return MWEB_PREFIX + base64.b32encode(digest).decode("ascii")[:30]


def out_trade_nos(orderId: str) -> dict[str, str]:
    """Every ``out_trade_no`` the order may have at WeChat, by trade type: ``{"NATIVE": orderId, "MWEB": ...}``."""
    return {"NATIVE": orderId, "MWEB": mweb_out_trade_no(orderId)}


class WechatPayType(PayProvider):
    """WeChat Pay v2. Configure ``appId``, ``mchId``, ``apiKey``; optionally ``signType`` (``MD5`` | ``HMAC-SHA256``),
    ``gateway``, ``notifyUrl``, ``certPath``/``keyPath`` (refunds), ``spbillCreateIp``, ``timeout``."""

    providerName = "wechat"
    payTypes = ("pc", "mobile")
    #: JitAi's path for WeChat Pay's notification (the generic ``notify/wechat`` works as well)
    notifyPath = "wechatNotify"

    settings: WechatConfig
    api: WechatApi

    def jit_setup(self) -> None:
        """Check the config (raising ``ConfigError`` naming this element and the key) and build the API client."""
        self.settings = read_config(self.fullName, self.config or {}, self.app, self.notifyPath)
        s = self.settings
        context = client_ssl_context(s.certPath, s.keyPath) if s.certPath else None
        self.api = WechatApi(gateway=s.gateway, appId=s.appId, mchId=s.mchId, apiKey=s.apiKey, signType=s.signType,
                             timeout=s.timeout, sslContext=context)

    # -- payments -------------------------------------------------------------------------------------------------
    def prepare(self, order: OrderView, payType: str, *, clientIp: str | None = None) -> PaymentPrep:
        """``unifiedorder`` for ``order``: ``pc`` → NATIVE (``payUrl`` = ``code_url``, ``qrCode`` = its PNG, valid
        while the ``prepay_id`` is), ``mobile`` → MWEB (``payUrl`` = ``mweb_url``, valid about 5 minutes).
        ``reference`` is that WeChat order's ``out_trade_no``.

        WeChat accepts the same ``out_trade_no`` again only with identical parameters (``nonce_str`` and
        ``spbill_create_ip`` aside), so everything sent here is derived from the order and the config alone, and each
        trade type has its own ``out_trade_no`` (NATIVE: the order id; MWEB: :func:`mweb_out_trade_no`): an order can
        be offered both ways, in either order and repeatedly. ``attach`` carries the order id on both.

        ``order.expiresAt`` (when set) goes out as ``time_expire`` (``yyyyMMddHHmmss`` Beijing time, rounded down to
        the second), so WeChat itself refuses payment after it; ``expiresAt`` of the result is then never later.
        WeChat refuses a ``time_expire`` less than 5 minutes ahead: an order that close to its expiry can no longer
        be offered (``ProviderError`` with WeChat's message).

        A WeChat order an older JitPay created with other parameters (no ``time_expire``; for NATIVE also no
        ``attach``) answers "201 商户订单号重复": it is asked for again as it was made (logged), and its
        notification maps by ``out_trade_no`` alone."""
        if payType not in self.payTypes:
            raise UnsupportedPayType(f"{self.fullName} supports payTypes {', '.join(self.payTypes)}, not {payType!r}")
        refs = self._out_trade_nos(order)
        trade_type = "NATIVE" if payType == "pc" else "MWEB"
        out_trade_no = refs[trade_type]
        # never a value with whitespace at an end (WeChat trims before it checks the signature); cut, then trim again
        body = strip_edges(cut_utf8(strip_edges(order.subject), 128))
        if not body:
            raise SubjectInvalid("the subject is empty once trimmed; WeChat Pay needs a body")
        fields: dict[str, Any] = {
            "body": body,
            "out_trade_no": out_trade_no,
            "total_fee": yuan_to_fen(order.amount),
            "fee_type": CURRENCY,
            "spbill_create_ip": strip_edges(clientIp or "") or self.settings.spbillCreateIp,
            "notify_url": self.settings.notifyUrl,
            "attach": order.orderId,
        }
        expiry = time_expire(order.expiresAt) if order.expiresAt is not None else None
        if expiry is not None:
            fields["time_expire"] = expiry[0]
        now = datetime.now(timezone.utc)
        if trade_type == "NATIVE":
            fields.update(trade_type="NATIVE", product_id=out_trade_no)
            # as made by JitPay before time_expire was sent, and before attach was
            legacy = [("time_expire",), ("time_expire", "attach")]
        else:
            base = (getattr(self.app, "baseUrl", None) or "").rstrip("/") or self.settings.notifyUrl
            title = getattr(self.app, "title", None) or getattr(self.app, "appId", None) or "JitPay"
            scene = {"h5_info": {"type": "Wap", "wap_url": base, "wap_name": cut_utf8(str(title), 64)}}
            fields.update(trade_type="MWEB", scene_info=json.dumps(scene, ensure_ascii=False, separators=(",", ":")))
            legacy = [("time_expire",)]
        sent, answer = self._unifiedorder(fields, legacy)
        expires = now + (PREPAY_VALIDITY - PREPAY_MARGIN if trade_type == "NATIVE" else MWEB_VALIDITY - MWEB_MARGIN)
        if expiry is not None:
            expires = min(expires, expiry[1])
        extra = {"prepay_id": answer.get("prepay_id"), "trade_type": trade_type, "out_trade_no": out_trade_no,
                 "time_expire": sent.get("time_expire")}
        if trade_type == "NATIVE":
            code_url = answer.get("code_url")
            if not code_url:
                raise ProviderError("WeChat Pay unifiedorder (NATIVE) answered without code_url",
                                    provider_code="INVALID_RESPONSE")
            return PaymentPrep(payUrl=code_url, qrCode=self.qr_data_uri(code_url), expiresAt=expires, extra=extra,
                               reference=out_trade_no)
        mweb_url = answer.get("mweb_url")
        if not mweb_url:
            raise ProviderError("WeChat Pay unifiedorder (MWEB) answered without mweb_url",
                                provider_code="INVALID_RESPONSE")
        return PaymentPrep(payUrl=mweb_url, qrCode=None, expiresAt=expires, extra=extra, reference=out_trade_no)

    def _unifiedorder(self, fields: dict[str, Any],
                      legacy: list[tuple[str, ...]]) -> tuple[dict[str, Any], dict[str, str]]:
        """``unifiedorder`` with ``fields``; on "201 商户订单号重复" (the ``out_trade_no`` exists with other
        parameters) again without each group of ``legacy`` fields in turn, as an older JitPay made it. Returns what
        was sent and the answer."""
        try:
            return fields, self.api.call("pay/unifiedorder", fields)
        except ProviderError as exc:
            error = exc
        for dropped in legacy:
            if error.provider_code != "INVALID_REQUEST" or "201" not in (error.provider_message or ""):
                break
            variant = {k: v for k, v in fields.items() if k not in dropped}
            if variant == fields:
                continue
            try:
                answer = self.api.call("pay/unifiedorder", variant)
            except ProviderError as exc:
                error = exc
                continue
            log.warning("%s: WeChat order %s was made by an older JitPay without %s; offered as it was made",
                        self.fullName, fields["out_trade_no"], " and ".join(d for d in dropped if d in fields))
            return variant, answer
        raise error

    def query(self, order: OrderView) -> TradeState:
        """``orderquery`` of every WeChat order the order may have (NATIVE, then MWEB), combined into one answer.

        Each answer maps onto the contract's states (``SUCCESS`` → success, ``REFUND`` → refunded, both carrying the
        payment's transaction id and amount; ``NOTPAY``/``USERPAYING`` → pending; ``CLOSED``/``REVOKED`` → closed;
        ``PAYERROR`` → failed); ``ORDERNOTEXIST`` means that trade type was never asked for. The rule:

        1. a paid one (success or refunded) is the answer: the one whose transaction id is ``order.tradeNo`` if any,
           else the first (NATIVE before MWEB). Two paid ones (the buyer paid twice) are logged as a warning; PaySvc
           records the other payment when its notification arrives;
        2. else a pending one makes the order pending (it can still be paid);
        3. else if WeChat knows none of them, pending (logged: ``unifiedorder`` normally creates one);
        4. else every existing one is over: failed if one of them says ``PAYERROR``, otherwise closed.

        A ``ProviderError`` on one query is raised, unless another one found the order paid (a definite answer)."""
        refs = self._out_trade_nos(order)
        answers: list[tuple[str, dict[str, str]]] = []
        states: list[TradeState] = []
        errors: list[ProviderError] = []
        for trade_type, out_trade_no in refs.items():
            try:
                answer = self.api.call("pay/orderquery", {"out_trade_no": out_trade_no},
                                       accept_errors={"ORDERNOTEXIST"})
                answers.append((trade_type, answer))
                if answer.get("result_code") == "SUCCESS":
                    states.append(self._query_state(order.orderId, out_trade_no, answer))
            except ProviderError as exc:
                errors.append(exc)
        paid = [s for s in states if s.status in ("success", "refunded")]
        if paid:
            if len(paid) > 1:
                log.warning("%s: order %s was paid more than once at WeChat Pay (transactions %s); reporting %s",
                            self.fullName, order.orderId, ", ".join(str(s.tradeNo) for s in paid),
                            next((s.tradeNo for s in paid if s.tradeNo == order.tradeNo), paid[0].tradeNo))
            if errors:
                log.warning("%s: order %s is paid; another orderquery failed: %s", self.fullName, order.orderId,
                            errors[0].message)
            return next((s for s in paid if order.tradeNo and s.tradeNo == order.tradeNo), paid[0])
        if errors:
            raise errors[0]
        pending = [s for s in states if s.status == "pending"]
        if pending:
            return pending[0]
        if not states:
            log.warning("%s: WeChat Pay does not know order %s (ORDERNOTEXIST); treated as pending",
                        self.fullName, order.orderId)
            return TradeState(orderId=order.orderId, status="pending", raw=answers[0][1], reference=order.orderId)
        failed = [s for s in states if s.status == "failed"]
        return failed[0] if failed else states[0]

    def query_trades(self, order: OrderView) -> list[TradeState]:
        """``orderquery`` of each WeChat order the order may have (NATIVE, then MWEB): one state per WeChat order that
        exists, with its ``reference`` (``out_trade_no``), mapped as in :meth:`query` (a paid one with its own
        ``transaction_id`` and amount). ``ORDERNOTEXIST`` is left out, so ``[]`` means WeChat knows neither. Any other
        failure of either query raises its ``ProviderError``: a partial list could hide a payment."""
        states: list[TradeState] = []
        for out_trade_no in self._out_trade_nos(order).values():
            answer = self.api.call("pay/orderquery", {"out_trade_no": out_trade_no}, accept_errors={"ORDERNOTEXIST"})
            if answer.get("result_code") == "SUCCESS":
                states.append(self._query_state(order.orderId, out_trade_no, answer))
        return states

    def jit_close(self) -> None:
        """Close the API client's connection pool."""
        api = getattr(self, "api", None)
        if api is not None:
            api.close()

    def close(self, order: OrderView) -> None:
        """``closeorder`` of every WeChat order the order may have (NATIVE and MWEB). A trade WeChat does not know,
        or one already closed, is fine; a paid one raises ``ProviderError`` with ``provider_code="ORDERPAID"`` (query
        it and apply the payment instead). Real WeChat refuses to close an order within 5 minutes of creating it
        (``ProviderError`` too). Every one is tried; the first error (a paid one first) is raised afterwards."""
        errors: list[ProviderError] = []
        for out_trade_no in self._out_trade_nos(order).values():
            try:
                self.api.call("pay/closeorder", {"out_trade_no": out_trade_no},
                              accept_errors={"ORDERNOTEXIST", "ORDERCLOSED"})
            except ProviderError as exc:
                errors.append(exc)
        if errors:
            raise next((e for e in errors if e.provider_code == "ORDERPAID"), errors[0])

    def settle(self, order: OrderView, paidHere: bool) -> None:
        """Close the order's other WeChat order (NATIVE or MWEB) once one is paid, or both when another provider
        took the payment. ``closeorder`` answers ``ORDERPAID`` for the paid one, which is expected here."""
        try:
            self.close(order)
        except ProviderError as exc:
            if not (paidHere and exc.provider_code == "ORDERPAID"):
                raise

    def refund(self, order: OrderView, refundId: str, amount: Decimal, totalRefunded: Decimal,
               reason: str | None = None) -> RefundResult:
        """``/secapi/pay/refund`` with ``out_refund_no=refundId`` (WeChat refunds an ``out_refund_no`` once), sent
        with the merchant client certificate. The paid WeChat order is named by ``transaction_id=order.tradeNo``
        (whichever trade type was paid, either of two paid ones); without a ``tradeNo`` by ``out_trade_no`` =
        ``order.reference`` (default the order id: the NATIVE one). ``total_fee`` is ``order.amount``, what that
        trade captured. Without ``certPath`` this fails before calling an ``https`` gateway. WeChat Pay's
        ``SUCCESS`` says the refund was accepted, not that it is done: the answer is ``status="processing"`` and
        :meth:`refund_state` says how it ends."""
        if not self.api.sslContext and self.settings.gateway.startswith("https://"):
            raise ProviderError(f"{self.fullName}: WeChat Pay refunds need the merchant API client certificate; set "
                                f"certPath (and keyPath) in its config", provider_code="CERT_MISSING")
        if not refundId or len(refundId) > 64:
            raise ProviderError("refundId must be 1 to 64 characters for WeChat Pay", provider_code="INVALID_REQUEST")
        refs = self._out_trade_nos(order)
        # the reference names the trade only without a tradeNo; with one it is merely checked against the answer
        known_reference = order.reference in refs.values()
        if order.reference is not None and not known_reference and not order.tradeNo:
            raise RefundInvalid(f"{order.reference!r} is not a WeChat order of order {order.orderId} (its references "
                                f"are {', '.join(refs.values())})")
        reference = order.reference if known_reference else refs["NATIVE"]
        trade = {"transaction_id": order.tradeNo} if order.tradeNo else {"out_trade_no": reference}
        fields = {
            **trade,
            "out_refund_no": refundId,
            "total_fee": yuan_to_fen(order.amount),
            "refund_fee": yuan_to_fen(amount),
            "refund_fee_type": CURRENCY,
            "refund_desc": strip_edges(cut_utf8(strip_edges(reason), 80)) if reason else None,
            # WeChat Pay tells how the refund ended here (a refund notification, see verify_notify)
            "notify_url": self.settings.notifyUrl,
        }
        answer = self.api.call("secapi/pay/refund", fields, use_cert=True)
        other_transaction = order.tradeNo and answer.get("transaction_id") not in (None, "", order.tradeNo)
        named_reference = known_reference or not order.tradeNo
        other_reference = named_reference and answer.get("out_trade_no") not in (None, "", reference)
        if other_transaction or other_reference:
            raise ProviderError("WeChat Pay answered a refund with another trade's transaction_id or out_trade_no",
                                provider_code="INVALID_RESPONSE", details={"outcomeUnknown": True})
        try:
            refunded = fen_to_yuan(answer.get("refund_fee", fields["refund_fee"]))
        except ValueError:
            raise ProviderError("WeChat Pay refund answered a malformed refund_fee",
                                provider_code="INVALID_RESPONSE") from None
        if refunded != Decimal(amount).quantize(Decimal("0.01")):
            raise ProviderError(f"WeChat Pay refunded {refunded} instead of {amount} for refund {refundId} (was this "
                                f"refundId used before with another amount?)", provider_code="REFUND_MISMATCH")
        return RefundResult(refundId=refundId, amount=refunded, refundNo=answer.get("refund_id"), raw=answer,
                            status="processing")

    def refund_state(self, order: OrderView, refundId: str, amount: Decimal) -> RefundResult:
        """``/pay/refundquery`` by ``out_refund_no``: that refund's ``refund_status_$n``, ``SUCCESS``,
        ``PROCESSING``, ``REFUNDCLOSE`` (WeChat Pay gave up: nothing was refunded) or ``CHANGE`` (the buyer's account
        could not take it: the money waits for the merchant platform), as the :class:`RefundResult` statuses
        ``success``, ``processing``, ``closed``, ``abnormal``. An unknown refund is a :class:`ProviderError`
        (``REFUNDNOTEXIST``); an answer about another trade, refund or amount one with an unknown outcome."""
        answer = self.api.call("pay/refundquery", {"out_refund_no": refundId})
        if order.tradeNo and answer.get("transaction_id") not in (None, "", order.tradeNo):
            raise ProviderError("WeChat Pay answered a refund query with another trade's transaction_id",
                                provider_code="INVALID_RESPONSE", details={"outcomeUnknown": True})
        try:
            count = int(answer.get("refund_count") or 0)
        except ValueError:
            count = 0
        found = next((n for n in range(min(count, 100)) if answer.get(f"out_refund_no_{n}") == refundId), None)
        if found is None:
            raise ProviderError(f"WeChat Pay answered the query of refund {refundId} without it",
                                provider_code="INVALID_RESPONSE", details={"outcomeUnknown": True})
        try:
            refunded = fen_to_yuan(answer.get(f"refund_fee_{found}"))
        except ValueError:
            raise ProviderError("WeChat Pay answered a refund query with a malformed refund_fee",
                                provider_code="INVALID_RESPONSE", details={"outcomeUnknown": True}) from None
        status = REFUND_STATUSES.get(answer.get(f"refund_status_{found}") or "")
        if status is None:
            raise ProviderError(f"WeChat Pay answered refund {refundId} with an unknown refund_status "
                                f"{str(answer.get(f'refund_status_{found}'))[:32]!r}",
                                provider_code="INVALID_RESPONSE", details={"outcomeUnknown": True})
        return RefundResult(refundId=refundId, amount=refunded, refundNo=answer.get(f"refund_id_{found}") or None,
                            raw=answer, status=status)

    # -- notifications --------------------------------------------------------------------------------------------
    def notify_url(self) -> str:
        """``config.notifyUrl``, else ``{baseUrl}/api/{appId}/pays/services/PaySvc/wechatNotify``."""
        return self.settings.notifyUrl

    def parse_notify(self, request: NotifyRequest) -> dict[str, str]:
        """The notification XML as ``{field: text}``, exactly as received (the signature is a field; the content
        type is not checked: WeChat sends ``text/xml`` and others). Raises ``NotifyInvalid`` for a body over 64 KiB,
        any DTD/entity/processing instruction, or anything but a flat ``<xml>`` of text fields."""
        try:
            return parse_xml(request.body, max_bytes=NOTIFY_MAX_BYTES)
        except XmlRejected as exc:
            raise NotifyInvalid(f"WeChat Pay notification rejected: {exc}") from None

    def verify_notify(self, fields: Mapping[str, Any]) -> TradeState:
        """Verify a notification. A refund notification (``req_info``, no signature) is asked about, see
        :meth:`_refund_notification_state`. A payment notification: the signature over every received field with the
        configured ``signType`` (a notification signed another way is ``SignatureInvalid``, whatever its signature's
        length), then ``return_code``, ``appid``, ``mch_id`` and ``fee_type`` (``CNY`` when present)
        (``NotifyInvalid``). ``result_code=FAIL`` reports ``failed``; ``SUCCESS`` reports ``success`` with
        ``transaction_id``, ``total_fee`` (plain digits, nothing else) as yuan and ``time_end``. Checking the amount
        against the order is the caller's job.

        The order: ``attach`` when ``out_trade_no`` is one of the references derived from it (the order id itself
        for NATIVE, :func:`mweb_out_trade_no` for MWEB), recomputed here, never taken on trust. Otherwise an MWEB
        reference (``H-...``) cannot be mapped and is ``NotifyInvalid``; any other ``out_trade_no`` is the order id
        itself (a NATIVE order: WeChat's own key decides, an ``attach`` that names another order is ignored and
        logged)."""
        if any(not isinstance(k, str) or not isinstance(v, str) for k, v in fields.items()):
            raise NotifyInvalid("WeChat Pay notification fields must all be text")
        if "req_info" in fields and "sign" not in fields:
            return self._refund_notification_state(fields)
        if not fields.get("sign"):
            raise SignatureInvalid("WeChat Pay notification carries no signature")
        sign_type = self.settings.signType
        if fields.get("sign_type") not in (None, "", sign_type):
            raise SignatureInvalid(f"WeChat Pay notification declares sign_type {fields.get('sign_type')!r}; this "
                                   f"merchant is configured for {sign_type}")
        if not verify_sign(fields, self.settings.apiKey, sign_type):
            raise SignatureInvalid(f"WeChat Pay notification signature does not verify ({sign_type}, the configured "
                                   f"signType)")
        self._check_addressed(fields, "notification")
        if fields.get("fee_type") not in (None, "", CURRENCY):
            raise NotifyInvalid(f"WeChat Pay notification is in fee_type {fields.get('fee_type')[:16]!r}, not "
                                f"{CURRENCY}", details={"fee_type": fields.get("fee_type")[:16]})
        out_trade_no = fields.get("out_trade_no") or ""
        orderId = self._notified_order_id(out_trade_no, fields.get("attach") or "")
        if fields.get("result_code") != "SUCCESS":
            return TradeState(orderId=orderId, status="failed", tradeNo=fields.get("transaction_id") or None,
                              raw=dict(fields), reference=out_trade_no)
        return self._paid_state(orderId, "success", fields, NotifyInvalid, out_trade_no)

    def _check_addressed(self, fields: Mapping[str, str], what: str) -> None:
        """``return_code`` SUCCESS and this merchant's ``appid`` and ``mch_id``, else ``NotifyInvalid``."""
        if fields.get("return_code") != "SUCCESS":
            raise NotifyInvalid(f"WeChat Pay {what} has return_code {fields.get('return_code')!r}")
        if fields.get("appid") != self.settings.appId:
            raise NotifyInvalid(f"WeChat Pay {what} is for appid {fields.get('appid')!r}, not ours")
        if fields.get("mch_id") != self.settings.mchId:
            raise NotifyInvalid(f"WeChat Pay {what} is for mch_id {fields.get('mch_id')!r}, not ours")

    def _refund_notification_state(self, fields: Mapping[str, str]) -> TradeState:
        """A refund notification: ``return_code``, ``appid``, ``mch_id`` checked (``NotifyInvalid``), ``req_info``
        decrypted with the API key (:mod:`.reqinfo`; what does not decrypt is ``SignatureInvalid``). Its words are
        not taken: it names the trade (``out_trade_no``) and the refund (``out_refund_no``), and the trade's state is
        what ``orderquery`` answers now (paid or refunded, with its ``transaction_id`` and ``total_fee``; a trade
        WeChat Pay does not know or that was never paid is ``NotifyInvalid``), with ``refundId`` = ``out_refund_no``:
        PaySvc then asks :meth:`refund_state` how that refund ended. A failed ``orderquery`` raises its
        ``ProviderError`` (the notification is answered ``FAIL``, and WeChat Pay sends it again)."""
        self._check_addressed(fields, "refund notification")
        try:
            told = parse_xml(decrypt_req_info(fields["req_info"], self.settings.apiKey), root="root")
        except (ReqInfoInvalid, XmlRejected) as exc:
            raise SignatureInvalid(f"WeChat Pay refund notification: req_info does not decrypt to a refund with "
                                   f"this merchant's API key ({exc})") from None
        out_trade_no, out_refund_no = told.get("out_trade_no", ""), told.get("out_refund_no", "")
        if not _OUT_TRADE_NO.fullmatch(out_trade_no) or not 0 < len(out_refund_no) <= 64:
            raise NotifyInvalid("WeChat Pay refund notification lacks a valid out_trade_no or out_refund_no")
        answer = self.api.call("pay/orderquery", {"out_trade_no": out_trade_no}, accept_errors={"ORDERNOTEXIST"})
        if answer.get("result_code") != "SUCCESS":
            raise NotifyInvalid(f"WeChat Pay refund notification names out_trade_no {out_trade_no}, which WeChat Pay "
                                f"does not know")
        orderId = self._notified_order_id(out_trade_no, answer.get("attach") or "")
        state = self._query_state(orderId, out_trade_no, answer)
        if state.status not in ("success", "refunded"):
            raise NotifyInvalid(f"WeChat Pay refund notification names out_trade_no {out_trade_no}, which is "
                                f"{state.status}, not paid")
        return replace(state, refundId=out_refund_no, raw={**state.raw, "refund_notification": told})

    def notify_reply(self, ok: bool, message: str = "") -> NotifyReply:
        """``<xml><return_code>SUCCESS</return_code><return_msg>OK</return_msg></xml>`` (in CDATA) when ``ok``, else
        ``FAIL`` with ``message`` (WeChat then notifies again)."""
        reply = {"return_code": "SUCCESS", "return_msg": "OK"} if ok else \
            {"return_code": "FAIL", "return_msg": message or "FAIL"}
        return NotifyReply(body=build_cdata_xml(reply), mediaType="application/xml")

    # -- helpers --------------------------------------------------------------------------------------------------
    def _out_trade_no(self, order: OrderView) -> str:
        """The order id as a NATIVE ``out_trade_no`` (``OrderIdInvalid`` if WeChat cannot take it, or if it starts
        with the prefix reserved for MWEB references)."""
        if not _OUT_TRADE_NO.fullmatch(order.orderId or "") or order.orderId.startswith(MWEB_PREFIX):
            raise OrderIdInvalid(f"WeChat Pay needs an order id of at most 32 letters, digits or _-|*, not starting "
                                 f"with {MWEB_PREFIX!r}, not {order.orderId!r}")
        return order.orderId

    def _out_trade_nos(self, order: OrderView) -> dict[str, str]:
        return out_trade_nos(self._out_trade_no(order))

    @staticmethod
    def _notified_order_id(out_trade_no: str, attach: str) -> str:
        """The order a (verified) notification is about; see :meth:`verify_notify`."""
        if not out_trade_no:
            raise NotifyInvalid("WeChat Pay notification has no out_trade_no")
        if attach and out_trade_no in out_trade_nos(attach).values():
            return attach
        if out_trade_no.startswith(MWEB_PREFIX):
            raise NotifyInvalid(f"WeChat Pay notification for MWEB out_trade_no {out_trade_no!r} cannot be mapped to "
                                f"an order: its attach {attach[:64]!r} is not the order it was derived from")
        if attach:
            log.warning("WeChat Pay notification for order %s carries attach %r naming another order; ignored",
                        out_trade_no, attach[:64])
        return out_trade_no

    def _query_state(self, orderId: str, out_trade_no: str, answer: Mapping[str, str]) -> TradeState:
        """One ``orderquery`` answer (``result_code=SUCCESS``) about ``out_trade_no`` of order ``orderId`` as a
        state."""
        if answer.get("out_trade_no") not in (None, "", out_trade_no):
            raise ProviderError("WeChat Pay orderquery answered about another order", provider_code="INVALID_RESPONSE")
        if out_trade_no != orderId and answer.get("attach") not in (None, "", orderId):
            # the MWEB reference is joined to the order only through attach, as in notifications
            raise ProviderError(f"WeChat Pay orderquery of {out_trade_no} answered about another order (attach "
                                f"{answer.get('attach', '')[:64]!r})", provider_code="INVALID_RESPONSE")
        if answer.get("fee_type") not in (None, "", CURRENCY):
            raise ProviderError(f"WeChat Pay orderquery answered in fee_type {answer.get('fee_type', '')[:16]!r}, not "
                                f"{CURRENCY}", provider_code="INVALID_RESPONSE")
        trade_state = answer.get("trade_state", "")
        status = _TRADE_STATES.get(trade_state)
        if status is None:
            raise ProviderError(f"WeChat Pay orderquery gave an unknown trade_state {trade_state!r}",
                                provider_code="INVALID_RESPONSE", provider_message=answer.get("trade_state_desc"))
        if status in ("success", "refunded"):
            return self._paid_state(orderId, status, answer, ProviderError, out_trade_no)
        return TradeState(orderId=orderId, status=status, raw=dict(answer),  # type: ignore[arg-type]
                          reference=out_trade_no)

    @staticmethod
    def _paid_state(orderId: str, status: str, fields: Mapping[str, str], error: type[Exception],
                    reference: str) -> TradeState:
        tradeNo = fields.get("transaction_id")
        if not tradeNo:
            raise error(f"WeChat Pay reports order {orderId} paid without a transaction_id")
        try:
            paid = fen_to_yuan(fields.get("total_fee", ""))
        except ValueError:
            raise error(f"WeChat Pay reports order {orderId} paid with a malformed total_fee") from None
        return TradeState(orderId=orderId, status=status, tradeNo=tradeNo, paidAmount=paid,  # type: ignore[arg-type]
                          payTime=parse_time_end(fields.get("time_end")), raw=dict(fields), reference=reference)
