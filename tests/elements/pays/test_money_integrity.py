"""Issue 10, acceptance: no captured money is ever stranded. One test per scenario of the issue's "Why", against the
sandbox over real HTTP, each on SQLite and on PostgreSQL (a live app per test). The sandboxes hold their
notifications and the tests deliver them; the tests run the jobs themselves. Every test ends with the invariant
(:func:`tests.support.money.assert_money_invariant`): what the sandboxes captured minus what they refunded, over all
of an order's trades, is ``amount - refundedAmount`` for a paid order and zero otherwise, every captured trade is
among the order's payments, and ``PaySvc.money_check`` agrees."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest

import jitcore
from elements.pays.errors import OrderClosed, PayError, ProviderError, RefundInvalid
from elements.pays.WechatPayType import mweb_out_trade_no
from elements.pays.testing import prepare_elsewhere
from tests.support.live import LiveApp, pay_in_wallet
from tests.support.money import (ALIPAY, HOLD, WECHAT, ProviderFaults, acknowledged, alipay, assert_money_invariant,
                                 deliver, drain, event_names, events, money_app, net_captured, paysvc, pending_jobs,
                                 take_notifications, wechat)


@pytest.fixture
def live(tmp_path: Path, database: str | None) -> Iterator[LiveApp]:
    with money_app(tmp_path, database) as app:
        yield app


def payment_of(order: dict[str, Any], fullName: str, reference: str) -> dict[str, Any]:
    """The order's payment for one trade."""
    found = [p for p in order["payments"] if p["fullName"] == fullName and p["reference"] == reference]
    assert len(found) == 1, order["payments"]
    return found[0]


def assert_surplus_refunded(live: LiveApp, order: dict[str, Any], fullName: str, reference: str) -> None:
    """The trade's payment is a surplus: recorded with its trade number, announced, refunded in full through its own
    provider (the sandbox agrees), and the refund is in ``query`` and the audit log."""
    order_id = order["orderId"]
    sandbox = alipay(live) if fullName == ALIPAY else wechat(live)
    payment = payment_of(order, fullName, reference)
    assert payment["role"] == "surplus" and not payment["accepted"]
    assert payment["status"] == "refunded" and payment["refundedAmount"] == order["amount"]
    assert payment["tradeNo"] and sandbox.captured(reference) == sandbox.refunded(reference) == order["amount"]
    refunds = [r for r in order["refunds"] if r["paymentId"] == payment["paymentId"]]
    assert [(r["kind"], r["status"], r["amount"]) for r in refunds] == [("surplus", "confirmed", order["amount"])]
    announced = [e for e in events(order_id) if e.name == "surplus"]
    assert payment["paymentId"] in {e.payment["paymentId"] for e in announced}
    returned = [e for e in events(order_id) if e.name == "surplus-refunded"]
    assert payment["paymentId"] in {e.payment["paymentId"] for e in returned}
    audit = paysvc(live).ledger.audit_log(order_id)
    assert any(a.outcome == "surplus" and a.errorCode == "SURPLUS_PAYMENT" for a in audit)
    assert any(a.kind == "refund" and a.outcome == "refunded" for a in audit)


# -- 1. closed, then paid ----------------------------------------------------------------------------------------------
def test_closed_then_paid_is_a_refunded_surplus(live: LiveApp) -> None:
    pay = live.pay_service
    order = pay.create(subject="Closed, then paid", amount="12.34")
    order_id = order["orderId"]
    qr = pay.getPayUrl(orderId=order_id, fullName=ALIPAY, payType="pc")
    assert pay.close(orderId=order_id)["status"] == "closed"
    drain(live)
    # Alipay cannot close a QR code nobody scanned: the old one still takes the buyer's money
    pay_in_wallet(qr["payUrl"])
    assert alipay(live).captured(order_id) == Decimal("12.34")
    [paid] = take_notifications(live)
    deliver(paid)  # acknowledged: the money is recorded, not refused

    recorded = pay.query(orderId=order_id)
    assert recorded["status"] == "closed" and recorded["refundedAmount"] == 0
    surplus = payment_of(recorded, ALIPAY, order_id)
    assert (surplus["status"], surplus["role"]) == ("paid", "surplus")
    assert surplus["tradeNo"] == alipay(live).trade(order_id).trade_no
    assert [e.payment["paymentId"] for e in events(order_id) if e.name == "surplus"] == [surplus["paymentId"]]
    assert [(r["kind"], r["status"]) for r in recorded["refunds"]] == [("surplus", "reserved")]
    assert pending_jobs(live, "pays.refund")  # a job gives the money back

    queries = assert_money_invariant(live, order_id)
    final = queries[order_id]
    assert final["status"] == "closed" and final["refundedAmount"] == 0 and final["tradeNo"] is None
    assert_surplus_refunded(live, final, ALIPAY, order_id)
    assert event_names(order_id) == ["created", "closed", "surplus", "surplus-refunded"]
    with pytest.raises(PayError) as refused:  # the order itself was never paid
        pay.refund(orderId=order_id)
    assert refused.value.code == "ORDER_STATE_CONFLICT"


