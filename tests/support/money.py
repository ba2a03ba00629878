"""Money integrity against the sandbox: the invariant every order keeps once the jobs are drained, and what the tests
need to drive it (an app plugin recording payment events, held notifications, draining the jobs, provider faults).

The invariant (issue 10): for every order, what the *sandboxes* say was captured minus what they refunded, summed over
all of the order's trades at both providers, equals ``amount - refundedAmount`` if the order is ``success`` or
``refunded`` and zero otherwise; every trade that captured money is one of ``query(...)["payments"]`` with its trade
number and reference (its ``out_trade_no``), and every paid or refunded payment is such a trade; no refund is left
open; and ``PaySvc.money_check`` agrees. Scenario tests and the property test
(``tests/elements/pays/properties/test_ledger_machine.py``) check it with :func:`assert_money_invariant`.

This module is also an app plugin (``plugins: [tests.support.money]``, as :func:`money_app` configures): it records
every payment event it is given in :data:`EVENTS`.
"""

from __future__ import annotations

import contextlib
import threading
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from jitcore import hookimpl
from jitpay_sandbox import sandbox_of
from jitpay_sandbox.held import HeldNotification

from tests.support.live import LiveApp, start_live_app

PLUGIN = "tests.support.money"
ALIPAY = "pays.AliPayType"
WECHAT = "pays.WechatPayType"
PAYSVC = "pays.services.PaySvc"
PAID_ORDER = ("success", "refunded")
ZERO = Decimal("0.00")
#: how far ahead of the wall clock :func:`drain` runs the jobs: past every delay PaySvc gives a job (a refund's
#: follow-up after 60 s, WeChat Pay's five minutes before a trade can be closed)
DRAIN_AHEAD = timedelta(minutes=15)


# -- the event recorder (this module as an app plugin) -----------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One delivery of a payment event to this plugin."""

    name: str
    orderId: str
    eventId: str
    attempt: int
    order: dict[str, Any]
    payment: dict[str, Any] | None = None
    refund: dict[str, Any] | None = None


EVENTS: list[Event] = []
_events_lock = threading.Lock()


def _record(name: str, order: dict[str, Any], event: dict[str, Any], **extra: Any) -> None:
    with _events_lock:
        EVENTS.append(Event(name, order["orderId"], event["id"], event["attempt"], order, **extra))


@hookimpl
def jit_order_created(app: Any, order: dict[str, Any], event: dict[str, Any]) -> None:
    _record("created", order, event)


@hookimpl
def jit_order_paid(app: Any, order: dict[str, Any], event: dict[str, Any]) -> None:
    _record("paid", order, event)


@hookimpl
def jit_order_closed(app: Any, order: dict[str, Any], event: dict[str, Any]) -> None:
    _record("closed", order, event)


@hookimpl
def jit_order_refunded(app: Any, order: dict[str, Any], refund: dict[str, Any], event: dict[str, Any]) -> None:
    _record("refunded", order, event, refund=refund)


@hookimpl
def jit_payment_surplus(app: Any, order: dict[str, Any], payment: dict[str, Any], event: dict[str, Any]) -> None:
    _record("surplus", order, event, payment=payment)


@hookimpl
def jit_surplus_refunded(app: Any, order: dict[str, Any], payment: dict[str, Any], refund: dict[str, Any],
                         event: dict[str, Any]) -> None:
    _record("surplus-refunded", order, event, payment=payment, refund=refund)


@hookimpl
def jit_refund_failed(app: Any, order: dict[str, Any], refund: dict[str, Any], event: dict[str, Any]) -> None:
    _record("refund-failed", order, event, refund=refund)


def events(order_id: str) -> list[Event]:
    """The events delivered about one order, in delivery order."""
    with _events_lock:
        return [e for e in EVENTS if e.orderId == order_id]


def event_names(order_id: str) -> list[str]:
    """Their names, once per event (redeliveries of one event id counted once)."""
    seen: set[str] = set()
    names = []
    for event in events(order_id):
        if event.eventId not in seen:
            seen.add(event.eventId)
            names.append(event.name)
    return names


# -- the app ----------------------------------------------------------------------------------------------------------
HOLD = {"sandbox": {"alipay": {"notifyMode": "hold"}, "wechat": {"notifyMode": "hold"}}}


