"""Alipay refunds whose money did not move when the refund call answered (``10000`` with ``fund_change: "N"``).

Alipay's ``10000`` to ``alipay.trade.refund`` only says the call went through; the money moved if the answer says
``fund_change: "Y"``. Otherwise ``alipay.trade.fastpay.refund.query`` tells: the refund is made when the query reports
it; when it does not, Alipay did not make it, and the same ``out_request_no`` may be sent again (Alipay refunds each
at most once). Against the Alipay sandbox over real HTTP with refunds held (``refunds_wait``) until the test ends
them, on SQLite and on PostgreSQL.

What must hold: such a refund is counted against its payment but not in the order's ``refundedAmount`` until Alipay
reports it made; one Alipay did not make is sent again under its own id and counted once made; one Alipay then refuses
outright gives the money back to the order and is announced. A refusal no caller hears (a surplus refund; a refund
a job sends again) is announced, and a surplus refund is made again later with a new id. Every test ends with the
money invariant."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl, urlencode

import pytest

from elements.pays.AliPayType.signing import load_rsa_key, sign_notify
from elements.pays.errors import ProviderError, RefundInvalid
from elements.pays.Meta import NotifyRequest, OrderView
from elements.pays.services.PaySvc.ledger import JOB_REFUND, JOB_REFUND_STATE, SURPLUS_REFUND_ATTEMPTS
from elements.pays.testing import swapped
from tests.elements.pays.test_refund_finality import Later, refund_of
from tests.support.live import LiveApp
from tests.support.money import (ALIPAY, WECHAT, alipay, assert_money_invariant, deliver, drain, event_names, events,
                                 money_app, paid_through, paysvc, pending_jobs, take_notifications, wechat)


@pytest.fixture
def live(tmp_path: Path, database: str | None) -> Iterator[LiveApp]:
    with money_app(tmp_path, database) as app:
        alipay(app).refunds_wait = True
        yield app


def paid_order(live: LiveApp, amount: str = "20.00") -> str:
    """An order paid through the Alipay sandbox (its QR code trade), the notification delivered."""
    return paid_and_notified(live, amount)[0]


def paid_and_notified(live: LiveApp, amount: str = "20.00") -> tuple[str, dict[str, str]]:
    """:func:`paid_order`, and the fields of the payment's notification."""
    order_id, notification = paid_through(live, ALIPAY, subject="Alipay refunds that take time", amount=amount)
    return order_id, dict(parse_qsl(notification.body.decode("utf-8"), keep_blank_values=True))


def test_fund_change_n_is_not_counted_refunded_until_the_refund_query_finds_the_refund(live: LiveApp) -> None:
    pay, ali, later = live.pay_service, alipay(live), Later(live)
    order_id = paid_order(live)
    refund = pay.refund(orderId=order_id, amount="5.00", refundId="R1")
    assert refund["status"] == "processing"  # 10000, fund_change N; the query right away found nothing
    order = pay.query(orderId=order_id)
    assert (order["status"], order["refundedAmount"]) == ("success", 0)
    assert ali.refunded(order_id) == 0 and ali.processing_refunds() == [(order_id, "R1")]
    with pytest.raises(RefundInvalid):  # counted against the payment: never refunded twice
        pay.refund(orderId=order_id, amount="15.01", refundId="R2")
    assert pending_jobs(live, JOB_REFUND_STATE)

    later.ask()  # still not made: asked again later (sending R1 again moved nothing, and made nothing twice)
    assert refund_of(pay.query(orderId=order_id), "R1")["status"] == "processing"
    assert ali.processing_refunds() == [(order_id, "R1")]

    assert ali.finish_refund("R1", "SUCCESS")
    later.ask()
    order = assert_money_invariant(live, order_id, drained=True)[order_id]
    assert refund_of(order, "R1")["status"] == "confirmed" and order["refundedAmount"] == 5
    assert ali.refunded(order_id) == 5
    assert not pending_jobs(live, JOB_REFUND_STATE)
    assert event_names(order_id)[-1] == "refunded"


