"""The provider conformance kit: the rules every payment provider keeps, as pytest tests a provider plugin inherits.

A provider plugin (and JitPay for Alipay and WeChat Pay) runs it against its own fake gateway or sandbox::

    from elements.pays.testing import (ConformanceGateway, ConformanceSetup, FailedPaymentConformance,
                                       ProviderConformance)

    class AcmeGateway(ConformanceGateway):
        ...                                   # pay, notifications, rewrite (and fail, outage where it can)

    class TestAcmePayConformance(ProviderConformance, FailedPaymentConformance):   # AcmePay payments can fail
        @pytest.fixture
        def conformance(self, tmp_path):
            ...                               # load (and serve) an app that configures the provider
            yield ConformanceSetup(app=app, fullName="acmepay.AcmePayType", gateway=AcmeGateway(fake))

Every test drives PaySvc (``getPayUrl``, ``check``, ``close``, ``refund``, notifications through
:meth:`PaySvc.handleNotify`, or over HTTP to the provider's notify URL when the app is served) and checks what
docs/PROVIDERS.md promises: forged, tampered, wrong-amount and wrong-merchant notifications change nothing and are
recorded in the audit log (money a trade captured for another amount is asked about, recorded as a surplus and
refunded); duplicates are idempotent; statuses map as documented; refunds are idempotent per id;
errors carry codes; money a closed order did not need goes back. A provider whose payments can fail (the provider
reports a trade failed) includes :class:`FailedPaymentConformance` as well; one whose payments cannot (Alipay: a
trade is paid, pending or closed) leaves it out, so nothing is skipped for it. Likewise a provider whose refunds can
finish after the refund call (``RefundResult.status`` ``processing``: WeChat Pay; Alipay when no money moved yet)
includes :class:`LateRefundConformance`, and one whose refunds can end ``abnormal`` (WeChat Pay) also
:class:`AbnormalRefundConformance`. A gateway that cannot simulate an outage skips that one test, saying why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ContextManager, Iterator, Literal

import pytest

from elements.pays.errors import PayError
from elements.pays.Meta import NotifyReply, NotifyRequest, PayProvider

__all__ = ["ConformanceGateway", "ConformanceSetup", "ProviderConformance", "FailedPaymentConformance",
           "LateRefundConformance", "AbnormalRefundConformance", "Delivered", "prepare_elsewhere"]

PAYSVC = "pays.services.PaySvc"
PROVIDER_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def prepare_elsewhere(app: Any, fullName: str, orderId: str, amount: Decimal | str, payType: str = "pc") -> Any:
    """A trade of order ``orderId`` for ``amount`` made with payment element ``fullName``'s own ``prepare``, not
    through PaySvc (as someone else with the merchant's keys would: another copy of the app, a script): how a test
    gets a provider to capture another amount than the order's. Its ``PaymentPrep``."""
    svc = app.loadElement(PAYSVC)
    view = dataclasses.replace(svc.order_view(svc.ledger.order(orderId)), amount=Decimal(amount))
    return svc.provider(fullName).prepare(view, payType)


class ConformanceGateway:
    """What the kit needs from a provider's fake gateway or sandbox: play the buyer and the provider. Implement
    :meth:`pay`, :meth:`notifications` and :meth:`rewrite`; :meth:`fail` only for :class:`FailedPaymentConformance`,
    and :meth:`outage` is optional (its test is skipped without it). The gateway must *hold* its notifications (not
    post them): the kit delivers them."""

    def pay(self, reference: str) -> bool:
        """The buyer pays the trade ``reference`` (a prepared payment's ``PaymentPrep.reference``) as they would
        (scan, press pay). True if it was paid now; False if it can no longer be paid (closed, expired)."""
        raise NotImplementedError

    def fail(self, reference: str) -> bool:
        """The buyer's payment of ``reference`` fails (the gateway reports the trade failed). True if it failed now.
        Needed by :class:`FailedPaymentConformance` only."""
        raise NotImplementedError

    def notifications(self) -> list[NotifyRequest]:
        """The notifications the gateway made since the last call (held, not posted), oldest first, exactly as it
        would post them (body bytes and headers)."""
        raise NotImplementedError

    def rewrite(self, notification: NotifyRequest, *, amount: Decimal | None = None, other_merchant: bool = False,
                signature: Literal["valid", "forged", "kept"] = "valid") -> NotifyRequest:
        """``notification`` changed: another paid ``amount``, or addressed to another merchant (app id, merchant
        id, ...), then signed as the gateway signs for the configured merchant (``valid``), with a key that is not
        the gateway's (``forged``), or not signed again, the original signature kept (``kept``: tampered)."""
        raise NotImplementedError

    def captured(self, reference: str) -> Decimal:
        """Yuan the buyer paid into trade ``reference`` at the gateway (stays after refunds)."""
        raise NotImplementedError

    def refunded(self, reference: str) -> Decimal:
        """Yuan the gateway refunded from trade ``reference``."""
        raise NotImplementedError

    def outage(self) -> ContextManager[None]:
        """A context in which the gateway cannot be reached or answers 5xx. Optional."""
        raise NotImplementedError

    def refunds_wait(self, wait: bool) -> None:
        """While ``wait``, the gateway accepts new refunds without finishing them (until :meth:`end_refund`); once
        ``wait`` is off again, new refunds are made at once. Needed by :class:`LateRefundConformance` only."""
        raise NotImplementedError

    def end_refund(self, refundId: str, outcome: Literal["success", "closed", "abnormal"]) -> None:
        """The gateway ends an accepted refund: refunded, closed (nothing refunded, and nothing will be) or abnormal
        (not refunded; an abnormal refund may still end ``success``). Needed by :class:`LateRefundConformance`
        (``success``, ``closed``) and :class:`AbnormalRefundConformance` (``abnormal``) only."""
        raise NotImplementedError


@dataclass
class ConformanceSetup:
    """A loaded app that configures the provider ``fullName``, and the gateway it talks to.

    ``served``: the app is served over HTTP at its ``baseUrl``, so notifications are posted to the provider's
    ``notify_url()`` (else handed to ``PaySvc.handleNotify``). The app's job runner must not run on its own: the kit
    runs the jobs when it wants them (``app.jobs.run_until_idle()``)."""

    app: Any
    fullName: str
    gateway: ConformanceGateway
    payType: str = "pc"
    amount: Decimal = Decimal("12.34")
    served: bool = False


@dataclass(frozen=True)
class Delivered:
    """PaySvc's answer to a delivered notification."""

    status: int
    body: bytes

    def same_as(self, reply: NotifyReply) -> bool:
        """Whether it is ``reply`` (status and body)."""
        return self.status == reply.status and self.body == reply.body


class ProviderConformance:
    """The conformance tests. Subclass it as ``Test...`` and give the fixture ``conformance`` (a
    :class:`ConformanceSetup`); add :class:`FailedPaymentConformance` when the provider's payments can fail, and
    :class:`LateRefundConformance` when its refunds can finish after the refund call."""

    # -- helpers ------------------------------------------------------------------------------------------------------
    @pytest.fixture
    def kit(self, conformance: ConformanceSetup) -> "Kit":
        """The setup with the helpers the tests share."""
        return Kit(conformance)

    # -- the contract's shape -----------------------------------------------------------------------------------------
    def test_contract_shape(self, kit: "Kit") -> None:
        provider = kit.provider
        assert isinstance(provider, PayProvider)
        assert PROVIDER_NAME_RE.match(provider.providerName), provider.providerName
        assert provider.payTypes and kit.setup.payType in provider.payTypes
        ok, no = provider.notify_reply(True), provider.notify_reply(False, "why")
        assert isinstance(ok, NotifyReply) and isinstance(no, NotifyReply)
        assert (ok.status, ok.body) != (no.status, no.body), "the provider must tell 'processed' from 'not'"
        assert provider.notify_url().startswith(("http://", "https://"))
        assert kit.svc.notify_providers(provider.providerName)
        if type(kit.gateway).fail is not ConformanceGateway.fail:
            assert isinstance(self, FailedPaymentConformance), \
                "the gateway can make a payment fail: include FailedPaymentConformance in the test class"
        if type(provider).refund_state is not PayProvider.refund_state:
            assert isinstance(self, LateRefundConformance), \
                "the provider follows refunds that finish later (refund_state): include LateRefundConformance"

    def test_prepare_offers_a_trade_that_ends_with_the_order(self, kit: "Kit") -> None:
        order = kit.create()
        for payType in kit.provider.payTypes:
            prep = kit.svc.getPayUrl(order["orderId"], kit.fullName, payType)
            assert prep["payUrl"], payType
            if prep["expiresAt"] is not None:
                assert prep["expiresAt"] <= order["expiresAt"], "a trade must not outlive its order"
        payments = kit.payments(order["orderId"])
        assert payments and all(p["reference"] for p in payments)
        assert kit.order(order["orderId"])["status"] == "pending"

    def test_unsupported_pay_type_is_refused_with_its_code(self, kit: "Kit") -> None:
        order = kit.create()
        with pytest.raises(PayError) as caught:
            kit.svc.getPayUrl(order["orderId"], kit.fullName, "no-such-pay-type")
        assert caught.value.code == "UNSUPPORTED_PAY_TYPE"

    # -- statuses -----------------------------------------------------------------------------------------------------
    def test_an_unpaid_trade_is_pending(self, kit: "Kit") -> None:
        order = kit.create()
        kit.prepare(order)
        checked = kit.svc.check(order["orderId"], kit.fullName)
        assert checked["providerStatus"] == "pending" and checked["status"] == "pending"

    def test_a_paid_notification_pays_the_order_once(self, kit: "Kit") -> None:
        order, reference = kit.paid_order()
        notes = kit.gateway.notifications()
        assert notes, "the gateway made no notification of the payment"
        mark = kit.audit_mark()
        for note in notes:
            assert kit.deliver(note).same_as(kit.provider.notify_reply(True))
        paid = kit.order(order["orderId"])
        assert paid["status"] == "success" and paid["provider"] == kit.fullName and paid["tradeNo"]
        assert paid["payTime"] is not None
        accepted = [p for p in paid["payments"] if p["role"] == "accepted"]
        assert len(accepted) == 1 and accepted[0]["status"] == "paid"
        # the provider notifies again (it always may): acknowledged, nothing changes
        for _ in range(2):
            assert kit.deliver(notes[-1]).same_as(kit.provider.notify_reply(True))
        assert kit.order(order["orderId"]) == paid
        outcomes = [r.outcome for r in kit.audit_since(mark) if r.kind == "notify"]
        assert outcomes.count("pending->success") == 1 and "rejected" not in outcomes
        kit.assert_money(order["orderId"], captured=kit.setup.amount)

    def test_check_finds_a_payment_whose_notification_was_lost(self, kit: "Kit") -> None:
        order, _ = kit.paid_order()
        kit.gateway.notifications()  # dropped
        checked = kit.svc.check(order["orderId"], kit.fullName)
        assert checked["providerStatus"] == "success" and checked["status"] == "success"
        assert checked["provider"] == kit.fullName and checked["tradeNo"]

    def test_close_then_money_that_comes_anyway_goes_back(self, kit: "Kit") -> None:
        order = kit.create()
        reference = kit.prepare(order)
        closed = kit.svc.close(order["orderId"])
        assert closed["status"] == "closed"
        kit.run_jobs()
        if kit.gateway.pay(reference):  # the provider still took the money (a QR code it never saw, say)
            for note in kit.gateway.notifications():
                assert kit.deliver(note).same_as(kit.provider.notify_reply(True))
            kit.svc.check(order["orderId"], kit.fullName)
            kit.run_jobs()
            after = kit.order(order["orderId"])
            assert after["status"] == "closed"
            assert [p["role"] for p in after["payments"] if p["status"] in ("paid", "refunded")] == ["surplus"]
            assert kit.gateway.refunded(reference) == kit.gateway.captured(reference) == kit.setup.amount
        kit.assert_money(order["orderId"])

    def test_money_captured_for_another_amount_is_asked_about_and_goes_back(self, kit: "Kit") -> None:
        """A trade of the order made for another amount (with the merchant's keys, not through PaySvc) and paid:
        its notification changes nothing by itself; the job that asks the provider records the money as a surplus of
        the amount captured, and a job refunds it."""
        order = kit.create()
        other = kit.setup.amount - Decimal("0.01")
        prep = prepare_elsewhere(kit.app, kit.fullName, order["orderId"], other, kit.setup.payType)
        reference = prep.reference or order["orderId"]
        assert kit.gateway.pay(reference), "the gateway did not take the payment"
        notes = kit.gateway.notifications()
        assert notes, "the gateway made no notification of the payment"
        for note in notes:
            assert not kit.deliver(note).same_as(kit.provider.notify_reply(True)), "a wrong amount was acknowledged"
        assert kit.order(order["orderId"])["payments"] == []
        kit.run_jobs()
        after = kit.order(order["orderId"])
        assert after["status"] == "pending"
        assert [(p["amount"], p["role"], p["status"]) for p in kit.payments(order["orderId"])] == [
            (other, "surplus", "refunded")]
        assert kit.gateway.refunded(reference) == kit.gateway.captured(reference) == other
        for note in notes:  # recorded now: sent again, it is acknowledged
            assert kit.deliver(note).same_as(kit.provider.notify_reply(True))
        kit.assert_money(order["orderId"], captured=other)

    def test_refunds_are_idempotent_per_id_and_map_to_refunded(self, kit: "Kit") -> None:
        order, reference = kit.paid_order()
        for note in kit.gateway.notifications():
            kit.deliver(note)
        part = (kit.setup.amount / 2).quantize(Decimal("0.01"))
        first = kit.svc.refund(order["orderId"], amount=part, refundId="CONF-R1")
        again = kit.svc.refund(order["orderId"], amount=part, refundId="CONF-R1")
        assert first["status"] == again["status"] == "confirmed" and first["refundId"] == again["refundId"]
        assert kit.gateway.refunded(reference) == part
        with pytest.raises(PayError) as caught:
            kit.svc.refund(order["orderId"], amount=part + Decimal("0.01"), refundId="CONF-R1")
        assert caught.value.code == "REFUND_INVALID"
        rest = kit.svc.refund(order["orderId"], refundId="CONF-R2")
        assert rest["status"] == "confirmed" and rest["amount"] == kit.setup.amount - part
        assert kit.gateway.refunded(reference) == kit.setup.amount
        assert kit.order(order["orderId"])["status"] == "refunded"
        with pytest.raises(PayError) as caught:
            kit.svc.refund(order["orderId"], amount=Decimal("0.01"), refundId="CONF-R3")
        assert caught.value.code == "REFUND_INVALID"
        assert kit.svc.check(order["orderId"], kit.fullName)["providerStatus"] == "refunded"
        kit.assert_money(order["orderId"], captured=kit.setup.amount)

    # -- notifications that must change nothing ------------------------------------------------------------------
    def test_a_forged_notification_changes_nothing_and_is_recorded(self, kit: "Kit") -> None:
        kit.assert_rejected(lambda genuine: kit.gateway.rewrite(genuine, signature="forged"), ("SIGNATURE_INVALID",),
                            verified=False)

    def test_a_tampered_notification_changes_nothing_and_is_recorded(self, kit: "Kit") -> None:
        kit.assert_rejected(lambda genuine: kit.gateway.rewrite(genuine, amount=kit.setup.amount + 1,
                                                                signature="kept"),
                            ("SIGNATURE_INVALID",), verified=False)

    def test_a_wrong_amount_changes_nothing_and_is_recorded(self, kit: "Kit") -> None:
        kit.assert_rejected(lambda genuine: kit.gateway.rewrite(genuine, amount=kit.setup.amount - Decimal("0.01")),
                            ("AMOUNT_MISMATCH", "NOTIFY_INVALID"), verified=None)

    def test_a_notification_for_another_merchant_changes_nothing_and_is_recorded(self, kit: "Kit") -> None:
        kit.assert_rejected(lambda genuine: kit.gateway.rewrite(genuine, other_merchant=True), ("NOTIFY_INVALID",),
                            verified=None)

    def test_an_unreadable_notification_is_refused_and_recorded(self, kit: "Kit") -> None:
        kit.assert_rejected(lambda genuine: NotifyRequest(body=b"\xff\xfe{<not a notification", headers=genuine.headers,
                                                          query=genuine.query, client=genuine.client),
                            None, verified=None)

    # -- errors -------------------------------------------------------------------------------------------------------
    def test_provider_errors_carry_codes_and_unknown_outcomes_are_retried(self, kit: "Kit") -> None:
        order, reference = kit.paid_order()
        for note in kit.gateway.notifications():
            kit.deliver(note)
        try:
            outage = kit.gateway.outage()
        except NotImplementedError:
            pytest.skip("the gateway cannot simulate an outage")
        with outage:
            with pytest.raises(PayError) as caught:
                kit.svc.check(order["orderId"], kit.fullName)
            assert caught.value.code == "PROVIDER_ERROR"
            with pytest.raises(PayError) as caught:
                kit.svc.refund(order["orderId"], refundId="CONF-OUTAGE")
            assert caught.value.code == "PROVIDER_ERROR"
            assert [r["status"] for r in kit.order(order["orderId"])["refunds"]] == ["unknown"], \
                "a refund whose outcome is unknown stays counted (details outcomeUnknown)"
        again = kit.svc.refund(order["orderId"], refundId="CONF-OUTAGE")
        assert again["status"] == "confirmed"
        assert kit.gateway.refunded(reference) == kit.setup.amount
        kit.assert_money(order["orderId"], captured=kit.setup.amount)


class FailedPaymentConformance:
    """The conformance test of a failed payment, for a provider whose payments can fail (it reports ``failed``:
    WeChat Pay's ``PAYERROR``, AcmePay's ``payment.failed``). Include it beside :class:`ProviderConformance`
    (``class TestAcmePayConformance(ProviderConformance, FailedPaymentConformance)``); the gateway implements
    :meth:`ConformanceGateway.fail`."""

    def test_a_failed_payment_changes_that_payment_only(self, kit: "Kit") -> None:
        order = kit.create()
        reference = kit.prepare(order)
        assert kit.gateway.fail(reference), "the gateway did not make the payment fail"
        for note in kit.gateway.notifications():
            assert kit.deliver(note).same_as(kit.provider.notify_reply(True))
        kit.svc.check(order["orderId"], kit.fullName)
        after = kit.order(order["orderId"])
        assert after["status"] == "pending"
        assert [p["status"] for p in after["payments"] if p["reference"] == reference] == ["failed"]


class LateRefundConformance:
    """The conformance tests of refunds that finish after the refund call, for a provider that answers a refund
    ``processing`` and implements ``refund_state`` (WeChat Pay, Alipay). Include it beside
    :class:`ProviderConformance`; the gateway implements :meth:`ConformanceGateway.refunds_wait` and
    :meth:`ConformanceGateway.end_refund` (``success``, ``closed``)."""

    def test_a_refund_on_its_way_counts_once_it_succeeded(self, kit: "Kit") -> None:
        order_id = kit.paid_and_notified()
        kit.gateway.refunds_wait(True)
        part = (kit.setup.amount / 2).quantize(Decimal("0.01"))
        refund = kit.svc.refund(order_id, amount=part, refundId="CONF-LATE1")
        assert refund["status"] == "processing"
        assert kit.order(order_id)["refundedAmount"] == 0
        with pytest.raises(PayError) as caught:  # on its way: counted, never refunded twice
            kit.svc.refund(order_id, amount=kit.setup.amount - part + Decimal("0.01"), refundId="CONF-LATE2")
        assert caught.value.code == "REFUND_INVALID"
        kit.ask_about_refunds(order_id)
        assert [r["status"] for r in kit.order(order_id)["refunds"]] == ["processing"]
        kit.gateway.end_refund("CONF-LATE1", "success")
        kit.ask_about_refunds(order_id)
        after = kit.order(order_id)
        assert [r["status"] for r in after["refunds"]] == ["confirmed"] and after["refundedAmount"] == part
        kit.assert_money(order_id, captured=kit.setup.amount)

    def test_a_refund_closed_after_acceptance_releases_its_money(self, kit: "Kit") -> None:
        order_id = kit.paid_and_notified()
        kit.gateway.refunds_wait(True)
        assert kit.svc.refund(order_id, refundId="CONF-LATE3")["status"] == "processing"
        kit.gateway.end_refund("CONF-LATE3", "closed")
        kit.ask_about_refunds(order_id)
        [closed] = kit.order(order_id)["refunds"]
        assert closed["status"] == "refused" and closed["error"]["code"] == "REFUND_CLOSED"
        kit.assert_money(order_id, captured=kit.setup.amount)
        kit.gateway.refunds_wait(False)
        assert kit.svc.refund(order_id, refundId="CONF-LATE4")["status"] == "confirmed"  # refundable again
        assert kit.order(order_id)["status"] == "refunded"
        kit.assert_money(order_id, captured=kit.setup.amount)


class AbnormalRefundConformance:
    """The conformance test of refunds a provider accepted and then could not pay back the way the money came
    (``RefundResult.status`` ``abnormal``: WeChat Pay). Include it beside :class:`LateRefundConformance`; the gateway's
    :meth:`ConformanceGateway.end_refund` takes ``abnormal``."""

    def test_an_abnormal_refund_stays_counted_until_it_succeeds(self, kit: "Kit") -> None:
        order_id = kit.paid_and_notified()
        kit.gateway.refunds_wait(True)
        kit.svc.refund(order_id, refundId="CONF-LATE5")
        kit.gateway.end_refund("CONF-LATE5", "abnormal")
        kit.ask_about_refunds(order_id)
        [stuck] = kit.order(order_id)["refunds"]
        assert stuck["status"] == "abnormal" and kit.order(order_id)["refundedAmount"] == 0
        with pytest.raises(PayError) as caught:
            kit.svc.refund(order_id, amount=Decimal("0.01"), refundId="CONF-LATE6")
        assert caught.value.code == "REFUND_INVALID"
        kit.gateway.end_refund("CONF-LATE5", "success")
        kit.ask_about_refunds(order_id)
        assert kit.order(order_id)["status"] == "refunded"
        kit.assert_money(order_id, captured=kit.setup.amount)


class Kit:
    """The shared steps of the conformance tests."""

    def __init__(self, setup: ConformanceSetup) -> None:
        self.setup = setup
        self.app = setup.app
        self.fullName = setup.fullName
        self.gateway = setup.gateway
        self.svc = setup.app.loadElement(PAYSVC)
        self.provider: PayProvider = self.svc.provider(setup.fullName)
        self.api = setup.app.getElement(PAYSVC)

    def create(self) -> dict[str, Any]:
        """A new pending order of the setup's amount."""
        return self.api.create(subject="Conformance 一致性", amount=self.setup.amount)

    def prepare(self, order: dict[str, Any]) -> str:
        """Offer the order with the setup's payType; the trade's reference."""
        self.api.getPayUrl(orderId=order["orderId"], fullName=self.fullName, payType=self.setup.payType)
        return [p["reference"] for p in self.payments(order["orderId"])][-1]

    def paid_order(self) -> tuple[dict[str, Any], str]:
        """An order whose trade the buyer paid at the gateway (its notifications held, not delivered)."""
        order = self.create()
        reference = self.prepare(order)
        assert self.gateway.pay(reference), "the gateway did not take the payment"
        return order, reference

    def paid_and_notified(self) -> str:
        """An order paid at the gateway, its notifications delivered: its id."""
        order, _ = self.paid_order()
        for note in self.gateway.notifications():
            self.deliver(note)
        assert self.order(order["orderId"])["status"] == "success"
        return order["orderId"]

    def ask_about_refunds(self, order_id: str) -> None:
        """What the ``pays.refund_state`` job does, now: ask the provider about the order's refunds it accepted
        without finishing (``PaySvc.follow_refund``)."""
        for refund in self.order(order_id)["refunds"]:
            row = self.svc.ledger.refund_by_id(order_id, refund["refundId"])
            self.svc.follow_refund(row)

    def order(self, order_id: str) -> dict[str, Any]:
        return self.api.query(orderId=order_id)

    def payments(self, order_id: str) -> list[dict[str, Any]]:
        return [p for p in self.order(order_id)["payments"] if p["fullName"] == self.fullName]

    def run_jobs(self) -> None:
        """Run every due job (closing trades, surplus refunds) in this thread."""
        self.app.jobs.run_until_idle()

    def deliver(self, note: NotifyRequest) -> Delivered:
        """Deliver a notification: over HTTP to the provider's notify URL when the app is served, else through
        ``PaySvc.handleNotify``. Never a 500."""
        if self.setup.served:
            import httpx

            url = self.provider.notify_url() + (f"?{note.query}" if note.query else "")
            headers = [(k, v) for k in note.headers for v in note.headers.getlist(k) if k != "content-length"]
            response = httpx.post(url, content=note.body, headers=headers, timeout=10, trust_env=False)
            assert response.status_code < 500, response.text
            return Delivered(response.status_code, response.content)
        reply = self.svc.handleNotify(self.provider.providerName, note)
        return Delivered(reply.status, reply.body)

    def audit_mark(self) -> int:
        rows = self.svc.ledger.audit_log()
        return rows[-1].id if rows else 0

    def audit_since(self, mark: int) -> list[Any]:
        return [r for r in self.svc.ledger.audit_log() if r.id > mark]

    def assert_rejected(self, make: Any, codes: tuple[str, ...] | None, *, verified: bool | None) -> None:
        """Pay an order at the gateway, make a bad notification of its genuine one, deliver it: refused, nothing
        changed, recorded as rejected (with one of ``codes``); then the genuine one still pays the order."""
        order, _ = self.paid_order()
        genuine = self.gateway.notifications()
        assert genuine, "the gateway made no notification of the payment"
        before = self.order(order["orderId"])
        mark = self.audit_mark()
        reply = self.deliver(make(genuine[-1]))
        assert not reply.same_as(self.provider.notify_reply(True)), "a bad notification was acknowledged"
        assert self.order(order["orderId"]) == before, "a bad notification changed the order"
        rejected = [r for r in self.audit_since(mark) if r.outcome == "rejected"]
        assert rejected, "a bad notification must be recorded in the audit log"
        if codes is not None:
            assert rejected[-1].errorCode in codes, (rejected[-1].errorCode, rejected[-1].message)
        if verified is not None:
            assert rejected[-1].verified is verified
        assert self.deliver(genuine[-1]).same_as(self.provider.notify_reply(True))
        assert self.order(order["orderId"])["status"] == "success"

    def assert_money(self, order_id: str, captured: Decimal | None = None) -> None:
        """The money rule, once the jobs are drained: net captured equals what the order keeps."""
        self.run_jobs()
        net, expected = self.svc.money_check(order_id)
        assert net == expected, (net, expected)
        if captured is not None:
            assert sum((self.gateway.captured(p["reference"]) for p in self.payments(order_id)), Decimal("0")) \
                == captured


@contextlib.contextmanager
def swapped(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``obj.name`` to ``value`` for the duration (an outage: a gateway URL nobody answers at)."""
    old = getattr(obj, name)
    object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        object.__setattr__(obj, name, old)


@contextlib.contextmanager
def served_app(directory: Any, config: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    """Write ``config`` (an app YAML as a dict; its ``baseUrl`` is set here) to ``directory/app.yaml``, load it and
    serve it over loopback on a free port (uvicorn in a thread, no lifespan: the job runner does not start). Yields
    ``(app, url)``; the app is closed afterwards."""
    import asyncio
    import socket
    import threading
    import time
    from pathlib import Path

    import uvicorn
    import yaml

    import jitcore
    from jitcore.http import build_asgi_app

    # TCP by name, so that asyncio sets TCP_NODELAY on its connections (else 40 ms per answer: Nagle against the
    # client's delayed ACK)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    path = Path(directory) / "app.yaml"
    path.write_text(yaml.safe_dump({**config, "baseUrl": url}, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    app = jitcore.load_app(path)
    server = uvicorn.Server(uvicorn.Config(build_asgi_app(app), log_level="warning", lifespan="off",
                                           access_log=False, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the app's server did not start")
            time.sleep(0.01)
        yield app, url
    finally:
        app.close()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
