"""``pays.services.PaySvc``: orders, their life cycle, payments through providers, notifications and refunds.

Usage (as the JitAi documentation gives it)::

    pay_service = app.getElement("pays.services.PaySvc")
    order = pay_service.create(subject="Product Purchase Order", amount=99.99)
    url = pay_service.getPayUrl(orderId=order["orderId"], fullName="pays.AliPayType", payType="pc")
    status = pay_service.query(orderId=order["orderId"])
    pay_service.check(orderId=order["orderId"], fullName="pays.AliPayType")

The service knows providers only through the ``pays.Meta`` contract (:class:`PayProvider`); every change of an order
goes through :mod:`.lifecycle`.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any, Mapping

from starlette.responses import Response

from elements.pays.errors import (AmountMismatch, DuplicateOrder, NotifyInvalid, OrderClosed, OrderNotExist,
                                  OrderPaid, OrderStateConflict, PayError, ProviderError, RefundInvalid,
                                  SignatureInvalid, SubjectInvalid, UnknownPayType, UnsupportedPayType)
from elements.pays.Meta import OrderView, PayProvider, TradeState
from elements.pays.money import from_fen, parse_amount, to_fen
from elements.pays.services.PaySvc.ids import ORDER_ID_RE, check_order_id, new_order_id
from elements.pays.services.PaySvc.lifecycle import OrderStore, as_utc, utcnow
from elements.pays.services.PaySvc.models import PayAttempt, PayOrder, PayRefund
from elements.services.NormalType import NormalService
from jitcore.errors import ConfigError, ElementNotFound

log = logging.getLogger("jitpay")

PAY_META = "pays.Meta"
#: a prepared payment is reused only if it stays valid at least this long
REUSE_MARGIN = timedelta(seconds=60)
#: how often a polling page may make PaySvc ask the providers about one pending order
REFRESH_INTERVAL = timedelta(seconds=15)
REFUND_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CASHIER_PATH = "/pays/cashier/{orderId}"


class PaySvc(NormalService):
    """The payment service. Declared functions are listed in its ``e.yaml``."""

    def jit_setup(self) -> None:
        """Bind the order store to the app's database (tables are created on first use)."""
        self.store = OrderStore(self.app.engine)
        self._notify_providers: dict[str, list[PayProvider]] | None = None
        self._refreshed: dict[str, float] = {}
        self._refresh_lock = threading.Lock()
        self._settling: list[threading.Thread] = []
        self._settle_lock = threading.Lock()

    def jit_close(self) -> None:
        """Let background settling finish."""
        self.wait_settled()

    # -- declared functions -------------------------------------------------------------------------------------------
    def create(self, subject: str, amount: Decimal, orderId: str | None = None) -> dict[str, Any]:
        """Create a pending order. A generated ``orderId`` is time-ordered and unique. Creating an existing
        ``orderId`` again with the same subject and amount returns that order; with others it is DUPLICATE_ORDER."""
        if not subject or not subject.strip():
            raise SubjectInvalid("subject must be non-empty text")
        value = parse_amount(amount)
        order_id = check_order_id(orderId) if orderId is not None else new_order_id()
        now = utcnow()
        order = PayOrder(orderId=order_id, subject=subject, amountFen=to_fen(value), status="pending",
                         cashierToken=secrets.token_urlsafe(24), createdAt=now, updatedAt=now)
        if not self.store.insert_order(order):
            existing = self.store.get(order_id)
            if existing is None:  # pragma: no cover - the insert failed for another reason
                raise PayError(f"order {order_id} could not be created")
            if existing.subject == subject and existing.amountFen == order.amountFen:
                return self.order_dict(existing)
            raise DuplicateOrder(f"order {order_id} exists with another subject or amount")
        result = self.order_dict(order)
        self._fire("jit_order_created", order_id, order=result)
        return result

    def getPayUrl(self, orderId: str, fullName: str, payType: str, clientIp: str | None = None) -> dict[str, Any]:
        """Prepare a payment of the order with payment element ``fullName``: ``pc`` gives QR content in ``payUrl``
        and a PNG QR image in ``qrCode``; ``mobile`` (and Alipay's ``page``) gives a link. A still-valid earlier
        preparation of the same kind is reused."""
        order = self._pending_order(orderId)
        provider = self.provider(fullName)
        if payType not in provider.payTypes:
            raise UnsupportedPayType(f"{fullName} does not support payType {payType!r}; supported: "
                                     f"{', '.join(provider.payTypes)}")
        now = utcnow()
        reusable = self.store.reusable_attempt(orderId, fullName, payType, now + REUSE_MARGIN)
        if reusable is not None:
            return {"orderId": orderId, "payUrl": reusable.payUrl, "qrCode": reusable.qrCode,
                    "expiresAt": as_utc(reusable.expiresAt)}
        prep = provider.prepare(self.order_view(order), payType, clientIp=clientIp)
        self.store.add_attempt(PayAttempt(orderId=orderId, provider=fullName, providerName=provider.providerName,
                                          payType=payType, payUrl=prep.payUrl, qrCode=prep.qrCode,
                                          expiresAt=as_utc(prep.expiresAt), createdAt=now))
        return {"orderId": orderId, "payUrl": prep.payUrl, "qrCode": prep.qrCode, "expiresAt": prep.expiresAt}

    def query(self, orderId: str) -> dict[str, Any]:
        """The order as stored: ``status`` is pending | success | failed | closed | refunded."""
        return self.order_dict(self._order(orderId))

    def check(self, orderId: str, fullName: str) -> dict[str, Any]:
        """Ask provider ``fullName`` about the order and apply its answer through the life cycle (as a notification
        would). Returns the order, with ``providerStatus`` (what the provider said)."""
        order = self._order(orderId)
        provider = self.provider(fullName)
        try:
            state = provider.query(self.order_view(order))
        except ProviderError as exc:
            self.store.audit("check", "provider-error", provider=fullName, order_id=orderId, error_code=exc.code,
                             message=exc.message, payload=exc.details)
            raise
        if state.orderId != orderId:  # never apply one trade's answer to another order
            self.store.audit("check", "rejected", provider=fullName, order_id=orderId, error_code="PROVIDER_ERROR",
                             message=f"the answer is about order {state.orderId}", payload=dict(state.raw))
            raise ProviderError(f"{fullName} answered about order {state.orderId!r} when asked about {orderId}")
        ok, _ = self.apply_state(provider, state, kind="check")
        result = self.query(orderId)
        result["providerStatus"] = state.status
        if not ok:
            raise AmountMismatch(f"{fullName} reports {state.paidAmount} paid for order {orderId} of "
                                 f"{result['amount']}; nothing changed, the report is recorded")
        return result

    def close(self, orderId: str) -> dict[str, Any]:
        """Close an unpaid order, first at every provider it was offered with (so it can no longer be paid)."""
        order = self._order(orderId)
        if order.status == "closed":
            return self.order_dict(order)
        self._require_pending(order)
        view = self.order_view(order)
        for fullName in self.store.attempted_providers(orderId):
            try:
                self.provider(fullName).close(view)
            except ProviderError as exc:
                self.store.audit("close", "provider-error", provider=fullName, order_id=orderId,
                                 error_code=exc.code, message=exc.message, payload=exc.details)
                raise
        if self.store.transition(orderId, "closed", record=self.store.audit_row("close", "pending->closed",
                                                                               order_id=orderId)):
            result = self.query(orderId)
            self._fire("jit_order_closed", orderId, order=result)
            return result
        self._require_pending(self._order(orderId))  # a payment raced the close: say so
        return self.query(orderId)

    def refund(self, orderId: str, amount: Decimal | None = None, refundId: str | None = None,
               reason: str | None = None) -> dict[str, Any]:
        """Refund ``amount`` (default: all that is left) of a paid order through the provider that was paid.
        Idempotent per ``refundId``; never more than was paid in all."""
        order = self._order(orderId)
        if order.status == "refunded":
            raise RefundInvalid(f"order {orderId} is already fully refunded")
        if order.status != "success":
            raise OrderStateConflict(f"order {orderId} is {order.status}; only a paid order can be refunded")
        if refundId is not None and not REFUND_ID_RE.match(refundId):
            raise RefundInvalid("refundId must be 1 to 64 letters, digits, '_' or '-'")
        refund_id = refundId or "R" + new_order_id()
        if amount is None:
            fen = order.amountFen - order.refundedFen
            if fen <= 0:
                raise RefundInvalid(f"nothing is left to refund on order {orderId}")
        else:
            fen = to_fen(parse_amount(amount, "refund amount"))
        refund = self._reserve_refund(order, refund_id, fen, reason)
        if refund.status == "success":
            return self.refund_dict(refund)
        provider = self.provider(order.provider or "")
        current = self._order(orderId)
        try:
            result = provider.refund(self.order_view(current), refund_id, from_fen(fen),
                                     from_fen(current.refundedFen), reason)
        except ProviderError as exc:
            if outcome_unknown(exc):
                outcome = "outcome-unknown"  # the refund may have happened: keep it counted, retry the same id
            else:
                outcome = "refused"
                self.store.fail_refund(refund)
            self.store.audit("refund", outcome, provider=provider.fullName, order_id=orderId, error_code=exc.code,
                             message=exc.message, payload={"refundId": refund_id, **exc.details})
            raise
        self.store.finish_refund(refund, result.refundNo)
        refund.status, refund.refundNo = "success", result.refundNo
        self.store.audit("refund", "refunded", provider=provider.fullName, order_id=orderId, verified=True,
                         payload={"refundId": refund_id, "amount": str(from_fen(fen)), **dict(result.raw)})
        after = self._order(orderId)
        if after.refundedFen >= after.amountFen:
            self.store.transition(orderId, "refunded", record=self.store.audit_row(
                "refund", "success->refunded", provider=provider.fullName, order_id=orderId))
        refund_result = self.refund_dict(refund)
        self._fire("jit_order_refunded", orderId, order=self.query(orderId), refund=refund_result)
        return refund_result

    def alipayNotify(self, form: dict[str, Any]) -> Response:
        """Alipay's asynchronous notification (its form fields, as received). Replies ``success`` when processed or
        already processed, ``failure`` otherwise (Alipay then retries)."""
        return self._reply(self.handle_notify("alipay", form))

    def wechatNotify(self, xml: dict[str, Any]) -> Response:
        """WeChat Pay's notification (the callback XML converted to a dict). Replies the v2 XML: ``SUCCESS``/``OK``
        when processed or already processed, ``FAIL`` with a reason otherwise."""
        return self._reply(self.handle_notify("wechat", xml))

    def refresh_pending(self, orderId: str) -> PayOrder | None:
        """Ask the providers a pending order was offered with whether it has been paid, at most once every
        :data:`REFRESH_INTERVAL` per order (for pages that poll while notifications may not arrive). Returns the
        order as it is afterwards, or None if it does not exist. Provider errors are recorded, not raised."""
        now = time.monotonic()
        with self._refresh_lock:
            last = self._refreshed.get(orderId)
            if last is not None and now - last < REFRESH_INTERVAL.total_seconds():
                return self.store.get(orderId)
            self._refreshed[orderId] = now
            if len(self._refreshed) > 10000:  # forget the oldest; only a rate limit
                for key in sorted(self._refreshed, key=self._refreshed.__getitem__)[:5000]:
                    del self._refreshed[key]
        order = self.store.get(orderId)
        if order is None or order.status != "pending":
            return order
        for fullName in self.store.attempted_providers(orderId):
            try:
                if self.check(orderId, fullName)["status"] != "pending":
                    break
            except PayError as exc:  # recorded by check; the page keeps polling
                log.info("refreshing order %s with %s: %s", orderId, fullName, exc)
        return self.store.get(orderId)

    # -- notifications ------------------------------------------------------------------------------------------------
    def handle_notify_body(self, providerName: str, body: bytes, contentType: str | None = None) -> Response:
        """A notification as it arrived over HTTP: parsed safely by the provider, then handled like
        :meth:`handle_notify`. A body that cannot be parsed is recorded and refused."""
        providers = self.notify_providers(providerName)
        try:
            fields = providers[0].parse_notify_body(body, contentType)
        except NotifyInvalid as exc:
            self.store.audit("notify", "rejected", provider=providers[0].fullName, verified=False,
                             error_code=exc.code, message=exc.message, payload=body[:4096].decode("utf-8", "replace"))
            return self._reply(providers[0].notify_reply(False, exc.message))
        return self._reply(self.handle_notify(providerName, fields))

    def handle_notify(self, providerName: str, fields: Mapping[str, Any]) -> Any:
        """Verify a notification with the provider element it is addressed to, then apply it. Returns the provider's
        :class:`NotifyReply`. Forged, tampered or mismatched notifications change nothing and are recorded."""
        providers = self.notify_providers(providerName)
        fields = {str(k): v for k, v in fields.items()}
        order_id = fields.get("out_trade_no")
        order_id = order_id if isinstance(order_id, str) else None
        candidates = providers
        if order_id and ORDER_ID_RE.match(order_id):
            attempted = self.store.attempted_providers(order_id)
            preferred = [p for name in attempted for p in providers if p.fullName == name]
            candidates = preferred + [p for p in providers if p not in preferred]
        error: PayError | None = None
        for provider in candidates:
            try:
                state = provider.verify_notify(fields)
            except (SignatureInvalid, NotifyInvalid) as exc:
                error = error if isinstance(error, NotifyInvalid) else exc
                continue
            ok, message = self.apply_state(provider, state, kind="notify", payload=fields)
            return provider.notify_reply(ok, message)
        assert error is not None
        self.store.audit("notify", "rejected", provider=candidates[0].fullName, order_id=order_id,
                         verified=not isinstance(error, SignatureInvalid), error_code=error.code,
                         message=error.message, payload=fields)
        return candidates[0].notify_reply(False, error.message)

    def apply_state(self, provider: PayProvider, state: TradeState, *, kind: str,
                    payload: Any = None) -> tuple[bool, str]:
        """Apply what a provider says about a trade (from a verified notification or an active check). Returns
        ``(accepted, message)``: accepted means processed or already processed (the provider may stop retrying)."""
        raw = payload if payload is not None else dict(state.raw)
        order = self.store.get(state.orderId) if ORDER_ID_RE.match(state.orderId or "") else None
        audit = dict(provider=provider.fullName, order_id=state.orderId, verified=True, payload=raw)
        if order is None:
            self.store.audit(kind, "rejected", error_code=OrderNotExist.code,
                             message=f"no order {state.orderId}", **audit)
            return False, "order not found"
        if state.status == "success":
            if state.paidAmount is None or state.paidAmount != from_fen(order.amountFen):
                self.store.audit(kind, "rejected", error_code=AmountMismatch.code,
                                 message=f"paid {state.paidAmount}, order amount {from_fen(order.amountFen)}", **audit)
                return False, "amount mismatch"
            if self.store.transition(order.orderId, "success", provider=provider.fullName, tradeNo=state.tradeNo,
                                     payTime=as_utc(state.payTime) or utcnow(),
                                     record=self.store.audit_row(kind, "pending->success", **audit)):
                self._fire("jit_order_paid", order.orderId, order=self.query(order.orderId))
                self._settle_later(order.orderId)
                return True, "OK"
            order = self.store.get(order.orderId) or order
            if order.status in ("success", "refunded") and order.provider == provider.fullName \
                    and order.tradeNo == state.tradeNo:
                self.store.audit(kind, "unchanged", message="already processed", **audit)
                return True, "OK"
            # money arrived that the order did not expect: keep the record loudly, stop the retries
            problem = "DUPLICATE_PAYMENT" if order.status in ("success", "refunded") else "PAID_AFTER_CLOSE"
            message = (f"{provider.fullName} trade {state.tradeNo} paid order {order.orderId}, which is "
                       f"{order.status} (via {order.provider} {order.tradeNo}); refund it")
            log.warning("%s: %s", problem, message)
            self.store.audit(kind, "unchanged", error_code=problem, message=message, **audit)
            return True, "OK"
        if state.status in ("closed", "failed") and order.status == "pending":
            others = [p for p in self.store.attempted_providers(order.orderId) if p != provider.fullName]
            if others:
                self.store.audit(kind, "unchanged",
                                 message=f"{state.status} at {provider.fullName}, still payable via others", **audit)
                return True, "OK"
            if self.store.transition(order.orderId, state.status,
                                     record=self.store.audit_row(kind, f"pending->{state.status}", **audit)):
                if state.status == "closed":
                    self._fire("jit_order_closed", order.orderId, order=self.query(order.orderId))
                return True, "OK"
        self.store.audit(kind, "unchanged", message=f"provider says {state.status}, order is {order.status}",
                         **audit)
        return True, "OK"

    def notify_providers(self, providerName: str) -> list[PayProvider]:
        """The configured payment elements of one provider kind (``alipay``, ``wechat``), for notifications."""
        if self._notify_providers is None:
            found: dict[str, list[PayProvider]] = {}
            for name in self.app.elementNames():
                define = self.app.getDefine(name)
                if define.kind == "Meta" or not self.app.isA(name, PAY_META):
                    continue
                try:
                    element = self.app.loadElement(name)
                except ConfigError:
                    continue  # declared but not configured in this app
                if isinstance(element, PayProvider):
                    found.setdefault(element.providerName, []).append(element)
            self._notify_providers = found
        providers = self._notify_providers.get(providerName)
        if not providers:
            raise UnknownPayType(f"no {providerName} payment element is configured in this app")
        return providers

    # -- helpers ------------------------------------------------------------------------------------------------------
    def provider(self, fullName: str) -> PayProvider:
        """The payment element ``fullName`` (a configured Type such as ``pays.AliPayType``, or an app instance of
        one); anything else is UNKNOWN_PAY_TYPE."""
        try:
            define = self.app.getDefine(fullName)
        except ElementNotFound:
            raise UnknownPayType(f"{fullName!r} is not a payment element") from None
        if define.kind == "Meta" or not self.app.isA(fullName, PAY_META):
            raise UnknownPayType(f"{fullName!r} is not a payment element")
        element = self.app.loadElement(fullName)
        if not isinstance(element, PayProvider):
            raise UnknownPayType(f"{fullName!r} is not a payment element")
        return element

    def order_dict(self, order: PayOrder) -> dict[str, Any]:
        """The public view of an order."""
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
            "cashierUrl": self.cashier_url(order),
        }

    def refund_dict(self, refund: PayRefund) -> dict[str, Any]:
        """The public view of a refund."""
        return {"orderId": refund.orderId, "refundId": refund.refundId, "amount": from_fen(refund.amountFen),
                "status": refund.status, "refundNo": refund.refundNo}

    def cashier_url(self, order: PayOrder) -> str:
        """The buyer's cashier link for the order, with its unguessable token."""
        path = CASHIER_PATH.format(orderId=order.orderId) + f"?token={order.cashierToken}"
        return f"{self.app.baseUrl}{path}" if self.app.baseUrl else path

    def cashier_order(self, orderId: str, token: str) -> PayOrder | None:
        """The order if ``token`` is its cashier token (compared in constant time), else None."""
        try:
            check_order_id(orderId)
        except PayError:
            return None
        order = self.store.get(orderId)
        if order is None or not token or not hmac.compare_digest(order.cashierToken.encode(), token.encode()):
            return None
        return order

    @staticmethod
    def order_view(order: PayOrder) -> OrderView:
        """What providers may know of an order."""
        return OrderView(orderId=order.orderId, subject=order.subject, amount=from_fen(order.amountFen),
                         createdAt=as_utc(order.createdAt), tradeNo=order.tradeNo)  # type: ignore[arg-type]

    def _order(self, orderId: str) -> PayOrder:
        order = self.store.get(orderId)
        if order is None:
            raise OrderNotExist(f"no order {orderId}", details={"orderId": orderId})
        return order

    def _pending_order(self, orderId: str) -> PayOrder:
        order = self._order(orderId)
        self._require_pending(order)
        return order

    @staticmethod
    def _require_pending(order: PayOrder) -> None:
        if order.status in ("success", "refunded"):
            raise OrderPaid(f"order {order.orderId} is already paid")
        if order.status == "closed":
            raise OrderClosed(f"order {order.orderId} is closed")
        if order.status != "pending":
            raise OrderStateConflict(f"order {order.orderId} is {order.status}")

    def _reserve_refund(self, order: PayOrder, refund_id: str, fen: int, reason: str | None) -> PayRefund:
        existing = self.store.get_refund(order.orderId, refund_id)
        if existing is None:
            now = utcnow()
            refund = PayRefund(orderId=order.orderId, refundId=refund_id, amountFen=fen, status="pending",
                               provider=order.provider or "", reason=reason, createdAt=now, updatedAt=now)
            if self.store.reserve_refund(refund):
                return refund
            existing = self.store.get_refund(order.orderId, refund_id)
            if existing is None:
                left = self._order(order.orderId)
                raise RefundInvalid(f"refund of {from_fen(fen)} exceeds what is left to refund on order "
                                    f"{order.orderId} ({from_fen(left.amountFen - left.refundedFen)})")
        if existing.amountFen != fen:
            raise RefundInvalid(f"refundId {refund_id} was used for {from_fen(existing.amountFen)}")
        if existing.status == "failed" and not self.store.retry_refund(existing):
            raise RefundInvalid(f"refund of {from_fen(fen)} exceeds what is left to refund on order {order.orderId}")
        return existing

    def _settle_later(self, orderId: str) -> None:
        """In the background (the provider is waiting for our reply): tell every payment element the order was
        offered with that it is paid, so that nothing else of it stays payable (see ``PayProvider.settle``)."""
        thread = threading.Thread(target=self.settle, args=(orderId,), name=f"jitpay-settle-{orderId}", daemon=True)
        with self._settle_lock:
            self._settling = [t for t in self._settling if t.is_alive()] + [thread]
        thread.start()

    def settle(self, orderId: str) -> None:
        """Make the other trades of a paid order unpayable, provider by provider; each outcome is recorded."""
        order = self.store.get(orderId)
        if order is None or order.status not in ("success", "refunded"):
            return
        view = self.order_view(order)
        for fullName in self.store.attempted_providers(orderId):
            try:
                self.provider(fullName).settle(view, paidHere=fullName == order.provider)
            except Exception as exc:  # recorded; the payment stands whatever happens here
                code = getattr(exc, "code", type(exc).__name__)
                self.store.audit("settle", "provider-error", provider=fullName, order_id=orderId, error_code=code,
                                 message=str(exc)[:2000])
            else:
                self.store.audit("settle", "settled", provider=fullName, order_id=orderId)

    def wait_settled(self, timeout: float = 10.0) -> None:
        """Wait for background settling to finish (tests, shutdown)."""
        with self._settle_lock:
            threads = list(self._settling)
        for thread in threads:
            thread.join(timeout)

    def _fire(self, hook_name: str, order_id: str, **kwargs: Any) -> None:
        """Fire a payment event after the change is committed; a failing implementation is logged and recorded,
        never undoing the change."""
        for plugin_name, exc in self.app.fireEvent(hook_name, **kwargs):
            self.store.audit("event", "hook-failed", order_id=order_id, error_code=type(exc).__name__,
                             message=f"{hook_name} in {plugin_name}: {exc}"[:2000])

    @staticmethod
    def _reply(reply: Any) -> Response:
        return Response(reply.body, status_code=reply.status, media_type=reply.mediaType)


#: failure kinds after which a request may still have been carried out by the provider
UNKNOWN_OUTCOME_FAILURES = frozenset({"timeout", "connection", "http_status", "invalid_response", "signature_missing",
                                      "signature_invalid"})


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
