"""PaySvc's contract on a test-only provider, on SQLite and PostgreSQL: orders, the life cycle, notifications,
refunds and events. (The same flow against the real providers and the sandbox is in tests/elements/pays/test_flow.py.)"""

from __future__ import annotations

import sys
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from elements.pays.errors import ProviderError, UnknownPayType
from elements.pays.Meta import TradeState
from jitcore.errors import ArgumentError
from tests.elements.pays.paysvc import fake_plugin
from tests.elements.pays.paysvc.conftest import fake_class

FAKE = "testpay.FakePayType"


def signed_notify(app: Any, order_id: str, amount: str, *, status: str = "success", trade_no: str = "T1",
                  secret: str = "fake-secret", merchant: str = "m1") -> dict[str, str]:
    from tests.elements.pays.paysvc.fake_elements.testpay.FakePayType import sign_fields  # type: ignore

    fields = {"out_trade_no": order_id, "amount": amount, "status": status, "trade_no": trade_no,
              "merchant": merchant}
    fields["sign"] = sign_fields(fields, secret)
    return fields


@pytest.fixture(autouse=True)
def _signer(monkeypatch: pytest.MonkeyPatch, app: Any) -> None:
    # the fake element's module is imported under a private name; expose its signer under a stable one
    import sys
    import types

    module = sys.modules[fake_class(app).__module__]
    alias = types.ModuleType("tests.elements.pays.paysvc.fake_elements.testpay.FakePayType")
    alias.sign_fields = module.sign_fields  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, alias.__name__, alias)


def make_due(app: Any) -> None:
    """Time passes: every job waiting for later is due now."""
    from sqlalchemy import text

    with app.engine.begin() as conn:
        conn.execute(text("UPDATE jit_job SET \"dueAt\" = :now WHERE state = 'due'"),
                     {"now": datetime.now(timezone.utc).replace(tzinfo=None)})


def audit(app: Any, order_id: str | None = None) -> list[Any]:
    return app.loadElement("pays.services.PaySvc").ledger.audit_log(order_id)


# -- create --------------------------------------------------------------------------------------------------------

def test_create_as_documented(pay: Any) -> None:
    result = pay.create("Purchase VIP Membership", 99.99)
    assert result["status"] == "pending"
    assert result["amount"] == Decimal("99.99") and isinstance(result["amount"], Decimal)
    assert len(result["orderId"]) <= 32 and result["orderId"].isalnum()
    custom = pay.create(subject="Product Order", amount=299.00, orderId="CUSTOM_ORDER_001")
    assert {k: custom[k] for k in ("orderId", "status", "amount", "subject")} == {
        "orderId": "CUSTOM_ORDER_001", "status": "pending", "amount": Decimal("299.00"), "subject": "Product Order"}
    status = pay.query(orderId="CUSTOM_ORDER_001")
    assert status["status"] == "pending" and status["payTime"] is None and status["amount"] == Decimal("299.00")
    assert ("created", "CUSTOM_ORDER_001") in fake_plugin.EVENTS


@pytest.mark.parametrize("amount", [float("nan"), float("inf"), float("-inf"), "NaN", "Infinity", 0, -1, "0.001",
                                    1e9, "100000000.01", Decimal("-0.01"), "abc"])
def test_create_rejects_bad_amounts(pay: Any, amount: Any) -> None:
    with pytest.raises(Exception) as info:
        pay.create("x", amount)
    assert getattr(info.value, "code", None) in ("AMOUNT_INVALID", "ARGUMENT_INVALID")
    if amount != "abc":
        assert info.value.code == "AMOUNT_INVALID"


def test_create_amount_bounds_and_exactness(pay: Any) -> None:
    assert pay.create("max", "100000000.00")["amount"] == Decimal("100000000.00")
    assert pay.create("min", "0.01")["amount"] == Decimal("0.01")
    assert pay.create("f", 19.99)["amount"] == Decimal("19.99")
    # a float that is not exactly two places is refused rather than rounded
    with pytest.raises(Exception) as info:
        pay.create("f", 0.1 + 0.2)
    assert info.value.code == "AMOUNT_INVALID"


@pytest.mark.parametrize("order_id", ["short", "has-dash", "x" * 33, "中文订单号123", "a b c d e f", ""])
def test_create_rejects_bad_order_ids(pay: Any, order_id: str) -> None:
    with pytest.raises(Exception) as info:
        pay.create("x", "1.00", order_id)
    assert info.value.code == "ORDER_ID_INVALID"