@contextlib.contextmanager
def money_app(directory: Path, database: str | None = None, **options: Any) -> Iterator[LiveApp]:
    """A live sandbox app for money tests: both sandboxes hold their notifications (the test delivers them), no
    background job runner (the test drains the jobs), this module's event recorder plugged in."""
    with start_live_app(directory, run_jobs=False, database=database, plugins=[PLUGIN],
                        settings=options.pop("settings", HOLD), **options) as live:
        yield live


def paysvc(live: LiveApp) -> Any:
    """The PaySvc object itself (``sweep``, ``money_check``, ``ledger``)."""
    return live.app.loadElement(PAYSVC)


def alipay(live: LiveApp) -> Any:
    """The Alipay sandbox serving the app."""
    return sandbox_of(live.app, "alipay")


def wechat(live: LiveApp) -> Any:
    """The WeChat Pay sandbox serving the app."""
    return sandbox_of(live.app, "wechat")


# -- notifications ----------------------------------------------------------------------------------------------------
def acknowledged(notification: HeldNotification, response: httpx.Response) -> bool:
    """Whether the app's answer to a notification stops the provider's retries."""
    if response.status_code != 200:
        return False
    if notification.provider == "alipay":
        return response.content == b"success"
    return ElementTree.fromstring(response.content).findtext("return_code") == "SUCCESS"


def deliver(*notifications: HeldNotification) -> None:
    """Post each notification once, in the order given; each must be acknowledged."""
    for notification in notifications:
        response = notification.deliver()
        assert acknowledged(notification, response), (notification.provider, notification.event, response.text)


def take_notifications(live: LiveApp) -> list[HeldNotification]:
    """Every notification both sandboxes hold (Alipay's first), removing them."""
    return alipay(live).take_notifications() + wechat(live).take_notifications()


# -- jobs -------------------------------------------------------------------------------------------------------------
def paid_through(live: LiveApp, fullName: str, *, subject: str, amount: str = "20.00") -> tuple[str, HeldNotification]:
    """A new order paid through ``fullName``'s QR code trade (``pc``) in the sandbox, its notification delivered:
    the order id and that notification."""
    pay = live.pay_service
    order_id = pay.create(subject=subject, amount=amount)["orderId"]
    pay.getPayUrl(orderId=order_id, fullName=fullName, payType="pc")
    assert (alipay(live) if fullName == ALIPAY else wechat(live)).pay(order_id)
    notifications = take_notifications(live)
    deliver(*notifications)
    assert pay.query(orderId=order_id)["status"] == "success"
    [notification] = [n for n in notifications if n.reference == order_id]
    return order_id, notification


@contextlib.contextmanager
def jobs_clock_ahead(delta: timedelta) -> Iterator[None]:
    """The job queue's clock runs ``delta`` ahead of the wall clock (jobs due within ``delta`` are due now)."""
    import jitcore.jobs as jobs

    real = jobs.utcnow
    jobs.utcnow = lambda: real() + delta
    try:
        yield
    finally:
        jobs.utcnow = real


def drain(live: LiveApp, ahead: timedelta = DRAIN_AHEAD) -> Any:
    """Run every job due within ``ahead`` (follow-ups of refunds, retries) in this thread until none is left; no
    job may end dead. Returns the run's summary."""
    with jobs_clock_ahead(ahead):
        summary = live.app.jobs.run_until_idle(timeout=60)
    dead = [(j["id"], j["kind"], j["lastError"]) for j in live.app.jobs.list(states=["dead"])]
    assert not dead, dead
    return summary


def pending_jobs(live: LiveApp, kind: str) -> list[dict[str, Any]]:
    """Jobs of ``kind`` not finished yet."""
    return [j for j in live.app.jobs.list(states=["due", "running"], limit=1000) if j["kind"] == kind]


# -- the sandboxes' books ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SandboxTrade:
    """One trade as a sandbox books it: the payment element that made it, its ``out_trade_no``, the provider's trade
    number once paid, and the yuan captured and refunded."""

    fullName: str
    reference: str
    tradeNo: str | None
    captured: Decimal
    refunded: Decimal


def sandbox_trades(live: LiveApp, order_id: str) -> list[SandboxTrade]:
    """Every trade of the order at both sandboxes (Alipay: the order id; WeChat Pay: NATIVE and MWEB)."""
    from elements.pays.WechatPayType import mweb_out_trade_no

    trades = []
    ali = alipay(live)
    if order_id in ali.references():
        captured = ali.captured(order_id)
        trades.append(SandboxTrade(ALIPAY, order_id, ali.trade(order_id).trade_no if captured else None, captured,
                                   ali.refunded(order_id)))
    wx = wechat(live)
    known = set(wx.references())
    for reference in (order_id, mweb_out_trade_no(order_id)):
        if reference in known:
            trade = wx.trade(reference)
            trades.append(SandboxTrade(WECHAT, reference, trade["transaction_id"] or None, wx.captured(reference),
                                       wx.refunded(reference)))
    return trades


