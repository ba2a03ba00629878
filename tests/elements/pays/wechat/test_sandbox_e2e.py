"""The documented flow over real HTTP on loopback: the provider's production code against the WeChat Pay sandbox
(a real uvicorn server), a person paying on the wallet page, and the sandbox's signed notification reaching a
receiver that verifies it, for both sign types."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from elements.pays.errors import ProviderError
from elements.pays.Meta import OrderView
from elements.pays.WechatPayType import mweb_out_trade_no
from elements.pays.WechatPayType.signing import calculate_sign, verify_sign
from elements.pays.WechatPayType.wirexml import build_xml, parse_xml
from jitcore.errors import ConfigError
from jitpay_sandbox.wechat import generate_wechat_key, wechat_routes

from .conftest import APP_ID, MCH_ID, SandboxWorld, make_app, random_key

_counter = iter(range(10**6))


def new_order(amount: str = "88.88", subject: str = "测试商品 Test item") -> OrderView:
    return OrderView(orderId=f"T{time.time_ns()}{next(_counter)}"[:32], subject=subject, amount=Decimal(amount),
                     createdAt=dt.datetime.now(dt.timezone.utc))


def pay(world: SandboxWorld, payUrl: str, action: str = "pay") -> httpx.Response:
    """What the buyer does: open the wallet page, press the button (a form POST), land back on the page."""
    page = httpx.get(payUrl)
    assert page.status_code == 200 and f'id="{action}-button"' in page.text
    form = re.search(rf'<form method="post" action="([^"]+/{action})"', page.text)
    assert form, page.text
    answer = httpx.post(world.server.url + form.group(1), follow_redirects=False)
    assert answer.status_code == 303
    return httpx.get(answer.headers["location"])


def wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- the happy paths --------------------------------------------------------------------------------------------------
def test_pc_native_pay_notify_query(world: SandboxWorld) -> None:
    order = new_order()
    prep = world.provider.prepare(order, "pc", clientIp="203.0.113.7")
    assert prep.payUrl.startswith(f"{world.server.url}/sandbox/wechat/wallet/")
    assert prep.qrCode and prep.qrCode.startswith("data:image/png;base64,")
    assert prep.extra["prepay_id"].startswith("wx") and prep.extra["trade_type"] == "NATIVE"
    remaining = prep.expiresAt - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=1, minutes=45) < remaining < dt.timedelta(hours=2)

    assert world.provider.query(order).status == "pending"

    page = pay(world, prep.payUrl)
    assert "支付成功" in page.text and "88.88" in page.text

    received = world.receiver.wait()
    state = received["state"]
    assert state.status == "success" and state.orderId == order.orderId
    assert state.paidAmount == Decimal("88.88") and state.tradeNo
    assert len(received["fields"]["sign"]) == (32 if world.signType == "MD5" else 64)
    assert "sign_type" not in received["fields"]
    assert received["body"].startswith(b"<xml><") and b"<![CDATA[" in received["body"]

    queried = world.provider.query(order)
    assert queried.status == "success" and queried.tradeNo == state.tradeNo
    assert queried.paidAmount == Decimal("88.88") and queried.payTime == state.payTime
    assert abs(queried.payTime - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=1)
    wait_for(lambda: world.sandbox.trade_state(order.orderId)["notify_attempts"])
    assert world.sandbox.trade_state(order.orderId)["notify_attempts"][-1]["ok"] is True


def test_mobile_mweb_pay_and_check_without_notification(world_factory, sign_type) -> None:
    world = world_factory(sign_type)
    # A receiver that is down: check() must reach the payment on its own.
    world.receiver.fail_first = 10**6
    order = new_order("0.01", "会员 " * 60)
    prep = world.provider.prepare(order, "mobile")
    assert prep.payUrl.startswith(f"{world.server.url}/sandbox/wechat/wallet/") and "prepay_id=" in prep.payUrl
    assert prep.qrCode is None and prep.extra["trade_type"] == "MWEB"
    remaining = prep.expiresAt - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(minutes=3) < remaining <= dt.timedelta(minutes=5)
    page = pay(world, prep.payUrl)
    assert 'data-state="SUCCESS"' in page.text
    state = world.provider.query(order)
    assert state.status == "success" and state.paidAmount == Decimal("0.01")
    # The MWEB trade is its own WeChat order, joined to the order by attach.
    mweb = world.sandbox.trade_state(mweb_out_trade_no(order.orderId))
    assert prep.extra["out_trade_no"] == mweb["out_trade_no"] and mweb["attach"] == order.orderId
    assert world.sandbox.trade_state(order.orderId) is None
    # The retries are bounded: 1 + len(notifyRetryDelays) attempts, none acknowledged.
    wait_for(lambda: len(world.sandbox.trade_state(mweb["out_trade_no"])["notify_attempts"]) == 4)
    assert not any(a["ok"] for a in world.sandbox.trade_state(mweb["out_trade_no"])["notify_attempts"])


def test_notification_is_retried_until_acknowledged(world: SandboxWorld) -> None:
    world.receiver.fail_first = 2  # first a FAIL reply, then an HTTP 500, then accepted
    order = new_order()
    pay(world, world.provider.prepare(order, "pc").payUrl)
    assert world.receiver.wait()["state"].status == "success"
    wait_for(lambda: len(world.sandbox.trade_state(order.orderId)["notify_attempts"]) == 3)
    attempts = world.sandbox.trade_state(order.orderId)["notify_attempts"]
    assert [a["ok"] for a in attempts] == [False, False, True] and attempts[1]["status"] == 500
    assert len(world.receiver.received) == 3


def test_failed_payment_is_reported(world: SandboxWorld) -> None:
    order = new_order()
    pay(world, world.provider.prepare(order, "pc").payUrl, action="fail")
    received = world.receiver.wait()
    assert received["state"].status == "failed"
    assert world.provider.query(order).status == "failed"


def test_repeat_prepare_reuses_the_prepay_and_other_params_are_refused(world: SandboxWorld) -> None:
    order = new_order()
    first = world.provider.prepare(order, "pc", clientIp="198.51.100.1")
    again = world.provider.prepare(order, "pc", clientIp="198.51.100.2")  # only the client IP may change
    assert again.payUrl == first.payUrl and again.extra["prepay_id"] == first.extra["prepay_id"]
    # The other trade type is another WeChat order (its own out_trade_no), so WeChat's 201 rule does not bite...
    mobile = world.provider.prepare(order, "mobile")
    assert mobile.extra["out_trade_no"] != order.orderId and mobile.payUrl != first.payUrl
    # ...but the sandbox still enforces the rule for one out_trade_no with other parameters, as WeChat does.
    answer = raw_call(world, "pay/unifiedorder", {
        "body": order.subject, "out_trade_no": order.orderId, "total_fee": "8888", "spbill_create_ip": "127.0.0.1",
        "notify_url": world.provider.settings.notifyUrl, "trade_type": "MWEB", "attach": order.orderId,
        "scene_info": '{"h5_info":{"type":"Wap","wap_url":"http://x","wap_name":"x"}}'})
    assert (answer["result_code"], answer["err_code"], answer["err_code_des"]) == \
        ("FAIL", "INVALID_REQUEST", "201 商户订单号重复")
    changed = OrderView(orderId=order.orderId, subject=order.subject, amount=Decimal("1.00"),
                        createdAt=order.createdAt)
    with pytest.raises(ProviderError, match="INVALID_REQUEST"):
        world.provider.prepare(changed, "pc")
    pay(world, first.payUrl)
    with pytest.raises(ProviderError) as info:
        world.provider.prepare(order, "pc")
    assert info.value.provider_code == "ORDERPAID"


def test_close(world: SandboxWorld) -> None:
    order = new_order()
    prep = world.provider.prepare(order, "pc")
    world.provider.close(order)
    assert world.provider.query(order).status == "closed"
    world.provider.close(order)  # ORDERCLOSED: already closed is fine
    world.provider.close(new_order())  # ORDERNOTEXIST: unknown is fine
    page = httpx.get(prep.payUrl)
    assert 'data-state="CLOSED"' in page.text and 'id="pay-button"' not in page.text
    assert httpx.post(prep.payUrl + "/pay", follow_redirects=False).status_code == 303
    assert world.provider.query(order).status == "closed"  # paying a closed trade changes nothing
    with pytest.raises(ProviderError) as info:
        world.provider.prepare(order, "pc")
    assert info.value.provider_code == "ORDERCLOSED"

    paid = new_order()
    pay(world, world.provider.prepare(paid, "pc").payUrl)
    with pytest.raises(ProviderError) as info:
        world.provider.close(paid)
    assert info.value.provider_code == "ORDERPAID"


def test_close_too_early_when_the_real_rule_is_on(world_factory) -> None:
    world = world_factory(closeMinAgeSeconds=300)
    order = new_order()
    world.provider.prepare(order, "pc")
    with pytest.raises(ProviderError) as info:
        world.provider.close(order)
    assert info.value.provider_code == "SYSTEMERROR"
    assert world.provider.query(order).status == "pending"


def test_refund(world: SandboxWorld) -> None:
    order = new_order("100.00")
    with pytest.raises(ProviderError) as info:
        world.provider.refund(order, "R-unpaid", Decimal("1.00"), Decimal("1.00"))
    assert info.value.provider_code == "ORDERNOTEXIST"
    pay(world, world.provider.prepare(order, "pc").payUrl)
    first = world.provider.refund(order, f"R{order.orderId}"[:32], Decimal("30.50"), Decimal("30.50"), "退货")
    assert first.amount == Decimal("30.50") and first.refundNo
    again = world.provider.refund(order, f"R{order.orderId}"[:32], Decimal("30.50"), Decimal("30.50"), "退货")
    assert again.refundNo == first.refundNo  # the same refundId never refunds twice
    assert world.sandbox.trade_state(order.orderId)["refunded_fee"] == 3050
    state = world.provider.query(order)
    assert state.status == "refunded" and state.paidAmount == Decimal("100.00") and state.tradeNo
    with pytest.raises(ProviderError) as info:
        world.provider.refund(order, "R-too-much", Decimal("70.00"), Decimal("100.50"))
    assert info.value.provider_code == "INVALID_REQUEST"
    with pytest.raises(ProviderError):
        world.provider.refund(order, f"R{order.orderId}"[:32], Decimal("1.00"), Decimal("31.50"))
    world.provider.refund(order, "R-rest", Decimal("69.50"), Decimal("100.00"))
    assert world.sandbox.trade_state(order.orderId)["refunded_fee"] == 10000


def test_query_of_an_order_wechat_does_not_know_is_pending(world: SandboxWorld) -> None:
    state = world.provider.query(new_order())
    assert state.status == "pending" and state.raw["err_code"] == "ORDERNOTEXIST"


def test_refundquery(world: SandboxWorld) -> None:
    order = new_order("10.00")
    pay(world, world.provider.prepare(order, "pc").payUrl)
    world.provider.refund(order, "RQ1", Decimal("1.00"), Decimal("1.00"))
    answer = world.provider.api.call("pay/refundquery", {"out_trade_no": order.orderId})
    assert answer["refund_count"] == "1" and answer["out_refund_no_0"] == "RQ1" and answer["refund_fee_0"] == "100"


# -- the sandbox refuses what WeChat refuses --------------------------------------------------------------------------
def raw_call(world: SandboxWorld, path: str, fields: dict[str, str], *, key: str | None = None,
             sign_type: str = "MD5") -> dict[str, str]:
    fields = {"appid": APP_ID, "mch_id": MCH_ID, "nonce_str": "n" * 32, **fields}
    if sign_type != "MD5":
        fields["sign_type"] = sign_type
    fields["sign"] = calculate_sign(fields, key or world.apiKey, sign_type)
    response = httpx.post(f"{world.server.url}/sandbox/wechat/{path}", content=build_xml(fields))
    assert response.status_code == 200
    return parse_xml(response.content)


def test_sandbox_signs_answers_with_the_request_sign_type(world: SandboxWorld) -> None:
    for sign_type, length in (("MD5", 32), ("HMAC-SHA256", 64)):
        answer = raw_call(world, "pay/orderquery", {"out_trade_no": "nope123"}, sign_type=sign_type)
        assert answer["return_code"] == "SUCCESS" and answer["err_code"] == "ORDERNOTEXIST"
        assert len(answer["sign"]) == length and verify_sign(answer, world.apiKey, sign_type)


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_sandbox_rejects_bad_signatures(world_factory, sign_type) -> None:
    world = world_factory(sign_type)
    answer = raw_call(world, "pay/orderquery", {"out_trade_no": "x123456"}, key=random_key(), sign_type=sign_type)
    assert answer == {"return_code": "FAIL", "return_msg": "签名错误"}
    # A provider configured with the wrong key gets the same FAIL as a ProviderError.
    wrong = world.make(apiKey=random_key())
    with pytest.raises(ProviderError) as info:
        wrong.prepare(new_order(), "pc")
    assert info.value.provider_code == "FAIL" and info.value.provider_message == "签名错误"
    # A request signed one way but declaring the other.
    fields = {"appid": APP_ID, "mch_id": MCH_ID, "nonce_str": "n" * 32, "out_trade_no": "x123456",
              "sign_type": "HMAC-SHA256"}
    fields["sign"] = calculate_sign(fields, world.apiKey, "MD5")
    response = httpx.post(f"{world.server.url}/sandbox/wechat/pay/orderquery", content=build_xml(fields))
    assert parse_xml(response.content)["return_msg"] == "签名错误"


def test_sandbox_rejects_wrong_merchant_missing_params_and_hostile_xml(world: SandboxWorld) -> None:
    assert raw_call(world, "pay/orderquery", {"appid": "wx_other", "out_trade_no": "x1"})["return_msg"] == "appid不存在"
    assert raw_call(world, "pay/orderquery", {"mch_id": "1", "out_trade_no": "x1"})["return_code"] == "FAIL"
    answer = raw_call(world, "pay/unifiedorder", {"body": "b", "out_trade_no": "x123456", "total_fee": "1"})
    assert answer["return_code"] == "FAIL" and "缺少参数" in answer["return_msg"]
    answer = raw_call(world, "pay/unifiedorder", {"body": "b", "out_trade_no": "x123456", "total_fee": "1.5",
                                                  "spbill_create_ip": "127.0.0.1", "notify_url": "http://x/n",
                                                  "trade_type": "NATIVE", "product_id": "p"})
    assert answer["return_code"] == "FAIL" and "total_fee" in answer["return_msg"]
    answer = raw_call(world, "pay/orderquery", {})
    assert answer["return_code"] == "FAIL"
    for body in (b"<!DOCTYPE x [<!ENTITY a 'b'>]><xml><a>&a;</a></xml>", b"not xml", b"<xml>" + b"a" * 70000):
        response = httpx.post(f"{world.server.url}/sandbox/wechat/pay/orderquery", content=body)
        assert parse_xml(response.content)["return_code"] == "FAIL"
    assert httpx.get(f"{world.server.url}/sandbox/wechat/wallet/unknown-token").status_code == 404


# -- the plugin surface ---------------------------------------------------------------------------------------------
def test_wechat_routes_reads_app_settings(tmp_path: Path) -> None:
    app = make_app(tmp_path, sandbox={"wechat": {"appId": APP_ID, "mchId": MCH_ID, "apiKey": random_key() + "\n"}})
    paths = {getattr(r, "path", None) for r in wechat_routes(app)}
    assert {"/sandbox/wechat/pay/unifiedorder", "/sandbox/wechat/pay/orderquery", "/sandbox/wechat/pay/closeorder",
            "/sandbox/wechat/secapi/pay/refund", "/sandbox/wechat/wallet/{token}"} <= paths
    assert wechat_routes(make_app(tmp_path)) == []  # no wechat block: no fake gateway
    assert wechat_routes(make_app(tmp_path, sandbox={"alipay": {}})) == []
    with pytest.raises(ConfigError, match="sandbox.wechat"):
        wechat_routes(make_app(tmp_path, sandbox={"wechat": ["not", "a", "mapping"]}))
    with pytest.raises(ConfigError, match="apiKey"):
        wechat_routes(make_app(tmp_path, sandbox={"wechat": {"appId": APP_ID, "mchId": MCH_ID}}))
    with pytest.raises(ConfigError, match="closeMinAge"):
        wechat_routes(make_app(tmp_path, sandbox={"wechat": {"appId": APP_ID, "mchId": MCH_ID, "apiKey": "k",
                                                             "closeMinAgeSeconds": "soon"}}))


def test_generate_wechat_key(tmp_path: Path) -> None:
    folder = tmp_path / ".sandbox"
    generate_wechat_key(folder)
    path = folder / "wechat_api_key.txt"
    key = path.read_text().strip()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    generate_wechat_key(folder)
    assert path.read_text().strip() == key  # kept
