"""The money rule as a stateful property (Hypothesis ``RuleBasedStateMachine``), against the sandbox over real HTTP.

Random interleavings of: creating orders; ``getPayUrl`` with Alipay and both WeChat Pay trade types; the buyer
paying (or failing) any trade at any time, also after close, after another payment, after a refund, or every trade
of one order at once; notifications delivered, dropped, duplicated and reordered; ``check``; ``close``; refunds
(partial, full, repeated ids); WeChat Pay refunds that stay ``PROCESSING`` and end later ``SUCCESS``, ``CLOSED`` or
``ABNORMAL``; Alipay refunds that move no money when made (``fund_change: "N"``) and end later made or not made (then
sent again, and perhaps refused outright); a provider call that fails before it reaches the provider or whose answer
is lost after the provider acted (a timeout: getPayUrl, check, settling, a refund, a refund's state); trades made
by someone else for another amount than the order's (their notifications late, never lost), paid or not; job runs; and
a process restart. When a run ends, the providers end the refunds still on their way, the jobs are drained on a
clock hours ahead (the periodic sweep asks the providers about every trade that may have captured money, since
notifications may have been dropped; refunds on their way are asked about) and then, for every order:

- the money invariant, as :func:`tests.support.money.assert_money_invariant` checks it for the scenario tests: what
  the *sandbox* captured minus what it refunded, over all the order's trades, equals ``amount - refundedAmount`` if
  the order is paid (``success``/``refunded``) and 0 otherwise; every trade that captured money is in
  ``query(...)["payments"]`` (and every paid or refunded payment captured money); no refund is left open; the
  ledger's own ``money_check`` agrees;
- every published payment event reached the event-recording plugin at least once.

CI runs a fixed number of examples (``JITPAY_PROPERTY_EXAMPLES``, default 25 on SQLite and 10 on PostgreSQL);
``JITPAY_PROPERTY_EXAMPLES=300 make test PYTEST_ARGS=tests/elements/pays/properties`` is a longer run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, precondition, rule, run_state_machine_as_test
from sqlalchemy import text

import jitcore
from elements.pays.errors import PayError, ProviderError
from elements.pays.testing import prepare_elsewhere
from elements.pays.WechatPayType import mweb_out_trade_no
from jitpay_sandbox.registry import sandbox_of
from tests.support.live import LiveApp, start_live_app
from tests.support.money import assert_money_invariant, jobs_clock_ahead

PAYSVC = "pays.services.PaySvc"
ALIPAY, WECHAT = "pays.AliPayType", "pays.WechatPayType"
OFFERS = [(ALIPAY, "pc"), (WECHAT, "pc"), (WECHAT, "mobile")]
PLUGIN = "tests.elements.pays.properties.recorder"
#: what a declared function may refuse in a random interleaving (anything else fails the run)
EXPECTED_REFUSALS = {"ORDER_PAID", "ORDER_CLOSED", "ORDER_STATE_CONFLICT", "REFUND_INVALID", "PROVIDER_ERROR"}
#: which of the notifications at hand a rule takes (modulo their number: the draw never depends on how many there are)
PICK = st.integers(0, 63)


@dataclass
class World:
    """One live app (sandbox with notifications held, no background runner: the machine runs the jobs) shared by
    every example; ``app`` is the test's own App, replaced on restart, while the server keeps the one it serves."""

    live: LiveApp
    app: Any

    def sandbox(self, name: str) -> Any:
        return sandbox_of(self.live.app, name)


WORLD: World | None = None


