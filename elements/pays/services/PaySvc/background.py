"""PaySvc's background work, as durable jobs (:mod:`jitcore.jobs`): nothing here runs in a bare thread.

- ``pays.close_trades`` (orderId, provider): make the order's trades at one payment element unpayable. For a paid
  order that is ``PayProvider.settle`` (every trade but the accepted one), for a closed order ``PayProvider.close``.
  A trade that turns out to have been paid meanwhile is asked about and recorded (as a surplus, so it is refunded).
  WeChat Pay refuses to close a trade in its first five minutes: the job is then due again after them.
- ``pays.check_trades`` (orderId, provider): ask one payment element about the order's trades and apply the
  answers, when a notification said something PaySvc does not take at its word (money captured for another amount
  than the order's: the answer records it as a surplus, refunded).
- ``pays.refund`` (refund): send an open refund (reserved, sent or unknown) to its provider with its own id, which
  the providers refund once; used for surplus refunds, for refunds whose outcome was unknown, and to finish a refund
  whose caller died.
- ``pays.refund_state`` (refund): ask the provider where a refund it accepted without finishing (``processing``, or
  ``abnormal``) stands and record the answer; while it is not final, asked again at the pace of
  :func:`refund_question_delay` (5 minutes, then hourly, then every 6 hours).
- ``pays.sweep`` (every minute): ask the providers about trades that may have captured money without a
  notification reaching us (a bounded number per run and a bounded time, least recently checked first), expire
  trades whose order's payment window is over, close pending orders that can no longer be paid, restart refunds left
  open and ask again about accepted refunds whose follow-up stopped.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Row

from elements.pays.errors import PayError, ProviderError
from elements.pays.services.PaySvc.ledger import (ACCEPTED_REFUND, JOB_CHECK_TRADES, JOB_CLOSE_TRADES, JOB_REFUND,
                                                  JOB_REFUND_STATE, LIVE_PAYMENT, OPEN_REFUND, PAID_ORDER, Audit,
                                                  as_utc, utcnow)
from jitcore.jobs import JobKind, RetryLater

if TYPE_CHECKING:
    from elements.pays.services.PaySvc import PaySvc
    from jitcore.app import App
    from jitcore.jobs import Job

log = logging.getLogger("jitpay")

JOB_SWEEP = "pays.sweep"
PAYSVC = "pays.services.PaySvc"
#: WeChat Pay (and some others) refuse to close a trade this soon after creating it
CLOSE_MIN_AGE = timedelta(minutes=5, seconds=15)
#: how long after a refund with an unknown outcome it is sent again
REFUND_RETRY_SECONDS = 60.0

#: the sweep's pace: a trade is first asked about this long after it was prepared, then at most this often
SWEEP_MIN_AGE = timedelta(minutes=2)
SWEEP_RECHECK = timedelta(minutes=2)
#: at most this many trades per run (the job runs every SWEEP_EVERY seconds): a bounded rate of provider calls
SWEEP_LIMIT = 50
SWEEP_EVERY = 60.0
#: seconds a pass spends asking providers at most (50 trades at a provider that hangs until every call's timeout
#: would hold the pass, and the runner that runs it, for many minutes): the rest waits for the next
SWEEP_BUDGET_SECONDS = 120.0
#: a trade is expired (no longer asked about) this long after its order's payment window ended
EXPIRY_GRACE = timedelta(minutes=10)
#: an open refund untouched this long is sent again
STALE_REFUND = timedelta(minutes=10)
#: an accepted refund not asked about this long (longer than any pause between two questions) is asked again
STALE_ACCEPTED_REFUND = timedelta(hours=7)


def refund_question_delay(status: str, created_at: datetime | None, now: datetime) -> float:
    """Seconds until the provider is asked again about a refund it accepted without finishing: every 5 minutes in
    the refund's first hour, then hourly for a day, then every 6 hours; an ``abnormal`` one (it waits for the
    merchant's hand) every 6 hours."""
    age = now - (as_utc(created_at) or now)
    if status == "abnormal" or age >= timedelta(days=1):
        return 6 * 3600.0
    return 300.0 if age < timedelta(hours=1) else 3600.0