def test_a_refund_alipay_did_not_make_is_sent_again_with_its_own_id_and_made_once(live: LiveApp) -> None:
    pay, ali, later = live.pay_service, alipay(live), Later(live)
    order_id = paid_order(live)
    assert pay.refund(orderId=order_id, refundId="R1")["status"] == "processing"  # all of it
    assert ali.finish_refund("R1", "FAILED")  # Alipay did not refund it: the query finds nothing
    ali.refunds_wait = False
    later.ask()  # not found: R1 sent again, made now (fund_change Y)
    order = assert_money_invariant(live, order_id, drained=True)[order_id]
    assert [(r["refundId"], r["status"]) for r in order["refunds"]] == [("R1", "confirmed")]
    assert (order["status"], order["refundedAmount"]) == ("refunded", 20)
    assert ali.refunded(order_id) == 20
    trade = ali.trade(order_id)
    assert trade is not None and list(trade.refunds) == ["R1"]  # one refund at Alipay, under the id JitPay gave

    assert pay.refund(orderId=order_id, refundId="R1")["status"] == "confirmed"  # the same refund, nothing sent
    later.ask()
    assert ali.refunded(order_id) == 20


def test_a_refund_alipay_did_not_make_and_then_refuses_gives_the_money_back_to_the_order(live: LiveApp) -> None:
    pay, ali, later = live.pay_service, alipay(live), Later(live)
    order_id = paid_order(live)
    assert pay.refund(orderId=order_id, amount="8.00", refundId="R1")["status"] == "processing"
    assert ali.finish_refund("R1", "FAILED")
    ali.refunds_refused = "ACQ.SELLER_BALANCE_NOT_ENOUGH"  # sending R1 again is refused outright
    later.ask()
    order = pay.query(orderId=order_id)
    refused = refund_of(order, "R1")
    assert (refused["status"], refused["error"]["code"]) == ("refused", "REFUND_CLOSED")
    assert (order["status"], order["refundedAmount"]) == ("success", 0)
    [failed] = [e for e in events(order_id) if e.name == "refund-failed"]
    assert failed.refund["refundId"] == "R1"
    assert_money_invariant(live, order_id, drained=True)

    ali.refunds_refused, ali.refunds_wait = None, False  # refundable again, in full, with a new refundId
    assert pay.refund(orderId=order_id, refundId="R2")["status"] == "confirmed"
    later.ask()
    order = assert_money_invariant(live, order_id, drained=True)[order_id]
    assert (order["status"], order["refundedAmount"]) == ("refunded", 20)


def test_a_refund_made_while_the_answer_was_lost_is_confirmed_by_the_query(live: LiveApp) -> None:
    """The refund call is sent again with the same id after an answer that was lost: Alipay moves nothing the second
    time (fund_change N) and the query confirms the first."""
    pay, ali, later = live.pay_service, alipay(live), Later(live)
    ali.refunds_wait = False
    order_id = paid_order(live)
    order = pay.query(orderId=order_id)
    [payment] = order["payments"]
    view = OrderView(orderId=order_id, subject=order["subject"], amount=payment["amount"], createdAt=order["createdAt"],
                     tradeNo=payment["tradeNo"], reference=payment["reference"])
    first = paysvc(live).provider(ALIPAY).refund(view, "R1", Decimal("6.00"), Decimal("6.00"))
    assert first.status == "success"  # made at Alipay; its answer never reached JitPay
    refund = pay.refund(orderId=order_id, amount="6.00", refundId="R1")  # JitPay sends it again
    assert refund["status"] == "confirmed"
    assert ali.refunded(order_id) == 6
    later.ask()
    order = assert_money_invariant(live, order_id, drained=True)[order_id]
    assert order["refundedAmount"] == 6


