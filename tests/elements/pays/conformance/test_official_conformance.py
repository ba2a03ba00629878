"""The official providers pass the provider conformance kit (elements.pays.testing) against the sandbox, over real
HTTP: the app and the sandbox gateways served on loopback, notifications held by the sandbox and delivered by the kit
to the providers' JitAi notify paths."""

from __future__ import annotations

import dataclasses
import contextlib
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Literal
from urllib.parse import parse_qsl, urlencode

import pytest

from elements.pays.AliPayType.signing import load_rsa_key, sign_notify
from elements.pays.Meta import NotifyRequest
from elements.pays.testing import (AbnormalRefundConformance, ConformanceGateway, ConformanceSetup,
                                   FailedPaymentConformance, Kit, LateRefundConformance, ProviderConformance, swapped)
from elements.pays.WechatPayType.signing import calculate_sign
from elements.pays.WechatPayType.wirexml import build_cdata_xml, parse_xml
from jitpay_sandbox import sandbox_of
from tests.support.live import start_live_app

#: a loopback address nothing listens at: an outage
NOBODY = "http://127.0.0.1:9"
HOLD = {"sandbox": {"alipay": {"notifyMode": "hold"}, "wechat": {"notifyMode": "hold"}}}


class SandboxGateway(ConformanceGateway):
    """The kit's view of one provider's sandbox (notifications held)."""

    def __init__(self, app: Any, provider: str, keys: Path) -> None:
        self.sandbox = sandbox_of(app, provider)
        self.keys = keys
        self.element = app.loadElement("pays.AliPayType" if provider == "alipay" else "pays.WechatPayType")

    def pay(self, reference: str) -> bool:
        return self.sandbox.pay(reference)

    def notifications(self) -> list[NotifyRequest]:
        return [NotifyRequest(body=held.body, headers=held.headers) for held in self.sandbox.take_notifications()]

    def captured(self, reference: str) -> Decimal:
        return self.sandbox.captured(reference)

    def refunded(self, reference: str) -> Decimal:
        return self.sandbox.refunded(reference)


class AlipaySandbox(SandboxGateway):
    def rewrite(self, notification: NotifyRequest, *, amount: Decimal | None = None, other_merchant: bool = False,
                signature: Literal["valid", "forged", "kept"] = "valid") -> NotifyRequest:
        fields = dict(parse_qsl(notification.body.decode("utf-8"), keep_blank_values=True))
        if amount is not None:
            fields.update(total_amount=f"{amount:.2f}", receipt_amount=f"{amount:.2f}",
                          buyer_pay_amount=f"{amount:.2f}")
        if other_merchant:
            fields["seller_id"] = "2088000000000099"
        if signature != "kept":
            key = "alipay_gateway_private_key.pem" if signature == "valid" else "alipay_app_private_key.pem"
            fields = sign_notify(fields, load_rsa_key((self.keys / key).read_text()))
        return NotifyRequest(body=urlencode(fields).encode("utf-8"), headers=notification.headers)

    def outage(self) -> Any:
        return swapped(self.element.gateway, "gateway", f"{NOBODY}/gateway.do")

    def refunds_wait(self, wait: bool) -> None:
        self.sandbox.refunds_wait = wait  # held: fund_change N, not found by the refund query
        if not wait:
            self.sandbox.refunds_refused = None

    def end_refund(self, refundId: str, outcome: Literal["success", "closed", "abnormal"]) -> None:
        # Alipay has no abnormal refunds; "closed": not made, and refused outright when sent again
        assert outcome in ("success", "closed"), outcome
        assert self.sandbox.finish_refund(refundId, "SUCCESS" if outcome == "success" else "FAILED")
        if outcome == "closed":
            self.sandbox.refunds_refused = "ACQ.SELLER_BALANCE_NOT_ENOUGH"


class WechatSandbox(SandboxGateway):
    def fail(self, reference: str) -> bool:
        return self.sandbox.fail(reference)

    def refunds_wait(self, wait: bool) -> None:
        self.sandbox.refunds_wait = wait

    def end_refund(self, refundId: str, outcome: Literal["success", "closed", "abnormal"]) -> None:
        assert self.sandbox.finish_refund(refundId, outcome.upper())

    def rewrite(self, notification: NotifyRequest, *, amount: Decimal | None = None, other_merchant: bool = False,
                signature: Literal["valid", "forged", "kept"] = "valid") -> NotifyRequest:
        fields = parse_xml(notification.body)
        if amount is not None:
            fields["total_fee"] = fields["cash_fee"] = str(int(amount * 100))
        if other_merchant:
            fields["mch_id"] = "1900000099"
        if signature != "kept":
            fields.pop("sign", None)
            key = (self.keys / "wechat_api_key.txt").read_text().strip() if signature == "valid" else "y" * 32
            fields["sign"] = calculate_sign(fields, key, self.element.settings.signType)
        return NotifyRequest(body=build_cdata_xml(fields), headers=notification.headers)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        api = self.element.api
        self.element.api = dataclasses.replace(api, gateway=NOBODY)
        try:
            yield
        finally:
            self.element.api = api


@pytest.fixture
def sandbox_app(tmp_path: Path) -> Iterator[Any]:
    """Both providers on the sandbox, its notifications held; no job runner (the kit runs the jobs)."""
    with start_live_app(tmp_path, run_jobs=False, settings=HOLD) as live:
        yield live


class TestAlipayConformance(ProviderConformance, LateRefundConformance):
    """An Alipay trade cannot fail and its refunds cannot end abnormal: no FailedPaymentConformance, no
    AbnormalRefundConformance."""

    @pytest.fixture
    def conformance(self, sandbox_app: Any) -> ConformanceSetup:
        keys = sandbox_app.yaml_path.parent / ".sandbox"
        return ConformanceSetup(app=sandbox_app.app, fullName="pays.AliPayType", served=True,
                                gateway=AlipaySandbox(sandbox_app.app, "alipay", keys))


class TestWechatPayConformance(ProviderConformance, FailedPaymentConformance, LateRefundConformance,
                               AbnormalRefundConformance):
    @pytest.fixture
    def conformance(self, sandbox_app: Any) -> ConformanceSetup:
        keys = sandbox_app.yaml_path.parent / ".sandbox"
        return ConformanceSetup(app=sandbox_app.app, fullName="pays.WechatPayType", served=True,
                                gateway=WechatSandbox(sandbox_app.app, "wechat", keys))


class _WithoutLateRefunds(ProviderConformance, FailedPaymentConformance):
    """A test class that forgot a mixin its provider needs (not collected: no ``Test`` prefix)."""


class _WithoutFailedPayments(ProviderConformance, LateRefundConformance):
    """Likewise."""


def test_the_kit_asks_for_the_mixins_a_provider_needs(sandbox_app: Any) -> None:
    keys = sandbox_app.yaml_path.parent / ".sandbox"
    kit = Kit(ConformanceSetup(app=sandbox_app.app, fullName="pays.WechatPayType", served=True,
                               gateway=WechatSandbox(sandbox_app.app, "wechat", keys)))
    with pytest.raises(AssertionError, match="include LateRefundConformance"):
        _WithoutLateRefunds().test_contract_shape(kit)
    with pytest.raises(AssertionError, match="include FailedPaymentConformance"):
        _WithoutFailedPayments().test_contract_shape(kit)