class LedgerMachine(RuleBasedStateMachine):
    """Drives PaySvc and the sandbox's buyer at random; the invariant is checked once the run is drained."""

    orders = Bundle("orders")

    def __init__(self) -> None:
        super().__init__()
        assert WORLD is not None
        self.world = WORLD
        self.my_orders: list[str] = []
        self.trades: set[tuple[str, str]] = set()
        #: how a trade sorts: by provider, NATIVE/Alipay before H5, then by order id (time-ordered); not by reference,
        #: since the WeChat H5 references are digests of order ids that differ from run to run, and a replayed draw
        #: must pick the same trade again
        self.trade_keys: dict[tuple[str, str], tuple[str, bool, str]] = {}
        #: trades made by someone else (:meth:`trade_made_elsewhere`), for another amount than the order's
        self.elsewhere: set[tuple[str, str]] = set()
        self.pending: list[Any] = []    # notifications taken from the sandboxes, not delivered yet
        self.delivered: list[Any] = []
        self.world.sandbox("wechat").refunds_wait = True  # until a rule says otherwise
        alipay = self.world.sandbox("alipay")
        alipay.refunds_wait, alipay.refunds_refused = False, None
        self._no_more_faults()  # the app outlives an example: no fault planned in one fires in the next
        for name in ("alipay", "wechat"):  # nor does a notification made at the end of the last one arrive here
            self.world.sandbox(name).take_notifications()

    def _no_more_faults(self) -> None:
        """Forget the provider faults still planned (:meth:`provider_call_fails`)."""
        for fullName in (ALIPAY, WECHAT):
            for planned in self.world.app.loadElement(fullName).__dict__.get("_prop_faults", {}).values():
                planned.clear()

    @property
    def pay(self) -> Any:
        return self.world.app.getElement(PAYSVC)

    @property
    def svc(self) -> Any:
        return self.world.app.loadElement(PAYSVC)

    def _collect(self) -> None:
        for name in ("alipay", "wechat"):
            self.pending.extend(self.world.sandbox(name).take_notifications())

    def _refusal(self, exc: PayError) -> None:
        assert exc.code in EXPECTED_REFUSALS, exc

    # -- the merchant ---------------------------------------------------------------------------------------------
    @rule(target=orders, amount=st.sampled_from(["0.01", "1.00", "12.34"]))
    def create(self, amount: str) -> str:
        order_id = self.pay.create(subject="性质测试 Property", amount=amount)["orderId"]
        self.my_orders.append(order_id)
        return order_id

    @rule(order=orders, offer=st.sampled_from(OFFERS))
    def get_pay_url(self, order: str, offer: tuple[str, str]) -> None:
        fullName, payType = offer
        try:
            self.pay.getPayUrl(orderId=order, fullName=fullName, payType=payType)
        except PayError as exc:
            self._refusal(exc)
            return  # refused before any trade was made (nothing runs concurrently here)
        reference = mweb_out_trade_no(order) if payType == "mobile" else order
        trade = ("alipay" if fullName == ALIPAY else "wechat", reference)
        self.trades.add(trade)
        self.trade_keys[trade] = (trade[0], reference != order, order)

    @rule(order=orders, fullName=st.sampled_from([ALIPAY, WECHAT]))
    def check(self, order: str, fullName: str) -> None:
        try:
            self.pay.check(orderId=order, fullName=fullName)
        except PayError as exc:
            self._refusal(exc)

    @rule(order=orders)
    def close(self, order: str) -> None:
        try:
            assert self.pay.close(orderId=order)["status"] == "closed"
        except PayError as exc:
            self._refusal(exc)

    @rule(order=orders, how=st.sampled_from(["rest", "0.01", "half"]), key=st.sampled_from([None, "A", "B"]))
    def refund(self, order: str, how: str, key: str | None) -> None:
        status = self.pay.query(orderId=order)
        amount = None if how == "rest" else Decimal(how) if how == "0.01" else \
            max(Decimal("0.01"), (status["amount"] / 2).quantize(Decimal("0.01")))
        try:
            self.pay.refund(orderId=order, amount=amount, refundId=f"{key}{order[-8:]}" if key else None)
        except PayError as exc:
            self._refusal(exc)

    @rule(wait=st.booleans())
    def wechat_refunds_wait(self, wait: bool) -> None:
        """WeChat Pay's refunds from now on stay PROCESSING until it ends them (or succeed at once)."""
        self.world.sandbox("wechat").refunds_wait = wait

    @precondition(lambda self: self.world.sandbox("wechat").processing_refunds())
    @rule(pick=PICK, outcome=st.sampled_from(["SUCCESS", "CLOSED", "ABNORMAL"]))
    def wechat_ends_refund(self, pick: int, outcome: str) -> None:
        """WeChat Pay ends a refund on its way: refunded, closed (nothing refunded) or abnormal (an abnormal one may
        still succeed)."""
        waiting = self.world.sandbox("wechat").processing_refunds()
        self.world.sandbox("wechat").finish_refund(waiting[pick % len(waiting)], outcome)

    @rule(wait=st.booleans(), refused=st.booleans())
    def alipay_refunds_wait(self, wait: bool, refused: bool) -> None:
        """Alipay's refunds from now on move no money when made (``fund_change: "N"``) until Alipay ends them (or
        move it at once); with ``refused``, Alipay refuses new refunds outright (the seller's balance is short)."""
        alipay = self.world.sandbox("alipay")
        alipay.refunds_wait = wait
        alipay.refunds_refused = "ACQ.SELLER_BALANCE_NOT_ENOUGH" if refused else None

    @precondition(lambda self: self.world.sandbox("alipay").processing_refunds())
    @rule(pick=PICK, outcome=st.sampled_from(["SUCCESS", "FAILED"]))
    def alipay_ends_refund(self, pick: int, outcome: str) -> None:
        """Alipay ends a refund it took without moving money: made, or not made (sent again later by JitPay)."""
        waiting = self.world.sandbox("alipay").processing_refunds()
        out_trade_no, request_no = waiting[pick % len(waiting)]
        self.world.sandbox("alipay").finish_refund(request_no, outcome, out_trade_no=out_trade_no)

    @rule(target=orders, how=st.sampled_from(["rest", "half"]), outcome=st.sampled_from(["SUCCESS", "FAILED"]))
    def alipay_refund_takes_time(self, how: str, outcome: str) -> str:
        """A new order paid with Alipay is refunded while Alipay's refunds move no money when made, and Alipay ends
        that refund (so that every run meets them, not only when the dice line them up)."""
        alipay = self.world.sandbox("alipay")
        alipay.refunds_wait = True
        order = self._paid_new_order(ALIPAY, "alipay")
        self.refund(order, how, None)
        for out_trade_no, request_no in alipay.processing_refunds():
            if out_trade_no == order:
                alipay.finish_refund(request_no, outcome, out_trade_no=out_trade_no)
        return order

    @rule(target=orders, how=st.sampled_from(["rest", "half"]), outcome=st.sampled_from(["SUCCESS", "CLOSED",
                                                                                        "ABNORMAL"]))
    def wechat_refund_takes_time(self, how: str, outcome: str) -> str:
        """A new order paid with WeChat Pay is refunded while WeChat Pay's refunds take time, and WeChat Pay ends
        that refund (so that every run meets refunds on their way, not only when the dice line them up)."""
        wechat = self.world.sandbox("wechat")
        wechat.refunds_wait = True
        order = self._paid_new_order(WECHAT, "wechat")
        self.refund(order, how, None)
        for refund in self.pay.query(orderId=order)["refunds"]:
            if refund["status"] == "processing":
                wechat.finish_refund(refund["refundId"], outcome)
        return order

    def _paid_new_order(self, fullName: str, sandbox: str) -> str:
        """A new order paid through its QR code trade at ``fullName``, its notification delivered (the sandbox's
        other notifications stay pending); left unpaid if getPayUrl failed."""
        order = self.create("12.34")
        self.get_pay_url(order, (fullName, "pc"))
        if (sandbox, order) not in self.trades:  # getPayUrl failed (a provider fault): nothing to pay
            return order
        provider = self.world.sandbox(sandbox)
        provider.pay(order)
        for note in provider.take_notifications():
            if note.reference == order:
                assert note.deliver().status_code == 200
                self.delivered.append(note)
            else:
                self.pending.append(note)
        return order

    @rule(fullName=st.sampled_from([ALIPAY, WECHAT]),
          method=st.sampled_from(["prepare", "query_trades", "settle", "refund", "refund_state"]),
          after_call=st.booleans())
    def provider_call_fails(self, fullName: str, method: str, after_call: bool) -> None:
        """The next call of one method of a payment element times out: before the provider got it, or after the
        provider acted on it (the answer is lost). The app's own element, until a restart replaces it."""
        element = self.world.app.loadElement(fullName)
        faults = element.__dict__.setdefault("_prop_faults", {})
        if method not in faults:
            real = getattr(element, method)

            def failing(*args: Any, _method: str = method, _real: Any = real, **kwargs: Any) -> Any:
                pending = element.__dict__["_prop_faults"][_method]
                if not pending:
                    return _real(*args, **kwargs)
                lost = pending.pop(0)
                if lost:
                    _real(*args, **kwargs)
                raise ProviderError(f"{fullName}.{_method}: timed out (property machine)",
                                    details={"failure": "timeout", "method": _method})

            faults[method] = []
            setattr(element, method, failing)
        faults[method].append(after_call)

    @rule(target=orders, fullName=st.sampled_from([ALIPAY, WECHAT]), how=st.sampled_from(["rest", "half"]),
          after_call=st.booleans())
    def refund_answer_lost(self, fullName: str, how: str, after_call: bool) -> str:
        """A new order paid through ``fullName`` is refunded, and that refund call times out: before the provider
        got it, or after it refunded (so that every run meets refunds whose outcome is unknown)."""
        order = self._paid_new_order(fullName, "alipay" if fullName == ALIPAY else "wechat")
        self.provider_call_fails(fullName, "refund", after_call)
        self.refund(order, how, None)
        return order

    @rule()
    def run_jobs(self) -> None:
        self.world.app.jobs.run_until_idle()

    @rule()
    def restart(self) -> None:
        """The process dies (with whatever it had in flight) and comes back from its YAML."""
        self.world.app.close()
        self.world.app = jitcore.load_app(self.world.live.yaml_path)

    # -- the buyer --------------------------------------------------------------------------------------------------
    @precondition(lambda self: self.trades)
    @rule(data=st.data())
    def buyer_pays(self, data: st.DataObject) -> None:
        name, reference = data.draw(st.sampled_from(sorted(self.trades, key=self.trade_keys.__getitem__)))
        self.world.sandbox(name).pay(reference)  # False when the provider refuses (closed, expired, paid)
        self._collect()

    @rule(target=orders, offer=st.sampled_from(OFFERS))
    def pay_url_answer_lost(self, offer: tuple[str, str]) -> str:
        """A new order's getPayUrl times out after the provider made the trade (no link reached anyone: the
        buyer cannot pay it); asked again, it offers that same trade, and the buyer pays it."""
        order = self.create("12.34")
        self.provider_call_fails(offer[0], "prepare", True)
        self.get_pay_url(order, offer)
        self.get_pay_url(order, offer)
        name = "alipay" if offer[0] == ALIPAY else "wechat"
        reference = mweb_out_trade_no(order) if offer[1] == "mobile" else order
        if (name, reference) in self.trades:
            self.world.sandbox(name).pay(reference)
            self._collect()
        return order

    @rule(order=orders, offer=st.sampled_from(OFFERS), amount=st.sampled_from(["0.01", "12.33", "99.00"]),
          pay_now=st.booleans())
    def trade_made_elsewhere(self, order: str, offer: tuple[str, str], amount: str, pay_now: bool) -> None:
        """A trade of the order made for another amount by someone else with the merchant's keys (through the
        payment element, not PaySvc), which the buyer may pay: money captured that is not the order's amount.
        JitPay learns of such a trade from its notifications (which its provider sends until one is acknowledged:
        they are never dropped here) or from ``check``."""
        fullName, payType = offer
        svc = self.svc
        row = svc.ledger.order(order)
        if row is None or Decimal(amount) == svc.order_view(row).amount:
            return
        try:
            prepare_elsewhere(self.world.app, fullName, order, amount, payType)
        except PayError:
            return  # the provider refuses (its trade for the order exists with other terms, or is paid or closed)
        reference = mweb_out_trade_no(order) if payType == "mobile" else order
        trade = ("alipay" if fullName == ALIPAY else "wechat", reference)
        self.trades.add(trade)
        self.trade_keys[trade] = (trade[0], reference != order, order)
        self.elsewhere.add(trade)
        if pay_now:
            self.world.sandbox(trade[0]).pay(reference)
            self._collect()

    @precondition(lambda self: len(self.trades) > 1)
    @rule(data=st.data())
    def buyer_pays_every_trade(self, data: st.DataObject) -> None:
        """The buyer pays every trade of one order (its QR codes at both providers, WeChat's QR code and H5 link):
        the second payment is money the order does not need."""
        order = data.draw(st.sampled_from(sorted({key[2] for key in self.trade_keys.values()})))
        for name, reference in sorted(self.trades, key=self.trade_keys.__getitem__):
            if self.trade_keys[(name, reference)][2] == order:
                self.world.sandbox(name).pay(reference)
        self._collect()

    @precondition(lambda self: any(name == "wechat" for name, _ in self.trades))
    @rule(data=st.data())
    def buyer_fails(self, data: st.DataObject) -> None:
        reference = data.draw(st.sampled_from([ref for name, ref in sorted(self.trades, key=self.trade_keys.__getitem__)
                                               if name == "wechat"]))
        self.world.sandbox("wechat").fail(reference)
        self._collect()

    # -- the network ------------------------------------------------------------------------------------------------
    @precondition(lambda self: self.pending)
    @rule(pick=PICK)
    def deliver(self, pick: int) -> None:
        note = self.pending.pop(pick % len(self.pending))  # any order: reordered
        assert note.deliver().status_code == 200
        self.delivered.append(note)

    @precondition(lambda self: self.delivered)
    @rule(data=st.data())
    def deliver_again(self, data: st.DataObject) -> None:
        assert data.draw(st.sampled_from(self.delivered)).deliver().status_code == 200

    @precondition(lambda self: self.pending)
    @rule(pick=PICK)
    def drop(self, pick: int) -> None:
        note = self.pending.pop(pick % len(self.pending))
        if (note.provider, note.reference) in self.elsewhere:
            self.pending.append(note)  # retried by its provider until acknowledged: late, never lost

    # -- the end: drain, then the invariant -------------------------------------------------------------------------
    def teardown(self) -> None:
        app = self.world.app
        svc = self.svc
        self._no_more_faults()  # the providers answer again (a fault planned per drain would outlast the drains)
        wechat = self.world.sandbox("wechat")
        wechat.refunds_wait = False
        # WeChat Pay ends what is still on its way: every other one closed, the rest (and abnormal ones) refunded
        for n, refund in enumerate(wechat.processing_refunds()):
            if not (n % 2 == 0 and wechat.finish_refund(refund, "CLOSED")):
                wechat.finish_refund(refund, "SUCCESS")
        # Alipay too: every other one not made (JitPay sends it again, and Alipay now makes it), the rest made
        alipay = self.world.sandbox("alipay")
        alipay.refunds_wait, alipay.refunds_refused = False, None
        for n, (out_trade_no, request_no) in enumerate(alipay.processing_refunds()):
            alipay.finish_refund(request_no, "FAILED" if n % 2 == 0 else "SUCCESS", out_trade_no=out_trade_no)
        for note in wechat.take_notifications():  # the refund notifications of those just ended arrive
            assert note.deliver().status_code == 200
        self._collect()
        for note in self.pending:  # the providers retry the notifications of trades JitPay did not make
            if (note.provider, note.reference) in self.elsewhere:
                assert note.deliver().status_code == 200
        ahead = timedelta(0)
        for _ in range(3):  # nothing depends on a notification: the sweep finds what was dropped
            svc.sweep(min_age=timedelta(0), recheck=timedelta(0), limit=10_000)
            ahead += timedelta(hours=7)  # past every follow-up's delay (refunds on their way: up to 6 hours)
            with jobs_clock_ahead(ahead):
                app.jobs.run_until_idle()
        # the sweeps above drained the jobs; the invariant is asked of the app as it is now (after any restart)
        assert_money_invariant(self.world.live, *self.my_orders, drained=True, app=app)
        self._check_events()

    def _check_events(self) -> None:
        with self.world.app.engine.connect() as conn:
            jobs = conn.execute(text("SELECT state, payload FROM jit_job WHERE kind = 'jit.event'")).all()
            seen = {row[0] for row in conn.execute(text("SELECT event_id FROM prop_events"))}
        assert all(state == "done" for state, _ in jobs), [state for state, _ in jobs]
        published = {json.loads(payload)["eventId"] for _, payload in jobs}
        assert published <= seen


