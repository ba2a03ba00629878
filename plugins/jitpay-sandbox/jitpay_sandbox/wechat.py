"""A local simulator of the WeChat Pay merchant API v2, served under ``/sandbox/wechat/``.

It answers what the real API answers, the way it answers it: XML in and out, request signatures checked (MD5 or
HMAC-SHA256, as the request's ``sign_type`` says; values trimmed as WeChat's official SDKs and server do, so a value
sent with whitespace at an end but signed untrimmed fails) and ``FAIL``/``签名错误`` on a bad one, answers signed with the
request's sign type, WeChat's trade states, its refusal of a reused ``out_trade_no`` with other parameters ("201
商户订单号重复", e.g. NATIVE then MWEB for one ``out_trade_no``), ``attach`` echoed in notifications and ``orderquery``
answers, refunds named by ``out_trade_no`` or ``transaction_id`` (``transaction_id`` first when both are given), and a
signed payment notification POSTed to ``notify_url`` until the merchant answers ``SUCCESS``. In place of the WeChat
app there is a wallet page (the ``code_url``/``mweb_url`` it hands out) where a person presses "Pay".

Differences from the real service, on purpose:

- ``code_url`` / ``mweb_url`` are ``http://`` URLs of the wallet page (``weixin://wxpay/...`` and ``wx.tenpay.com``
  in production), built from the base URL the request came in on.
- ``closeorder`` is refused within ``closeMinAgeSeconds`` of ``unifiedorder`` (real WeChat: 5 minutes); the setting
  defaults to 0 so a demo can close at once. Set it to 300 to rehearse the real rule.
- ``time_expire`` (``yyyyMMddHHmmss``, Beijing time) is enforced as WeChat does: an unpaid order past it is
  ``CLOSED`` and can no longer be paid, and ``unifiedorder`` refuses a ``time_expire`` less than
  ``timeExpireMinSeconds`` after the request (WeChat: 5 minutes; the setting defaults to 300 and tests lower it).
- ``/secapi/pay/refund`` is plain HTTP, so the merchant client certificate cannot be checked; refunds complete at once
  (``SUCCESS`` in ``/pay/refundquery``) unless :attr:`~WechatSandbox.refunds_wait` is set: then they stay
  ``PROCESSING`` until :meth:`~WechatSandbox.finish_refund` ends them (``SUCCESS``, ``REFUNDCLOSE``, ``CHANGE``).
  A refund made with a ``notify_url`` sends its refund notification there when it ends (unsigned, ``req_info``
  encrypted as WeChat Pay does; event ``"refund"`` when held).
- Notifications are retried after ``notifyRetryDelays`` seconds (default 2, 5, 10, 30, 60), far shorter than
  WeChat's 15 s ... 60 min schedule.
- Trades live in the memory of the serving process.

Settings (``app.settings["sandbox"]["wechat"]``): ``appId``, ``mchId``, ``apiKey`` (required; the same values the
app's ``pays.WechatPayType`` is configured with), ``closeMinAgeSeconds``, ``timeExpireMinSeconds``,
``notifyRetryDelays``, ``notifyTimeout`` and ``notifyMode`` (``send``, the default: post notifications; ``hold``: keep
them for a test to deliver, see :meth:`WechatSandbox.take_notifications`).

For tests, the sandbox object (``route.endpoint.__self__`` of its routes, or :func:`jitpay_sandbox.sandbox_of`) has a
thread-safe Python API: :meth:`~WechatSandbox.pay`, :meth:`~WechatSandbox.fail`, :meth:`~WechatSandbox.trade`,
:meth:`~WechatSandbox.captured`, :meth:`~WechatSandbox.refunded`, :meth:`~WechatSandbox.references`,
:meth:`~WechatSandbox.held_notifications`, :meth:`~WechatSandbox.take_notifications` and
:attr:`~WechatSandbox.notify_mode`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Awaitable, Callable, ClassVar, Mapping

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from elements.pays.WechatPayType.reqinfo import encrypt_req_info
from elements.pays.WechatPayType.wirexml import XmlRejected, build_cdata_xml, parse_xml
from jitcore.errors import ConfigError

from .common import (ALNUM, BEIJING, WechatWalletSandbox, digits, mount, read_limited, read_notify_mode, read_numbers,
                     required_text, sandbox_block, write_new, yuan)

__all__ = ["wechat_routes", "generate_wechat_key", "WechatSandbox", "WechatSandboxSettings", "PREFIX"]

log = logging.getLogger(__name__)

PREFIX = "/sandbox/wechat"
KEY_FILE = "wechat_api_key.txt"
MAX_BODY_BYTES = 64 * 1024
_OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_\-|*]{1,32}")
# A repeated unifiedorder must carry the same parameters except these (WeChat's "201 商户订单号重复" rule).
_MAY_VARY = {"nonce_str", "sign", "sign_type", "spbill_create_ip"}
NOTIFY_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}
_TIME_EXPIRE = re.compile(r"[0-9]{14}")
_PAYABLE = ("NOTPAY", "USERPAYING")
_STATE_DESC = {"NOTPAY": "订单未支付", "USERPAYING": "用户支付中", "SUCCESS": "支付成功", "REFUND": "转入退款",
               "CLOSED": "已关闭", "PAYERROR": "支付失败"}


# -- keys -------------------------------------------------------------------------------------------------------------
def generate_wechat_key(directory: Path) -> None:
    """Write a fresh random 32-character API key (letters and digits) to ``directory/wechat_api_key.txt``, mode 0600.
    An existing file is kept (idempotent)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = "".join(secrets.choice(ALNUM) for _ in range(32))
    write_new(directory / KEY_FILE, (key + "\n").encode("ascii"), 0o600)


