"""Refunds a provider accepts and finishes later (WeChat Pay: ``SUCCESS`` from the refund call only says the refund was
accepted; ``/pay/refundquery`` says whether it ended ``SUCCESS``, ``REFUNDCLOSE`` or ``CHANGE``). Against the WeChat
sandbox over real HTTP, with refunds held ``PROCESSING`` until the test ends them, on SQLite and on PostgreSQL.

What must hold: a refund on its way is counted against its payment (never refunded twice) but is not in the order's
``refundedAmount`` until the provider says it succeeded; a refund the provider closes after accepting it gives the
money back to the order (refundable again) and is announced; an abnormal one stays counted, is announced, and is
confirmed once the provider reports it refunded; a closed surplus refund is made again. Every test ends with the
money invariant."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import text

from elements.pays.errors import RefundInvalid
from elements.pays.services.PaySvc.ledger import JOB_REFUND_STATE, SURPLUS_REFUND_ATTEMPTS
from elements.pays.WechatPayType import mweb_out_trade_no
from tests.support.live import LiveApp
from tests.support.money import (WECHAT, assert_money_invariant, deliver, drain, event_names, events, money_app,
                                 paid_through, paysvc, pending_jobs, take_notifications, wechat)


@pytest.fixture
def live(tmp_path: Path, database: str | None) -> Iterator[LiveApp]:
    with money_app(tmp_path, database) as app:
        wechat(app).refunds_wait = True
        yield app


def paid_order(live: LiveApp, amount: str = "20.00") -> str:
    """An order paid through the WeChat sandbox (its NATIVE trade), the notification delivered."""
    return paid_through(live, WECHAT, subject="Refunds that take time", amount=amount)[0]


class Later:
    """Runs the jobs at moments ever later (a question about a refund is asked again up to 6 hours after the last,
    counted on the jobs' clock): each :meth:`ask` runs what is due 7 hours after the previous one."""

    def __init__(self, live: LiveApp) -> None:
        self.live = live
        self.ahead = timedelta(0)

    def ask(self) -> None:
        self.ahead += timedelta(hours=7)
        drain(self.live, ahead=self.ahead)


def refund_of(order: dict[str, Any], refund_id: str) -> dict[str, Any]:
    [found] = [r for r in order["refunds"] if r["refundId"] == refund_id]
    return found


def test_a_processing_refund_counts_once_the_provider_says_it_succeeded(live: LiveApp) -> None:
    pay, wx, later = live.pay_service, wechat(live), Later(live)
    order_id = paid_order(live)
    refund = pay.refund(orderId=order_id, amount="5.00", refundId="R1")
    assert refund["status"] == "processing"  # accepted; asked right away: still on its way
    order = pay.query(orderId=order_id)
    assert (order["status"], order["refundedAmount"]) == ("success", 0)
    assert wx.refunded(order_id) == 5  # the money left the merchant ...
    with pytest.raises(RefundInvalid):  # ... so it cannot be refunded a second time
        pay.refund(orderId=order_id, amount="15.01", refundId="R2")
    assert pending_jobs(live, JOB_REFUND_STATE)

    later.ask()  # asked again: still processing, asked again later
    assert refund_of(pay.query(orderId=order_id), "R1")["status"] == "processing"
    assert pending_jobs(live, JOB_REFUND_STATE)

    assert wx.finish_refund("R1", "SUCCESS")
    later.ask()
    order = pay.query(orderId=order_id)
    assert refund_of(order, "R1")["status"] == "confirmed" and order["refundedAmount"] == 5
    assert not pending_jobs(live, JOB_REFUND_STATE)
    assert event_names(order_id)[-1] == "refunded"
    assert pay.refund(orderId=order_id, amount="5.00", refundId="R1")["status"] == "confirmed"  # the same refund
    assert_money_invariant(live, order_id, drained=True)


def test_a_refund_closed_after_acceptance_gives_the_money_back_to_the_order(live: LiveApp) -> None:
    pay, wx, later = live.pay_service, wechat(live), Later(live)
    order_id = paid_order(live)
    assert pay.refund(orderId=order_id, refundId="R1")["status"] == "processing"  # all of it
    assert wx.finish_refund("R1", "CLOSED")
    assert wx.refunded(order_id) == 0
    later.ask()
    order = pay.query(orderId=order_id)
    closed = refund_of(order, "R1")
    assert (closed["status"], closed["error"]["code"]) == ("refused", "REFUND_CLOSED")
    assert (order["status"], order["refundedAmount"]) == ("success", 0)
    [failed] = [e for e in events(order_id) if e.name == "refund-failed"]
    assert failed.refund["refundId"] == "R1" and failed.refund["status"] == "refused"
    audit = paysvc(live).ledger.audit_log(order_id, kinds=["refund-state"])
    assert [a.outcome for a in audit if a.errorCode] == ["refused"]
    assert_money_invariant(live, order_id, drained=True)

    wx.refunds_wait = False  # refundable again, with a new refundId
    assert pay.refund(orderId=order_id, refundId="R2")["status"] == "confirmed"
    later.ask()
    order = assert_money_invariant(live, order_id, drained=True)[order_id]
    assert (order["status"], order["refundedAmount"]) == ("refunded", 20)


def test_an_abnormal_refund_stays_counted_is_announced_and_is_confirmed_once_handled(live: LiveApp) -> None:
    pay, wx, later = live.pay_service, wechat(live), Later(live)
    order_id = paid_order(live)
    pay.refund(orderId=order_id, refundId="R1")
    assert wx.finish_refund("R1", "ABNORMAL")
    later.ask()
    order = pay.query(orderId=order_id)
    stuck = refund_of(order, "R1")
    assert (stuck["status"], stuck["error"]["code"]) == ("abnormal", "REFUND_ABNORMAL")
    assert (order["status"], order["refundedAmount"]) == ("success", 0)
    assert [e.refund["status"] for e in events(order_id) if e.name == "refund-failed"] == ["abnormal"]
    with pytest.raises(RefundInvalid):  # still counted: the merchant may yet pay it back through the provider
        pay.refund(orderId=order_id, amount="0.01", refundId="R2")
    later.ask()  # asked again, nothing new, announced once
    assert refund_of(pay.query(orderId=order_id), "R1")["status"] == "abnormal"
    assert len([e for e in event_names(order_id) if e == "refund-failed"]) == 1

    assert wx.finish_refund("R1", "SUCCESS")  # the merchant handled it in WeChat Pay's merchant platform
    later.ask()
    order = assert_money_invariant(live, order_id, drained=True)[order_id]
    assert refund_of(order, "R1")["status"] == "confirmed"
    assert (order["status"], order["refundedAmount"]) == ("refunded", 20)
    assert event_names(order_id)[-1] == "refunded"


def test_a_closed_surplus_refund_is_made_again(live: LiveApp) -> None:
    pay, wx, later = live.pay_service, wechat(live), Later(live)
    order_id = pay.create(subject="Paid twice", amount="8.00")["orderId"]
    pay.getPayUrl(orderId=order_id, fullName=WECHAT, payType="pc")
    pay.getPayUrl(orderId=order_id, fullName=WECHAT, payType="mobile")
    mweb = mweb_out_trade_no(order_id)
    assert wx.pay(order_id) and wx.pay(mweb)
    deliver(*take_notifications(live))
    later.ask()  # the surplus refund is sent: accepted, on its way
    [first] = wx.processing_refunds()
    assert wx.finish_refund(first, "CLOSED")
    later.ask()
    order = pay.query(orderId=order_id)
    surplus = [r for r in order["refunds"] if r["kind"] == "surplus"]
    assert [(r["refundId"], r["status"]) for r in surplus] == [(first, "refused"), (f"{first}-2", "processing")]
    assert wx.finish_refund(f"{first}-2", "SUCCESS")
    later.ask()
    order = assert_money_invariant(live, order_id, drained=True)[order_id]
    assert [r["status"] for r in order["refunds"]] == ["refused", "confirmed"]
    assert "surplus-refunded" in event_names(order_id)


def test_a_surplus_refund_closed_every_time_is_left_to_the_merchant(live: LiveApp) -> None:
    pay, wx, later = live.pay_service, wechat(live), Later(live)
    order_id = pay.create(subject="Paid twice, refunds closed", amount="8.00")["orderId"]
    pay.getPayUrl(orderId=order_id, fullName=WECHAT, payType="pc")
    pay.getPayUrl(orderId=order_id, fullName=WECHAT, payType="mobile")
    assert wx.pay(order_id) and wx.pay(mweb_out_trade_no(order_id))
    deliver(*take_notifications(live))
    for _ in range(SURPLUS_REFUND_ATTEMPTS):
        later.ask()
        [processing] = wx.processing_refunds()
        assert wx.finish_refund(processing, "CLOSED")
    later.ask()
    assert wx.processing_refunds() == []
    order = pay.query(orderId=order_id)
    assert [r["status"] for r in order["refunds"]] == ["refused"] * SURPLUS_REFUND_ATTEMPTS
    audit = paysvc(live).ledger.audit_log(order_id)
    assert any(a.outcome == "surplus-kept" and a.errorCode == "SURPLUS_REFUND_FAILED" for a in audit)
    [surplus] = [p for p in order["payments"] if p["role"] == "surplus"]
    wx.refunds_wait = False  # the merchant refunds it
    assert pay.refund(orderId=order_id, paymentId=surplus["paymentId"], refundId="BY-HAND")["status"] == "confirmed"
    later.ask()
    assert_money_invariant(live, order_id, drained=True)


def test_the_sweep_asks_again_about_a_refund_whose_follow_up_stopped(live: LiveApp) -> None:
    pay, wx, later = live.pay_service, wechat(live), Later(live)
    order_id = paid_order(live)
    assert pay.refund(orderId=order_id, refundId="R1")["status"] == "processing"
    with live.app.engine.begin() as conn:  # its follow-up is gone (e.g. ended dead), and it was last asked 8 h ago
        conn.execute(text("DELETE FROM jit_job WHERE kind = :kind"), {"kind": JOB_REFUND_STATE})
        conn.execute(text('UPDATE jitpay_refund SET "updatedAt" = :at WHERE "refundId" = :id'),
                     {"at": datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=8), "id": "R1"})
    assert wx.finish_refund("R1", "SUCCESS")
    paysvc(live).sweep()
    assert pending_jobs(live, JOB_REFUND_STATE)
    later.ask()
    order = assert_money_invariant(live, order_id, drained=True)[order_id]
    assert refund_of(order, "R1")["status"] == "confirmed" and order["status"] == "refunded"
