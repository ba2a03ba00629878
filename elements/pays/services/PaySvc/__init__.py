"""``pays.services.PaySvc``: the payment service, a thin face over the ledger, the jobs and the providers.

Usage (as the JitAi documentation gives it)::

    pay_service = app.getElement("pays.services.PaySvc")
    order = pay_service.create(subject="Product Purchase Order", amount=99.99)
    url = pay_service.getPayUrl(orderId=order["orderId"], fullName="pays.AliPayType", payType="pc")
    status = pay_service.query(orderId=order["orderId"])
    pay_service.check(orderId=order["orderId"], fullName="pays.AliPayType")

The service knows providers only through the ``pays.Meta`` contract (:class:`PayProvider`); every change of an
order, a payment or a refund goes through :mod:`.ledger`; whatever must happen after a commit is a job
(:mod:`.background`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import secrets
import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any, Mapping

from sqlalchemy.engine import Row
from starlette.responses import Response

from elements.pays.errors import (AmountMismatch, DuplicateOrder, NotifyInvalid, OrderClosed, OrderExpired,
                                  OrderNotExist, OrderPaid, OrderStateConflict, PayError, ProviderError,
                                  RefundInvalid, SignatureInvalid, SubjectInvalid, UnknownPayType,
                                  UnsupportedPayType)
from elements.pays.Meta import NotifyReply, NotifyRequest, OrderView, PayProvider, RefundResult, TradeState
from elements.pays.money import captured_fen, from_fen, parse_amount, to_fen
from elements.pays.services.PaySvc.background import refund_question_delay
from elements.pays.services.PaySvc.ids import ORDER_ID_RE, check_order_id, new_order_id
from elements.pays.services.PaySvc.ledger import (ACCEPTED_REFUND, CAPTURED_PAYMENT, LIVE_PAYMENT, OPEN_REFUND, Audit,
                                                  Ledger, as_utc, payment_dict, refund_dict, utcnow)
from elements.pays.services.PaySvc.rejections import DEFAULT_LIMITS as REJECTION_LIMITS
from elements.pays.services.PaySvc.rejections import RejectionLimiter
from elements.pays.services.PaySvc.routes import reply_response
from elements.services.NormalType import NormalService
from jitcore.errors import ArgumentError, ConfigError, ElementNotFound

log = logging.getLogger("jitpay")

PAY_META = "pays.Meta"
#: a prepared payment is reused only if it stays valid at least this long
REUSE_MARGIN = timedelta(seconds=60)
#: a new trade is offered only while at least this much of the order's payment window is left (WeChat Pay refuses
#: an expiry less than 5 minutes away)
MIN_PAY_WINDOW = timedelta(minutes=6)
#: how often a polling page may make PaySvc ask the providers about one pending order: every REFRESH_INTERVAL while
#: the order is younger than REFRESH_SLOWS_AFTER, then every REFRESH_INTERVAL_LATER (the sweep's own pace), so that a
#: page left open costs few provider calls
REFRESH_INTERVAL = timedelta(seconds=15)
REFRESH_SLOWS_AFTER = timedelta(minutes=10)
REFRESH_INTERVAL_LATER = timedelta(minutes=2)
REFUND_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: what no provider carries in a subject or a refund reason: C0 control characters but tab (line breaks included:
#: both are one line), the noncharacters U+FFFE and U+FFFF (not XML) and lone surrogates (not UTF-8)
UNSAFE_TEXT = re.compile("[\x00-\x08\x0a-\x1f\ufffe\uffff\ud800-\udfff]")
CASHIER_PATH = "/pays/cashier/{orderId}"
#: ``settings.pays`` keys and their defaults
PAY_SETTINGS: dict[str, Any] = {"surplus": "refund", "payTimeoutMinutes": 120,
                                "rejectedNotifications": dict(REJECTION_LIMITS)}


class PaySvc(NormalService):
    """The payment service. Declared functions are listed in its ``e.yaml``."""

    def jit_setup(self) -> None:
        """Read ``settings.pays`` and bind the ledger to the app's database (tables are created on first use)."""
        settings = dict(PAY_SETTINGS, **((getattr(self.app, "settings", None) or {}).get("pays") or {}))
        unknown = sorted(set(settings) - set(PAY_SETTINGS))
        if unknown:
            raise ConfigError(f"settings.pays.{unknown[0]} is not a setting (known: {', '.join(PAY_SETTINGS)})")
        if settings["surplus"] not in ("refund", "keep"):
            raise ConfigError("settings.pays.surplus must be refund (the default: money an order did not need goes "
                              "back to the buyer) or keep (recorded and announced only)")
        minutes = settings["payTimeoutMinutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 10 <= minutes <= 15 * 24 * 60:
            raise ConfigError("settings.pays.payTimeoutMinutes must be a whole number of minutes from 10 to 21600")
        self.payWindow = timedelta(minutes=minutes)
        self.ledger = Ledger(self.app.engine, self.app.jobs, self.order_dict, surplus=settings["surplus"],
                             rejections=RejectionLimiter(**_rejection_limits(settings["rejectedNotifications"])))
        self._configured: list[PayProvider] | None = None
        self._refreshed: dict[str, float] = {}
        self._refresh_lock = threading.Lock()

    def jit_close(self) -> None:
        """Record what the rejected-notification limit counted but did not store yet (:mod:`.rejections`)."""
        try:
            self.ledger.flush_rejections(force=True)
        except Exception:
            log.exception("recording the summary of rejected notifications failed")

    # -- declared functions -------------------------------------------------------------------------------------------
    def create(self, subject: str, amount: Decimal, orderId: str | None = None) -> dict[str, Any]:
        """Create a pending order. A generated ``orderId`` is time-ordered and unique. Creating an existing
        ``orderId`` again with the same subject and amount returns that order; with others it is DUPLICATE_ORDER."""
        if not subject or not subject.strip():
            raise SubjectInvalid("subject must be non-empty text")
        self._check_text("create", "subject", subject)
        value = parse_amount(amount)
        order_id = check_order_id(orderId) if orderId is not None else new_order_id()
        now = utcnow()
        row, created = self.ledger.create_order({
            "orderId": order_id, "subject": subject, "amountFen": to_fen(value), "status": "pending",
            "refundedFen": 0, "cashierToken": secrets.token_urlsafe(24), "expiresAt": now + self.payWindow,
            "createdAt": now, "updatedAt": now})
        if not created and (row.subject != subject or row.amountFen != to_fen(value)):
            raise DuplicateOrder(f"order {order_id} exists with another subject or amount")
        return self.order_dict(row)

    def getPayUrl(self, orderId: str, fullName: str, payType: str, clientIp: str | None = None) -> dict[str, Any]:
        """Prepare a payment of the order with payment element ``fullName``: ``pc`` gives QR content in ``payUrl``
        and a PNG QR image in ``qrCode``; ``mobile`` (and Alipay's ``page``) gives a link. A still-valid earlier
        preparation of the same kind is reused. Every trade expires at the provider when the order's payment window
        ends (``expiresAt``). ``clientIp`` must be an IPv4 or IPv6 address."""
        if clientIp is not None:
            clientIp = self._client_ip(clientIp)
        now = utcnow()
        # one read: the order and a still-valid earlier preparation
        order, reusable = self.ledger.order_and_offer(orderId, fullName, payType, now + REUSE_MARGIN)
        if order is None:
            raise OrderNotExist(f"no order {orderId}", details={"orderId": orderId})
        self._require_pending(order)
        if UNSAFE_TEXT.search(order.subject):  # stored before such characters were refused
            raise SubjectInvalid(f"order {orderId}'s subject holds a character payment providers cannot carry")
        provider = self.provider(fullName)
        if payType not in provider.payTypes:
            raise UnsupportedPayType(f"{fullName} does not support payType {payType!r}; supported: "
                                     f"{', '.join(provider.payTypes)}")
        window_end = as_utc(order.expiresAt)
        if window_end is not None and window_end - now < MIN_PAY_WINDOW:
            raise OrderExpired(f"order {orderId} can no longer be paid: its payment window ends at "
                               f"{window_end.isoformat()}", details={"expiresAt": window_end.isoformat()})
        if reusable is not None:
            return {"orderId": orderId, "payUrl": reusable.payUrl, "qrCode": reusable.qrCode,
                    "expiresAt": as_utc(reusable.expiresAt)}
        prep = provider.prepare(self.order_view(order), payType, clientIp=clientIp)
        expires = as_utc(prep.expiresAt)
        if window_end is not None and (expires is None or expires > window_end):
            expires = window_end if prep.expiresAt is not None else None
        payment, pending = self.ledger.record_prepared(
            orderId, provider=fullName, providerName=provider.providerName, payType=payType,
            reference=prep.reference or orderId, amountFen=order.amountFen, payUrl=prep.payUrl, qrCode=prep.qrCode,
            expiresAt=expires)
        if not pending:  # the order moved while the trade was made; a job closes the trade
            self._require_pending(self._order(orderId))
        return {"orderId": orderId, "payUrl": prep.payUrl, "qrCode": prep.qrCode, "expiresAt": expires}

    def query(self, orderId: str) -> dict[str, Any]:
        """The order as stored (``status`` is pending | success | failed | closed | refunded), with its ``payments``
        (one per provider trade; ``accepted`` marks the one that paid the order, a captured one that is not is a
        surplus) and its ``refunds``."""
        order, payments, refunds = self.ledger.order_details(orderId)  # one read
        if order is None:
            raise OrderNotExist(f"no order {orderId}", details={"orderId": orderId})
        result = self.order_dict(order)
        result["payments"] = [payment_dict(p) for p in payments]
        result["refunds"] = [refund_dict(r) for r in refunds]
        return result

    def check(self, orderId: str, fullName: str) -> dict[str, Any]:
        """Ask provider ``fullName`` about every trade of the order it holds and apply the answers (as
        notifications would). Returns the order, with ``providerStatus`` (what the provider said). Money a trade
        captured for another amount than the order's is a surplus payment of that amount (refunded unless the app
        keeps surplus money); a captured trade without a usable amount is AMOUNT_MISMATCH (recorded, nothing
        changed)."""
        order = self._order(orderId)
        provider = self.provider(fullName)
        states = self.apply_trades(provider, order, kind="check")
        result = self.query(orderId)
        result["providerStatus"] = _summary_status(states, order.tradeNo)
        unusable = [s for s in states if s.status in CAPTURED_PAYMENT_STATES and captured_fen(s.paidAmount) is None]
        if unusable:
            raise AmountMismatch(f"{fullName} reports {unusable[0].paidAmount} paid for order {orderId} of "
                                 f"{result['amount']}; nothing changed, the report is recorded")
        return result

    def close(self, orderId: str) -> dict[str, Any]:
        """Close an unpaid order: it moves to ``closed`` first (so ``getPayUrl`` refuses it and any payment that
        still arrives is a surplus, refunded), then its trades are closed at every provider (retried by a job until
        each provider agrees)."""
        order = self._order(orderId)
        if order.status == "closed":
            return self.query(orderId)
        self._require_pending(order)
        if not self.ledger.close_order(orderId, Audit("close")):
            self._require_pending(self._order(orderId))  # a payment raced the close: say so
        return self.query(orderId)

    def refund(self, orderId: str, amount: Decimal | None = None, refundId: str | None = None,
               reason: str | None = None, paymentId: int | None = None) -> dict[str, Any]:
        """Refund ``amount`` (default: all that is left) of the order's accepted payment, or of payment
        ``paymentId`` (a surplus the app keeps). Idempotent per ``refundId``: the same id always returns the same
        refund. Never more than a payment captured, whatever runs concurrently.

        Returns the refund: ``confirmed`` (refunded: in the order's ``refundedAmount``, announced as
        ``jit_order_refunded``), or ``processing`` when the provider accepted it and finishes it later (WeChat Pay):
        counted against the payment at once, in ``refundedAmount`` once the provider reports it refunded (a job asks);
        should the provider close it instead, it becomes ``refused`` and ``jit_refund_failed`` is announced."""
        if reason is not None:
            self._check_text("refund", "reason", reason)
        order = self._order(orderId)
        if refundId is not None and not REFUND_ID_RE.match(refundId):
            raise RefundInvalid("refundId must be 1 to 64 letters, digits, '_' or '-'")
        fen = to_fen(parse_amount(amount, "refund amount")) if amount is not None else None
        if refundId is not None:
            existing = self.ledger.refund_by_id(orderId, refundId)
            if existing is not None:
                return self._repeat_refund(existing, fen, paymentId)
        payment = self._refundable_payment(order, paymentId)
        if fen is None:
            fen = payment.amountFen - payment.reservedFen
            if fen <= 0:
                raise RefundInvalid(f"nothing is left to refund on order {orderId}",
                                    details={"refundId": refundId} if refundId else None)
        refund_id = refundId or "R" + new_order_id()
        kind = "merchant" if payment.role == "accepted" else "surplus"
        row = self.ledger.reserve_refund(orderId, payment.id, refund_id=refund_id, fen=fen, reason=reason, kind=kind)
        if row is None:
            raced = self.ledger.refund_by_id(orderId, refund_id)
            if raced is not None:
                return self._repeat_refund(raced, fen, paymentId)
            left = self.ledger.payment(payment.id)
            left_fen = left.amountFen - left.reservedFen if left is not None else 0
            raise RefundInvalid(f"refund of {from_fen(fen)} exceeds what is left to refund on order {orderId} "
                                f"({from_fen(max(left_fen, 0))})", details={"refundId": refund_id})
        return self._finish_refund(row)

    def alipayNotify(self, form: dict[str, Any]) -> Response:
        """Alipay's asynchronous notification (its form fields, as received). Replies ``success`` when processed or
        already processed, ``failure`` otherwise (Alipay then retries)."""
        return self._reply(self.handle_notify("alipay", form))

    def wechatNotify(self, xml: dict[str, Any]) -> Response:
        """WeChat Pay's notification (the callback XML converted to a dict). Replies the v2 XML: ``SUCCESS``/``OK``
        when processed or already processed, ``FAIL`` with a reason otherwise."""
        return self._reply(self.handle_notify("wechat", xml))

    # -- refunds ------------------------------------------------------------------------------------------------------
    def _refundable_payment(self, order: Row, paymentId: int | None) -> Row:
        if paymentId is None:
            if order.status == "refunded":
                raise RefundInvalid(f"order {order.orderId} is already fully refunded")
            if order.status != "success" or order.paymentId is None:
                raise OrderStateConflict(f"order {order.orderId} is {order.status}; only a paid order can be "
                                         f"refunded")
            paymentId = order.paymentId
        payment = self.ledger.payment(paymentId)
        if payment is None or payment.orderId != order.orderId:
            raise RefundInvalid(f"order {order.orderId} has no payment {paymentId}")
        if payment.status not in CAPTURED_PAYMENT:
            raise RefundInvalid(f"payment {paymentId} of order {order.orderId} captured nothing ({payment.status})")
        if payment.role == "accepted" and order.status == "refunded":
            raise RefundInvalid(f"order {order.orderId} is already fully refunded")
        return payment

    def _repeat_refund(self, refund: Row, fen: int | None, paymentId: int | None) -> dict[str, Any]:
        """The refund ``refundId`` names already: returned as it is when final, finished when still open, tried
        again when it was refused."""
        if fen is not None and fen != refund.amountFen:
            raise RefundInvalid(f"refundId {refund.refundId} was used for {from_fen(refund.amountFen)}",
                                details={"refundId": refund.refundId})
        if paymentId is not None and paymentId != refund.paymentId:
            raise RefundInvalid(f"refundId {refund.refundId} belongs to payment {refund.paymentId}",
                                details={"refundId": refund.refundId})
        if refund.status == "confirmed":
            return refund_dict(refund)
        if refund.status == "refused":
            reopened = self.ledger.reopen_refund(refund.id)
            if reopened is None:
                raise RefundInvalid(f"refund of {from_fen(refund.amountFen)} exceeds what is left to refund on "
                                    f"order {refund.orderId}", details={"refundId": refund.refundId})
            refund = reopened
        return self._finish_refund(refund)

    def _finish_refund(self, refund: Row) -> dict[str, Any]:
        try:
            return refund_dict(self.send_refund(refund))
        except PayError as exc:
            exc.details = {**(exc.details or {}), "refundId": refund.refundId}
            raise

    def send_refund(self, refund: Row, *, unattended: bool = False) -> Row:
        """Send an open refund to its payment's provider with its own id and record the outcome: ``confirmed``;
        ``refused`` (a definite no: the reservation is released); or ``unknown`` (no answer, an unreadable one, a
        "system error", or any other exception: it stays counted and a job asks again with the same id). Raises the
        provider's error in the last two cases; any other exception becomes a :class:`ProviderError` with
        ``details["outcomeUnknown"]`` (so a caller never sees a bare RuntimeError from deep inside). Returns the
        refund as it is afterwards. ``unattended``: no caller hears the answer (a job sends it), so a refusal is
        announced (``jit_refund_failed``)."""
        if refund.status not in OPEN_REFUND or not self.ledger.refund_sent(refund.id):
            found = self.ledger.refund(refund.id)
            assert found is not None
            return found
        payment, order, audit = self._refund_context(refund, "refund")
        try:
            provider = self.provider(payment.provider)
            view = self._payment_view(order, payment)
            result = provider.refund(view, refund.refundId, from_fen(refund.amountFen), from_fen(payment.reservedFen),
                                     refund.reason)
            self._check_refund_result(refund, result)
        except ProviderError as exc:
            if outcome_unknown(exc):
                self.ledger.refund_unknown(refund.id, exc.code, exc.message, audit, retry_in=60.0)
            else:
                self.ledger.refuse_refund(refund.id, exc.provider_code or exc.code, exc.message, audit,
                                          announce=unattended)
            raise
        except PayError as exc:  # refused before anything was sent (the provider's own checks)
            self.ledger.refuse_refund(refund.id, exc.code, exc.message, audit, announce=unattended)
            raise
        except BaseException as exc:  # whatever happened, the provider may have refunded: keep it counted
            self.ledger.refund_unknown(refund.id, type(exc).__name__, str(exc)[:2000], audit, retry_in=60.0)
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: let the process stop
                raise
            log.exception("refund %s of order %s: unexpected %s while sending it; its outcome is unknown",
                          refund.refundId, refund.orderId, type(exc).__name__)
            raise ProviderError(f"refund {refund.refundId} of order {refund.orderId} failed unexpectedly "
                                f"({type(exc).__name__}); its outcome is unknown: it stays counted and is asked "
                                f"about again with the same refundId",
                                details={"refundId": refund.refundId, "outcomeUnknown": True}) from exc
        if result.status == "processing":  # many finish within moments: ask once right away
            if type(provider).refund_state is PayProvider.refund_state:
                log.warning("%s answered refund %s 'processing' but implements no refund_state: taken as refunded "
                            "(docs/PROVIDERS.md)", payment.provider, refund.refundId)
            try:
                result = self._refund_state(provider, view, refund)
            except ProviderError:
                pass  # accepted all the same; the follow-up job asks again
            except Exception:  # a provider's bug: the refund was accepted all the same
                log.exception("refund %s of order %s: asking %s where it stands failed", refund.refundId,
                              refund.orderId, payment.provider)
        return self._apply_refund_result(refund, result, audit)

    def follow_refund(self, refund: Row) -> Row:
        """Ask the provider where a refund it accepted without finishing (``processing`` or ``abnormal``) stands, and
        record the answer: confirmed, refused (the provider closed it: released and announced), or still accepted
        (asked again later). A provider error is recorded and raised; nothing changes. Returns the refund as it is
        afterwards."""
        if refund.status not in ACCEPTED_REFUND:
            return refund
        payment, order, audit = self._refund_context(refund, "refund-state")
        try:
            result = self._refund_state(self.provider(payment.provider), self._payment_view(order, payment), refund)
        except ProviderError as exc:
            self.ledger.audit("refund-state", "provider-error", provider=payment.provider, order_id=order.orderId,
                              error_code=exc.code, message=exc.message, payload=exc.details)
            raise
        return self._apply_refund_result(refund, result, audit)

    def _refund_context(self, refund: Row, kind: str) -> tuple[Row, Row, Audit]:
        """The refund's payment and order, and the audit record (of ``kind``) its outcome is written with."""
        payment = self.ledger.payment(refund.paymentId)
        order = self.ledger.order(refund.orderId)
        assert payment is not None and order is not None
        audit = Audit(kind, provider=payment.provider,
                      payload={"refundId": refund.refundId, "amount": str(from_fen(refund.amountFen)),
                               "tradeNo": payment.tradeNo, "kind": refund.kind})
        return payment, order, audit

    def _refund_state(self, provider: PayProvider, view: OrderView, refund: Row) -> RefundResult:
        result = provider.refund_state(view, refund.refundId, from_fen(refund.amountFen))
        self._check_refund_result(refund, result)
        return result

    @staticmethod
    def _check_refund_result(refund: Row, result: RefundResult) -> None:
        """A provider's answer about another refund or another amount changes nothing."""
        if result.refundId != refund.refundId or result.amount != from_fen(refund.amountFen):
            raise ProviderError(f"the provider answered refund {refund.refundId} of {from_fen(refund.amountFen)} "
                                f"with refund {result.refundId} of {result.amount}", provider_code="REFUND_MISMATCH",
                                details={"refundId": refund.refundId, "outcomeUnknown": True})

    def _apply_refund_result(self, refund: Row, result: RefundResult, audit: Audit) -> Row:
        audit.payload = {**audit.payload, **dict(result.raw)}
        if result.status == "success":
            return self.ledger.confirm_refund(refund.id, result.refundNo, audit)
        if result.status == "closed":
            return self.ledger.refuse_refund(refund.id, "REFUND_CLOSED", f"{refund.provider} closed refund "
                                             f"{refund.refundId} after accepting it: nothing was refunded", audit)
        return self.ledger.accept_refund(refund.id, result.refundNo, result.status, audit,
                                         next_ask=refund_question_delay(result.status, refund.createdAt, utcnow()))

    @staticmethod
    def _payment_view(order: Row, payment: Row) -> OrderView:
        """The order as a provider sees it when one of its payments is refunded."""
        return OrderView(orderId=order.orderId, subject=order.subject, amount=from_fen(payment.amountFen),
                         createdAt=as_utc(order.createdAt), tradeNo=payment.tradeNo,  # type: ignore[arg-type]
                         expiresAt=as_utc(order.expiresAt), reference=payment.reference)

    # -- provider answers ---------------------------------------------------------------------------------------------
    def apply_trades(self, provider: PayProvider, order: Row, *, kind: str) -> list[TradeState]:
        """Ask ``provider`` about every trade of ``order`` it holds and apply each answer. Provider errors and
        answers about another order are recorded and raised."""
        orderId = order.orderId
        try:
            states = provider.query_trades(self.order_view(order))
        except ProviderError as exc:
            self.ledger.audit(kind, "provider-error", provider=provider.fullName, order_id=orderId,
                              error_code=exc.code, message=exc.message, payload=exc.details)
            raise
        for state in states:
            if state.orderId != orderId:  # never apply one trade's answer to another order
                self.ledger.audit(kind, "rejected", provider=provider.fullName, order_id=orderId,
                                  error_code="PROVIDER_ERROR", message=f"the answer is about order {state.orderId}",
                                  payload=dict(state.raw))
                raise ProviderError(f"{provider.fullName} answered about order {state.orderId!r} when asked about "
                                    f"{orderId}")
        for state in states:
            self.apply_state(provider, state, kind=kind, asked=True)
        self.ledger.mark_checked(p.id for p in self.ledger.payments(orderId)
                                 if p.provider == provider.fullName and p.status in LIVE_PAYMENT)
        return states

    def apply_state(self, provider: PayProvider, state: TradeState, *, kind: str, payload: Any = None,
                    asked: bool = False) -> tuple[bool, str]:
        """Apply what a provider says about one trade: from a verified notification, or ``asked`` (its answer to a
        query). Returns ``(accepted, message)``: accepted means processed or already processed (the provider may
        stop retrying). Captured money is always recorded (as the accepted payment or a surplus); a closed or failed
        trade changes that payment only. A notification of captured money that is not the order's amount changes
        nothing (``AMOUNT_MISMATCH``, recorded): a job asks the provider, and what it answers is recorded (money
        captured for another amount is a surplus, refunded)."""
        raw = payload if payload is not None else dict(state.raw)
        audit = Audit(kind, provider=provider.fullName, verified=True, payload=raw)
        known_id = bool(ORDER_ID_RE.match(state.orderId or ""))
        reference = state.reference or state.orderId
        if known_id and state.status in CAPTURED_PAYMENT_STATES:
            # the order is read once, locked, inside the ledger's transaction
            paid = self.ledger.apply_paid(state.orderId, provider=provider.fullName,
                                          providerName=provider.providerName, reference=reference,
                                          tradeNo=state.tradeNo, payTime=state.payTime, paidAmount=state.paidAmount,
                                          audit=audit, settleHere=settles_where_paid(provider), asked=asked)
            if paid.outcome == "mismatch":
                amount = from_fen(paid.order.amountFen)  # type: ignore[union-attr]
                self.ledger.audit(kind, "rejected", provider=provider.fullName, order_id=state.orderId,
                                  verified=True, error_code=AmountMismatch.code, payload=raw,
                                  message=f"paid {state.paidAmount}, order amount {amount}"
                                          + ("" if asked else f"; asking {provider.fullName}"))
                if not asked:
                    self.ledger.ask_provider(state.orderId, provider.fullName)
                return False, "amount mismatch"
            if paid.outcome != "missing":
                return True, "OK"
            order = None
        else:
            order = self.ledger.order(state.orderId) if known_id else None
        if order is None:
            self.ledger.audit(kind, "rejected", provider=provider.fullName, order_id=state.orderId, verified=True,
                              error_code=OrderNotExist.code, message=f"no order {state.orderId}", payload=raw)
            return False, "order not found"
        if state.status in ("closed", "failed"):
            self.ledger.apply_unpaid(order.orderId, provider=provider.fullName, providerName=provider.providerName,
                                     reference=reference, status=state.status, audit=audit)
            return True, "OK"
        self.ledger.audit(kind, "unchanged", provider=provider.fullName, order_id=state.orderId, verified=True,
                          message=f"provider says {state.status}, order is {order.status}", payload=raw)
        return True, "OK"

    def refresh_pending(self, orderId: str, order: Row | None = None) -> Row | None:
        """Ask the providers a pending order was offered with whether it has been paid, at most once every
        :data:`REFRESH_INTERVAL` per order (every :data:`REFRESH_INTERVAL_LATER` once the order is older than
        :data:`REFRESH_SLOWS_AFTER`), for pages that poll while notifications may not arrive. ``order``: the order as
        the caller just read it (not read again unless a provider is asked). Returns the order as it is afterwards,
        or None if it does not exist. Provider errors are recorded, not raised."""
        if order is None:
            order = self.ledger.order(orderId)
        if order is None or order.status != "pending":
            return order
        created = as_utc(order.createdAt)
        young = created is None or utcnow() - created < REFRESH_SLOWS_AFTER
        interval = (REFRESH_INTERVAL if young else REFRESH_INTERVAL_LATER).total_seconds()
        now = time.monotonic()
        with self._refresh_lock:
            last = self._refreshed.get(orderId)
            if last is not None and now - last < interval:
                return order
            self._refreshed[orderId] = now
            if len(self._refreshed) > 10000:  # forget the oldest; only a rate limit
                for key in sorted(self._refreshed, key=self._refreshed.__getitem__)[:5000]:
                    del self._refreshed[key]
        for fullName in self.ledger.offered_providers(orderId):
            try:
                if self.check(orderId, fullName)["status"] != "pending":
                    break
            except PayError as exc:  # recorded by check; the page keeps polling
                log.info("refreshing order %s with %s: %s", orderId, fullName, exc)
        return self.ledger.order(orderId)

    # -- notifications ------------------------------------------------------------------------------------------------
    def handleNotify(self, providerName: str, request: NotifyRequest) -> NotifyReply:
        """Hand a provider's notification, exactly as it arrived over HTTP, to PaySvc: the public way for an app
        that serves its own web framework (PaySvc's routes call it too). The provider parses it
        (:meth:`PayProvider.parse_notify`), every configured element of ``providerName`` is tried to verify it, and
        what it reports is applied. Returns the reply to send back as it is (status, body, media type, headers).

        Raises :class:`UnknownPayType` (HTTP 404) when the app configures no element of ``providerName``. Never
        raises for what the request holds: a body over the provider's :attr:`~PayProvider.notifyMaxBytes`, one that
        cannot be parsed, a forged, tampered or mismatched notification change nothing, are recorded in the audit
        log and answered "not processed"; an unexpected error (the database away) is logged and answered "not
        processed" too, so that the provider notifies again."""
        providers = self.notify_providers(providerName)
        first = providers[0]
        try:
            limit = max(p.notifyMaxBytes for p in providers)
            if len(request.body) > limit:
                self.ledger.audit("notify", "rejected", provider=first.fullName, verified=False,
                                  error_code="BODY_TOO_LARGE", message=f"body over {limit} bytes",
                                  payload=request.body, source=request.client)
                return first.notify_reply(False, "body too large")
            try:
                fields = first.parse_notify(request)
            except NotifyInvalid as exc:
                self.ledger.audit("notify", "rejected", provider=first.fullName, verified=False,
                                  error_code=exc.code, message=exc.message, payload=request.body,
                                  source=request.client)
                return first.notify_reply(False, exc.message)
            return self.handle_notify(providerName, fields, body=request.body, client=request.client)
        except Exception:
            log.exception("the %s notification could not be handled", providerName)
            return first.notify_reply(False, "internal error")

    def handle_notify(self, providerName: str, fields: Mapping[str, Any], *, body: bytes | None = None,
                      client: str | None = None) -> Any:
        """Verify a notification with the provider element it is addressed to, then apply it. Returns the provider's
        :class:`NotifyReply`. Forged, tampered or mismatched notifications change nothing and are recorded, within
        the limits of :mod:`.rejections` (an excerpt and a hash of ``body``, or of the fields; per ``client``
        address)."""
        providers = self.notify_providers(providerName)
        fields = {str(k): v for k, v in fields.items()}
        order_id = providers[0].notify_order_id(fields)
        candidates = providers
        if len(providers) > 1 and order_id and ORDER_ID_RE.match(order_id):
            offered = self.ledger.offered_providers(order_id)
            preferred = [p for name in offered for p in providers if p.fullName == name]
            candidates = preferred + [p for p in providers if p not in preferred]
        error: PayError | None = None
        for provider in candidates:
            try:
                state = provider.verify_notify(fields)
            except (SignatureInvalid, NotifyInvalid) as exc:
                error = error if isinstance(error, NotifyInvalid) else exc
                continue
            ok, message = self.apply_state(provider, state, kind="notify", payload=fields)
            if ok and state.refundId:
                self._refund_notified(provider, state)
            return provider.notify_reply(ok, message)
        assert error is not None
        self.ledger.audit("notify", "rejected", provider=candidates[0].fullName, order_id=order_id,
                          verified=not isinstance(error, SignatureInvalid), error_code=error.code,
                          message=error.message, payload=fields if body is None else body, source=client,
                          bounded=True)
        return candidates[0].notify_reply(False, error.message)

    def _refund_notified(self, provider: PayProvider, state: TradeState) -> None:
        """A verified notification about one of our refunds: when the provider accepted it without finishing, ask
        where it stands now rather than at its next follow-up (the notification's own words are not taken: the
        answer to a question is)."""
        if not ORDER_ID_RE.match(state.orderId or "") or not state.refundId:
            return
        refund = self.ledger.refund_by_id(state.orderId, state.refundId)
        if refund is None or refund.provider != provider.fullName or refund.status not in ACCEPTED_REFUND:
            return
        try:
            self.follow_refund(refund)
        except PayError as exc:  # recorded; the refund's follow-up job asks again
            log.warning("refund %s of order %s: asking %s after its notification failed: %s", refund.refundId,
                        refund.orderId, provider.fullName, exc.message)
        except Exception:  # the notification is acknowledged all the same; the follow-up job asks again
            log.exception("refund %s of order %s: asking %s after its notification failed", refund.refundId,
                          refund.orderId, provider.fullName)

    def configured_providers(self) -> list[PayProvider]:
        """Every payment element the app configures (its YAML or its ``elementDirs`` declare or override it: a
        non-Meta element whose type chain reaches ``pays.Meta``), by fullName. A plugin's provider that the app does
        not configure is not among them, even if it would load."""
        if self._configured is None:
            found: list[PayProvider] = []
            for name in self.app.elementNames():
                define = self.app.getDefine(name)
                if define.kind == "Meta" or not self.app.configures(name) or not self.app.isA(name, PAY_META):
                    continue
                try:
                    element = self.app.loadElement(name)
                except ConfigError:  # loading the app loads what it configures: only a lazy subclass gets here
                    log.exception("payment element %s does not load", name)
                    continue
                if isinstance(element, PayProvider):
                    found.append(element)
            self._configured = found
        return self._configured

    @property
    def providers_loaded(self) -> bool:
        """Whether :meth:`configured_providers` is known already (then asking it does no I/O)."""
        return self._configured is not None

    def notify_providers(self, providerName: str) -> list[PayProvider]:
        """The configured payment elements of one provider (``alipay``, ``wechat``, a plugin's ``providerName``),
        for notifications; UNKNOWN_PAY_TYPE (HTTP 404) when there is none."""
        providers = [p for p in self.configured_providers() if p.providerName == providerName]
        if not providers:
            raise UnknownPayType(f"no {providerName!r} payment element is configured in this app", http_status=404)
        return providers

    # -- background work ----------------------------------------------------------------------------------------------
    def sweep(self, **limits: Any) -> int:
        """One pass of the periodic sweep (:func:`.background.sweep`): ask the providers about trades that may have
        captured money unseen. The ``pays.sweep`` job runs it every minute; keyword arguments override its pace."""
        from elements.pays.services.PaySvc.background import sweep

        return sweep(self, **limits)

    def money_check(self, orderId: str) -> tuple[int, int]:
        """``(net captured, expected)`` in fen (see :meth:`.ledger.Ledger.money_check`): equal for every order once
        the jobs are drained."""
        return self.ledger.money_check(orderId)

    # -- helpers ------------------------------------------------------------------------------------------------------
    def provider(self, fullName: str) -> PayProvider:
        """The payment element ``fullName`` (a Type the app configures, such as ``pays.AliPayType``, or an app
        instance of one); anything else, also an installed payment Type this app does not configure, is
        UNKNOWN_PAY_TYPE."""
        try:
            define = self.app.getDefine(fullName)
        except ElementNotFound:
            raise UnknownPayType(f"{fullName!r} is not a payment element") from None
        if define.kind == "Meta" or not self.app.isA(fullName, PAY_META):
            raise UnknownPayType(f"{fullName!r} is not a payment element")
        if not self.app.configures(fullName):  # installed (a plugin's, the official one) but not set up here
            raise UnknownPayType(f"{fullName} is not configured in this app: give it its config under elements: "
                                 f"in the app YAML", details={"fullName": fullName})
        element = self.app.loadElement(fullName)
        if not isinstance(element, PayProvider):
            raise UnknownPayType(f"{fullName!r} is not a payment element")
        return element

    def order_dict(self, order: Row) -> dict[str, Any]:
        """The public view of an order (what events carry; ``query`` adds its payments and refunds)."""
        return {
            "orderId": order.orderId,
            "subject": order.subject,
            "amount": from_fen(order.amountFen),
            "status": order.status,
            "payTime": as_utc(order.payTime),
            "provider": order.provider,
            "tradeNo": order.tradeNo,
            "refundedAmount": from_fen(order.refundedFen),
            "createdAt": as_utc(order.createdAt),
            "expiresAt": as_utc(order.expiresAt),
            "cashierUrl": self.cashier_url(order),
        }

    def cashier_url(self, order: Row) -> str:
        """The buyer's cashier link for the order, with its unguessable token."""
        path = CASHIER_PATH.format(orderId=order.orderId) + f"?token={order.cashierToken}"
        return f"{self.app.baseUrl}{path}" if self.app.baseUrl else path

    def cashier_order(self, orderId: str, token: str) -> Row | None:
        """The order if ``token`` is its cashier token (compared in constant time), else None."""
        try:
            check_order_id(orderId)
        except PayError:
            return None
        order = self.ledger.order(orderId)
        if order is None or not token or not hmac.compare_digest(order.cashierToken.encode(), token.encode()):
            return None
        return order

    def _check_text(self, function: str, argument: str, text: str) -> None:
        """Refuse text a provider cannot carry (:data:`UNSAFE_TEXT`): SUBJECT_INVALID for the subject,
        ARGUMENT_INVALID for other arguments, naming it, before anything is stored or sent."""
        found = UNSAFE_TEXT.search(text)
        if found is None:
            return
        message = (f"{self.fullName}.{function}: argument '{argument}' holds U+{ord(found.group()):04X} at "
                   f"{found.start()}, a character payment providers cannot carry (control characters but tab, "
                   f"U+FFFE, U+FFFF)")
        details = {"argument": argument}
        if argument == "subject":
            raise SubjectInvalid(message, details=details)
        raise ArgumentError(message, details=details)

    def _client_ip(self, clientIp: str) -> str:
        """The buyer's address as a provider takes it: an IPv4 or IPv6 address (an IPv4-mapped IPv6 address as its
        IPv4 form), else ARGUMENT_INVALID."""
        try:
            address = ipaddress.ip_address(clientIp.strip(" "))
        except ValueError:
            address = None
        if address is None or getattr(address, "scope_id", None):
            raise ArgumentError(f"{self.fullName}.getPayUrl: argument 'clientIp' must be an IPv4 or IPv6 address",
                                details={"argument": "clientIp"})
        mapped = getattr(address, "ipv4_mapped", None)
        return str(mapped or address)

    @staticmethod
    def order_view(order: Row) -> OrderView:
        """What providers may know of an order."""
        return OrderView(orderId=order.orderId, subject=order.subject, amount=from_fen(order.amountFen),
                         createdAt=as_utc(order.createdAt), tradeNo=order.tradeNo,  # type: ignore[arg-type]
                         expiresAt=as_utc(order.expiresAt))

    def _order(self, orderId: str) -> Row:
        order = self.ledger.order(orderId)
        if order is None:
            raise OrderNotExist(f"no order {orderId}", details={"orderId": orderId})
        return order

    @staticmethod
    def _require_pending(order: Row) -> None:
        if order.status in ("success", "refunded"):
            raise OrderPaid(f"order {order.orderId} is already paid")
        if order.status == "closed":
            raise OrderClosed(f"order {order.orderId} is closed")
        if order.status != "pending":
            raise OrderStateConflict(f"order {order.orderId} is {order.status}")

    @staticmethod
    def _reply(reply: NotifyReply) -> Response:
        return reply_response(reply)


#: provider trade states that mean money was captured
CAPTURED_PAYMENT_STATES = ("success", "refunded")


def _rejection_limits(value: Any) -> dict[str, int]:
    """``settings.pays.rejectedNotifications`` checked: ``perSource``, ``total`` and ``windowSeconds``, whole
    numbers (missing keys keep their defaults)."""
    if not isinstance(value, dict) or set(value) - set(REJECTION_LIMITS):
        raise ConfigError("settings.pays.rejectedNotifications takes perSource, total and windowSeconds "
                          f"(defaults {REJECTION_LIMITS})")
    limits = {**REJECTION_LIMITS, **value}
    for key, top in (("perSource", 1_000_000), ("total", 1_000_000), ("windowSeconds", 86_400)):
        number = limits[key]
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= top:
            raise ConfigError(f"settings.pays.rejectedNotifications.{key} must be a whole number from 1 to {top}")
    return limits


def _summary_status(states: list[TradeState], paid_trade: str | None) -> str:
    """One status for what a provider said about all of an order's trades: the accepted trade's, else a paid one,
    else pending if any can still be paid, else failed or closed."""
    for state in states:
        if paid_trade and state.tradeNo == paid_trade:
            return state.status
    for wanted in ("success", "refunded", "pending", "failed", "closed"):
        if any(s.status == wanted for s in states):
            return wanted
    return "pending"


#: failure kinds after which a request may still have been carried out by the provider
UNKNOWN_OUTCOME_FAILURES = frozenset({"timeout", "connection", "http_status", "invalid_response", "signature_missing",
                                      "signature_invalid"})


def settles_where_paid(provider: PayProvider) -> bool:
    """Whether ``provider``'s ``settle`` does anything for the element that took the payment (the contract's default
    does nothing there: a paid order is then settled at that element only if another of its trades is recorded)."""
    return type(provider).settle is not PayProvider.settle


def outcome_unknown(exc: ProviderError) -> bool:
    """Whether the provider may have carried out the request despite the error (no answer, an unreadable or
    unverifiable one, or a system error it asks to retry): then a refund stays counted and is retried with the same
    id, never released for a new one (that could pay out twice)."""
    import httpx

    details = exc.details or {}
    if details.get("outcomeUnknown") or details.get("failure") in UNKNOWN_OUTCOME_FAILURES:
        return True
    code = (exc.provider_code or "").upper()
    if code.endswith("SYSTEM_ERROR") or code in ("SYSTEMERROR", "BIZERR_NEED_RETRY", "20000") \
            or details.get("code") == "20000":
        return True
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, httpx.TransportError)