# -- signing (written apart from the provider's on purpose: the sandbox checks the client, not itself) ---------------
def _trimmed(value: str) -> str:
    """What WeChat signs of a value: Java's ``String.trim()`` (characters up to U+0020 off both ends)."""
    chars = list(value)
    while chars and ord(chars[0]) <= 0x20:
        chars.pop(0)
    while chars and ord(chars[-1]) <= 0x20:
        chars.pop()
    return "".join(chars)


def _sign(fields: Mapping[str, str], key: str, sign_type: str) -> str:
    """WeChat's rule (``WXPayUtil.generateSignature``): values trimmed, those then empty and ``sign`` left out."""
    pairs = ((k, _trimmed(fields[k])) for k in sorted(fields) if k != "sign")
    text = "&".join(f"{k}={v}" for k, v in pairs if v) + f"&key={key}"
    if sign_type == "HMAC-SHA256":
        return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest().upper()
    return hashlib.md5(text.encode()).hexdigest().upper()


# -- state ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WechatSandboxSettings:
    """The sandbox merchant and its behaviour knobs (see the module docstring)."""

    appId: str
    mchId: str
    apiKey: str
    closeMinAgeSeconds: float = 0.0
    timeExpireMinSeconds: float = 300.0
    notifyRetryDelays: tuple[float, ...] = (2, 5, 10, 30, 60)
    notifyTimeout: float = 5.0
    notifyMode: str = "send"

    def __repr__(self) -> str:
        return f"WechatSandboxSettings(appId={self.appId!r}, mchId={self.mchId!r})"

    @classmethod
    def from_app(cls, app: Any) -> "WechatSandboxSettings":
        """Read ``app.settings["sandbox"]["wechat"]``; ``ConfigError`` names a missing or wrong key."""
        where = "settings.sandbox.wechat"
        raw = sandbox_block(app, "wechat")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} is missing: the WeChat Pay sandbox needs appId, mchId and apiKey")
        values: dict[str, Any] = {key: required_text(raw, where, key) for key in ("appId", "mchId", "apiKey")}
        values.update(read_numbers(raw, where, ("closeMinAgeSeconds", "timeExpireMinSeconds", "notifyTimeout")))
        values["notifyMode"] = read_notify_mode(raw, where, cls.notifyMode)
        extra = set(raw) - {"appId", "mchId", "apiKey", "closeMinAgeSeconds", "timeExpireMinSeconds",
                            "notifyRetryDelays", "notifyTimeout", "notifyMode"}
        if extra:
            raise ConfigError(f"{where}.{sorted(extra)[0]} is not a WeChat sandbox setting")
        return cls(**values)


