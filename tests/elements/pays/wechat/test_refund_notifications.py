"""WeChat Pay v2 refund notifications ("退款结果通知"): unsigned, the details in ``req_info`` (AES-256-ECB under the MD5
of the API key). JitPay names its notify URL in every refund; a refund notification that decrypts makes PaySvc ask
WeChat Pay about the trade and the refund at once (its words are never taken); one that does not decrypt, or names a
trade WeChat Pay does not know, changes nothing and is recorded. Against the sandbox over real HTTP, on SQLite and
PostgreSQL, with no job runner: what confirms a refund here is the notification."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from sqlalchemy import text

from elements.pays.WechatPayType.reqinfo import ReqInfoInvalid, decrypt_req_info, encrypt_req_info
from elements.pays.WechatPayType.wirexml import XmlRejected, build_cdata_xml, parse_xml
from tests.support.live import LiveApp
from tests.support.money import (WECHAT, assert_money_invariant, deliver, event_names, money_app, paid_through,
                                 wechat)

NOTIFY = "/api/shop/pays/services/PaySvc/wechatNotify"

# -- req_info itself: an independent vector ---------------------------------------------------------------------------
#: A refund notification's req_info as WeChat Pay sent it in 2017, with the API key it was made under, published as
#: a fixture of the Go library rwscode/payutil (wechat/payment_api_test.go); decrypted by JitPay's own code below, so
#: the key derivation, the cipher mode and the padding are checked against WeChat Pay's, not only against ours.
VECTOR_KEY = "ziR0QKsTUfMOuochC9RfCdmfHECorQAP"
VECTOR = ("YYwp8C48th0wnQzTqeI+41pflB26v+smFj9z6h9RPBgxTyZyxc+4YNEz7QEgZNWj/6rIb2MfyWMZmCc41CfjKSssoSZPXxOhUayb6KvNSZ1p"
          "6frOX1PDWzhyruXK7ouNND+gDsG4yZ0XXzsL4/pYNwLLba/71QrnkJ/BHcByk4EXnglju5DLup9pJQSnTxjomI9Rxu57m9jg5lLQFxMWXyeA"
          "SZJNvof0ulnHlWJswS4OxKOkmW7VEyKyLGV6npoOm03Qsx2wkRxLsSa9gPpg4hdaReeUqh1FMbm7aWjyrVYT/MEZWg98p4GomEIYvz34XfDn"
          "cTezX4bf/ZiSLXt79aE1/YTZrYfymXeCrGjlbe0rg/T2ezJHAC870u2vsVbY1/KcE2A443N+DEnAziXlBQ1AeWq3Rqk/O6/TMM0lomzgctAO"
          "iAMg+bh5+Gu1ubA9O3E+vehULydD5qx2o6i3+qA9ORbH415NyRrQdeFq5vmCiRikp5xYptWiGZA0tkoaLKMPQ4ndE5gWHqiBbGPfULZWokI+"
          "QjjhhBmwgbd6J0VqpRorwOuzC/BHdkP72DCdNcm7IDUpggnzBIy0+seWIkcHEryKjge3YDHpJeQCqrAH0CgxXHDt1xtbQbST1VqFyuhPhUjD"
          "XMXrknrGPN/oE1t0rLRq+78cI+k8xe5E6seeUXQsEe8r3358mpcDYSmXWSXVZxK6er9EF98APqHwcndyEJD2YyCh/mMVhERuX+7kjlRXSiNUW"
          "a/Cv/XAKFQuvUYA5ea2eYWtPRHa4DpyuF1SNsaqVKfgqKXZrJHfAgslVpSVqUpX4zkKszHF4kwMZO3M7J1P94Mxa7Tm9mTOJePOoHPXeEB+m"
          "9rX6pSfoi3mJDQ5inJ+Vc4gOkg/Wd/lqiy6TTyP/dHDN6/v+AuJx5AXBo/2NDD3fWhHjkqEKIuARr2ClZt9ZRQO4HkXdZo7CN06sGCHk48Tg"
          "8PmxnxKcMZm7Aoquv5yMIM2gWSWIRJhwJ8cUpafIHc+GesDlbF6Zbt+/KXkafJAQq2RklEN+WvZ/zFz113EPgWPjp16TwBoziq96MMekvWKY"
          "/vdhjol8VFtGH9F61Oy1Xwf6DJtPw==")


def test_req_info_decrypts_as_wechat_pay_made_it() -> None:
    fields = parse_xml(decrypt_req_info(VECTOR, VECTOR_KEY), root="root")
    assert fields["out_refund_no"] == "50fd012ed1b311e7af7800163e32c503"
    assert fields["out_trade_no"] == "4893e76d8c8b434cb64e9cd536338e33"
    assert fields["transaction_id"] == "4200000015201711256947025404"
    assert (fields["refund_status"], fields["refund_fee"], fields["total_fee"]) == ("SUCCESS", "6", "6")
    assert fields["refund_recv_accout"] == "支付用户零钱"


def test_req_info_round_trips_and_refuses_what_does_not_decrypt() -> None:
    plain = build_cdata_xml({"out_trade_no": "T1", "out_refund_no": "R1"}, root="root")
    sealed = encrypt_req_info(plain, "k" * 32)
    assert decrypt_req_info(sealed, "k" * 32) == plain.decode()
    assert parse_xml(plain, root="root") == {"out_trade_no": "T1", "out_refund_no": "R1"}
    with pytest.raises(XmlRejected, match="root element must be <xml>"):
        parse_xml(plain)
    for bad, key in [(sealed, "another key"), (VECTOR, "k" * 32), ("not base64!", "k" * 32),
                     (base64.b64encode(b"x" * 15).decode(), "k" * 32), ("", "k" * 32), ("A" * 20000, "k" * 32)]:
        with pytest.raises(ReqInfoInvalid):
            decrypt_req_info(bad, key)


# -- through PaySvc ---------------------------------------------------------------------------------------------------
@pytest.fixture
def live(tmp_path: Path, database: str | None) -> Iterator[LiveApp]:
    with money_app(tmp_path, database) as app:
        wechat(app).refunds_wait = True
        yield app


def api_key(live: LiveApp) -> str:
    return wechat(live).settings.apiKey


def refund_notification(live: LiveApp, told: dict[str, str], *, key: str | None = None) -> bytes:
    """A refund notification as WeChat Pay writes it, ``told`` encrypted under ``key`` (default the merchant's)."""
    settings = wechat(live).settings
    sealed = encrypt_req_info(build_cdata_xml(told, root="root"), key or settings.apiKey)
    return build_cdata_xml({"return_code": "SUCCESS", "appid": settings.appId, "mch_id": settings.mchId,
                            "nonce_str": "n" * 32, "req_info": sealed})


def post(live: LiveApp, body: bytes) -> dict[str, str]:
    response = httpx.post(live.url + NOTIFY, content=body, headers={"Content-Type": "text/xml"}, timeout=10)
    assert response.status_code == 200
    return parse_xml(response.content)


def refund_of(live: LiveApp, order_id: str, refund_id: str) -> dict[str, Any]:
    [found] = [r for r in live.pay_service.query(orderId=order_id)["refunds"] if r["refundId"] == refund_id]
    return found


def rejections(live: LiveApp) -> list[tuple[Any, ...]]:
    """The rejected notifications recorded: (orderId, verified, errorCode)."""
    with live.app.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT \"orderId\", verified, \"errorCode\" FROM jitpay_audit WHERE kind = 'notify' AND outcome = "
            "'rejected' ORDER BY id"))]