def test_alipays_refund_notification_has_the_refund_asked_about_at_once(live: LiveApp) -> None:
    """Alipay notifies a refund (``out_biz_no`` = its ``out_request_no``): PaySvc asks the refund query then and
    there rather than at the refund's next follow-up; the notification's own words are not taken."""
    pay, ali = live.pay_service, alipay(live)
    order_id, paid_fields = paid_and_notified(live)
    assert pay.refund(orderId=order_id, amount="5.00", refundId="R1")["status"] == "processing"
    key = load_rsa_key((live.yaml_path.parent / ".sandbox" / "alipay_gateway_private_key.pem").read_text())

    def refund_notification(**changes: str) -> NotifyRequest:
        fields = {k: v for k, v in paid_fields.items() if k not in ("sign", "sign_type")}
        fields.update(notify_id="refund-notify-1", refund_fee="5.00", gmt_refund="2026-11-28 10:00:00", **changes)
        return NotifyRequest.of(urlencode(sign_notify(fields, key)).encode(), "application/x-www-form-urlencoded")

    svc = paysvc(live)
    assert svc.handleNotify("alipay", refund_notification(out_biz_no="R1")).body == b"success"
    assert refund_of(pay.query(orderId=order_id), "R1")["status"] == "processing"  # asked: not made yet
    assert ali.finish_refund("R1", "SUCCESS")
    assert svc.handleNotify("alipay", refund_notification(out_biz_no="R1")).body == b"success"
    order = pay.query(orderId=order_id)  # no job ran: the notification had it asked about
    assert refund_of(order, "R1")["status"] == "confirmed" and order["refundedAmount"] == 5
    assert svc.handleNotify("alipay", refund_notification(out_biz_no="NOT-OURS")).body == b"success"
    assert_money_invariant(live, order_id)


def paid_twice(live: LiveApp) -> str:
    """An order paid with WeChat Pay, then with Alipay as well: Alipay's payment is a surplus, refunded by a job."""
    pay = live.pay_service
    order_id = pay.create(subject="Paid twice", amount="6.00")["orderId"]
    pay.getPayUrl(orderId=order_id, fullName=WECHAT, payType="pc")
    pay.getPayUrl(orderId=order_id, fullName=ALIPAY, payType="pc")
    assert wechat(live).pay(order_id)
    deliver(*take_notifications(live))
    assert alipay(live).pay(order_id)
    deliver(*take_notifications(live))
    [surplus] = [p for p in pay.query(orderId=order_id)["payments"] if p["role"] == "surplus"]
    assert surplus["fullName"] == ALIPAY
    return order_id


def test_a_surplus_refund_refused_outright_is_announced_and_made_again_later(live: LiveApp) -> None:
    """Nobody waits for the answer to a surplus refund: one the provider refuses outright (a short balance, say) is
    announced and made again an hour later with a new refundId, not left with the merchant in silence."""
    pay, ali = live.pay_service, alipay(live)
    ali.refunds_wait, ali.refunds_refused = False, "ACQ.SELLER_BALANCE_NOT_ENOUGH"
    order_id = paid_twice(live)
    drain(live)  # the surplus refund is sent: refused
    order = pay.query(orderId=order_id)
    [refused] = [r for r in order["refunds"] if r["status"] == "refused"]
    assert refused["kind"] == "surplus" and refused["error"]["code"] == "ACQ.SELLER_BALANCE_NOT_ENOUGH"
    [failed] = [e for e in events(order_id) if e.name == "refund-failed"]
    assert failed.refund["refundId"] == refused["refundId"]
    [again] = [r for r in order["refunds"] if r["status"] == "reserved"]  # counted, sent in an hour
    assert again["refundId"] == f"{refused['refundId']}-2" and pending_jobs(live, JOB_REFUND)
    assert ali.refunded(order_id) == 0

    ali.refunds_refused = None  # the merchant's balance is topped up
    Later(live).ask()
    order = assert_money_invariant(live, order_id, drained=True)[order_id]
    assert [(r["refundId"], r["status"]) for r in order["refunds"]] == [(refused["refundId"], "refused"),
                                                                       (again["refundId"], "confirmed")]
    assert ali.refunded(order_id) == 6 and "surplus-refunded" in event_names(order_id)