@dataclass
class _Refund:
    out_refund_no: str
    refund_id: str
    refund_fee: int
    success_time: str
    #: SUCCESS, PROCESSING, REFUNDCLOSE (nothing refunded) or CHANGE (the buyer's account could not take it)
    status: str = "SUCCESS"
    #: where the refund notification goes when the refund ends (the request's notify_url; none: not sent)
    notify_url: str = ""


@dataclass
class _Trade:
    out_trade_no: str
    token: str
    params: dict[str, str]          # the business parameters of the unifiedorder (for the repeat rule)
    sign_type: str                  # notifications are signed the way the order was created
    prepay_id: str
    created: float                  # time.monotonic()
    expires: datetime | None = None  # time_expire, when the order was made with one
    state: str = "NOTPAY"
    transaction_id: str = ""
    openid: str = ""
    time_end: str = ""
    refunds: dict[str, _Refund] = field(default_factory=dict)
    notify_attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_fee(self) -> int:
        return int(self.params["total_fee"])

    @property
    def refunded_fee(self) -> int:
        """What left the merchant: refunds made or on their way (not closed ones, nor those that came back)."""
        return sum(r.refund_fee for r in self.refunds.values() if r.status in ("SUCCESS", "PROCESSING"))


def _refund_time() -> str:
    return datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def _beijing_now() -> str:
    return datetime.now(BEIJING).strftime("%Y%m%d%H%M%S")


class _Fail(Exception):
    """A ``return_code=FAIL`` answer (the call itself is wrong)."""


class _BizFail(Exception):
    """A ``result_code=FAIL`` answer with WeChat's ``err_code`` and ``err_code_des``."""

    def __init__(self, err_code: str, err_code_des: str) -> None:
        super().__init__(err_code)
        self.err_code, self.err_code_des = err_code, err_code_des