def test_create_is_idempotent_and_detects_duplicates(pay: Any) -> None:
    first = pay.create("Order", "10.00", "ORDER_000001")
    assert pay.create("Order", 10, "ORDER_000001")["orderId"] == first["orderId"]
    for subject, amount in (("Other", "10.00"), ("Order", "10.01")):
        with pytest.raises(Exception) as info:
            pay.create(subject, amount, "ORDER_000001")
        assert info.value.code == "DUPLICATE_ORDER"


def test_create_checks_arguments(pay: Any) -> None:
    with pytest.raises(ArgumentError):
        pay.create(subject="x")
    with pytest.raises(ArgumentError):
        pay.create(subject="x", amount="1", colour="red")
    with pytest.raises(Exception) as info:
        pay.create("  ", "1.00")
    assert info.value.code == "SUBJECT_INVALID"


@pytest.mark.parametrize("subject", ["VIP\x1f", "\x07bell", "a\nb", "a\rb", "a\x00b"])
def test_text_a_provider_cannot_carry_is_refused_at_the_door(app: Any, pay: Any, subject: str) -> None:
    with pytest.raises(ArgumentError) as info:
        pay.create(subject, "1.00", "CTRL_ORDER_1")
    assert info.value.details == {"argument": "subject"} and "'subject'" in info.value.message
    # PaySvc checks its own fields too, for callers inside the process (which skip the declared-function check)
    svc = app.loadElement("pays.services.PaySvc")
    with pytest.raises(Exception) as inner:
        svc.create(subject, Decimal("1.00"), "CTRL_ORDER_1")
    assert inner.value.code in ("SUBJECT_INVALID", "ARGUMENT_INVALID") and "subject" in inner.value.message
    with pytest.raises(Exception) as absent:
        pay.query(orderId="CTRL_ORDER_1")
    assert absent.value.code == "ORDER_NOT_EXIST"


def test_client_ip_and_reason_are_checked_before_anything_is_sent(app: Any, pay: Any) -> None:
    svc = app.loadElement("pays.services.PaySvc")
    order_id = pay.create("Book", "10.00")["orderId"]
    for client_ip in ("999.1.1.1", "<a>", "1.2.3.4\n", "", "localhost", "fe80::1%eth0"):
        with pytest.raises(ArgumentError) as info:
            svc.getPayUrl(order_id, FAKE, "pc", client_ip)
        assert info.value.details == {"argument": "clientIp"}
    assert fake_class(app).prepared == []
    assert pay.getPayUrl(orderId=order_id, fullName=FAKE, payType="pc", clientIp="2001:db8::1")["payUrl"]
    paid_id = _paid_order(app, pay)
    for reason in ("a\x1fb", "\ufffe"):
        with pytest.raises(ArgumentError) as info:
            svc.refund(paid_id, reason=reason)
        assert info.value.details == {"argument": "reason"}
    assert pay.query(orderId=paid_id)["refunds"] == [] and fake_class(app).refunds == {}