def test_a_refund_is_confirmed_by_its_notification(live: LiveApp) -> None:
    pay, wx = live.pay_service, wechat(live)
    order_id = paid_through(live, WECHAT, subject="Refund notification")[0]
    assert pay.refund(orderId=order_id, amount="5.00", refundId="R1")["status"] == "processing"
    assert wx.take_notifications() == []  # nothing until the refund ends

    assert wx.finish_refund("R1", "SUCCESS")
    [held] = wx.take_notifications()
    assert (held.event, held.reference, held.url) == ("refund", order_id, live.url + NOTIFY)
    outer = parse_xml(held.body)
    assert "sign" not in outer and set(outer) == {"return_code", "appid", "mch_id", "nonce_str", "req_info"}
    told = parse_xml(decrypt_req_info(outer["req_info"], api_key(live)), root="root")
    assert (told["out_trade_no"], told["out_refund_no"], told["refund_status"]) == (order_id, "R1", "SUCCESS")

    deliver(held)  # acknowledged; no job ran: the notification had the refund asked about
    order = pay.query(orderId=order_id)
    assert (refund_of(live, order_id, "R1")["status"], order["refundedAmount"]) == ("confirmed", 5)
    assert event_names(order_id)[-1] == "refunded"
    deliver(held)  # WeChat Pay sends it again: nothing more happens
    assert pay.query(orderId=order_id)["refundedAmount"] == 5 and event_names(order_id).count("refunded") == 1
    assert_money_invariant(live)


