"""``pays.WechatPayV3Type`` passes the provider conformance kit (``elements.pays.testing``) against the v3 sandbox over
real HTTP, in both key modes: the app and the sandbox served on loopback, callbacks held by the sandbox and delivered
by the kit to the generic notify route."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Literal

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from elements.pays.Meta import NotifyRequest
from elements.pays.testing import (AbnormalRefundConformance, ConformanceGateway, ConformanceSetup,
                                   FailedPaymentConformance, LateRefundConformance, ProviderConformance)
from jitpay_sandbox import sandbox_of
from jitpay_wechatpay_v3.client import WechatV3Api

from .conftest import signed_headers
from .sandbox_support import PUBLIC_KEY_ID, read, start_v3_app

#: a loopback address nothing listens at: an outage
NOBODY = "http://127.0.0.1:9"


class V3SandboxGateway(ConformanceGateway):
    """The kit's view of the v3 sandbox (callbacks held)."""

    def __init__(self, app: Any, keys: Path) -> None:
        self.sandbox = sandbox_of(app, "wechatV3")
        self.keys = keys
        self.element = app.loadElement("pays.WechatPayV3Type")
        self.apiv3 = read(keys, "apiV3Key").strip().encode()

    def pay(self, reference: str) -> bool:
        return self.sandbox.pay(reference)

    def fail(self, reference: str) -> bool:
        return self.sandbox.fail(reference)  # WeChat Pay sends no callback for it: the kit's check finds it

    def refunds_wait(self, wait: bool) -> None:
        self.sandbox.refunds_wait = wait

    def end_refund(self, refundId: str, outcome: Literal["success", "closed", "abnormal"]) -> None:
        assert self.sandbox.finish_refund(refundId, outcome.upper())

    def notifications(self) -> list[NotifyRequest]:
        return [NotifyRequest(body=held.body, headers=held.headers) for held in self.sandbox.take_notifications()]

    def captured(self, reference: str) -> Decimal:
        return self.sandbox.captured(reference)

    def refunded(self, reference: str) -> Decimal:
        return self.sandbox.refunded(reference)

    def rewrite(self, notification: NotifyRequest, *, amount: Decimal | None = None, other_merchant: bool = False,
                signature: Literal["valid", "forged", "kept"] = "valid") -> NotifyRequest:
        body = json.loads(notification.body)
        sealed = body["resource"]
        plain = json.loads(AESGCM(self.apiv3).decrypt(sealed["nonce"].encode(), base64.b64decode(sealed["ciphertext"]),
                                                      sealed["associated_data"].encode()))
        if amount is not None:
            plain["amount"]["total"] = plain["amount"]["payer_total"] = int(amount * 100)
        if other_merchant:
            plain["mchid"] = "1900000099"
        nonce = secrets.token_hex(6)
        resealed = AESGCM(self.apiv3).encrypt(nonce.encode(), json.dumps(plain, ensure_ascii=False).encode(),
                                              sealed["associated_data"].encode())
        sealed.update(nonce=nonce, ciphertext=base64.b64encode(resealed).decode())
        raw = json.dumps(body, ensure_ascii=False).encode()
        if signature == "kept":
            return NotifyRequest(body=raw, headers=notification.headers)
        serial = notification.headers["Wechatpay-Serial"]
        name = ("merchantPrivateKey" if signature == "forged"
                else "publicKeyPrivateKey" if serial == PUBLIC_KEY_ID else "platformPrivateKey")
        key = serialization.load_pem_private_key(read(self.keys, name).encode(), None)
        return NotifyRequest(body=raw, headers=signed_headers(raw, key=key, serial=serial))  # type: ignore[arg-type]

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        api = self.element.api
        self.element.api = WechatV3Api(dataclasses.replace(self.element.settings, gateway=NOBODY))
        try:
            yield
        finally:
            self.element.api.close()
            self.element.api = api


@pytest.fixture
def v3_setup(tmp_path: Path, v3_keys: Path, request: pytest.FixtureRequest) -> Iterator[ConformanceSetup]:
    with start_v3_app(tmp_path, v3_keys, request.param, sandbox={"notifyMode": "hold"}, run_jobs=False) as live:
        keys = live.yaml_path.parent / ".sandbox"
        yield ConformanceSetup(app=live.app, fullName="pays.WechatPayV3Type", served=True,
                               gateway=V3SandboxGateway(live.app, keys))


@pytest.mark.parametrize("v3_setup", ["publicKey", "certificate"], indirect=True)
class TestWechatPayV3Conformance(ProviderConformance, FailedPaymentConformance, LateRefundConformance,
                                 AbnormalRefundConformance):
    @pytest.fixture
    def conformance(self, v3_setup: ConformanceSetup) -> ConformanceSetup:
        return v3_setup