def test_generated_ids_are_unique_and_time_ordered_under_threads(pay: Any) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            order_id = pay.create("t", "1.00")["orderId"]
            with lock:
                ids.append(order_id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 80
    assert all(len(i) == 28 for i in ids)
    assert sorted(ids, key=lambda i: i[:20]) == sorted(ids)  # the time prefix orders them


# -- getPayUrl -----------------------------------------------------------------------------------------------------

def test_get_pay_url_and_reuse(app: Any, pay: Any) -> None:
    order = pay.create("Book", "12.30")
    pc = pay.getPayUrl(orderId=order["orderId"], fullName=FAKE, payType="pc")
    assert pc["orderId"] == order["orderId"] and pc["payUrl"].startswith("fakepay://")
    assert pc["qrCode"].startswith("data:image/png;base64,")
    again = pay.getPayUrl(orderId=order["orderId"], fullName=FAKE, payType="pc")
    assert again["payUrl"] == pc["payUrl"]
    assert len(fake_class(app).prepared) == 1
    mobile = pay.getPayUrl(orderId=order["orderId"], fullName=FAKE, payType="mobile")
    assert mobile["payUrl"] != pc["payUrl"] and mobile["qrCode"] is None


@pytest.mark.parametrize("full_name", ["pays.services.PaySvc", "services.NormalType", "pays.Meta", "nope.PayType",
                                       "pays.AliPayTyp"])
def test_get_pay_url_unknown_pay_type(pay: Any, full_name: str) -> None:
    order = pay.create("Book", "1.00")
    with pytest.raises(Exception) as info:
        pay.getPayUrl(orderId=order["orderId"], fullName=full_name, payType="pc")
    assert info.value.code == "UNKNOWN_PAY_TYPE"


def test_get_pay_url_errors(pay: Any) -> None:
    with pytest.raises(Exception) as info:
        pay.getPayUrl(orderId="NO_SUCH_ORDER", fullName=FAKE, payType="pc")
    assert info.value.code == "ORDER_NOT_EXIST"
    order = pay.create("Book", "1.00")
    with pytest.raises(Exception) as info:
        pay.getPayUrl(orderId=order["orderId"], fullName=FAKE, payType="jsapi")
    assert info.value.code == "UNSUPPORTED_PAY_TYPE" and "pc, mobile" in info.value.message
    pay.close(orderId=order["orderId"])
    with pytest.raises(Exception) as info:
        pay.getPayUrl(orderId=order["orderId"], fullName=FAKE, payType="pc")
    assert info.value.code == "ORDER_CLOSED"


def test_unconfigured_provider_is_a_clear_error(pay: Any) -> None:
    order = pay.create("Book", "1.00")
    with pytest.raises(UnknownPayType) as info:  # pays.AliPayType is installed but not configured in this app
        pay.getPayUrl(orderId=order["orderId"], fullName="pays.AliPayType", payType="pc")
    assert "pays.AliPayType is not configured in this app" in str(info.value)
    with pytest.raises(UnknownPayType):
        pay.check(orderId=order["orderId"], fullName="pays.AliPayType")


# -- check and notifications ---------------------------------------------------------------------------------------

def test_check_applies_the_provider_answer(app: Any, pay: Any) -> None:
    order = pay.create("Book", "12.30")
    pay.getPayUrl(orderId=order["orderId"], fullName=FAKE, payType="pc")
    assert pay.check(orderId=order["orderId"], fullName=FAKE)["status"] == "pending"
    fake_class(app).trades[f"{FAKE}:{order['orderId']}"] = TradeState(order["orderId"], "success", "T9",
                                                                      Decimal("12.30"))
    checked = pay.check(orderId=order["orderId"], fullName=FAKE)
    assert checked["status"] == "success" and checked["tradeNo"] == "T9" and checked["provider"] == FAKE
    assert checked["payTime"] is not None
    pay.check(orderId=order["orderId"], fullName=FAKE)
    assert fake_plugin.EVENTS.count(("paid", order["orderId"])) == 1
    with pytest.raises(Exception) as info:
        pay.getPayUrl(orderId=order["orderId"], fullName=FAKE, payType="pc")
    assert info.value.code == "ORDER_PAID"
    kinds = [(row.kind, row.outcome) for row in audit(app, order["orderId"])]
    assert ("check", "pending->success") in kinds and ("check", "unchanged") in kinds


def test_check_records_money_captured_for_another_amount_as_a_surplus_and_refunds_it(app: Any, pay: Any) -> None:
    svc = app.loadElement("pays.services.PaySvc")
    order = pay.create("Book", "12.30")
    order_id = order["orderId"]
    fake_class(app).trades[f"{FAKE}:{order_id}"] = TradeState(order_id, "success", "T9", Decimal("0.01"))
    checked = pay.check(orderId=order_id, fullName=FAKE)
    assert checked["status"] == "pending" and checked["tradeNo"] is None  # it does not pay the order
    [payment] = checked["payments"]
    assert (payment["tradeNo"], payment["amount"], payment["status"], payment["role"]) == (
        "T9", Decimal("0.01"), "paid", "surplus")
    [row] = [r for r in audit(app, order_id) if r.outcome == "surplus"]
    assert row.errorCode == "AMOUNT_MISMATCH" and "0.01" in row.message and "12.30" in row.message
    assert fake_plugin.EVENTS.count(("surplus", order_id)) == 1
    assert svc.money_check(order_id) == (1, 0)
    app.jobs.run_until_idle()
    [refund] = pay.query(orderId=order_id)["refunds"]
    assert (refund["kind"], refund["status"], refund["amount"]) == ("surplus", "confirmed", Decimal("0.01"))
    assert fake_class(app).refunds == {refund["refundId"]: Decimal("0.01")}
    assert svc.money_check(order_id) == (0, 0)
    # the order can still be paid, in full, another way
    assert svc.handle_notify("fake", signed_notify(app, order_id, "12.30", trade_no="T10")).body == b"ok"
    assert pay.query(orderId=order_id)["status"] == "success"
    assert svc.money_check(order_id) == (1230, 1230)


def test_check_with_no_usable_amount_changes_nothing(app: Any, pay: Any) -> None:
    order = pay.create("Book", "12.30")
    fake_class(app).trades[f"{FAKE}:{order['orderId']}"] = TradeState(order["orderId"], "success", "T9", None)
    with pytest.raises(Exception) as info:
        pay.check(orderId=order["orderId"], fullName=FAKE)
    assert info.value.code == "AMOUNT_MISMATCH"
    assert pay.query(orderId=order["orderId"])["status"] == "pending"
    assert pay.query(orderId=order["orderId"])["payments"] == []
    assert audit(app, order["orderId"])[-1].errorCode == "AMOUNT_MISMATCH"


def test_notified_capture_of_another_amount_is_asked_about_then_recorded(app: Any, pay: Any) -> None:
    """A notification saying another amount was captured changes nothing by itself; a job asks the provider, whose
    answer is recorded; the notification sent again is then acknowledged."""
    svc = app.loadElement("pays.services.PaySvc")
    order_id = pay.create("Book", "12.30")["orderId"]
    note = signed_notify(app, order_id, "20.00", trade_no="T7")
    assert svc.handle_notify("fake", note).body.startswith(b"fail")
    assert pay.query(orderId=order_id)["payments"] == []
    [job] = [j for j in app.jobs.list(states=["due"]) if j["kind"] == "pays.check_trades"]
    assert job["payload"] == {"orderId": order_id, "provider": FAKE}
    assert svc.handle_notify("fake", note).body.startswith(b"fail")  # sent again: still one job
    assert len([j for j in app.jobs.list(states=["due"]) if j["kind"] == "pays.check_trades"]) == 1
    fake_class(app).trades[f"{FAKE}:{order_id}"] = TradeState(order_id, "success", "T7", Decimal("20.00"))
    app.jobs.run_until_idle()
    result = pay.query(orderId=order_id)
    assert result["status"] == "pending"
    [payment] = result["payments"]
    assert (payment["tradeNo"], payment["amount"], payment["role"], payment["status"]) == (
        "T7", Decimal("20.00"), "surplus", "refunded")
    assert [(r["kind"], r["status"], r["amount"]) for r in result["refunds"]] == [
        ("surplus", "confirmed", Decimal("20.00"))]
    assert svc.handle_notify("fake", note).body == b"ok"  # the capture is recorded: the provider may stop
    assert svc.money_check(order_id) == (0, 0)
    # a forged-looking one the provider does not confirm changes nothing, after asking
    other = pay.create("Pen", "3.00")["orderId"]
    assert svc.handle_notify("fake", signed_notify(app, other, "0.01", trade_no="T8")).body.startswith(b"fail")
    app.jobs.run_until_idle()
    assert pay.query(orderId=other)["payments"] == [] and pay.query(orderId=other)["status"] == "pending"
    assert [r.outcome for r in audit(app, other) if r.kind == "check"] == ["unchanged"]


def test_check_provider_failure_changes_nothing(app: Any, pay: Any) -> None:
    order = pay.create("Book", "12.30")
    fake_class(app).fail_next.append(ProviderError("gateway down", provider_code="X", provider_message="down"))
    with pytest.raises(ProviderError):
        pay.check(orderId=order["orderId"], fullName=FAKE)
    assert pay.query(orderId=order["orderId"])["status"] == "pending"
    assert audit(app, order["orderId"])[-1].outcome == "provider-error"


def test_notify_is_verified_applied_once_and_recorded(app: Any, pay: Any) -> None:
    svc = app.loadElement("pays.services.PaySvc")
    order = pay.create("Book", "12.30")
    order_id = order["orderId"]
    for forged in (signed_notify(app, order_id, "12.30", secret="wrong"),
                   {**signed_notify(app, order_id, "12.30"), "amount": "0.01"},          # tampered after signing
                   signed_notify(app, order_id, "12.30", merchant="m2"),               # addressed to another merchant
                   signed_notify(app, order_id, "0.01"),                                # signed, wrong amount
                   signed_notify(app, "NO_SUCH_ORDER", "12.30")):
        reply = svc.handle_notify("fake", forged)
        assert reply.body.startswith(b"fail")
        assert pay.query(orderId=order_id)["status"] == "pending"
    codes = [row.errorCode for row in audit(app) if row.outcome == "rejected"]
    assert codes == ["SIGNATURE_INVALID", "SIGNATURE_INVALID", "NOTIFY_INVALID", "AMOUNT_MISMATCH", "ORDER_NOT_EXIST"]
    good = signed_notify(app, order_id, "12.30")
    for _ in range(3):  # providers retry
        assert svc.handle_notify("fake", good).body == b"ok"
    assert pay.query(orderId=order_id)["status"] == "success"
    assert fake_plugin.EVENTS.count(("paid", order_id)) == 1


def test_concurrent_notify_and_check_change_the_order_once(app: Any, pay: Any) -> None:
    svc = app.loadElement("pays.services.PaySvc")
    orders = [pay.create("Book", "5.00")["orderId"] for _ in range(5)]
    for order_id in orders:
        fake_class(app).trades[f"{FAKE}:{order_id}"] = TradeState(order_id, "success", "T1", Decimal("5.00"))
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def deliver(kind: int) -> None:
        barrier.wait()
        try:
            for order_id in orders:
                if kind % 2:
                    svc.handle_notify("fake", signed_notify(app, order_id, "5.00"))
                else:
                    pay.check(orderId=order_id, fullName=FAKE)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for order_id in orders:
        assert pay.query(orderId=order_id)["status"] == "success"
        assert fake_plugin.EVENTS.count(("paid", order_id)) == 1
        assert [r.outcome for r in audit(app, order_id)].count("pending->success") == 1


def test_switching_provider_first_confirmation_wins_the_second_is_refunded(app: Any, pay: Any) -> None:
    svc = app.loadElement("pays.services.PaySvc")
    order_id = pay.create("Book", "8.00")["orderId"]
    pay.getPayUrl(orderId=order_id, fullName=FAKE, payType="pc")
    pay.getPayUrl(orderId=order_id, fullName="shop.OtherPay", payType="pc")
    assert svc.handle_notify("fake", signed_notify(app, order_id, "8.00", secret="other", trade_no="B")).body == b"ok"
    result = pay.query(orderId=order_id)
    assert result["provider"] == "shop.OtherPay" and result["tradeNo"] == "B"
    # the other provider confirms a second payment: acknowledged, recorded as a surplus, the order unchanged
    assert svc.handle_notify("fake", signed_notify(app, order_id, "8.00", trade_no="A")).body == b"ok"
    result = pay.query(orderId=order_id)
    assert result["tradeNo"] == "B" and result["status"] == "success"
    assert {(p["fullName"], p["tradeNo"], p["role"], p["status"]) for p in result["payments"]} == {
        ("shop.OtherPay", "B", "accepted", "paid"), (FAKE, "A", "surplus", "paid")}
    notes = [row for row in audit(app, order_id) if row.kind == "notify"]
    assert notes[-1].errorCode == "SURPLUS_PAYMENT"
    assert fake_plugin.EVENTS.count(("paid", order_id)) == 1
    assert fake_plugin.EVENTS.count(("surplus", order_id)) == 1
    # the jobs settle the order (the other trade is closed) and give the surplus back through its own provider
    app.jobs.run_until_idle()
    assert fake_class(app).closed == [order_id]
    # only FAKE had a trade left to settle: the paying element's settle is the contract's default, a no-op where
    # the payment was taken, so it gets no job
    assert sorted((r.provider, r.outcome) for r in audit(app, order_id) if r.kind == "settle") == [(FAKE, "settled")]
    assert not [job for job in app.jobs.list(limit=1000) if job["kind"] == "pays.close_trades"
                and job["payload"] == {"orderId": order_id, "provider": "shop.OtherPay"}]
    [surplus] = [p for p in pay.query(orderId=order_id)["payments"] if p["role"] == "surplus"]
    assert surplus["status"] == "refunded" and surplus["refundedAmount"] == Decimal("8.00")
    [refund] = pay.query(orderId=order_id)["refunds"]
    assert (refund["kind"], refund["status"], refund["amount"]) == ("surplus", "confirmed", Decimal("8.00"))
    assert fake_class(app).refunds == {refund["refundId"]: Decimal("8.00")}
    assert fake_plugin.EVENTS.count(("surplus-refunded", order_id)) == 1
    assert pay.query(orderId=order_id)["refundedAmount"] == Decimal("0.00")  # the order's own payment is untouched
    assert svc.money_check(order_id) == (800, 800)


def test_a_failing_paid_hook_never_undoes_the_payment_and_gets_the_event_again(app: Any, pay: Any) -> None:
    svc = app.loadElement("pays.services.PaySvc")
    fake_plugin.RAISE_ON_PAID.append(True)
    order_id = pay.create("Book", "8.00")["orderId"]
    assert svc.handle_notify("fake", signed_notify(app, order_id, "8.00")).body == b"ok"
    assert pay.query(orderId=order_id)["status"] == "success"
    assert ("paid", order_id) not in fake_plugin.EVENTS
    [failed] = [job for job in app.jobs.list() if job["kind"] == "jit.event" and job["lastError"]]
    assert "VIP grant service is down" in failed["lastError"]
    fake_plugin.RAISE_ON_PAID.clear()
    app.jobs.retry(failed["id"])
    app.jobs.run_until_idle()
    assert fake_plugin.EVENTS.count(("paid", order_id)) == 1
    first, second = [e for e in fake_plugin.DELIVERIES if e[0] == "jit_order_paid"]
    assert first[1] == second[1]  # the same event, by its id


def test_provider_closed_or_failed_changes_the_payment_not_the_order(app: Any, pay: Any) -> None:
    order_id = pay.create("Book", "8.00")["orderId"]
    pay.getPayUrl(orderId=order_id, fullName=FAKE, payType="pc")
    fake_class(app).trades[f"{FAKE}:{order_id}"] = TradeState(order_id, "closed")
    checked = pay.check(orderId=order_id, fullName=FAKE)
    assert checked["status"] == "pending" and checked["providerStatus"] == "closed"
    assert [p["status"] for p in checked["payments"]] == ["closed"]
    other = pay.create("Book", "8.00")["orderId"]
    pay.getPayUrl(orderId=other, fullName=FAKE, payType="pc")
    fake_class(app).trades[f"{FAKE}:{other}"] = TradeState(other, "failed")
    checked = pay.check(orderId=other, fullName=FAKE)
    assert checked["status"] == "pending" and [p["status"] for p in checked["payments"]] == ["failed"]
    # the buyer can still pay: a failed attempt is not the end of the order
    fake_class(app).trades[f"{FAKE}:{other}"] = TradeState(other, "success", "T2", Decimal("8.00"))
    assert pay.check(orderId=other, fullName=FAKE)["status"] == "success"


# -- close and refund ----------------------------------------------------------------------------------------------

def test_close(app: Any, pay: Any) -> None:
    order_id = pay.create("Book", "8.00")["orderId"]
    pay.getPayUrl(orderId=order_id, fullName=FAKE, payType="pc")
    assert pay.close(orderId=order_id)["status"] == "closed"
    assert fake_class(app).closed == [order_id]
    assert pay.close(orderId=order_id)["status"] == "closed"  # idempotent
    with pytest.raises(Exception) as info:
        pay.close(orderId="NO_SUCH_ORDER")
    assert info.value.code == "ORDER_NOT_EXIST"


def _paid_order(app: Any, pay: Any, amount: str = "10.00") -> str:
    order_id = pay.create("Book", amount)["orderId"]
    fake_class(app).trades[f"{FAKE}:{order_id}"] = TradeState(order_id, "success", "T1", Decimal(amount))
    pay.check(orderId=order_id, fullName=FAKE)
    return order_id


def test_refund_partial_full_idempotent_and_bounded(app: Any, pay: Any) -> None:
    order_id = _paid_order(app, pay)
    with pytest.raises(Exception) as info:
        pay.close(orderId=order_id)
    assert info.value.code == "ORDER_PAID"
    first = pay.refund(orderId=order_id, amount="3.00", refundId="REF1")
    assert {k: first[k] for k in ("orderId", "refundId", "amount", "status", "refundNo", "kind")} == {
        "orderId": order_id, "refundId": "REF1", "amount": Decimal("3.00"), "status": "confirmed",
        "refundNo": "FRREF1", "kind": "merchant"}
    assert pay.refund(orderId=order_id, amount="3.00", refundId="REF1") == first  # retried: same refund
    assert fake_class(app).refunds == {"REF1": Decimal("3.00")}
    with pytest.raises(Exception) as info:
        pay.refund(orderId=order_id, amount="4.00", refundId="REF1")
    assert info.value.code == "REFUND_INVALID"
    with pytest.raises(Exception) as info:
        pay.refund(orderId=order_id, amount="7.01", refundId="REF2")
    assert info.value.code == "REFUND_INVALID"
    assert pay.query(orderId=order_id)["status"] == "success"
    rest = pay.refund(orderId=order_id)
    assert rest["amount"] == Decimal("7.00")
    status = pay.query(orderId=order_id)
    assert status["status"] == "refunded" and status["refundedAmount"] == Decimal("10.00")
    with pytest.raises(Exception) as info:
        pay.refund(orderId=order_id, amount="0.01")
    assert info.value.code == "REFUND_INVALID"
    assert fake_plugin.EVENTS.count(("refunded", order_id)) == 2
    # a fully refunded order still answers its refunds by id
    assert pay.refund(orderId=order_id, refundId="REF1") == first
    assert pay.refund(orderId=order_id, refundId=rest["refundId"])["amount"] == Decimal("7.00")


def test_refund_errors(app: Any, pay: Any) -> None:
    unpaid = pay.create("Book", "1.00")["orderId"]
    with pytest.raises(Exception) as info:
        pay.refund(orderId=unpaid)
    assert info.value.code == "ORDER_STATE_CONFLICT"
    order_id = _paid_order(app, pay)
    fake_class(app).fail_next.append(ProviderError("refused", provider_code="ACQ.X", provider_message="no"))
    with pytest.raises(ProviderError):
        pay.refund(orderId=order_id, amount="10.00", refundId="R1")
    assert pay.query(orderId=order_id)["refundedAmount"] == Decimal("0.00")  # a refused refund counts for nothing
    assert pay.refund(orderId=order_id, amount="10.00", refundId="R1")["status"] == "confirmed"  # retry works
    for bad in ("0", "-1", "0.001"):
        with pytest.raises(Exception) as info:
            pay.refund(orderId=order_id, amount=bad)
        assert info.value.code in ("AMOUNT_INVALID", "REFUND_INVALID")


def test_refund_with_unknown_outcome_stays_counted(app: Any, pay: Any) -> None:
    order_id = _paid_order(app, pay)
    fake_class(app).fail_next.append(ProviderError("no answer", details={"outcomeUnknown": True}))
    with pytest.raises(ProviderError):
        pay.refund(orderId=order_id, amount="10.00", refundId="R1")
    # the provider may have refunded: only confirmed refunds count as refunded, but this one stays reserved, so no
    # other refund can pay it out again
    status = pay.query(orderId=order_id)
    assert status["refundedAmount"] == Decimal("0.00") and status["status"] == "success"
    assert [(r["refundId"], r["status"]) for r in status["refunds"]] == [("R1", "unknown")]
    with pytest.raises(Exception) as info:
        pay.refund(orderId=order_id, amount="10.00", refundId="R2")
    assert info.value.code == "REFUND_INVALID" and info.value.details["refundId"] == "R2"
    assert pay.refund(orderId=order_id, amount="10.00", refundId="R1")["status"] == "confirmed"  # same id: retried
    assert pay.query(orderId=order_id)["status"] == "refunded"
    assert [r.outcome for r in audit(app, order_id) if r.kind == "refund"][0] == "outcome-unknown"


def test_an_unknown_outcome_is_retried_by_a_job_with_the_same_id(app: Any, pay: Any) -> None:
    order_id = _paid_order(app, pay)
    fake_class(app).fail_next.append(ProviderError("no answer", details={"outcomeUnknown": True}))
    with pytest.raises(ProviderError) as info:
        pay.refund(orderId=order_id, amount="4.00")
    generated = info.value.details["refundId"]  # the caller can retry it too
    assert pay.query(orderId=order_id)["refunds"][0]["status"] == "unknown"
    assert "pays.refund" in [j["kind"] for j in app.jobs.list(states=["due"])]
    make_due(app)  # a minute passes
    app.jobs.run_until_idle()
    [refund] = pay.query(orderId=order_id)["refunds"]
    assert (refund["refundId"], refund["status"]) == (generated, "confirmed")
    assert fake_class(app).refunds == {generated: Decimal("4.00")}
    assert pay.query(orderId=order_id)["refundedAmount"] == Decimal("4.00")


def test_any_exception_while_refunding_leaves_a_defined_state(app: Any, pay: Any) -> None:
    order_id = _paid_order(app, pay)
    fake_class(app).fail_next.append(RuntimeError("the process is going down"))  # type: ignore[arg-type]
    with pytest.raises(ProviderError) as failed:  # never a bare RuntimeError from deep inside
        pay.refund(orderId=order_id, amount="4.00", refundId="RX")
    assert failed.value.details == {"refundId": "RX", "outcomeUnknown": True}
    assert isinstance(failed.value.__cause__, RuntimeError)
    [refund] = pay.query(orderId=order_id)["refunds"]
    assert refund["status"] == "unknown" and refund["error"]["code"] == "RuntimeError"
    assert pay.refund(orderId=order_id, amount="4.00", refundId="RX")["status"] == "confirmed"
    # a generated refundId is in the error's details too, so the caller can finish that very refund
    fake_class(app).fail_next.append(KeyError("deep inside"))  # type: ignore[arg-type]
    with pytest.raises(ProviderError) as generated:
        pay.refund(orderId=order_id, amount="1.00")
    refund_id = generated.value.details["refundId"]
    assert refund_id.startswith("R") and generated.value.details["outcomeUnknown"] is True
    assert pay.refund(orderId=order_id, amount="1.00", refundId=refund_id)["status"] == "confirmed"
    assert pay.query(orderId=order_id)["refundedAmount"] == Decimal("5.00")


def test_concurrent_refunds_never_exceed_the_paid_amount(app: Any, pay: Any) -> None:
    order_id = _paid_order(app, pay, "10.00")
    results: list[str] = []
    barrier = threading.Barrier(5)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            pay.refund(orderId=order_id, amount="3.00", refundId=f"C{i}")
            results.append("ok")
        except Exception as exc:
            results.append(exc.code)  # type: ignore[attr-defined]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 3 and results.count("REFUND_INVALID") == 2
    assert pay.query(orderId=order_id)["refundedAmount"] == Decimal("9.00")


def test_refresh_pending_asks_the_providers_at_most_every_interval(app: Any, pay: Any) -> None:
    svc = app.loadElement("pays.services.PaySvc")
    order_id = pay.create("Book", "8.00")["orderId"]
    assert svc.refresh_pending(order_id).status == "pending"  # nothing offered yet: nobody to ask
    pay.getPayUrl(orderId=order_id, fullName=FAKE, payType="pc")
    svc._refreshed.clear()
    assert svc.refresh_pending(order_id).status == "pending"
    fake_class(app).trades[f"{FAKE}:{order_id}"] = TradeState(order_id, "success", "T5", Decimal("8.00"))
    assert svc.refresh_pending(order_id).status == "pending"  # asked a moment ago: not again yet
    svc._refreshed.clear()  # the interval has passed
    assert svc.refresh_pending(order_id).status == "success"
    assert fake_plugin.EVENTS.count(("paid", order_id)) == 1
    assert svc.refresh_pending("NO_SUCH_ORDER") is None


def test_refresh_pending_asks_less_often_about_an_older_order(app: Any, pay: Any, monkeypatch: Any) -> None:
    svc = app.loadElement("pays.services.PaySvc")
    order_id = pay.create("Book", "8.00")["orderId"]
    pay.getPayUrl(orderId=order_id, fullName=FAKE, payType="pc")
    svc._refreshed.clear()
    assert svc.refresh_pending(order_id).status == "pending"
    fake_class(app).trades[f"{FAKE}:{order_id}"] = TradeState(order_id, "success", "T6", Decimal("8.00"))
    paysvc_module = sys.modules[type(svc).__module__]
    # 20 s after the last question: asked again while the order is young ...
    svc._refreshed[order_id] -= 20
    monkeypatch.setattr(paysvc_module, "REFRESH_SLOWS_AFTER", timedelta(hours=1))
    order = svc.ledger.order(order_id)
    assert svc.refresh_pending(order_id, order).status == "success"
    # ... but not about an order older than REFRESH_SLOWS_AFTER, until REFRESH_INTERVAL_LATER has passed
    other = pay.create("Book", "8.00")["orderId"]
    pay.getPayUrl(orderId=other, fullName=FAKE, payType="pc")
    assert svc.refresh_pending(other).status == "pending"
    fake_class(app).trades[f"{FAKE}:{other}"] = TradeState(other, "success", "T7", Decimal("8.00"))
    monkeypatch.setattr(paysvc_module, "REFRESH_SLOWS_AFTER", timedelta(0))
    svc._refreshed[other] -= 20
    assert svc.refresh_pending(other).status == "pending"
    svc._refreshed[other] -= 120
    assert svc.refresh_pending(other).status == "success"


def test_check_refuses_an_answer_about_another_order(app: Any, pay: Any) -> None:
    first = pay.create("Book", "8.00")["orderId"]
    other = pay.create("Book", "8.00")["orderId"]
    fake_class(app).trades[f"{FAKE}:{first}"] = TradeState(other, "success", "T7", Decimal("8.00"))
    with pytest.raises(ProviderError):
        pay.check(orderId=first, fullName=FAKE)
    assert pay.query(orderId=first)["status"] == "pending" and pay.query(orderId=other)["status"] == "pending"
    assert audit(app, first)[-1].outcome == "rejected"