class WechatSandbox(WechatWalletSandbox):
    """The simulator: one merchant, its trades in memory (guarded by a lock), and the Starlette routes. The wallet,
    held notifications and the Python API for tests are :class:`~jitpay_sandbox.common.WechatWalletSandbox`'s."""

    provider: ClassVar[str] = "wechat"
    prefix: ClassVar[str] = PREFIX
    wallet_route_name: ClassVar[str] = "wechat_sandbox_wallet"
    wallet_template: ClassVar[str] = "wechat_wallet.html"

    def __init__(self, settings: WechatSandboxSettings) -> None:
        super().__init__(notify_mode=settings.notifyMode)
        self.settings = settings

    # -- public -----------------------------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        """The Starlette routes, all under ``/sandbox/wechat/``."""
        api = {
            "pay/unifiedorder": self._unifiedorder,
            "pay/orderquery": self._orderquery,
            "pay/closeorder": self._closeorder,
            "secapi/pay/refund": self._refund,
            "pay/refundquery": self._refundquery,
        }
        routes: list[BaseRoute] = [Route(f"{PREFIX}/{path}", self._endpoint(handler), methods=["POST"])
                                   for path, handler in api.items()]
        return routes + self._wallet_routes()

    def trade_state(self, out_trade_no: str) -> dict[str, Any] | None:
        """A snapshot of one trade (state, ids, amounts in fen, ``time_expire``, notification attempts), for tests
        and the wallet page; ``None`` for an ``out_trade_no`` the sandbox never saw."""
        with self._lock:
            trade = self._trades.get(out_trade_no)
            if trade is None:
                return None
            self._expire(trade)
            return {"out_trade_no": trade.out_trade_no, "trade_type": trade.params["trade_type"],
                    "attach": trade.params.get("attach", ""), "state": trade.state, "total_fee": trade.total_fee,
                    "transaction_id": trade.transaction_id, "refunded_fee": trade.refunded_fee,
                    "time_expire": trade.params.get("time_expire", ""),
                    "refunds": {r.out_refund_no: r.refund_fee for r in trade.refunds.values()},
                    "notify_attempts": [dict(a) for a in trade.notify_attempts]}

    # -- the Python API for tests ---------------------------------------------------------------------------------
    def trade(self, reference: str) -> dict[str, Any] | None:
        """The snapshot of the trade ``reference`` (its ``out_trade_no``): :meth:`trade_state`."""
        return self.trade_state(reference)

    def _captured_amount(self, trade: _Trade) -> Decimal:
        """The order's ``total_fee`` once paid (also after refunds), in yuan."""
        return yuan(trade.total_fee if trade.transaction_id else 0)

    def _refunded_amount(self, trade: _Trade) -> Decimal:
        return yuan(trade.refunded_fee)

    # -- the API plumbing ---------------------------------------------------------------------------------------------
    def _endpoint(self, handler: Callable[[dict[str, str], Request], dict[str, str]]
                  ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                body = await read_limited(request, MAX_BODY_BYTES, _too_large)
                try:
                    fields = parse_xml(body, max_bytes=MAX_BODY_BYTES)
                except XmlRejected:
                    raise _Fail("XML格式错误") from None
                sign_type = self._check_common(fields)
                try:
                    result = handler(fields, request)
                except _BizFail as exc:
                    result = {"result_code": "FAIL", "err_code": exc.err_code, "err_code_des": exc.err_code_des}
                else:
                    result = {"result_code": "SUCCESS", **result}
                return self._signed(result, sign_type)
            except _Fail as exc:
                return _xml({"return_code": "FAIL", "return_msg": str(exc)})

        return endpoint

    def _check_common(self, fields: Mapping[str, str]) -> str:
        for name in ("appid", "mch_id", "nonce_str", "sign"):
            if not fields.get(name):
                raise _Fail(f"缺少参数{name}")
        sign_type = fields.get("sign_type") or "MD5"
        if sign_type not in ("MD5", "HMAC-SHA256"):
            raise _Fail("sign_type参数错误")
        expected = _sign(fields, self.settings.apiKey, sign_type)
        if not hmac.compare_digest(expected, fields["sign"]):
            raise _Fail("签名错误")
        if fields["appid"] != self.settings.appId:
            raise _Fail("appid不存在")
        if fields["mch_id"] != self.settings.mchId:
            raise _Fail("商户号mch_id与appid不匹配")
        return sign_type

    def _signed(self, result: Mapping[str, str], sign_type: str) -> Response:
        answer = {"return_code": "SUCCESS", "return_msg": "OK", "appid": self.settings.appId,
                  "mch_id": self.settings.mchId,
                  "nonce_str": "".join(secrets.choice(ALNUM) for _ in range(16)), **result}
        answer["sign"] = _sign(answer, self.settings.apiKey, sign_type)
        return _xml(answer)

    def _find(self, fields: Mapping[str, str]) -> _Trade:
        """The trade named by ``out_trade_no`` or ``transaction_id`` (caller holds the lock)."""
        out_trade_no, transaction_id = fields.get("out_trade_no"), fields.get("transaction_id")
        if not out_trade_no and not transaction_id:
            raise _Fail("缺少参数out_trade_no或transaction_id")
        if transaction_id:  # WeChat: transaction_id takes precedence over out_trade_no
            trade = next((t for t in self._trades.values() if t.transaction_id == transaction_id), None)
        else:
            trade = self._trades.get(out_trade_no or "")
        if trade is None:
            raise _BizFail("ORDERNOTEXIST", "订单不存在")
        self._expire(trade)
        return trade

    @staticmethod
    def _expire(trade: _Trade) -> None:
        """An unpaid order past its ``time_expire`` is closed (caller holds the lock)."""
        if trade.state in _PAYABLE and trade.expires is not None and datetime.now(BEIJING) >= trade.expires:
            trade.state = "CLOSED"

    # -- API handlers ---------------------------------------------------------------------------------------------
    def _unifiedorder(self, fields: dict[str, str], request: Request) -> dict[str, str]:
        for name in ("body", "out_trade_no", "total_fee", "spbill_create_ip", "notify_url", "trade_type"):
            if not fields.get(name):
                raise _Fail(f"缺少参数{name}")
        trade_type = fields["trade_type"]
        if trade_type not in ("NATIVE", "MWEB"):
            raise _BizFail("INVALID_REQUEST", f"trade_type {trade_type} 不受沙箱支持 (sandbox: NATIVE, MWEB)")
        if trade_type == "NATIVE" and not fields.get("product_id"):
            raise _Fail("缺少参数product_id")
        if trade_type == "MWEB":
            try:
                scene = json.loads(fields.get("scene_info") or "")
                assert isinstance(scene["h5_info"], dict) and scene["h5_info"].get("type")
            except Exception:
                raise _Fail("scene_info参数格式错误 (needs h5_info)") from None
        if not fields["total_fee"].isdigit() or int(fields["total_fee"]) <= 0 or not fields["total_fee"].isascii():
            raise _Fail("total_fee参数格式错误")
        if len(fields["body"].encode("utf-8")) > 128:
            raise _Fail("body参数长度有误")
        if not _OUT_TRADE_NO.fullmatch(fields["out_trade_no"]):
            raise _Fail("out_trade_no参数格式错误")
        if not fields["notify_url"].startswith(("http://", "https://")):
            raise _Fail("notify_url参数格式错误")
        expires = None
        if fields.get("time_expire"):
            if not _TIME_EXPIRE.fullmatch(fields["time_expire"]):
                raise _Fail("time_expire参数格式错误 (yyyyMMddHHmmss)")
            try:
                expires = datetime.strptime(fields["time_expire"], "%Y%m%d%H%M%S").replace(tzinfo=BEIJING)
            except ValueError:
                raise _Fail("time_expire参数格式错误 (yyyyMMddHHmmss)") from None
            if expires - datetime.now(BEIJING) < timedelta(seconds=self.settings.timeExpireMinSeconds):
                raise _Fail("time_expire时间过短，刷卡至少1分钟，其他5分钟")
        params = {k: v for k, v in fields.items() if k not in _MAY_VARY}
        sign_type = fields.get("sign_type") or "MD5"
        with self._lock:
            trade = self._trades.get(fields["out_trade_no"])
            if trade is not None:
                self._expire(trade)
                if trade.state in ("SUCCESS", "REFUND"):
                    raise _BizFail("ORDERPAID", "该订单已支付")
                if trade.state == "CLOSED":
                    raise _BizFail("ORDERCLOSED", "该订单已关闭")
                if trade.params != params:
                    raise _BizFail("INVALID_REQUEST", "201 商户订单号重复")
            else:
                token = secrets.token_urlsafe(18)
                prepay_id = "wx" + datetime.now(BEIJING).strftime("%d%H%M%S") + secrets.token_hex(12)
                trade = _Trade(out_trade_no=fields["out_trade_no"], token=token, params=params,
                               sign_type=sign_type, prepay_id=prepay_id, created=time.monotonic(), expires=expires)
                self._add_trade(trade)
        wallet = self._wallet_url(request, trade)
        answer = {"trade_type": trade_type, "prepay_id": trade.prepay_id}
        if trade_type == "NATIVE":
            answer["code_url"] = wallet
        else:
            answer["mweb_url"] = f"{wallet}?prepay_id={trade.prepay_id}"
        return answer

    def _orderquery(self, fields: dict[str, str], request: Request) -> dict[str, str]:
        with self._lock:
            trade = self._find(fields)
            answer = {"out_trade_no": trade.out_trade_no, "trade_state": trade.state,
                      "trade_state_desc": _STATE_DESC[trade.state], "total_fee": str(trade.total_fee),
                      "fee_type": trade.params.get("fee_type") or "CNY",
                      "trade_type": trade.params["trade_type"]}
            if trade.params.get("attach"):
                answer["attach"] = trade.params["attach"]
            if trade.state in ("SUCCESS", "REFUND"):
                answer.update(openid=trade.openid, is_subscribe="N", bank_type="OTHERS",
                              cash_fee=str(trade.total_fee), transaction_id=trade.transaction_id,
                              time_end=trade.time_end)
            return answer

    def _closeorder(self, fields: dict[str, str], request: Request) -> dict[str, str]:
        if not fields.get("out_trade_no"):
            raise _Fail("缺少参数out_trade_no")
        with self._lock:
            trade = self._find(fields)
            if trade.state in ("SUCCESS", "REFUND"):
                raise _BizFail("ORDERPAID", "订单已支付，不能发起关单")
            if trade.state == "CLOSED":
                raise _BizFail("ORDERCLOSED", "订单已关闭，无法重复关闭")
            age = time.monotonic() - trade.created
            if age < self.settings.closeMinAgeSeconds:
                raise _BizFail("SYSTEMERROR", f"订单生成后{self.settings.closeMinAgeSeconds:g}秒内不能关单 "
                                              f"(too early to close; retry later)")
            trade.state = "CLOSED"
        return {}

    def _refund(self, fields: dict[str, str], request: Request) -> dict[str, str]:
        for name in ("out_refund_no", "total_fee", "refund_fee"):
            if not fields.get(name):
                raise _Fail(f"缺少参数{name}")
        if not (fields["total_fee"].isdigit() and fields["refund_fee"].isdigit()) or int(fields["refund_fee"]) <= 0:
            raise _Fail("total_fee或refund_fee参数格式错误")
        total_fee, refund_fee = int(fields["total_fee"]), int(fields["refund_fee"])
        with self._lock:
            trade = self._find(fields)
            if trade.state not in ("SUCCESS", "REFUND"):
                raise _BizFail("TRADE_STATE_ERROR", "订单状态错误")
            if total_fee != trade.total_fee:
                raise _BizFail("INVALID_REQUEST", "订单金额total_fee与实际不符")
            refund = trade.refunds.get(fields["out_refund_no"])
            if refund is not None and refund.refund_fee != refund_fee:
                raise _BizFail("INVALID_REQUEST", "同一笔退款单号out_refund_no的退款金额要一致")
            if refund is None:
                if trade.refunded_fee + refund_fee > trade.total_fee:
                    raise _BizFail("INVALID_REQUEST", "退款金额大于支付金额")
                notify_url = fields.get("notify_url") or ""
                if notify_url and not notify_url.startswith(("http://", "https://")):
                    raise _Fail("notify_url参数格式错误")
                refund = _Refund(out_refund_no=fields["out_refund_no"], refund_id="50" + digits(27),
                                 refund_fee=refund_fee, success_time="" if self.refunds_wait else _refund_time(),
                                 status="PROCESSING" if self.refunds_wait else "SUCCESS", notify_url=notify_url)
                trade.refunds[refund.out_refund_no] = refund
                trade.state = "REFUND"
                if refund.status == "SUCCESS":
                    self._notify_refund(trade, refund)
            return {"transaction_id": trade.transaction_id, "out_trade_no": trade.out_trade_no,
                    "out_refund_no": refund.out_refund_no, "refund_id": refund.refund_id,
                    "refund_fee": str(refund.refund_fee), "settlement_refund_fee": str(refund.refund_fee),
                    "total_fee": str(trade.total_fee), "cash_fee": str(trade.total_fee),
                    "cash_refund_fee": str(refund.refund_fee)}

    def _refundquery(self, fields: dict[str, str], request: Request) -> dict[str, str]:
        with self._lock:
            if fields.get("out_refund_no") or fields.get("refund_id"):
                key, value = ("out_refund_no", fields["out_refund_no"]) if fields.get("out_refund_no") \
                    else ("refund_id", fields["refund_id"])
                found = [(t, r) for t in self._trades.values() for r in t.refunds.values()
                         if getattr(r, key) == value]
                if not found:
                    raise _BizFail("REFUNDNOTEXIST", "退款订单查询失败")
                trade, refunds = found[0][0], [r for _, r in found]
            else:
                trade = self._find(fields)
                refunds = list(trade.refunds.values())
                if not refunds:
                    raise _BizFail("REFUNDNOTEXIST", "退款订单查询失败")
            answer = {"transaction_id": trade.transaction_id, "out_trade_no": trade.out_trade_no,
                      "total_fee": str(trade.total_fee), "cash_fee": str(trade.total_fee),
                      "refund_fee": str(sum(r.refund_fee for r in refunds)), "refund_count": str(len(refunds))}
            for n, r in enumerate(refunds):
                answer.update({f"out_refund_no_{n}": r.out_refund_no, f"refund_id_{n}": r.refund_id,
                               f"refund_fee_{n}": str(r.refund_fee), f"refund_status_{n}": r.status,
                               f"refund_recv_accout_{n}": "支付用户的零钱"})
                if r.success_time:
                    answer[f"refund_success_time_{n}"] = r.success_time
            return answer

    def _finish_refund(self, out_refund_no: str, outcome: str) -> bool:
        trade = next((t for t in self._trades.values() if out_refund_no in t.refunds), None)
        if trade is None:
            raise KeyError(out_refund_no)
        refund = trade.refunds[out_refund_no]
        if refund.status not in ("PROCESSING", "CHANGE") or (refund.status == "CHANGE" and outcome != "SUCCESS"):
            return False
        refund.status = {"SUCCESS": "SUCCESS", "CLOSED": "REFUNDCLOSE", "ABNORMAL": "CHANGE"}[outcome]
        if refund.status == "SUCCESS":
            refund.success_time = _refund_time()
        self._notify_refund(trade, refund)
        return True

    def _notify_refund(self, trade: _Trade, refund: _Refund) -> None:
        """The refund ended (SUCCESS, REFUNDCLOSE, CHANGE): its notification goes to the refund's ``notify_url`` (none:
        nothing is sent), unsigned, the details in ``req_info`` (AES-256-ECB under the MD5 of the API key), sent in
        the background or held (event ``"refund"``). The caller holds the lock."""
        if not refund.notify_url:
            return
        told = {"transaction_id": trade.transaction_id, "out_trade_no": trade.out_trade_no,
                "refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no,
                "total_fee": str(trade.total_fee), "settlement_total_fee": str(trade.total_fee),
                "refund_fee": str(refund.refund_fee), "settlement_refund_fee": str(refund.refund_fee),
                "refund_status": refund.status, "success_time": refund.success_time or None,
                "refund_recv_accout": "支付用户零钱", "refund_account": "REFUND_SOURCE_RECHARGE_FUNDS",
                "refund_request_source": "API"}
        notification = {"return_code": "SUCCESS", "appid": self.settings.appId, "mch_id": self.settings.mchId,
                        "nonce_str": "".join(secrets.choice(ALNUM) for _ in range(32)),
                        "req_info": encrypt_req_info(build_cdata_xml(told, root="root"), self.settings.apiKey)}
        body = build_cdata_xml(notification)
        if self._notify_mode == "hold":
            self._hold(trade.out_trade_no, "refund", refund.notify_url, body, NOTIFY_HEADERS)
        else:
            threading.Thread(target=self._deliver, args=(trade, refund.notify_url, body),
                             name=f"wechat-sandbox-refund-notify-{refund.out_refund_no}", daemon=True).start()

    def _unfinished_refunds(self) -> list[str]:
        return [r.out_refund_no for t in self._trades.values() for r in t.refunds.values()
                if r.status in ("PROCESSING", "CHANGE")]

    # -- the wallet ("scan with WeChat and pay"; the page and buttons are WechatWalletSandbox's) --------------------
    def _wallet_view(self, trade: _Trade) -> dict[str, Any]:
        return {"out_trade_no": trade.out_trade_no, "subject": trade.params["body"],
                "amount": f"{trade.total_fee // 100}.{trade.total_fee % 100:02d}",
                "trade_type": trade.params["trade_type"], "attach": trade.params.get("attach", ""),
                "state": trade.state, "state_desc": _STATE_DESC[trade.state], "mch_id": self.settings.mchId,
                "transaction_id": trade.transaction_id, "attempts": [dict(a) for a in trade.notify_attempts],
                "payable": trade.state in _PAYABLE, "notifies": trade.state not in _PAYABLE,
                "expires": trade.expires.strftime("%Y-%m-%d %H:%M:%S") if trade.expires else ""}

    def _complete(self, trade: _Trade, paid: bool) -> bool:
        """The buyer pays (``paid``) or the payment fails: the state changes and the signed notification is sent in
        the background, or held. False when the order is not payable (caller holds the lock)."""
        self._expire(trade)
        if trade.state not in _PAYABLE:
            return False
        trade.openid = "o" + secrets.token_urlsafe(20)[:27]
        trade.time_end = _beijing_now()
        if paid:
            trade.state = "SUCCESS"
            trade.transaction_id = "42000" + digits(23)
        else:
            trade.state = "PAYERROR"
        notification = self._notification(trade, paid)
        notification["sign"] = _sign(notification, self.settings.apiKey, trade.sign_type)
        body = build_cdata_xml(notification)
        url = trade.params["notify_url"]
        if self._notify_mode == "hold":
            self._hold(trade.out_trade_no, "paid" if paid else "failed", url, body, NOTIFY_HEADERS)
        else:
            threading.Thread(target=self._deliver, args=(trade, url, body),
                             name=f"wechat-sandbox-notify-{trade.out_trade_no}", daemon=True).start()
        return True

    def _notification(self, trade: _Trade, paid: bool) -> dict[str, str]:
        fields = {"appid": self.settings.appId, "mch_id": self.settings.mchId,
                  "nonce_str": "".join(secrets.choice(ALNUM) for _ in range(32)),
                  "return_code": "SUCCESS", "result_code": "SUCCESS" if paid else "FAIL",
                  "openid": trade.openid, "is_subscribe": "N", "trade_type": trade.params["trade_type"],
                  "bank_type": "OTHERS", "total_fee": str(trade.total_fee),
                  "fee_type": trade.params.get("fee_type") or "CNY", "cash_fee": str(trade.total_fee),
                  "out_trade_no": trade.out_trade_no, "time_end": trade.time_end}
        if paid:
            fields["transaction_id"] = trade.transaction_id
        else:
            fields.update(err_code="PAYERROR", err_code_des="支付失败 (sandbox)")
        if trade.params.get("attach"):
            fields["attach"] = trade.params["attach"]
        return fields

    def _deliver(self, trade: _Trade, url: str, body: bytes) -> None:
        """POST the notification until the merchant answers ``return_code=SUCCESS`` or the retries run out."""
        delays = (0.0, *self.settings.notifyRetryDelays)
        for attempt, delay in enumerate(delays, start=1):
            if delay:
                time.sleep(delay)
            outcome: dict[str, Any] = {"attempt": attempt, "at": datetime.now(BEIJING).isoformat(timespec="seconds")}
            try:
                response = httpx.post(url, content=body, timeout=self.settings.notifyTimeout,
                                      headers=dict(NOTIFY_HEADERS))
                outcome["status"] = response.status_code
                try:
                    reply = parse_xml(response.content, max_bytes=MAX_BODY_BYTES)
                except XmlRejected:
                    reply = {}
                outcome["ok"] = response.status_code == 200 and reply.get("return_code") == "SUCCESS"
                outcome["return_msg"] = reply.get("return_msg", "")[:200]
            except httpx.HTTPError as exc:
                outcome.update(ok=False, error=type(exc).__name__)
            with self._lock:
                trade.notify_attempts.append(outcome)
            if outcome["ok"]:
                return
            log.info("WeChat sandbox: notification for %s not acknowledged (attempt %d)", trade.out_trade_no, attempt)
        log.warning("WeChat sandbox: gave up notifying %s after %d attempts", trade.out_trade_no, len(delays))


def _too_large() -> _Fail:
    return _Fail("请求包体过大 (body too large)")


def _xml(fields: Mapping[str, str]) -> Response:
    return Response(build_cdata_xml(fields), media_type="text/xml; charset=utf-8")


def wechat_routes(app: Any) -> list[BaseRoute]:
    """The WeChat Pay sandbox's Starlette routes for ``app``, configured from ``app.settings["sandbox"]["wechat"]``;
    no routes when the app's sandbox settings have no ``wechat`` block, ``ConfigError`` when it is incomplete or
    wrong. Each call makes a fresh sandbox with no trades; the :class:`WechatSandbox` is reachable as
    ``route.endpoint.__self__`` of the wallet routes and as ``jitpay_sandbox.sandbox_of(app, "wechat")`` (tests use it
    to pay, look at trades and notifications)."""
    return mount(app, "wechat", lambda _: WechatSandbox(WechatSandboxSettings.from_app(app)))