def net_captured(live: LiveApp, order_id: str) -> Decimal:
    """Captured minus refunded over all of the order's trades, as the sandboxes book it."""
    return sum((t.captured - t.refunded for t in sandbox_trades(live, order_id)), ZERO)


# -- the invariant ----------------------------------------------------------------------------------------------------
def assert_money_invariant(live: LiveApp, *order_ids: str, drained: bool = False,
                           app: Any = None) -> dict[str, dict[str, Any]]:
    """Drain the jobs (unless ``drained``), then check the invariant for each order (see the module docstring).
    ``app``: the App whose PaySvc is asked (default ``live.app``; e.g. the one loaded again after a simulated
    restart, while the sandboxes stay those serving ``live.app``). Returns each order's ``query``."""
    from elements.pays.money import to_fen

    if not drained:
        drain(live)
    app = live.app if app is None else app
    pay, svc = app.getElement(PAYSVC), app.loadElement(PAYSVC)
    queries = {}
    for order_id in order_ids:
        order = pay.query(orderId=order_id)
        queries[order_id] = order
        trades = sandbox_trades(live, order_id)
        net = sum((t.captured - t.refunded for t in trades), ZERO)
        paid = order["status"] in PAID_ORDER
        expected = order["amount"] - order["refundedAmount"] if paid else ZERO
        assert net == expected, (f"order {order_id} ({order['status']}): the providers hold {net} net, the order "
                                 f"says {expected}", trades, order)

        payments = {(p["fullName"], p["tradeNo"]): p for p in order["payments"] if p["tradeNo"]}
        captured = [t for t in trades if t.captured]
        for trade in captured:
            payment = payments.get((trade.fullName, trade.tradeNo))
            assert payment is not None, (f"order {order_id}: {trade.fullName} trade {trade.tradeNo} captured "
                                         f"{trade.captured} and is not among its payments", order["payments"])
            assert payment["reference"] == trade.reference, (payment, trade)
            assert payment["status"] in ("paid", "refunded") and payment["amount"] == trade.captured, payment
            assert payment["refundedAmount"] == trade.refunded, (payment, trade)
        booked = {(t.fullName, t.tradeNo, t.reference) for t in captured}
        for payment in order["payments"]:
            if payment["status"] in ("paid", "refunded"):
                assert (payment["fullName"], payment["tradeNo"], payment["reference"]) in booked, (
                    f"order {order_id}: payment recorded but not captured", payment)
        accepted = [p for p in order["payments"] if p["accepted"]]
        if paid:
            assert len(accepted) == 1 and accepted[0]["tradeNo"] == order["tradeNo"], order["payments"]
            assert accepted[0]["fullName"] == order["provider"]
        else:
            assert accepted == [], order["payments"]
        open_refunds = [r for r in order["refunds"] if r["status"] not in ("confirmed", "refused")]
        assert not open_refunds, (f"order {order_id}: refunds still open after the jobs were drained", open_refunds)
        assert svc.money_check(order_id) == (to_fen(net), to_fen(expected)), svc.money_check(order_id)
    return queries


# -- faults -----------------------------------------------------------------------------------------------------------
class ProviderFaults:
    """Makes the next calls of one method of a payment element fail, either before the provider is called or after
    the real call went through (the provider did it, the caller never hears). Install with pytest's monkeypatch::

        faults = ProviderFaults(live, ALIPAY, "refund", monkeypatch)
        faults.fail_next(RuntimeError("connection reset"), after_call=True)
    """

    def __init__(self, live: LiveApp, fullName: str, method: str, monkeypatch: Any) -> None:
        self.element = live.app.loadElement(fullName)
        self.real: Callable[..., Any] = getattr(self.element, method)
        self.plan: list[tuple[BaseException, bool]] = []
        self.calls = 0
        monkeypatch.setattr(self.element, method, self._call)

    def fail_next(self, exc: BaseException, *, after_call: bool) -> None:
        self.plan.append((exc, after_call))

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if not self.plan:
            return self.real(*args, **kwargs)
        exc, after_call = self.plan.pop(0)
        if after_call:
            self.real(*args, **kwargs)
        raise exc