def test_a_closed_refund_is_released_when_its_notification_arrives(live: LiveApp) -> None:
    pay, wx = live.pay_service, wechat(live)
    order_id = paid_through(live, WECHAT, subject="Refund notification")[0]
    pay.refund(orderId=order_id, amount="20.00", refundId="R1")
    assert wx.finish_refund("R1", "CLOSED")
    deliver(*wx.take_notifications())
    assert refund_of(live, order_id, "R1")["status"] == "refused"
    assert event_names(order_id)[-1] == "refund-failed"
    assert pay.refund(orderId=order_id, amount="20.00", refundId="R2")["status"] == "processing"  # refundable again
    assert_money_invariant(live)


def test_the_notification_s_words_are_not_taken(live: LiveApp) -> None:
    """A notification (made with the merchant's key) saying SUCCESS about a refund WeChat Pay still has PROCESSING:
    PaySvc asks, and counts nothing."""
    pay = live.pay_service
    order_id = paid_through(live, WECHAT, subject="Refund notification")[0]
    pay.refund(orderId=order_id, amount="5.00", refundId="R1")
    trade = wechat(live).trade(order_id)
    told = {"out_trade_no": order_id, "out_refund_no": "R1", "transaction_id": trade["transaction_id"],
            "refund_status": "SUCCESS", "refund_fee": "500", "total_fee": "2000"}
    assert post(live, refund_notification(live, told))["return_code"] == "SUCCESS"
    order = pay.query(orderId=order_id)
    assert (refund_of(live, order_id, "R1")["status"], order["refundedAmount"]) == ("processing", 0)
    assert "refunded" not in event_names(order_id)
    assert_money_invariant(live)


def test_forged_or_unknown_refund_notifications_change_nothing_and_are_recorded(live: LiveApp) -> None:
    pay = live.pay_service
    order_id = paid_through(live, WECHAT, subject="Refund notification")[0]
    pay.refund(orderId=order_id, amount="5.00", refundId="R1")
    before = pay.query(orderId=order_id)
    told = {"out_trade_no": order_id, "out_refund_no": "R1", "refund_status": "SUCCESS"}
    forged = refund_notification(live, told, key="not the merchant's API key, 32 c")
    unknown = refund_notification(live, {**told, "out_trade_no": "NO_SUCH_TRADE_1"})
    tampered = parse_xml(refund_notification(live, told))
    tampered["req_info"] = tampered["req_info"][:-8] + "AAAAAAA="  # the last block changed
    for body in (forged, unknown, build_cdata_xml(tampered), refund_notification(live, {"out_refund_no": "R1"})):
        reply = post(live, body)
        assert reply["return_code"] == "FAIL", body
    assert pay.query(orderId=order_id) == before
    # not verified: what does not decrypt; verified: decrypted, but naming no trade WeChat Pay knows, or none at all
    assert rejections(live) == [(None, False, "SIGNATURE_INVALID"), (None, True, "NOTIFY_INVALID"),
                                (None, False, "SIGNATURE_INVALID"), (None, True, "NOTIFY_INVALID")]
    assert_money_invariant(live)