def test_a_surplus_refund_refused_every_time_is_left_to_the_merchant(live: LiveApp) -> None:
    pay, ali = live.pay_service, alipay(live)
    ali.refunds_wait, ali.refunds_refused = False, "ACQ.SELLER_BALANCE_NOT_ENOUGH"
    order_id = paid_twice(live)
    later = Later(live)
    for _ in range(SURPLUS_REFUND_ATTEMPTS):
        later.ask()
    order = pay.query(orderId=order_id)
    assert [r["status"] for r in order["refunds"]] == ["refused"] * SURPLUS_REFUND_ATTEMPTS
    assert len([e for e in event_names(order_id) if e == "refund-failed"]) == SURPLUS_REFUND_ATTEMPTS
    audit = paysvc(live).ledger.audit_log(order_id)
    assert any(a.outcome == "surplus-kept" and a.errorCode == "SURPLUS_REFUND_FAILED" for a in audit)
    ali.refunds_refused = None  # the merchant refunds it
    [surplus] = [p for p in order["payments"] if p["role"] == "surplus"]
    assert pay.refund(orderId=order_id, paymentId=surplus["paymentId"], refundId="BY-HAND")["status"] == "confirmed"
    assert_money_invariant(live, order_id)


def test_a_refund_refused_when_a_job_sends_it_again_is_announced(live: LiveApp) -> None:
    """The merchant's refund call ended without an answer (outcome unknown: the job sends it again); Alipay then
    refuses it outright. Nobody hears that answer but the job: it is announced, and the money is refundable again."""
    pay, ali = live.pay_service, alipay(live)
    ali.refunds_wait = False
    order_id = paid_order(live)
    gateway = paysvc(live).provider(ALIPAY).gateway
    with swapped(gateway, "gateway", "http://127.0.0.1:9/gateway.do"), pytest.raises(ProviderError):
        pay.refund(orderId=order_id, amount="4.00", refundId="R1")  # no answer
    assert refund_of(pay.query(orderId=order_id), "R1")["status"] == "unknown"
    ali.refunds_refused = "ACQ.SELLER_BALANCE_NOT_ENOUGH"
    Later(live).ask()  # the job sends R1 again: refused
    order = pay.query(orderId=order_id)
    assert refund_of(order, "R1")["status"] == "refused" and order["refundedAmount"] == 0
    [failed] = [e for e in events(order_id) if e.name == "refund-failed"]
    assert failed.refund["refundId"] == "R1" and failed.refund["error"]["code"] == "ACQ.SELLER_BALANCE_NOT_ENOUGH"
    assert_money_invariant(live, order_id)
    ali.refunds_refused = None
    assert pay.refund(orderId=order_id, refundId="R2")["status"] == "confirmed"  # all of it: nothing was counted


def test_a_refund_refused_while_its_caller_waits_is_not_announced(live: LiveApp) -> None:
    pay, ali = live.pay_service, alipay(live)
    ali.refunds_wait, ali.refunds_refused = False, "ACQ.SELLER_BALANCE_NOT_ENOUGH"
    order_id = paid_order(live)
    with pytest.raises(ProviderError) as caught:  # the caller hears the refusal
        pay.refund(orderId=order_id, amount="4.00", refundId="R1")
    assert caught.value.provider_code == "ACQ.SELLER_BALANCE_NOT_ENOUGH"
    Later(live).ask()
    assert refund_of(pay.query(orderId=order_id), "R1")["status"] == "refused"
    assert "refund-failed" not in event_names(order_id)