# -- 2. paid twice -----------------------------------------------------------------------------------------------------
def paid_twice(live: LiveApp, subject: str) -> str:
    """A new order of 20.00 offered with Alipay and WeChat Pay; WeChat Pay paid first, then the Alipay QR code too
    (the notifications delivered, the jobs between them drained): its id."""
    pay = live.pay_service
    order_id = pay.create(subject=subject, amount="20.00")["orderId"]
    ali_qr = pay.getPayUrl(orderId=order_id, fullName=ALIPAY, payType="pc")
    wx_qr = pay.getPayUrl(orderId=order_id, fullName=WECHAT, payType="pc")
    pay_in_wallet(wx_qr["payUrl"])
    deliver(*take_notifications(live))
    drain(live)  # settling: closes the WeChat trade, and at Alipay nothing (the QR code was never scanned)
    pay_in_wallet(ali_qr["payUrl"])
    deliver(*take_notifications(live))
    return order_id


def test_paid_twice_keeps_the_first_and_refunds_the_second(live: LiveApp) -> None:
    pay = live.pay_service
    order_id = paid_twice(live, "Paid twice")

    # WeChat Pay NATIVE and MWEB both paid: two trades of one provider
    both_id = pay.create(subject="Paid twice at WeChat Pay", amount="8.88")["orderId"]
    pc = pay.getPayUrl(orderId=both_id, fullName=WECHAT, payType="pc")
    mobile = pay.getPayUrl(orderId=both_id, fullName=WECHAT, payType="mobile")
    pay_in_wallet(mobile["payUrl"])
    pay_in_wallet(pc["payUrl"])
    deliver(*take_notifications(live))

    queries = assert_money_invariant(live, order_id, both_id)
    first = queries[order_id]
    assert (first["status"], first["provider"], first["refundedAmount"]) == ("success", WECHAT, 0)
    assert first["tradeNo"] == wechat(live).trade(order_id)["transaction_id"]
    assert payment_of(first, WECHAT, order_id)["accepted"]
    assert_surplus_refunded(live, first, ALIPAY, order_id)
    assert wechat(live).refunded(order_id) == 0
    assert event_names(order_id) == ["created", "paid", "surplus", "surplus-refunded"]

    second = queries[both_id]
    mweb = mweb_out_trade_no(both_id)
    assert second["status"] == "success" and second["tradeNo"] == wechat(live).trade(mweb)["transaction_id"]
    assert payment_of(second, WECHAT, mweb)["accepted"]
    assert_surplus_refunded(live, second, WECHAT, both_id)  # the NATIVE one, by its own transaction id
    assert wechat(live).refunded(mweb) == 0


# -- 3. failed, then paid ----------------------------------------------------------------------------------------------
def test_a_failed_payment_fails_that_payment_not_the_order(live: LiveApp) -> None:
    pay = live.pay_service
    order_id = pay.create(subject="Failed, then paid", amount="5.60")["orderId"]
    pay.getPayUrl(orderId=order_id, fullName=WECHAT, payType="pc")
    mobile = pay.getPayUrl(orderId=order_id, fullName=WECHAT, payType="mobile")
    mweb = mweb_out_trade_no(order_id)
    assert wechat(live).fail(order_id) is True
    deliver(*take_notifications(live))

    failed = pay.query(orderId=order_id)
    assert failed["status"] == "pending"
    assert payment_of(failed, WECHAT, order_id)["status"] == "failed"
    assert payment_of(failed, WECHAT, mweb)["status"] == "prepared"
    assert_money_invariant(live, order_id)  # nothing captured, nothing owed

    pay_in_wallet(mobile["payUrl"])
    deliver(*take_notifications(live))
    paid = assert_money_invariant(live, order_id)[order_id]
    assert paid["status"] == "success" and paid["refundedAmount"] == 0
    # settling closed the failed trade too
    assert payment_of(paid, WECHAT, mweb)["accepted"] and payment_of(paid, WECHAT, order_id)["status"] == "closed"
    assert paid["refunds"] == []
    assert event_names(order_id) == ["created", "paid"]
    # the failed trade captured nothing, and settling the order closed it
    assert wechat(live).trade(order_id)["state"] == "CLOSED" and wechat(live).captured(order_id) == 0


