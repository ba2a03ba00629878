"""End to end over HTTP: the shop (PaySvc, its API, the generic notify route ``notify/wechatv3``, the job runner) with
``pays.WechatPayV3Type`` against the v3 sandbox on one real server. Paid by the wallet page (pc and mobile) and told by
the callback; a forged callback and a replayed one older than 5 minutes change nothing; close; a partial and a full
refund; both key modes; a migration with callbacks signed by either key; v2 and v3 side by side."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from jitpay_sandbox import sandbox_of
from jitpay_wechatpay_v3.provider import out_trade_nos
from tests.support.live import LiveApp, pay_in_wallet, wait_for

from .sandbox_support import PUBLIC_KEY_ID, read, start_v3_app

SVC = "/api/shop/pays/services/PaySvc"
NOTIFY = f"{SVC}/notify/wechatv3"
V3 = "pays.WechatPayV3Type"


@pytest.fixture
def live_v3(tmp_path: Path, v3_keys: Path, request: pytest.FixtureRequest) -> Iterator[LiveApp]:
    mode = getattr(request, "param", "publicKey")
    with start_v3_app(tmp_path, v3_keys, mode) as live:
        yield live


@pytest.fixture
def held_v3(tmp_path: Path, v3_keys: Path, request: pytest.FixtureRequest) -> Iterator[LiveApp]:
    mode = getattr(request, "param", "publicKey")
    with start_v3_app(tmp_path, v3_keys, mode, sandbox={"notifyMode": "hold"}) as live:
        yield live


def call(live: LiveApp, function: str, **args: Any) -> dict[str, Any]:
    with live.client() as api:
        response = api.post(f"{SVC}/{function}", json=args)
    assert response.status_code == 200, response.text
    return response.json()


def create(live: LiveApp, amount: str = "12.34") -> str:
    return call(live, "create", subject="v3 端到端 end to end", amount=amount)["orderId"]


def status(live: LiveApp, order_id: str) -> str:
    return call(live, "query", orderId=order_id)["status"]


def notify_rows(live: LiveApp, order_id: str | None = None) -> list[Any]:
    ledger = live.app.loadElement("pays.services.PaySvc").ledger
    return [r for r in ledger.audit_log(order_id, kinds=["notify"])]


MODES = ["publicKey", "certificate"]


@pytest.mark.parametrize("live_v3", MODES, indirect=True)
@pytest.mark.parametrize("pay_type,trade_type", [("pc", "NATIVE"), ("mobile", "H5")])
def test_paid_in_the_wallet_and_told_by_the_callback(live_v3: LiveApp, pay_type: str, trade_type: str) -> None:
    live = live_v3
    order_id = create(live, "99.99")
    prep = call(live, "getPayUrl", orderId=order_id, fullName=V3, payType=pay_type, clientIp="203.0.113.5")
    assert (prep["qrCode"] is not None) == (pay_type == "pc")
    pay_in_wallet(prep["payUrl"])
    wait_for(lambda: status(live, order_id) == "success")
    sandbox = sandbox_of(live.app, "wechatV3")
    reference = out_trade_nos(order_id)[trade_type]
    trade = sandbox.trade(reference)
    assert trade["notify_url"] == f"{live.url}{NOTIFY}"  # the generic route, derived from baseUrl
    wait_for(lambda: sandbox.trade(reference)["notify_attempts"])
    (attempt,) = sandbox.trade(reference)["notify_attempts"]
    assert attempt["ok"] and attempt["status"] == 204
    order = call(live, "query", orderId=order_id)
    (payment,) = order["payments"]
    assert payment["fullName"] == V3 and payment["reference"] == reference
    assert payment["tradeNo"] == trade["transaction_id"] and order["amount"] == "99.99"
    assert [r.outcome for r in notify_rows(live, order_id)] == ["pending->success"]


@pytest.mark.parametrize("held_v3", MODES, indirect=True)
def test_forged_and_replayed_callbacks_change_nothing(held_v3: LiveApp) -> None:
    live = held_v3
    sandbox = sandbox_of(live.app, "wechatV3")
    order_id = create(live)
    call(live, "getPayUrl", orderId=order_id, fullName=V3, payType="pc")
    reference = out_trade_nos(order_id)["NATIVE"]
    assert sandbox.pay(reference)
    (paid,) = sandbox.take_notifications()

    def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(paid.url, content=body, headers=headers, timeout=10)

    def refused(response: httpx.Response, error_code: str, fragment: str) -> None:
        assert response.status_code >= 400 and response.json()["code"] == "FAIL", response.text
        assert status(live, order_id) == "pending"
        row = notify_rows(live)[-1]
        assert (row.outcome, row.errorCode) == ("rejected", error_code) and fragment in row.message, row.message

    # tampered: one byte of the body changed after signing
    body = json.loads(paid.body)
    body["summary"] = "支付成功!"
    refused(post(json.dumps(body, ensure_ascii=False).encode(), paid.headers), "SIGNATURE_INVALID", "does not verify")
    # forged: signed by a key that is not WeChat Pay's, naming WeChat Pay's key
    from cryptography.hazmat.primitives import serialization

    from .conftest import signed_headers

    forger = serialization.load_pem_private_key(read(Path(live.yaml_path.parent / ".sandbox"),
                                                     "merchantPrivateKey").encode(), None)
    refused(post(paid.body, signed_headers(paid.body, key=forger, serial=paid.headers["Wechatpay-Serial"])),
            "SIGNATURE_INVALID", "does not verify")
    # a probe
    probe = dict(paid.headers, **{"Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + paid.headers["Wechatpay-Signature"]})
    refused(post(paid.body, probe), "SIGNATURE_INVALID", "does not verify")
    # replayed: a genuine callback, signed six minutes ago
    replay = sandbox.callback(reference, timestamp=int(time.time()) - 360)
    refused(replay.deliver(), "SIGNATURE_INVALID", "5 minutes")
    # the genuine one, twice: processed once
    assert paid.deliver().status_code == 204
    assert status(live, order_id) == "success"
    assert paid.deliver().status_code == 204
    outcomes = [r.outcome for r in notify_rows(live, order_id)]
    assert outcomes.count("pending->success") == 1 and outcomes[-1] == "unchanged"


def test_an_unknown_provider_name_and_a_body_that_is_not_json(live_v3: LiveApp) -> None:
    live = live_v3
    response = httpx.post(f"{live.url}{SVC}/notify/wechatv9", content=b"{}", timeout=10)
    assert response.status_code == 404
    response = httpx.post(f"{live.url}{NOTIFY}", content=b"\xff\xfe", timeout=10)
    assert response.status_code >= 400 and response.json() == {"code": "FAIL",
                                                               "message": "WeChat Pay v3 callback is not UTF-8 JSON"}


@pytest.mark.parametrize("live_v3", MODES, indirect=True)
def test_close(live_v3: LiveApp) -> None:
    live = live_v3
    sandbox = sandbox_of(live.app, "wechatV3")
    order_id = create(live)
    pc = call(live, "getPayUrl", orderId=order_id, fullName=V3, payType="pc")
    call(live, "getPayUrl", orderId=order_id, fullName=V3, payType="mobile")
    assert call(live, "close", orderId=order_id)["status"] == "closed"
    refs = out_trade_nos(order_id).values()
    wait_for(lambda: all(sandbox.trade(ref)["state"] == "CLOSED" for ref in refs))
    page = httpx.get(pc["payUrl"], timeout=10)
    assert 'data-state="CLOSED"' in page.text and 'id="pay-button"' not in page.text


@pytest.mark.parametrize("live_v3", MODES, indirect=True)
def test_partial_and_full_refund(live_v3: LiveApp) -> None:
    live = live_v3
    sandbox = sandbox_of(live.app, "wechatV3")
    order_id = create(live, "10.00")
    pay_in_wallet(call(live, "getPayUrl", orderId=order_id, fullName=V3, payType="pc")["payUrl"])
    wait_for(lambda: status(live, order_id) == "success")
    reference = out_trade_nos(order_id)["NATIVE"]
    first = call(live, "refund", orderId=order_id, amount="3.00", refundId="RF1", reason="部分退款")
    assert status(live, order_id) == "success" and sandbox.refunded(reference) == Decimal("3.00")
    assert call(live, "refund", orderId=order_id, amount="3.00", refundId="RF1") == first  # idempotent
    call(live, "refund", orderId=order_id, refundId="RF2")  # the rest
    assert status(live, order_id) == "refunded"
    assert sandbox.refunded(reference) == sandbox.captured(reference) == Decimal("10.00")
    refunds = call(live, "query", orderId=order_id)["refunds"]
    assert sorted((r["refundId"], r["amount"], r["status"]) for r in refunds) == \
        [("RF1", "3.00", "confirmed"), ("RF2", "7.00", "confirmed")]
    # REFUND.SUCCESS callbacks reached the generic route and were acknowledged
    wait_for(lambda: all(r["notify_attempts"] and r["notify_attempts"][-1]["ok"]
                         for r in sandbox.trade(reference)["refunds"].values()))
    assert status(live, order_id) == "refunded"


def test_refund_callbacks_make_paysvc_ask_where_a_refund_stands(live_v3: LiveApp) -> None:
    live = live_v3
    sandbox = sandbox_of(live.app, "wechatV3")
    sandbox.refunds_wait = True  # refunds stay PROCESSING until the test ends them
    order_id = create(live, "10.00")
    pay_in_wallet(call(live, "getPayUrl", orderId=order_id, fullName=V3, payType="pc")["payUrl"])
    wait_for(lambda: status(live, order_id) == "success")

    def refund(refund_id: str) -> dict[str, Any]:
        [found] = [r for r in call(live, "query", orderId=order_id)["refunds"] if r["refundId"] == refund_id]
        return found

    assert call(live, "refund", orderId=order_id, refundId="RC1")["status"] == "processing"
    assert status(live, order_id) == "success"
    assert sandbox.finish_refund("RC1", "CLOSED")  # REFUND.CLOSED reaches the notify route: PaySvc asks, records
    closed = wait_for(lambda: (r := refund("RC1"))["status"] == "refused" and r)
    assert closed["error"]["code"] == "REFUND_CLOSED" and status(live, order_id) == "success"

    assert call(live, "refund", orderId=order_id, refundId="RC2")["status"] == "processing"  # refundable again
    assert sandbox.finish_refund("RC2", "SUCCESS")
    wait_for(lambda: refund("RC2")["status"] == "confirmed")
    assert status(live, order_id) == "refunded"
    reference = out_trade_nos(order_id)["NATIVE"]
    assert sandbox.refunded(reference) == sandbox.captured(reference) == Decimal("10.00")


def test_a_migration_with_callbacks_signed_by_either_key(tmp_path: Path, v3_keys: Path) -> None:
    # the merchant has both keys configured; WeChat Pay signs callbacks with either while it moves the merchant
    with start_v3_app(tmp_path, v3_keys, "both", sandbox={"callbackSigner": "certificate"}) as live:
        sandbox = sandbox_of(live.app, "wechatV3")
        orders = []
        for signer in ("certificate", "alternate", "alternate", "publicKey"):
            sandbox.callback_signer = signer
            order_id = create(live)
            pay_in_wallet(call(live, "getPayUrl", orderId=order_id, fullName=V3, payType="pc")["payUrl"])
            wait_for(lambda: status(live, order_id) == "success")
            orders.append(order_id)
        signers = set()
        for order_id in orders:
            reference = out_trade_nos(order_id)["NATIVE"]
            # the sandbox records an attempt once the reply is in, a moment after PaySvc committed the payment
            attempts = wait_for(lambda: sandbox.trade(reference)["notify_attempts"])
            assert [a["ok"] for a in attempts] == [True]
            signers.add(attempts[0]["signerKind"])
        assert signers == {"certificate", "publicKey"}


def test_a_merchant_without_the_public_key_refuses_callbacks_signed_by_it(tmp_path: Path, v3_keys: Path) -> None:
    # configured for platform certificates only while WeChat Pay already signs with the public key: the callback is
    # refused (and retried by WeChat Pay) until the public key is configured
    with start_v3_app(tmp_path, v3_keys, "certificate",
                      sandbox={"publicKeyId": PUBLIC_KEY_ID, "callbackSigner": "publicKey",
                               "publicKeyPrivateKey": {"$file": ".sandbox/wechatpay_v3_public_key_private.pem"},
                               "notifyRetryDelays": [0.05]}) as live:
        sandbox = sandbox_of(live.app, "wechatV3")
        order_id = create(live)
        pay_in_wallet(call(live, "getPayUrl", orderId=order_id, fullName=V3, payType="pc")["payUrl"])
        reference = out_trade_nos(order_id)["NATIVE"]
        wait_for(lambda: len(sandbox.trade(reference)["notify_attempts"]) == 2)
        assert not any(a["ok"] for a in sandbox.trade(reference)["notify_attempts"])
        assert status(live, order_id) == "pending"
        row = notify_rows(live)[-1]
        assert row.errorCode == "SIGNATURE_INVALID" and PUBLIC_KEY_ID in row.message
        # nothing depends on the callback: check asks WeChat Pay (answers are signed by the certificate)
        assert call(live, "check", orderId=order_id, fullName=V3)["status"] == "success"


def test_v2_and_v3_side_by_side(tmp_path: Path, v3_keys: Path) -> None:
    """A merchant moving from v2 to v3 keeps pays.WechatPayType configured for what it took, while new payments go
    through v3: one order may be offered by both, each its own WeChat Pay order, and neither reports the other's."""
    with start_v3_app(tmp_path, v3_keys, "publicKey", keep_v2=True) as live:
        old = create(live, "5.00")
        pay_in_wallet(call(live, "getPayUrl", orderId=old, fullName="pays.WechatPayType", payType="pc")["payUrl"])
        wait_for(lambda: status(live, old) == "success")
        both = create(live, "6.00")
        v2 = call(live, "getPayUrl", orderId=both, fullName="pays.WechatPayType", payType="pc")
        v3 = call(live, "getPayUrl", orderId=both, fullName=V3, payType="pc")
        assert v2["payUrl"] != v3["payUrl"]
        pay_in_wallet(v3["payUrl"])
        wait_for(lambda: status(live, both) == "success")
        # the v2 trade of that order is closed by the settling job; the v3 element knows nothing of the v2 trades
        v2_sandbox = sandbox_of(live.app, "wechat")
        wait_for(lambda: v2_sandbox.trade(both)["state"] == "CLOSED")
        assert call(live, "check", orderId=old, fullName=V3)["providerStatus"] == "pending"
        payments = call(live, "query", orderId=both)["payments"]
        assert [(p["fullName"], p["status"]) for p in payments if p["status"] == "paid"] == [(V3, "paid")]
        # the old payment is refunded through v2, the new one through v3
        call(live, "refund", orderId=old)
        call(live, "refund", orderId=both)
        assert status(live, old) == status(live, both) == "refunded"
        assert sandbox_of(live.app, "wechatV3").refunded(out_trade_nos(both)["NATIVE"]) == Decimal("6.00")
