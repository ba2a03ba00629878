"""Write tests/elements/pays/migration/v1.db with JitPay's schema-1 code: run from a checkout of commit dd5259c (the last with schema 1)."""
import sys
from datetime import datetime, timezone, timedelta
from pathlib import Path
sys.path.insert(0, ".")
from jitcore.app import create_engine
from elements.pays.services.PaySvc.lifecycle import OrderStore
from elements.pays.services.PaySvc.models import PayOrder, PayAttempt, PayRefund

path = Path("tests/elements/pays/migration/v1.db")
path.unlink(missing_ok=True)
store = OrderStore(create_engine(f"sqlite:///{path}"))
t0 = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)

def order(oid, fen, minutes):
    at = t0 + timedelta(minutes=minutes)
    assert store.insert_order(PayOrder(orderId=oid, subject=f"Subject {oid}", amountFen=fen, status="pending",
                                       cashierToken="tok" + oid, createdAt=at, updatedAt=at))
    return at

def attempt(oid, provider, name, pay_type, at, url):
    store.add_attempt(PayAttempt(orderId=oid, provider=provider, providerName=name, payType=pay_type, payUrl=url,
                                 qrCode=None, expiresAt=at + timedelta(hours=2), createdAt=at))

# a pending order offered through Alipay pc and WeChat pc+mobile
at = order("V1PENDING0001", 9999, 0)
attempt("V1PENDING0001", "pays.AliPayType", "alipay", "pc", at, "https://qr.alipay.example/abc")
attempt("V1PENDING0001", "pays.WechatPayType", "wechat", "pc", at, "weixin://wxpay/bizpayurl?pr=abc")
attempt("V1PENDING0001", "pays.WechatPayType", "wechat", "mobile", at, "https://wx.tenpay.example/mweb")
# paid through Alipay, partly refunded: one refund done, one refused, one with an unknown outcome (still pending)
at = order("V1PAID0000002", 10000, 1)
attempt("V1PAID0000002", "pays.AliPayType", "alipay", "pc", at, "https://qr.alipay.example/def")
assert store.transition("V1PAID0000002", "success", provider="pays.AliPayType", tradeNo="2026112022001000000000001",
                        payTime=at + timedelta(minutes=3))
for rid, fen in (("R-done", 2000), ("R-refused", 1000), ("R-unknown", 500)):
    r = PayRefund(orderId="V1PAID0000002", refundId=rid, amountFen=fen, status="pending",
                  provider="pays.AliPayType", reason="v1", createdAt=at, updatedAt=at)
    assert store.reserve_refund(r)
    if rid == "R-done":
        store.finish_refund(r, None)
    elif rid == "R-refused":
        store.fail_refund(r)
# paid through WeChat (MWEB) and fully refunded
at = order("V1REFUNDED003", 1, 2)
attempt("V1REFUNDED003", "pays.WechatPayType", "wechat", "mobile", at, "https://wx.tenpay.example/mweb2")
assert store.transition("V1REFUNDED003", "success", provider="pays.WechatPayType", tradeNo="4200000000202611200001",
                        payTime=at + timedelta(minutes=1))
r = PayRefund(orderId="V1REFUNDED003", refundId="R-all", amountFen=1, status="pending",
              provider="pays.WechatPayType", reason=None, createdAt=at, updatedAt=at)
assert store.reserve_refund(r); store.finish_refund(r, "50300000000000001")
assert store.transition("V1REFUNDED003", "refunded")
# closed, failed, and a pending order never offered
order("V1CLOSED00004", 500, 3); attempt("V1CLOSED00004", "pays.AliPayType", "alipay", "mobile", t0, "https://m.alipay.example/x")
assert store.transition("V1CLOSED00004", "closed")
order("V1FAILED00005", 700, 4); attempt("V1FAILED00005", "pays.WechatPayType", "wechat", "pc", t0, "weixin://wxpay/x")
assert store.transition("V1FAILED00005", "failed")
order("V1NEW00000006", 123456, 5)
store.audit("notify", "pending->success", provider="pays.AliPayType", order_id="V1PAID0000002", verified=True,
            payload={"trade_status": "TRADE_SUCCESS"})
print("ok", path.stat().st_size)
