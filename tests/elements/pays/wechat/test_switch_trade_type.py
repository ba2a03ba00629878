"""One order offered both ways with WeChat Pay: a QR code (``pc``, NATIVE) and an H5 link (``mobile``, MWEB).

WeChat refuses a second ``unifiedorder`` for one ``out_trade_no`` with other parameters ("201 商户订单号重复"), so the
provider gives each trade type its own WeChat order (NATIVE: the order id; MWEB: a reference derived from it) and
joins them to the order with ``attach``. Over real HTTP: ``jitcore.load_app``, PaySvc, the sandbox and PaySvc's notify
route on one uvicorn server (``start_live_app``); the rules of the mapping without a network at the end."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from elements.pays.errors import NotifyInvalid, OrderIdInvalid, ProviderError, SignatureInvalid
from elements.pays.Meta import OrderView
from elements.pays.services.PaySvc.ids import ORDER_ID_RE, new_order_id
from elements.pays.WechatPayType import MWEB_PREFIX, mweb_out_trade_no, out_trade_nos
from elements.pays.WechatPayType.signing import calculate_sign
from elements.pays.WechatPayType.wirexml import build_cdata_xml, build_xml, parse_xml
from tests.support.live import WECHAT_APP_ID, WECHAT_MCH_ID, LiveApp, pay_in_wallet, start_live_app, wait_for

from .conftest import APP_ID, MCH_ID, LoopbackServer, make_app, make_provider, random_key

WECHAT = "pays.WechatPayType"
DEAD_NOTIFY_URL = "http://127.0.0.1:9/nowhere"


@pytest.fixture(params=["MD5", "HMAC-SHA256"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveApp]:
    with start_live_app(tmp_path, wechat_sign_type=request.param) as live:
        yield live


@pytest.fixture
def deaf(tmp_path: Path) -> Iterator[LiveApp]:
    """An app whose notify URL WeChat cannot reach: only check() can learn of a payment."""
    with start_live_app(tmp_path, elements={WECHAT: {"config": {"notifyUrl": DEAD_NOTIFY_URL}}}) as live:
        yield live


def at_wechat(live: LiveApp, out_trade_no: str) -> dict[str, str]:
    """What the sandbox (over its API, as WeChat would say it) knows of one ``out_trade_no``."""
    return live.app.loadElement(WECHAT).api.call("pay/orderquery", {"out_trade_no": out_trade_no},
                                                 accept_errors={"ORDERNOTEXIST"})


def service(live: LiveApp) -> Any:
    """PaySvc itself (not the proxy), for its store."""
    return live.app.loadElement("pays.services.PaySvc")


def view(live: LiveApp, orderId: str) -> OrderView:
    """What the provider is told about the order, as PaySvc tells it."""
    svc = service(live)
    return svc.order_view(svc.ledger.order(orderId))


def api_key(live: LiveApp) -> str:
    return (live.yaml_path.parent / ".sandbox" / "wechat_api_key.txt").read_text().strip()


def notify_url(live: LiveApp) -> str:
    return f"{live.url}/api/shop/pays/services/PaySvc/wechatNotify"


def both_ways(live: LiveApp, amount: str = "12.34") -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """An order offered as a QR code, then as a link; both must work and the second must not break the first."""
    svc = live.pay_service
    order = svc.create(subject="切换支付方式 Switch", amount=Decimal(amount))
    pc = svc.getPayUrl(orderId=order["orderId"], fullName=WECHAT, payType="pc")
    mobile = svc.getPayUrl(orderId=order["orderId"], fullName=WECHAT, payType="mobile")
    assert pc["qrCode"].startswith("data:image/png;base64,") and mobile["qrCode"] is None
    assert pc["payUrl"] != mobile["payUrl"]
    for url in (pc["payUrl"], mobile["payUrl"]):  # both wallet pages offer the payment
        page = httpx.get(url)
        assert page.status_code == 200 and 'id="pay-button"' in page.text, url
    native, mweb = (at_wechat(live, ref) for ref in out_trade_nos(order["orderId"]).values())
    assert (native["trade_state"], native["trade_type"], native["attach"]) == ("NOTPAY", "NATIVE", order["orderId"])
    assert (mweb["trade_state"], mweb["trade_type"], mweb["attach"]) == ("NOTPAY", "MWEB", order["orderId"])
    assert mweb["out_trade_no"] == mweb_out_trade_no(order["orderId"])
    return order, pc, mobile


# -- switching, then paying ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pay_with", ["mobile", "pc"])
def test_qr_code_then_link_then_pay_either(live: LiveApp, pay_with: str) -> None:
    svc = live.pay_service
    order, pc, mobile = both_ways(live)
    # Back to the QR code (a fresh unifiedorder, not the stored one: WeChat answers it, the same trade), and to the
    # link again: nothing is refused.
    provider = live.app.loadElement(WECHAT)
    assert provider.prepare(view(live, order["orderId"]), "pc").payUrl == pc["payUrl"]
    assert provider.prepare(view(live, order["orderId"]), "mobile").payUrl == mobile["payUrl"]
    assert svc.getPayUrl(orderId=order["orderId"], fullName=WECHAT, payType="mobile")["payUrl"] == mobile["payUrl"]

    pay_in_wallet(pc["payUrl"] if pay_with == "pc" else mobile["payUrl"])
    paid = wait_for(lambda: (o := svc.query(orderId=order["orderId"]))["status"] == "success" and o)
    ref = out_trade_nos(order["orderId"])["NATIVE" if pay_with == "pc" else "MWEB"]
    trade = at_wechat(live, ref)
    assert trade["trade_state"] == "SUCCESS" and paid["tradeNo"] == trade["transaction_id"]
    assert paid["provider"] == WECHAT and paid["amount"] == Decimal("12.34")
    checked = svc.check(orderId=order["orderId"], fullName=WECHAT)
    assert checked["providerStatus"] == "success" and checked["tradeNo"] == paid["tradeNo"]
    # The notification was mapped to the order through attach and applied.
    notes = service(live).ledger.audit_log(order["orderId"], kinds=["notify"])
    assert notes[0].outcome == "pending->success" and notes[0].verified
    assert f'"out_trade_no": "{ref}"' in notes[0].payload and f'"attach": "{order["orderId"]}"' in notes[0].payload
    # Once paid, PaySvc settles: the other WeChat order is closed, so the buyer cannot pay twice.
    other_ref = out_trade_nos(order["orderId"])["MWEB" if pay_with == "pc" else "NATIVE"]
    wait_for(lambda: at_wechat(live, other_ref)["trade_state"] == "CLOSED")
    svc_element = service(live)
    assert wait_for(lambda: [r.outcome for r in svc_element.ledger.audit_log(order["orderId"], kinds=["settle"])][:1]) \
        == ["settled"]
    assert svc.query(orderId=order["orderId"])["tradeNo"] == paid["tradeNo"]  # the first payment stays recorded


def test_link_first_then_qr_code(live: LiveApp) -> None:
    svc = live.pay_service
    order = svc.create(subject="先链接后扫码 Link first", amount=Decimal("0.50"))
    mobile = svc.getPayUrl(orderId=order["orderId"], fullName=WECHAT, payType="mobile")
    pc = svc.getPayUrl(orderId=order["orderId"], fullName=WECHAT, payType="pc")
    assert pc["qrCode"] and mobile["payUrl"] != pc["payUrl"]
    pay_in_wallet(pc["payUrl"])
    paid = wait_for(lambda: (o := svc.query(orderId=order["orderId"]))["status"] == "success" and o)
    assert paid["tradeNo"] == at_wechat(live, order["orderId"])["transaction_id"]


@pytest.mark.parametrize("pay_with", ["mobile", "pc"])
def test_check_finds_the_payment_by_either_reference_without_notifications(deaf: LiveApp, pay_with: str) -> None:
    svc = deaf.pay_service
    assert deaf.app.loadElement(WECHAT).settings.notifyUrl == DEAD_NOTIFY_URL
    order, pc, mobile = both_ways(deaf)
    pay_in_wallet(pc["payUrl"] if pay_with == "pc" else mobile["payUrl"])
    assert svc.query(orderId=order["orderId"])["status"] == "pending"  # no notification can arrive
    checked = svc.check(orderId=order["orderId"], fullName=WECHAT)
    ref = out_trade_nos(order["orderId"])["NATIVE" if pay_with == "pc" else "MWEB"]
    assert checked["status"] == "success" and checked["providerStatus"] == "success"
    assert checked["tradeNo"] == at_wechat(deaf, ref)["transaction_id"] and checked["amount"] == Decimal("12.34")


def test_paid_twice_check_reports_the_recorded_payment(deaf: LiveApp, caplog: pytest.LogCaptureFixture) -> None:
    svc = deaf.pay_service
    order, pc, mobile = both_ways(deaf)
    pay_in_wallet(mobile["payUrl"])
    pay_in_wallet(pc["payUrl"])  # the buyer paid twice
    provider = deaf.app.loadElement(WECHAT)
    native, mweb = (at_wechat(deaf, ref)["transaction_id"] for ref in out_trade_nos(order["orderId"]).values())
    with caplog.at_level("WARNING"):
        state = provider.query(view(deaf, order["orderId"]))
    assert state.status == "success" and state.tradeNo == native  # the first (NATIVE) when nothing is recorded
    assert "paid more than once" in caplog.text
    checked = svc.check(orderId=order["orderId"], fullName=WECHAT)
    assert checked["tradeNo"] == native
    recorded = view(deaf, order["orderId"])
    assert provider.query(recorded).tradeNo == native  # the recorded payment stays the answer
    # Had the MWEB payment been recorded first, that would stay the answer.
    assert provider.query(dataclasses.replace(recorded, tradeNo=mweb)).tradeNo == mweb


def test_a_qr_code_made_before_attach_was_sent_is_still_offered(live: LiveApp) -> None:
    """An order whose NATIVE WeChat order an older JitPay created (same parameters, no attach): asking for the QR
    code again is not refused; the link is a new WeChat order; paying the QR code is mapped by out_trade_no."""
    svc = live.pay_service
    order = svc.create(subject="Before the upgrade", amount=Decimal("2.00"))
    provider = live.app.loadElement(WECHAT)
    old = {"body": "Before the upgrade", "out_trade_no": order["orderId"], "total_fee": 200, "fee_type": "CNY",
           "spbill_create_ip": "127.0.0.1", "notify_url": provider.settings.notifyUrl, "trade_type": "NATIVE",
           "product_id": order["orderId"]}
    code_url = provider.api.call("pay/unifiedorder", old)["code_url"]
    pc = svc.getPayUrl(orderId=order["orderId"], fullName=WECHAT, payType="pc")
    assert pc["payUrl"] == code_url
    mobile = svc.getPayUrl(orderId=order["orderId"], fullName=WECHAT, payType="mobile")
    assert at_wechat(live, mweb_out_trade_no(order["orderId"]))["attach"] == order["orderId"]
    assert "attach" not in at_wechat(live, order["orderId"]) and mobile["payUrl"] != code_url
    pay_in_wallet(pc["payUrl"])
    paid = wait_for(lambda: (o := svc.query(orderId=order["orderId"]))["status"] == "success" and o)
    assert paid["tradeNo"] == at_wechat(live, order["orderId"])["transaction_id"]


# -- close and refund -----------------------------------------------------------------------------------------------
def test_close_closes_both_wechat_orders(live: LiveApp) -> None:
    svc = live.pay_service
    order, pc, mobile = both_ways(live)
    assert svc.close(orderId=order["orderId"])["status"] == "closed"
    for ref, url in zip(out_trade_nos(order["orderId"]).values(), (pc["payUrl"], mobile["payUrl"])):
        assert at_wechat(live, ref)["trade_state"] == "CLOSED"
        page = httpx.get(url)
        assert 'data-state="CLOSED"' in page.text and 'id="pay-button"' not in page.text
    # Only one of them offered: closing the other (ORDERNOTEXIST) is fine.
    only_pc = svc.create(subject="Only a QR code", amount=Decimal("1.00"))
    svc.getPayUrl(orderId=only_pc["orderId"], fullName=WECHAT, payType="pc")
    assert svc.close(orderId=only_pc["orderId"])["status"] == "closed"
    assert at_wechat(live, only_pc["orderId"])["trade_state"] == "CLOSED"
    assert at_wechat(live, mweb_out_trade_no(only_pc["orderId"]))["err_code"] == "ORDERNOTEXIST"
    # Closing again at the provider (ORDERCLOSED for both) is fine too.
    provider = live.app.loadElement(WECHAT)
    provider.close(view(live, order["orderId"]))


def test_close_after_one_of_them_was_paid_closes_the_other_and_refunds_the_payment(deaf: LiveApp) -> None:
    svc = deaf.pay_service
    order, pc, mobile = both_ways(deaf)
    pay_in_wallet(mobile["payUrl"])  # paid, but the notification never arrives
    closed = svc.close(orderId=order["orderId"])
    assert closed["status"] == "closed"  # the merchant's close comes first: that payment is a surplus
    assert at_wechat(deaf, order["orderId"])["trade_state"] == "CLOSED"  # the QR code can no longer be paid
    # closing the MWEB order found it paid: the jobs record it and refund it
    result = wait_for(lambda: (r := svc.query(orderId=order["orderId"]))["refunds"]
                      and r["refunds"][0]["status"] == "confirmed" and r)
    [paid] = [p for p in result["payments"] if p["tradeNo"]]
    assert result["status"] == "closed" and paid["role"] == "surplus" and paid["status"] == "refunded"
    assert [(r["kind"], r["status"]) for r in result["refunds"]] == [("surplus", "confirmed")]
    assert at_wechat(deaf, mweb_out_trade_no(order["orderId"]))["trade_state"] == "REFUND"


@pytest.mark.parametrize("pay_with", ["mobile", "pc"])
def test_refund_by_transaction_id(live: LiveApp, pay_with: str) -> None:
    svc = live.pay_service
    order, pc, mobile = both_ways(live, "20.00")
    pay_in_wallet(pc["payUrl"] if pay_with == "pc" else mobile["payUrl"])
    paid = wait_for(lambda: (o := svc.query(orderId=order["orderId"]))["status"] == "success" and o)
    provider = live.app.loadElement(WECHAT)
    sent: list[dict[str, Any]] = []
    real = provider.api

    class Spy:  # records what goes on the wire, then calls the real client
        sslContext = real.sslContext

        @staticmethod
        def call(path: str, fields: Any, **kwargs: Any) -> dict[str, str]:
            sent.append({"path": path, **fields})
            return real.call(path, fields, **kwargs)

    provider.api = Spy()
    try:
        first = svc.refund(orderId=order["orderId"], amount=Decimal("5.00"), refundId="RFX1")
        svc.refund(orderId=order["orderId"])
    finally:
        provider.api = real
    assert first["status"] == "confirmed" and first["refundNo"]
    refunds = [s for s in sent if s["path"] == "secapi/pay/refund"]
    assert len(refunds) == 2
    assert all(s["transaction_id"] == paid["tradeNo"] and "out_trade_no" not in s for s in refunds)
    ref = out_trade_nos(order["orderId"])["NATIVE" if pay_with == "pc" else "MWEB"]
    assert at_wechat(live, ref)["trade_state"] == "REFUND"
    final = svc.query(orderId=order["orderId"])
    assert final["status"] == "refunded" and final["refundedAmount"] == Decimal("20.00")


# -- notifications mapped through attach ----------------------------------------------------------------------------
def signed_notification(key: str, sign_type: str = "MD5", **fields: str) -> dict[str, str]:
    base = {"appid": WECHAT_APP_ID, "mch_id": WECHAT_MCH_ID, "nonce_str": "y" * 32, "return_code": "SUCCESS",
            "result_code": "SUCCESS", "openid": "oBuyer", "trade_type": "MWEB", "bank_type": "OTHERS",
            "total_fee": "1234", "cash_fee": "1234", "transaction_id": "4200000000000000000000000042",
            "time_end": "20240101120000", **fields}
    base["sign"] = calculate_sign(base, key, sign_type)
    return base


def test_a_signed_notification_whose_attach_names_another_order_is_refused(live: LiveApp) -> None:
    svc = live.pay_service
    provider = live.app.loadElement(WECHAT)
    first, _, _ = both_ways(live)
    other = svc.create(subject="Another order", amount=Decimal("12.34"))
    svc.getPayUrl(orderId=other["orderId"], fullName=WECHAT, payType="mobile")
    ref = mweb_out_trade_no(first["orderId"])
    sign_type = provider.settings.signType  # the only one its notifications may use
    forged = signed_notification(api_key(live), sign_type, out_trade_no=ref, attach=other["orderId"])
    with pytest.raises(NotifyInvalid, match="attach"):
        provider.verify_notify(forged)
    genuine = signed_notification(api_key(live), sign_type, out_trade_no=ref, attach=first["orderId"])
    assert provider.verify_notify(genuine).orderId == first["orderId"]
    # Over HTTP to PaySvc: refused (WeChat would retry), nothing changes for either order.
    reply = httpx.post(notify_url(live), content=build_cdata_xml(forged), headers={"Content-Type": "text/xml"})
    assert parse_xml(reply.content)["return_code"] == "FAIL"
    for order in (first, other):
        assert svc.query(orderId=order["orderId"])["status"] == "pending"


def test_the_sandbox_itself_never_lets_attach_and_out_trade_no_disagree_unnoticed(live: LiveApp) -> None:
    """A WeChat order made behind the provider's back (another system on the same merchant) with the MWEB reference
    of order A but attach naming order B, paid in the wallet: the sandbox's own signed notification is refused, A
    and B stay pending, and check() of A refuses the answer rather than apply it."""
    svc = live.pay_service
    a = svc.create(subject="Order A", amount=Decimal("3.00"))
    b = svc.create(subject="Order B", amount=Decimal("3.00"))
    svc.getPayUrl(orderId=b["orderId"], fullName=WECHAT, payType="pc")
    fields = {"appid": WECHAT_APP_ID, "mch_id": WECHAT_MCH_ID, "nonce_str": "z" * 32, "body": "x",
              "out_trade_no": mweb_out_trade_no(a["orderId"]), "total_fee": "300", "spbill_create_ip": "127.0.0.1",
              "notify_url": notify_url(live), "trade_type": "NATIVE", "product_id": "p1", "attach": b["orderId"]}
    # made with the merchant's sign type, so its notification is signed the way the merchant verifies
    sign_type = live.app.loadElement(WECHAT).settings.signType
    if sign_type != "MD5":
        fields["sign_type"] = sign_type
    fields["sign"] = calculate_sign(fields, api_key(live), sign_type)
    answer = parse_xml(httpx.post(f"{live.url}/sandbox/wechat/pay/unifiedorder", content=build_xml(fields)).content)
    assert answer["result_code"] == "SUCCESS"
    pay_in_wallet(answer["code_url"])
    # The sandbox's notification reaches PaySvc and is refused (WeChat would notify again).
    rejected = wait_for(lambda: service(live).ledger.audit_log(mweb_out_trade_no(a["orderId"]), kinds=["notify"]))
    assert rejected[0].outcome == "rejected" and rejected[0].errorCode == "NOTIFY_INVALID"
    for order in (a, b):
        assert svc.query(orderId=order["orderId"])["status"] == "pending"
    with pytest.raises(ProviderError, match="another order"):
        svc.check(orderId=a["orderId"], fullName=WECHAT)
    assert svc.check(orderId=b["orderId"], fullName=WECHAT)["status"] == "pending"
    assert svc.query(orderId=a["orderId"])["status"] == "pending"



# -- the rules, without the sandbox ---------------------------------------------------------------------------------
KEY = random_key()
ORDER = OrderView(orderId="20240101000000000001ABCDEFGH", subject="商品", amount=Decimal("12.34"),
                  createdAt=dt.datetime.now(dt.timezone.utc))


def test_mweb_reference_is_valid_distinct_and_deterministic() -> None:
    ids = [new_order_id() for _ in range(2000)] + ["abcdef", "A" * 32, "x_y_z_1"]
    refs = [mweb_out_trade_no(i) for i in ids]
    for order_id, ref in zip(ids, refs):
        assert re.fullmatch(r"[A-Za-z0-9_\-|*]{6,32}", ref) and len(ref) == 32 and ref.startswith(MWEB_PREFIX)
        assert not ORDER_ID_RE.match(ref)  # never an order id PaySvc makes or accepts
        assert mweb_out_trade_no(order_id) == ref
    assert len(set(refs)) == len(ids)
    assert out_trade_nos(ORDER.orderId) == {"NATIVE": ORDER.orderId, "MWEB": mweb_out_trade_no(ORDER.orderId)}


@pytest.fixture
def offline(tmp_path: Path) -> Any:
    return make_provider(make_app(tmp_path, "https://shop.example.com"), appId=APP_ID, mchId=MCH_ID, apiKey=KEY)


def test_an_order_id_may_not_look_like_an_mweb_reference(offline) -> None:
    with pytest.raises(OrderIdInvalid):
        offline.prepare(dataclasses.replace(ORDER, orderId=mweb_out_trade_no(ORDER.orderId)), "pc")


def notification(**change: str) -> dict[str, str]:
    fields = {"appid": APP_ID, "mch_id": MCH_ID, "nonce_str": "n" * 32, "return_code": "SUCCESS",
              "result_code": "SUCCESS", "openid": "o1", "trade_type": "MWEB", "bank_type": "OTHERS",
              "total_fee": "1234", "cash_fee": "1234", "transaction_id": "4200000000000000000000000007",
              "out_trade_no": mweb_out_trade_no(ORDER.orderId), "attach": ORDER.orderId,
              "time_end": "20240101120000", **change}
    fields = {k: v for k, v in fields.items() if v is not None}
    fields["sign"] = calculate_sign(fields, KEY, "MD5")
    return fields


def test_verify_notify_maps_through_attach_only_when_it_matches(offline) -> None:
    assert offline.verify_notify(notification()).orderId == ORDER.orderId  # MWEB
    native = notification(out_trade_no=ORDER.orderId, trade_type="NATIVE")
    assert offline.verify_notify(native).orderId == ORDER.orderId
    failed = notification(result_code="FAIL", transaction_id=None)
    assert offline.verify_notify(failed).orderId == ORDER.orderId and offline.verify_notify(failed).status == "failed"
    # Without attach (an order made before attach was sent): out_trade_no is the order.
    assert offline.verify_notify(notification(out_trade_no=ORDER.orderId, attach=None)).orderId == ORDER.orderId
    other = "20240101000000000002ABCDEFGH"
    # A NATIVE out_trade_no is the order id itself: WeChat's key decides, an attach naming another order is ignored.
    assert offline.verify_notify(notification(out_trade_no=ORDER.orderId, attach=other)).orderId == ORDER.orderId
    # An MWEB reference maps only to the order it is derived from, recomputed.
    for change in ({"attach": other},  # the MWEB reference of ORDER, attach naming another order
                   {"attach": None},
                   {"out_trade_no": mweb_out_trade_no(other)},
                   {"out_trade_no": mweb_out_trade_no(other), "attach": mweb_out_trade_no(ORDER.orderId)},
                   {"result_code": "FAIL", "transaction_id": None, "attach": other}):
        with pytest.raises(NotifyInvalid, match="attach"):
            offline.verify_notify(notification(**change))
    # Changing attach after signing is a bad signature, not a mapping question.
    with pytest.raises(SignatureInvalid):
        offline.verify_notify({**notification(), "attach": other})


class Scripted:
    """A fake WeChat answering each ``out_trade_no`` as scripted: a trade_state, an err_code, or a Response."""

    def __init__(self) -> None:
        self.script: dict[str, Any] = {}
        self.requests: list[dict[str, str]] = []

    async def endpoint(self, request: Request) -> Response:
        fields = parse_xml(await request.body())
        self.requests.append({"path": request.url.path, **fields})
        what = self.script.get(fields.get("out_trade_no", ""), "ORDERNOTEXIST")
        if isinstance(what, Response):
            return what
        answer = {"return_code": "SUCCESS", "appid": APP_ID, "mch_id": MCH_ID, "nonce_str": "a"}
        if what in ("ORDERNOTEXIST", "SYSTEMERROR", "ORDERPAID", "ORDERCLOSED"):
            answer.update(result_code="FAIL", err_code=what)
        elif request.url.path.endswith("closeorder"):
            answer.update(result_code="SUCCESS")
        else:
            state, _, attach = what.partition("@")
            answer.update(result_code="SUCCESS", trade_state=state, out_trade_no=fields["out_trade_no"],
                          attach=attach or ORDER.orderId, total_fee="1234")
            if state in ("SUCCESS", "REFUND"):
                answer.update(transaction_id="42" + fields["out_trade_no"][-6:], time_end="20240101120000")
        answer["sign"] = calculate_sign(answer, KEY, "MD5")
        return Response(build_cdata_xml(answer), media_type="text/xml")


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Scripted, str]]:
    fake = Scripted()
    with LoopbackServer(Starlette(routes=[Route("/{path:path}", fake.endpoint, methods=["POST"])])) as loop:
        yield fake, loop.url


@pytest.fixture
def against(scripted, tmp_path: Path) -> Any:
    fake, url = scripted
    fake.requests.clear()

    def run(native: Any, mweb: Any) -> Any:
        fake.script = {ORDER.orderId: native, mweb_out_trade_no(ORDER.orderId): mweb}
        return make_provider(make_app(tmp_path, "https://shop.example.com"), appId=APP_ID, mchId=MCH_ID, apiKey=KEY,
                             gateway=url, timeout=5)

    run.fake = fake
    return run


NATIVE_TXN = "42" + ORDER.orderId[-6:]
MWEB_TXN = "42" + mweb_out_trade_no(ORDER.orderId)[-6:]


@pytest.mark.parametrize("native, mweb, status, tradeNo", [
    ("ORDERNOTEXIST", "ORDERNOTEXIST", "pending", None),
    ("NOTPAY", "ORDERNOTEXIST", "pending", None),
    ("ORDERNOTEXIST", "USERPAYING", "pending", None),
    ("CLOSED", "NOTPAY", "pending", None),
    ("CLOSED", "ORDERNOTEXIST", "closed", None),
    ("CLOSED", "REVOKED", "closed", None),
    ("CLOSED", "PAYERROR", "failed", None),
    ("ORDERNOTEXIST", "SUCCESS", "success", MWEB_TXN),
    ("CLOSED", "SUCCESS", "success", MWEB_TXN),
    ("SUCCESS", "NOTPAY", "success", NATIVE_TXN),
    ("REFUND", "ORDERNOTEXIST", "refunded", NATIVE_TXN),
    ("SUCCESS", "SYSTEMERROR", "success", NATIVE_TXN),  # a definite answer despite the other failing
])
def test_query_combines_both_wechat_orders(against, native, mweb, status, tradeNo) -> None:
    state = against(native, mweb).query(ORDER)
    assert (state.orderId, state.status, state.tradeNo) == (ORDER.orderId, status, tradeNo)
    asked = [r["out_trade_no"] for r in against.fake.requests]
    assert asked == [ORDER.orderId, mweb_out_trade_no(ORDER.orderId)]


def test_query_of_the_native_order_is_keyed_by_the_order_id(against) -> None:
    # An attach naming another order does not matter there (as in notifications).
    state = against("SUCCESS@20240101000000000002ABCDEFGH", "ORDERNOTEXIST").query(ORDER)
    assert (state.orderId, state.status, state.tradeNo) == (ORDER.orderId, "success", NATIVE_TXN)


def test_query_paid_twice_prefers_the_recorded_payment(against, caplog) -> None:
    provider = against("SUCCESS", "SUCCESS")
    with caplog.at_level("WARNING"):
        assert provider.query(ORDER).tradeNo == NATIVE_TXN
    assert "paid more than once" in caplog.text
    assert provider.query(dataclasses.replace(ORDER, tradeNo=MWEB_TXN)).tradeNo == MWEB_TXN


@pytest.mark.parametrize("native, mweb, code", [
    ("NOTPAY", "SYSTEMERROR", "SYSTEMERROR"),
    ("SYSTEMERROR", "ORDERNOTEXIST", "SYSTEMERROR"),
    ("NOTPAY", "SUCCESS@20240101000000000002ABCDEFGH", "INVALID_RESPONSE"),  # MWEB attach names another order
    ("NOTPAY", Response(b"", status_code=503), "HTTP_503"),
])
def test_query_raises_when_it_cannot_tell(against, native, mweb, code) -> None:
    with pytest.raises(ProviderError) as info:
        against(native, mweb).query(ORDER)
    assert info.value.provider_code == code


def test_close_tries_both_and_raises_a_paid_one_first(against) -> None:
    against("NOTPAY", "ORDERNOTEXIST").close(ORDER)
    against("ORDERCLOSED", "NOTPAY").close(ORDER)
    against.fake.requests.clear()
    with pytest.raises(ProviderError) as info:
        against("SYSTEMERROR", "ORDERPAID").close(ORDER)
    assert info.value.provider_code == "ORDERPAID"
    assert [r["out_trade_no"] for r in against.fake.requests] == [ORDER.orderId, mweb_out_trade_no(ORDER.orderId)]
    with pytest.raises(ProviderError) as info:
        against("SYSTEMERROR", "NOTPAY").close(ORDER)
    assert info.value.provider_code == "SYSTEMERROR"