# -- 4. getPayUrl racing close -----------------------------------------------------------------------------------------
def test_get_pay_url_racing_close(live: LiveApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """``close`` lands between the provider's prepare and the record of the trade: getPayUrl fails with the order's
    state and a job closes the new trade at the provider; if the provider cannot close it (an Alipay QR code nobody
    scanned) and the buyer pays it anyway, the money comes back as a refunded surplus."""
    pay = live.pay_service
    closed_meanwhile: list[dict[str, Any]] = []

    def closing_prepare(real: Any) -> Any:
        def prepare(order: Any, payType: str, **kwargs: Any) -> Any:
            prep = real(order, payType, **kwargs)
            closer = threading.Thread(target=lambda: closed_meanwhile.append(pay.close(orderId=order.orderId)))
            closer.start()
            closer.join(30)
            assert not closer.is_alive()
            return prep
        return prepare

    for fullName in (ALIPAY, WECHAT):
        element = live.app.loadElement(fullName)
        monkeypatch.setattr(element, "prepare", closing_prepare(element.prepare))

    ali_id = pay.create(subject="Raced by close (Alipay)", amount="3.21")["orderId"]
    with pytest.raises(OrderClosed) as raced:
        pay.getPayUrl(orderId=ali_id, fullName=ALIPAY, payType="pc")
    assert raced.value.code == "ORDER_CLOSED"
    wx_id = pay.create(subject="Raced by close (WeChat Pay)", amount="3.21")["orderId"]
    with pytest.raises(OrderClosed):
        pay.getPayUrl(orderId=wx_id, fullName=WECHAT, payType="mobile")
    assert [c["status"] for c in closed_meanwhile] == ["closed", "closed"]

    for order_id, fullName, reference in ((ali_id, ALIPAY, ali_id), (wx_id, WECHAT, mweb_out_trade_no(wx_id))):
        order = pay.query(orderId=order_id)
        assert order["status"] == "closed"
        trade = payment_of(order, fullName, reference)
        assert trade["status"] == "closed"  # recorded, and closed at the provider by the job
        assert any(a.kind == "close" and a.outcome == "closed" and a.provider == fullName
                   for a in paysvc(live).ledger.audit_log(order_id))
    assert wechat(live).trade(mweb_out_trade_no(wx_id))["state"] == "CLOSED"
    assert wechat(live).pay(mweb_out_trade_no(wx_id)) is False

    # Alipay's unscanned QR code outlives the close: paying it anyway ends as a refunded surplus
    assert alipay(live).pay(ali_id) is True
    deliver(*take_notifications(live))
    queries = assert_money_invariant(live, ali_id, wx_id)
    assert queries[ali_id]["status"] == "closed"
    assert_surplus_refunded(live, queries[ali_id], ALIPAY, ali_id)
    assert queries[wx_id]["refunds"] == []


@pytest.mark.parametrize("fullName", [ALIPAY, WECHAT])
def test_get_pay_url_after_another_process_closed_or_offered_the_order(live: LiveApp, fullName: str) -> None:
    """The first getPayUrl after create does not read the order back (the ledger remembers it as written): what
    another process did to it meanwhile is still met. Closed there: getPayUrl fails with the order's state and the
    new trade is recorded and closed. Offered there: the same trade is offered again (WeChat Pay's unifiedorder asked
    twice for one out_trade_no), never a second one."""
    sandbox = alipay(live) if fullName == ALIPAY else wechat(live)
    other = jitcore.load_app(live.yaml_path)  # another process on the same database
    try:
        elsewhere = other.getElement("pays.services.PaySvc")
        pay = live.pay_service
        closed_id = pay.create(subject="Closed elsewhere", amount="2.34")["orderId"]
        assert elsewhere.close(orderId=closed_id)["status"] == "closed"
        with pytest.raises(OrderClosed):
            pay.getPayUrl(orderId=closed_id, fullName=fullName, payType="pc")
        drain(live)
        [closed_trade] = pay.query(orderId=closed_id)["payments"]
        assert (closed_trade["fullName"], closed_trade["status"]) == (fullName, "closed")

        offered_id = pay.create(subject="Offered elsewhere", amount="2.34")["orderId"]
        first = elsewhere.getPayUrl(orderId=offered_id, fullName=fullName, payType="pc")
        [offered] = pay.query(orderId=offered_id)["payments"]
        again = pay.getPayUrl(orderId=offered_id, fullName=fullName, payType="pc")
        assert again["orderId"] == first["orderId"] == offered_id
        [trade] = pay.query(orderId=offered_id)["payments"]
        assert (trade["paymentId"], trade["reference"], trade["status"]) == (offered["paymentId"], offered["reference"],
                                                                            "prepared")
        assert sandbox.pay(trade["reference"]) is True
        deliver(*take_notifications(live))
        assert_money_invariant(live, closed_id, offered_id)
        assert pay.query(orderId=offered_id)["status"] == "success"
    finally:
        other.close()


# -- 5. refund bookkeeping ---------------------------------------------------------------------------------------------
def paid_order(live: LiveApp, amount: str, fullName: str = ALIPAY) -> str:
    pay = live.pay_service
    order_id = pay.create(subject="Refundable", amount=amount)["orderId"]
    pay_in_wallet(pay.getPayUrl(orderId=order_id, fullName=fullName, payType="pc")["payUrl"])
    deliver(*take_notifications(live))
    assert pay.query(orderId=order_id)["status"] == "success"
    return order_id


def test_refund_bookkeeping(live: LiveApp, monkeypatch: pytest.MonkeyPatch) -> None:
    pay = live.pay_service
    ali_faults = ProviderFaults(live, ALIPAY, "refund", monkeypatch)
    wx_faults = ProviderFaults(live, WECHAT, "refund", monkeypatch)

    # (a) the provider refunded, then something other than ProviderError: the refund is "unknown", counted against
    # the payment but not toward refundedAmount, and its job finishes it with the same id; the caller gets a
    # ProviderError that says so, never the bare exception
    a_id = paid_order(live, "10.00")
    ali_faults.fail_next(RuntimeError("connection reset after the refund was sent"), after_call=True)
    with pytest.raises(ProviderError) as unexpected:
        pay.refund(orderId=a_id, amount="4.00", refundId="RF-A1")
    assert unexpected.value.details == {"refundId": "RF-A1", "outcomeUnknown": True}
    assert alipay(live).refunded(a_id) == Decimal("4.00")
    unknown = pay.query(orderId=a_id)
    assert [(r["refundId"], r["status"]) for r in unknown["refunds"]] == [("RF-A1", "unknown")]
    assert (unknown["status"], unknown["refundedAmount"]) == ("success", 0)
    with pytest.raises(RefundInvalid) as too_much:  # the reservation still counts toward what is left
        pay.refund(orderId=a_id, amount="6.01", refundId="RF-A-TOO-MUCH")
    assert too_much.value.details["refundId"] == "RF-A-TOO-MUCH"
    assert pending_jobs(live, "pays.refund")  # its follow-up, due a minute after the reservation
    drain(live)
    finished = pay.query(orderId=a_id)
    assert [(r["refundId"], r["status"]) for r in finished["refunds"]] == [("RF-A1", "confirmed")]
    assert (finished["status"], finished["refundedAmount"]) == ("success", Decimal("4.00"))
    assert alipay(live).refunded(a_id) == Decimal("4.00")  # sent twice with one id, refunded once

    # a definite "no" from the provider releases the reservation; a generated refundId is in the error's details
    ali_faults.fail_next(ProviderError("Alipay refused", provider_code="ACQ.TRADE_STATUS_ERROR"), after_call=False)
    with pytest.raises(ProviderError) as refused:
        pay.refund(orderId=a_id)
    rest_id = refused.value.details["refundId"]
    assert rest_id.startswith("R")
    assert [r["status"] for r in pay.query(orderId=a_id)["refunds"] if r["refundId"] == rest_id] == ["refused"]
    rest = pay.refund(orderId=a_id, refundId=rest_id)  # the same id again: tried again, now confirmed
    assert (rest["refundId"], rest["status"], rest["amount"]) == (rest_id, "confirmed", Decimal("6.00"))
    done = pay.query(orderId=a_id)
    assert (done["status"], done["refundedAmount"]) == ("refunded", Decimal("10.00"))
    # repeating the last refund's id on the fully refunded order returns that refund
    again = pay.refund(orderId=a_id, refundId=rest_id)
    assert again == rest
    assert pay.refund(orderId=a_id, amount="6.00", refundId=rest_id) == rest
    assert pay.refund(orderId=a_id, refundId="RF-A1")["status"] == "confirmed"
    with pytest.raises(RefundInvalid):
        pay.refund(orderId=a_id, refundId="RF-A-NEW")
    assert alipay(live).refunded(a_id) == Decimal("10.00")

    # (b) a full refund with no answer at all (a timeout before WeChat Pay did anything): the order stays success,
    # nothing is left to refund, and the caller retries with the generated id from the error's details
    b_id = paid_order(live, "7.77", WECHAT)
    wx_faults.fail_next(ProviderError("WeChat Pay did not answer", details={"failure": "timeout"}), after_call=False)
    with pytest.raises(ProviderError) as timed_out:
        pay.refund(orderId=b_id)
    b_refund = timed_out.value.details["refundId"]
    pending = pay.query(orderId=b_id)
    assert (pending["status"], pending["refundedAmount"]) == ("success", 0)
    assert [(r["refundId"], r["status"]) for r in pending["refunds"]] == [(b_refund, "unknown")]
    assert wechat(live).refunded(b_id) == 0
    with pytest.raises(RefundInvalid):
        pay.refund(orderId=b_id, refundId="RF-B-OTHER")
    retried = pay.refund(orderId=b_id, refundId=b_refund)
    assert retried["status"] == "confirmed" and retried["amount"] == Decimal("7.77")
    assert pay.query(orderId=b_id)["status"] == "refunded"
    assert pay.refund(orderId=b_id, refundId=b_refund) == retried
    assert wechat(live).refunded(b_id) == Decimal("7.77")
    assert [e.refund["refundId"] for e in events(b_id) if e.name == "refunded"] == [b_refund]

    # (c) concurrent refunds never exceed the payment
    c_id = paid_order(live, "10.00")
    barrier = threading.Barrier(6)
    outcomes: list[Any] = []

    def refund(n: int) -> None:
        barrier.wait()
        try:
            outcomes.append(pay.refund(orderId=c_id, amount="3.00", refundId=f"RF-C{n}"))
        except PayError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=refund, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    confirmed = [o for o in outcomes if isinstance(o, dict)]
    assert len(outcomes) == 6 and len(confirmed) == 3, outcomes
    assert all(o["status"] == "confirmed" for o in confirmed)
    assert all(isinstance(o, RefundInvalid) for o in outcomes if not isinstance(o, dict)), outcomes
    assert alipay(live).refunded(c_id) == Decimal("9.00")

    queries = assert_money_invariant(live, a_id, b_id, c_id)
    assert (queries[c_id]["status"], queries[c_id]["refundedAmount"]) == ("success", Decimal("9.00"))


# -- 6. nothing depends on a notification ------------------------------------------------------------------------------
def test_check_and_the_sweep_find_payments_without_notifications(live: LiveApp) -> None:
    pay, svc = live.pay_service, paysvc(live)

    checked_id = pay.create(subject="Found by check", amount="1.50")["orderId"]
    pay_in_wallet(pay.getPayUrl(orderId=checked_id, fullName=ALIPAY, payType="pc")["payUrl"])
    swept_id = pay.create(subject="Found by the sweep", amount="2.50")["orderId"]
    pay_in_wallet(pay.getPayUrl(orderId=swept_id, fullName=WECHAT, payType="mobile")["payUrl"])
    closed_id = pay.create(subject="Closed, paid, found by the sweep", amount="3.50")["orderId"]
    qr = pay.getPayUrl(orderId=closed_id, fullName=ALIPAY, payType="pc")
    pay.close(orderId=closed_id)
    pay_in_wallet(qr["payUrl"])
    dropped = take_notifications(live)  # never delivered
    assert sorted(n.reference for n in dropped) == sorted([checked_id, mweb_out_trade_no(swept_id), closed_id])
    # paid at WeChat Pay twice; only the first notification arrives, and settling runs before the sweep
    twice_id = pay.create(subject="Paid twice, found by the sweep", amount="4.50")["orderId"]
    pc = pay.getPayUrl(orderId=twice_id, fullName=WECHAT, payType="pc")
    mobile = pay.getPayUrl(orderId=twice_id, fullName=WECHAT, payType="mobile")
    pay_in_wallet(pc["payUrl"])
    [first] = take_notifications(live)
    deliver(first)
    pay_in_wallet(mobile["payUrl"])
    [dropped_too] = take_notifications(live)
    assert dropped_too.reference == mweb_out_trade_no(twice_id)
    # settling meets the second paid trade (closeorder: ORDERPAID) and records it rather than marking it closed
    twice = assert_money_invariant(live, twice_id)[twice_id]
    assert_surplus_refunded(live, twice, WECHAT, mweb_out_trade_no(twice_id))

    for order_id in (checked_id, swept_id):
        assert pay.query(orderId=order_id)["status"] == "pending"
    checked = pay.check(orderId=checked_id, fullName=ALIPAY)
    assert checked["status"] == "success" and checked["providerStatus"] == "success"
    assert checked["tradeNo"] == alipay(live).trade(checked_id).trade_no

    assert svc.sweep(min_age=timedelta(0), recheck=timedelta(0)) > 0
    swept = pay.query(orderId=swept_id)
    assert swept["status"] == "success"
    assert swept["tradeNo"] == wechat(live).trade(mweb_out_trade_no(swept_id))["transaction_id"]
    assert payment_of(pay.query(orderId=closed_id), ALIPAY, closed_id)["role"] == "surplus"
    # no payment notification arrived; the only one held tells how the WeChat surplus refund ended
    [refunded] = take_notifications(live)
    assert (refunded.event, refunded.reference) == ("refund", mweb_out_trade_no(twice_id))
    deliver(refunded)

    queries = assert_money_invariant(live, checked_id, swept_id, closed_id, twice_id)
    assert queries[closed_id]["status"] == "closed"
    assert_surplus_refunded(live, queries[closed_id], ALIPAY, closed_id)
    assert queries[twice_id]["provider"] == WECHAT and queries[twice_id]["status"] == "success"
    assert_surplus_refunded(live, queries[twice_id], WECHAT, mweb_out_trade_no(twice_id))
    for order_id in (checked_id, swept_id, twice_id):
        assert event_names(order_id).count("paid") == 1
    # nothing is left for the sweep to find
    assert svc.sweep(min_age=timedelta(0), recheck=timedelta(0)) >= 0
    assert_money_invariant(live, checked_id, swept_id, closed_id, twice_id)


def test_a_sweep_whose_time_is_up_leaves_the_rest_to_the_next_pass(live: LiveApp) -> None:
    """A pass that has spent its budget asking (providers answering slowly) stops asking: what it did not ask about
    is not marked checked, and the next pass finds the payment."""
    pay, svc = live.pay_service, paysvc(live)
    order_id = pay.create(subject="Found by the next pass", amount="1.50")["orderId"]
    pay_in_wallet(pay.getPayUrl(orderId=order_id, fullName=ALIPAY, payType="pc")["payUrl"])
    take_notifications(live)  # never delivered
    assert svc.sweep(min_age=timedelta(0), recheck=timedelta(0), budget=0) == 0
    assert pay.query(orderId=order_id)["status"] == "pending"
    assert svc.sweep(min_age=timedelta(0), recheck=timedelta(0)) == 1
    assert pay.query(orderId=order_id)["status"] == "success"
    assert_money_invariant(live, order_id)


# -- 7. duplicated and out of order ------------------------------------------------------------------------------------
def snapshot(live: LiveApp, order_id: str) -> tuple[Any, ...]:
    """What a notification could change about an order: the order and its payments and refunds, its events, its
    unfinished jobs, and what the sandboxes hold."""
    return (live.pay_service.query(orderId=order_id), event_names(order_id),
            sorted((j["kind"], j["dedupeKey"]) for j in live.app.jobs.list(states=["due", "running"], limit=1000)
                   if j["kind"].startswith("pays.") and j["kind"] != "pays.sweep"),
            net_captured(live, order_id))


def test_duplicated_and_reordered_notifications_change_nothing_beyond_the_first(live: LiveApp) -> None:
    pay = live.pay_service
    order_id = pay.create(subject="Noisy notifications", amount="9.99")["orderId"]
    mweb = mweb_out_trade_no(order_id)
    pay.getPayUrl(orderId=order_id, fullName=WECHAT, payType="pc")
    pay.getPayUrl(orderId=order_id, fullName=WECHAT, payType="mobile")
    pay.getPayUrl(orderId=order_id, fullName=ALIPAY, payType="pc")
    assert wechat(live).fail(order_id) is True
    assert wechat(live).pay(mweb) is True
    assert alipay(live).pay(order_id) is True
    held = wechat(live).take_notifications() + alipay(live).take_notifications()
    assert [(n.provider, n.reference, n.event) for n in held] == [
        ("wechat", order_id, "failed"), ("wechat", mweb, "paid"), ("alipay", order_id, "paid")]

    # the last one arrives first, and each arrives twice in a row
    for notification in reversed(held):
        deliver(notification)
        after_first = snapshot(live, order_id)
        deliver(notification)
        assert snapshot(live, order_id) == after_first
    first = pay.query(orderId=order_id)
    assert (first["status"], first["provider"]) == ("success", ALIPAY)
    assert payment_of(first, WECHAT, mweb)["role"] == "surplus"
    assert payment_of(first, WECHAT, order_id)["status"] == "failed"

    # all of them again, in both orders: nothing changes
    before = snapshot(live, order_id)
    deliver(*held)
    deliver(*reversed(held))
    assert snapshot(live, order_id) == before

    queries = assert_money_invariant(live, order_id)
    assert_surplus_refunded(live, queries[order_id], WECHAT, mweb)
    # and once the surplus is back with the buyer, still nothing
    settled = snapshot(live, order_id)
    deliver(*held, *reversed(held))
    assert snapshot(live, order_id) == settled
    assert_money_invariant(live, order_id)
    assert event_names(order_id) == ["created", "paid", "surplus", "surplus-refunded"]
    assert wechat(live).refunded(mweb) == Decimal("9.99") and alipay(live).refunded(order_id) == 0


# -- money captured for another amount than the order's ---------------------------------------------------------------
@pytest.mark.parametrize("fullName", [ALIPAY, WECHAT])
def test_money_captured_for_another_amount_is_asked_about_recorded_and_refunded(live: LiveApp, fullName: str) -> None:
    pay = live.pay_service
    order_id = pay.create(subject="Paid for another amount", amount="12.34")["orderId"]
    pay_in_wallet(prepare_elsewhere(live.app, fullName, order_id, "0.50").payUrl)
    sandbox = alipay(live) if fullName == ALIPAY else wechat(live)
    assert sandbox.captured(order_id) == Decimal("0.50")
    [note] = take_notifications(live)
    assert not acknowledged(note, note.deliver())  # not taken at its word: recorded, the provider is asked
    assert pay.query(orderId=order_id)["payments"] == []
    [rejected] = [a for a in paysvc(live).ledger.audit_log(order_id) if a.kind == "notify"]
    assert (rejected.outcome, rejected.errorCode) == ("rejected", "AMOUNT_MISMATCH")
    assert pending_jobs(live, "pays.check_trades")

    drain(live)  # the provider confirms the capture: a surplus of what it captured, refunded in full
    order = pay.query(orderId=order_id)
    assert order["status"] == "pending" and order["tradeNo"] is None
    [payment] = order["payments"]
    assert (payment["fullName"], payment["amount"], payment["status"], payment["role"]) == (
        fullName, Decimal("0.50"), "refunded", "surplus")
    assert payment["tradeNo"] == (sandbox.trade(order_id).trade_no if fullName == ALIPAY
                                  else sandbox.trade(order_id)["transaction_id"])
    assert [(r["kind"], r["status"], r["amount"]) for r in order["refunds"]] == [
        ("surplus", "confirmed", Decimal("0.50"))]
    assert sandbox.refunded(order_id) == Decimal("0.50")
    assert any(a.outcome == "surplus" and a.errorCode == "AMOUNT_MISMATCH" for a in
               paysvc(live).ledger.audit_log(order_id))
    assert event_names(order_id) == ["created", "surplus", "surplus-refunded"]
    assert acknowledged(note, note.deliver())  # sent again: recorded now, the provider may stop
    assert_money_invariant(live, order_id)

    # the order is paid in full the other way; the invariant still holds
    other = WECHAT if fullName == ALIPAY else ALIPAY
    pay_in_wallet(pay.getPayUrl(orderId=order_id, fullName=other, payType="pc")["payUrl"])
    deliver(*take_notifications(live))
    final = assert_money_invariant(live, order_id)[order_id]
    assert (final["status"], final["provider"]) == ("success", other)


def test_check_finds_money_captured_for_another_amount_of_a_paid_order(live: LiveApp) -> None:
    pay = live.pay_service
    order_id = pay.create(subject="Paid, then paid again for less", amount="30.00")["orderId"]
    pay_in_wallet(pay.getPayUrl(orderId=order_id, fullName=WECHAT, payType="pc")["payUrl"])
    deliver(*take_notifications(live))
    pay_in_wallet(prepare_elsewhere(live.app, ALIPAY, order_id, "29.99").payUrl)
    take_notifications(live)  # lost: check finds it
    checked = pay.check(orderId=order_id, fullName=ALIPAY)
    assert (checked["status"], checked["provider"]) == ("success", WECHAT)
    surplus = payment_of(checked, ALIPAY, order_id)
    assert (surplus["amount"], surplus["status"], surplus["role"]) == (Decimal("29.99"), "paid", "surplus")
    final = assert_money_invariant(live, order_id)[order_id]
    assert payment_of(final, ALIPAY, order_id)["status"] == "refunded"
    assert alipay(live).refunded(order_id) == Decimal("29.99") and wechat(live).refunded(order_id) == 0


# -- settings.pays.surplus: keep ---------------------------------------------------------------------------------------
def test_surplus_kept_is_shown_announced_and_refunded_when_the_merchant_says(tmp_path: Path,
                                                                              database: str | None) -> None:
    settings = {**HOLD, "pays": {"surplus": "keep"}}
    with money_app(tmp_path, database, settings=settings) as live:
        pay = live.pay_service
        order_id = paid_twice(live, "Paid twice, surplus kept")
        mismatched_id = pay.create(subject="Paid for another amount, kept", amount="5.00")["orderId"]
        pay_in_wallet(prepare_elsewhere(live.app, WECHAT, mismatched_id, "4.99").payUrl)
        assert pay.check(orderId=mismatched_id, fullName=WECHAT)["status"] == "pending"
        drain(live)

        # kept: recorded, announced, not refunded (the providers hold the money; the ledger says so)
        first, second = pay.query(orderId=order_id), pay.query(orderId=mismatched_id)
        kept = payment_of(first, ALIPAY, order_id)
        kept_mismatch = payment_of(second, WECHAT, mismatched_id)
        assert (kept["role"], kept["status"], kept["amount"]) == ("surplus", "paid", Decimal("20.00"))
        assert (kept_mismatch["role"], kept_mismatch["status"], kept_mismatch["amount"]) == (
            "surplus", "paid", Decimal("4.99"))
        assert first["refunds"] == [] and second["refunds"] == []
        assert alipay(live).refunded(order_id) == 0 and wechat(live).refunded(mismatched_id) == 0
        assert "surplus" in event_names(order_id) and "surplus" in event_names(mismatched_id)
        audit = paysvc(live).ledger.audit_log()
        assert any(a.orderId == order_id and a.outcome == "surplus" and "kept" in a.message for a in audit)
        assert paysvc(live).money_check(order_id) == (4000, 2000)
        assert paysvc(live).money_check(mismatched_id) == (499, 0)

        # the merchant gives them back
        for oid, payment in ((order_id, kept), (mismatched_id, kept_mismatch)):
            refund = pay.refund(orderId=oid, paymentId=payment["paymentId"])
            assert (refund["kind"], refund["status"], refund["amount"]) == ("surplus", "confirmed", payment["amount"])
        final = assert_money_invariant(live, order_id, mismatched_id)
        assert final[order_id]["status"] == "success" and final[order_id]["refundedAmount"] == 0
        assert final[mismatched_id]["status"] == "pending"