def job_kinds(app: "App", *, sweep: bool) -> dict[str, JobKind]:
    """The payment library's job kinds (registered by the official plugin's ``jit_job_handlers``); the periodic
    sweep only in apps that configure a payment element."""
    kinds = {
        JOB_CLOSE_TRADES: JobKind(handler=_close_trades_job, maxAttempts=30, backoffSeconds=30.0,
                                  maxBackoffSeconds=3600.0),
        JOB_CHECK_TRADES: JobKind(handler=_check_trades_job, maxAttempts=30, backoffSeconds=30.0,
                                  maxBackoffSeconds=3600.0),
        JOB_REFUND: JobKind(handler=_refund_job, maxAttempts=40, backoffSeconds=30.0, maxBackoffSeconds=6 * 3600.0),
        # about a year of questions at the slowest pace; the sweep starts a new one should it end dead
        JOB_REFUND_STATE: JobKind(handler=_refund_state_job, maxAttempts=1500, backoffSeconds=300.0,
                                  maxBackoffSeconds=6 * 3600.0),
    }
    if sweep:
        kinds[JOB_SWEEP] = JobKind(handler=_sweep_job, maxAttempts=3, backoffSeconds=30.0, every=SWEEP_EVERY)
    return kinds


def _service(app: "App") -> "PaySvc":
    return app.loadElement(PAYSVC)  # type: ignore[return-value]


# -- asking about trades ----------------------------------------------------------------------------------------------
def _check_trades_job(app: "App", payload: dict[str, Any], job: "Job") -> None:
    svc = _service(app)
    order = svc.ledger.order(payload["orderId"])
    if order is not None:  # a provider error is recorded and raised: asked again later
        svc.apply_trades(svc.provider(payload["provider"]), order, kind="check")


# -- closing trades ---------------------------------------------------------------------------------------------------
def _close_trades_job(app: "App", payload: dict[str, Any], job: "Job") -> None:
    close_trades(_service(app), payload["orderId"], payload["provider"])


def close_trades(svc: "PaySvc", order_id: str, fullName: str) -> None:
    """Make the order's trades at ``fullName`` unpayable (see the module docstring). Raises to be retried."""
    ledger = svc.ledger
    order = ledger.order(order_id)
    if order is None or order.status == "pending":
        return
    provider = svc.provider(fullName)
    view = svc.order_view(order)
    paid_here = order.status in PAID_ORDER and order.provider == fullName
    audit = Audit("settle" if order.status in PAID_ORDER else "close", provider=fullName)
    try:
        if order.status in PAID_ORDER:
            provider.settle(view, paidHere=paid_here)
        else:
            provider.close(view)
    except ProviderError as exc:
        ledger.audit(audit.kind, "provider-error", provider=fullName, order_id=order_id, error_code=exc.code,
                     message=exc.message, payload={"providerCode": exc.provider_code, **(exc.details or {})})
        # a trade that cannot be closed may have been paid: ask, and record what it captured
        states: list[Any] = []
        try:
            states = svc.apply_trades(provider, order, kind=audit.kind)
        except PayError as query_error:
            log.info("asking %s about order %s after a failed close: %s", fullName, order_id, query_error)
        # a trade the provider now reports closed captures nothing more: without this, a paid trade beside a closed
        # one would fail the job forever
        closed_now = {s.reference or s.orderId for s in states if s.status == "closed"}
        live = [p for p in _live_payments(svc, order_id, fullName) if p.reference not in closed_now]
        if not live:
            return  # nothing at this provider can capture money any more
        youngest = max((as_utc(p.createdAt) for p in live), default=None)
        if youngest is not None and utcnow() - youngest < CLOSE_MIN_AGE:
            raise RetryLater(f"{fullName} would not close yet: {exc.message}", at=youngest + CLOSE_MIN_AGE) from exc
        raise
    ledger.audit(audit.kind, "closed" if audit.kind == "close" else "settled", provider=fullName,
                 order_id=order_id)
    if paid_here and any(p.status == "prepared" for p in _live_payments(svc, order_id, fullName)):
        # settling where the payment was taken lets a paid trade be (WeChat Pay's closeorder answers ORDERPAID for the
        # accepted trade, and just the same for its other trade type if the buyer paid that too): ask, so that a
        # second payment is recorded as a surplus instead of being marked closed below (raises to be retried)
        svc.apply_trades(provider, order, kind=audit.kind)
    for payment in _live_payments(svc, order_id, fullName):
        if payment.status in ("prepared", "failed"):
            ledger.apply_unpaid(order_id, provider=fullName, providerName=payment.providerName,
                                reference=payment.reference, status="closed", audit=Audit(audit.kind,
                                                                                          provider=fullName))


def _live_payments(svc: "PaySvc", order_id: str, fullName: str) -> list[Row]:
    return [p for p in svc.ledger.payments(order_id) if p.provider == fullName and p.status in LIVE_PAYMENT]