@pytest.fixture(params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    global WORLD
    database = None if request.param == "sqlite" else request.getfixturevalue("postgres_server").new_database()
    hold = {"notifyMode": "hold"}
    with start_live_app(tmp_path, run_jobs=False, database=database, plugins=[PLUGIN],
                        settings={"sandbox": {"alipay": hold, "wechat": hold}}) as live:
        with live.app.engine.begin() as conn:
            conn.execute(text("CREATE TABLE prop_events (event_id VARCHAR(32), name VARCHAR(32), "
                              "order_id VARCHAR(32))"))
        WORLD = World(live=live, app=live.app)
        try:
            yield WORLD
        finally:
            if WORLD.app is not live.app:
                WORLD.app.close()
            WORLD = None


#: every example is seconds of real HTTP: a long run (JITPAY_PROPERTY_EXAMPLES) gets a time limit to match
TIME_LIMIT = max(300, 10 * int(os.environ.get("JITPAY_PROPERTY_EXAMPLES", "25")))


@pytest.mark.timeout(TIME_LIMIT)
def test_no_captured_money_is_ever_stranded(world: World) -> None:
    postgres = "postgresql" in str(world.app.engine.url)
    examples = int(os.environ.get("JITPAY_PROPERTY_EXAMPLES", "10" if postgres else "25"))
    # fixed examples in CI (derandomized); JITPAY_PROPERTY_RANDOM=1 explores, JITPAY_PROPERTY_SHRINK=1 minimises a
    # failure (slow: every step is real HTTP)
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if os.environ.get("JITPAY_PROPERTY_SHRINK")
                                                              else [])
    run_state_machine_as_test(LedgerMachine, settings=settings(
        max_examples=examples, stateful_step_count=25, deadline=None, phases=phases,
        derandomize=not os.environ.get("JITPAY_PROPERTY_RANDOM"), suppress_health_check=list(HealthCheck),
        database=None))
