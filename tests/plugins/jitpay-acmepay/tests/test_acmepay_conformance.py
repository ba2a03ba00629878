"""AcmePay passes JitPay's provider conformance kit against its fake gateway, served over loopback, with the app
served over HTTP too (webhooks go to PaySvc's generic route, /api/{appId}/pays/services/PaySvc/notify/acmepay).

This is the whole of what a provider plugin writes to run the kit: a ConformanceGateway that plays the buyer and the
provider on its fake gateway, and a fixture that configures the provider in an app."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal
from typing import Any, Iterator, Literal

import pytest

from acmepay.fake import FakeAcmePay
from acmepay.protocol import SIGNATURE_HEADER, signature_header
from elements.pays.Meta import NotifyRequest
from elements.pays.testing import (ConformanceGateway, ConformanceSetup, FailedPaymentConformance, ProviderConformance,
                                   served_app)

MERCHANTS = {"m_shop": ("sk_test_shop_0123456789", "whsec_shop_0123456789"),
             "m_other": ("sk_test_other_0123456789", "whsec_other_0123456789")}


class AcmeGateway(ConformanceGateway):
    """The kit's view of the fake AcmePay gateway (webhooks held for the kit to deliver)."""

    def __init__(self, fake: FakeAcmePay, merchant: str = "m_shop") -> None:
        self.fake, self.merchant = fake, merchant
        fake.notify_mode = "hold"

    def pay(self, reference: str) -> bool:
        return self.fake.pay(reference, self.merchant)

    def fail(self, reference: str) -> bool:
        return self.fake.fail(reference, self.merchant)

    def notifications(self) -> list[NotifyRequest]:
        return [NotifyRequest(body=hook.body, headers=hook.headers) for hook in self.fake.take_notifications()]

    def rewrite(self, notification: NotifyRequest, *, amount: Decimal | None = None, other_merchant: bool = False,
                signature: Literal["valid", "forged", "kept"] = "valid") -> NotifyRequest:
        data = json.loads(notification.body)
        if amount is not None:
            data["payment"]["amount"] = f"{amount:.2f}"
        if other_merchant:
            data["payment"]["merchant"] = "m_other"
        body = json.dumps(data, separators=(",", ":")).encode("utf-8")
        headers = {name: value for name, value in notification.headers.items() if name != SIGNATURE_HEADER.lower()}
        headers[SIGNATURE_HEADER] = notification.headers[SIGNATURE_HEADER]
        if signature == "valid":
            headers[SIGNATURE_HEADER] = signature_header(MERCHANTS[self.merchant][1], body)
        elif signature == "forged":
            headers[SIGNATURE_HEADER] = signature_header("whsec_not_the_merchants", body)
        return NotifyRequest(body=body, headers=headers)

    def captured(self, reference: str) -> Decimal:
        return self.fake.captured(reference, self.merchant)

    def refunded(self, reference: str) -> Decimal:
        return self.fake.refunded(reference, self.merchant)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.fake.down = True
        try:
            yield
        finally:
            self.fake.down = False


def acmepay_app(gateway_url: str) -> dict[str, Any]:
    """An app YAML that configures AcmePay."""
    api_key, secret = MERCHANTS["m_shop"]
    return {"appId": "shop", "title": "AcmePay shop", "jobs": {"runner": False},
            "elements": {"acmepay.AcmePayType": {"config": {
                "merchantId": "m_shop", "apiKey": api_key, "webhookSecret": secret, "gateway": gateway_url}}}}


class TestAcmePayConformance(ProviderConformance, FailedPaymentConformance):  # AcmePay payments can fail
    @pytest.fixture
    def conformance(self, tmp_path: Any) -> Iterator[ConformanceSetup]:
        with FakeAcmePay(MERCHANTS).serve() as fake, served_app(tmp_path, acmepay_app(fake.url)) as (app, _url):
            yield ConformanceSetup(app=app, fullName="acmepay.AcmePayType", gateway=AcmeGateway(fake), served=True)