# -- refunds ----------------------------------------------------------------------------------------------------------
def _refund_job(app: "App", payload: dict[str, Any], job: "Job") -> None:
    svc = _service(app)
    refund = svc.ledger.refund(int(payload["refund"]))
    if refund is None or refund.status not in OPEN_REFUND:
        return
    try:
        svc.send_refund(refund, unattended=True)
    except ProviderError as exc:
        after = svc.ledger.refund(refund.id)
        if after is not None and after.status in OPEN_REFUND:
            raise RetryLater(f"refund {refund.refundId}: {exc.message}", delay=REFUND_RETRY_SECONDS) from exc
        log.error("refund %s of order %s was refused by %s: %s", refund.refundId, refund.orderId, refund.provider,
                  exc.message)
    except PayError as exc:
        log.error("refund %s of order %s failed: %s", refund.refundId, refund.orderId, exc.message)


def _refund_state_job(app: "App", payload: dict[str, Any], job: "Job") -> None:
    svc = _service(app)
    refund = svc.ledger.refund(int(payload["refund"]))
    if refund is None or refund.status not in ACCEPTED_REFUND:
        return
    try:
        after = svc.follow_refund(refund)
    except ProviderError as exc:
        raise RetryLater(f"refund {refund.refundId}: {exc.message}") from exc  # the kind's backoff
    if after.status in ACCEPTED_REFUND:
        raise RetryLater(f"refund {refund.refundId} is {after.status}",
                         delay=refund_question_delay(after.status, after.createdAt, utcnow()))


# -- the sweep --------------------------------------------------------------------------------------------------------
def _sweep_job(app: "App", payload: dict[str, Any], job: "Job") -> None:
    sweep(_service(app))


def sweep(svc: "PaySvc", *, min_age: timedelta = SWEEP_MIN_AGE, recheck: timedelta = SWEEP_RECHECK,
          limit: int = SWEEP_LIMIT, grace: timedelta = EXPIRY_GRACE, budget: float = SWEEP_BUDGET_SECONDS) -> int:
    """One pass over trades that may have captured money unseen (see the module docstring). Returns how many trades
    were asked about. Provider errors are recorded; the next pass asks again. Once ``budget`` seconds have gone into
    asking, the trades left wait for the next pass (least recently checked first, they come first then)."""
    ledger = svc.ledger
    ledger.flush_rejections()  # rejected notifications counted, not stored, in a window that has ended
    now = utcnow()
    deadline = time.monotonic() + budget
    candidates = ledger.sweep_candidates(checked_before=now - recheck, created_before=now - min_age, limit=limit)
    groups: dict[tuple[str, str], list[Row]] = {}
    for payment in candidates:
        groups.setdefault((payment.orderId, payment.provider), []).append(payment)
    asked = 0
    for (order_id, fullName), payments in groups.items():
        if time.monotonic() >= deadline:
            log.warning("sweep: %d trades left for the next pass (the providers answered slowly)",
                        len(candidates) - asked)
            break
        asked += len(payments)
        order = ledger.order(order_id)
        if order is None:
            continue
        try:
            provider = svc.provider(fullName)
            svc.apply_trades(provider, order, kind="sweep")
        except PayError as exc:
            ledger.audit("sweep", "provider-error", provider=fullName, order_id=order_id, error_code=exc.code,
                         message=exc.message)
            ledger.mark_checked(p.id for p in payments)
            continue
        ledger.mark_checked(p.id for p in payments)
        window_end = as_utc(order.expiresAt)
        if window_end is not None and window_end + grace < now:
            for payment in _live_payments(svc, order_id, fullName):
                ledger.expire_payment(payment.id, Audit("sweep", provider=fullName))
    for order in ledger.expired_pending_orders(now - grace, limit):
        ledger.close_order(order.orderId, Audit("sweep", message="the payment window ended with nothing paid"),
                           outcome="pending->closed (expired)")
    stale = ledger.stale_refunds(now - STALE_REFUND, limit)
    stale += ledger.stale_refunds(now - STALE_ACCEPTED_REFUND, limit, statuses=ACCEPTED_REFUND)
    if stale:
        with svc.app.engine.begin() as conn:
            for refund in stale:
                if refund.status in ACCEPTED_REFUND:
                    svc.app.jobs.enqueue(conn, JOB_REFUND_STATE, {"refund": refund.id},
                                         dedupeKey=f"refund-state:{refund.id}")
                else:
                    svc.app.jobs.enqueue(conn, JOB_REFUND, {"refund": refund.id}, dedupeKey=f"refund:{refund.id}")
        svc.app.jobs.wake()
    return asked
