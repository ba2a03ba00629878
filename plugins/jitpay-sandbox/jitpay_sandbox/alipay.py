"""A local, faithful simulator of the Alipay Open API gateway (RSA2), served under ``/sandbox/alipay/``.

It speaks Alipay's wire protocol, not JitPay's: requests are checked the way Alipay checks them (``app_id``, the
``sign`` over every parameter but ``sign``, with the app's public key, ``charset``, ``timestamp`` in Beijing time),
responses are ``{"<method>_response": {...}, "sign": "..."}`` signed over the exact response text, and a paid trade is
announced with a signed, form-encoded asynchronous notification posted to the trade's ``notify_url`` and retried until
it is answered ``success``. The signing code here is deliberately its own, so the sandbox is an independent check of the
provider's.

Methods: ``alipay.trade.precreate`` (QR code: a link to the sandbox wallet page), ``alipay.trade.wap.pay`` and
``alipay.trade.page.pay`` (the browser is sent to the wallet page), ``alipay.trade.query``, ``alipay.trade.close``,
``alipay.trade.refund`` and ``alipay.trade.fastpay.refund.query``. Trades live in memory, in Alipay's states: a
precreated trade does not exist (``ACQ.TRADE_NOT_EXIST``) until its QR code is scanned (the wallet page opened), then
``WAIT_BUYER_PAY``, ``TRADE_SUCCESS`` once paid, ``TRADE_CLOSED`` when closed, timed out or fully refunded. Closing
a trade nobody has scanned does nothing (Alipay answers ``ACQ.TRADE_NOT_EXIST``): its QR code stays payable until it
expires, as at Alipay. A trade expires at its ``time_expire`` (``yyyy-MM-dd HH:mm:ss``, Beijing time; it wins over
``timeout_express``) or ``timeout_express`` after its creation (default 2 hours for a QR code, 15 days for a link).

Settings (``app.settings["sandbox"]["alipay"]``): ``appId``, ``sellerId``, ``appPublicKey`` (verifies requests),
``gatewayPrivateKey`` (signs responses and notifications); optional ``merchantName``, ``notifyRetryDelays`` (alias
``notifyDelays``; seconds to wait before each notification attempt, default ``[0, 1, 2, 4, 8, 16, 32, 64]``: 8
tries), ``notifyTimeout`` (seconds, default 5), ``timestampTolerance`` (seconds a request's timestamp may be off,
default 1800) and ``notifyMode`` (``send``, the default: post notifications; ``hold``: keep them for a test to deliver,
see :meth:`AlipaySandbox.take_notifications`).

Refunds move the money at once (``fund_change: "Y"``) unless :attr:`~AlipaySandbox.refunds_wait` is set: then
``alipay.trade.refund`` answers ``10000`` with ``fund_change: "N"`` (the call went through, no money moved yet) and
``alipay.trade.fastpay.refund.query`` finds nothing for that ``out_request_no`` until
:meth:`~AlipaySandbox.finish_refund` ends it: ``SUCCESS`` (refunded, found by the query) or ``FAILED`` (Alipay did not
refund it: the query still finds nothing, and sending the same ``out_request_no`` again makes the refund anew).
:attr:`~AlipaySandbox.refunds_refused` refuses every new refund with that ``sub_code`` (say
``ACQ.SELLER_BALANCE_NOT_ENOUGH``). Asking again with an ``out_request_no`` Alipay already refunded answers
``fund_change: "N"`` and moves nothing, as Alipay does.

For tests, the sandbox object (``route.endpoint.__self__`` of its routes, or :func:`jitpay_sandbox.sandbox_of`) has a
thread-safe Python API: :meth:`~AlipaySandbox.pay`, :meth:`~AlipaySandbox.trade`, :meth:`~AlipaySandbox.captured`,
:meth:`~AlipaySandbox.refunded`, :meth:`~AlipaySandbox.references`, :meth:`~AlipaySandbox.held_notifications`,
:meth:`~AlipaySandbox.take_notifications`, :meth:`~AlipaySandbox.finish_refund`,
:meth:`~AlipaySandbox.processing_refunds`, :attr:`~AlipaySandbox.refunds_wait`, :attr:`~AlipaySandbox.refunds_refused`
and :attr:`~AlipaySandbox.notify_mode`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from jitcore.errors import ConfigError

from .common import BEIJING, SandboxBase, mount, read_notify_mode, templates, write_new

__all__ = ["AlipaySandbox", "alipay_routes", "generate_alipay_keys"]

log = logging.getLogger("jitpay_sandbox.alipay")

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
PREFIX = "/sandbox/alipay"
DEFAULT_NOTIFY_DELAYS = (0, 1, 2, 4, 8, 16, 32, 64)
MAX_REQUEST_BYTES = 256 * 1024
OUT_TRADE_NO_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
MAX_AMOUNT = Decimal("100000000.00")
NOTIFY_HEADERS = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}

# trade states (Alipay's, plus the state of a QR code nobody has scanned yet, which Alipay does not know about)
UNSCANNED = "UNSCANNED"
WAIT_BUYER_PAY = "WAIT_BUYER_PAY"
TRADE_SUCCESS = "TRADE_SUCCESS"
TRADE_CLOSED = "TRADE_CLOSED"
PAID_STATES = {TRADE_SUCCESS, "TRADE_FINISHED"}

PAGE_METHODS = {"alipay.trade.wap.pay": "QUICK_WAP_WAY", "alipay.trade.page.pay": "FAST_INSTANT_TRADE_PAY"}
API_METHODS = {"alipay.trade.precreate", "alipay.trade.query", "alipay.trade.close", "alipay.trade.refund",
               "alipay.trade.fastpay.refund.query"}


# -- keys and signatures (independent of the provider's implementation) ----------------------------------------------

def generate_alipay_keys(directory: Path) -> None:
    """Write the sandbox's Alipay key pairs into ``directory`` (created if missing), keeping any file that exists:

    ``alipay_app_private_key.pem`` / ``alipay_app_public_key.pem`` (the merchant app's pair: the app signs with the
    private key, the sandbox verifies with the public one) and ``alipay_gateway_private_key.pem`` /
    ``alipay_gateway_public_key.pem`` (the gateway's pair: it signs, the app verifies; the app's ``alipayPublicKey``).
    2048-bit RSA, private keys PKCS#8 PEM with mode 0600. A missing public file is derived from an existing private
    one, so a pair always matches.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("app", "gateway"):
        private_path = directory / f"alipay_{name}_private_key.pem"
        public_path = directory / f"alipay_{name}_public_key.pem"
        if private_path.exists():
            if public_path.exists():
                continue
            loaded = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ValueError(f"{private_path} is not an RSA private key")
            private_key = loaded
        else:
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
            if not write_new(private_path, pem, 0o600):
                continue  # created concurrently by someone else: keep theirs
        if not public_path.exists():
            pem = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
            write_new(public_path, pem, 0o644)


def _read_key(text: Any, *, private: bool, setting: str) -> Any:
    if isinstance(text, str):
        text = text.encode("ascii", "replace")
    if not isinstance(text, bytes) or not text.strip():
        raise ConfigError(f"sandbox: settings.sandbox.alipay.{setting} is required (PEM or base64)")
    data = text.strip()
    try:
        if data.startswith(b"-----BEGIN"):
            key = (serialization.load_pem_private_key(data, password=None) if private
                   else serialization.load_pem_public_key(data))
        else:
            der = base64.b64decode(b"".join(data.split()), validate=True)
            key = (serialization.load_der_private_key(der, password=None) if private
                   else serialization.load_der_public_key(der))
    except (ValueError, TypeError, UnsupportedAlgorithm, binascii.Error):
        kind = "an unencrypted RSA private key" if private else "an RSA public key"
        raise ConfigError(f"sandbox: settings.sandbox.alipay.{setting} must be {kind} (PEM or base64)") from None
    expected = rsa.RSAPrivateKey if private else rsa.RSAPublicKey
    if not isinstance(key, expected):
        raise ConfigError(f"sandbox: settings.sandbox.alipay.{setting} is not an RSA "
                          f"{'private' if private else 'public'} key")
    return key


def _content(params: Mapping[str, str], drop: tuple[str, ...]) -> str:
    """Alipay's string to sign: non-empty parameters but ``drop``, sorted by key, ``k=v`` joined by ``&``."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in drop and params[k] != "")


def _sign(key: rsa.RSAPrivateKey, text: str) -> str:
    return base64.b64encode(key.sign(text.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def _verify(key: rsa.RSAPublicKey, text: str, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), text.encode("utf-8"), padding.PKCS1v15(),
                   hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _now() -> datetime:
    return datetime.now(BEIJING)


def _fmt(moment: datetime | None) -> str:
    return moment.astimezone(BEIJING).strftime(TIME_FORMAT) if moment else ""


def _money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01')):.2f}"


def _parse_time_expire(value: Any) -> datetime:
    """``time_expire``: ``yyyy-MM-dd HH:mm:ss`` in Beijing time, exactly."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}", value):
        raise _business("ACQ.INVALID_PARAMETER", "参数无效: time_expire must be yyyy-MM-dd HH:mm:ss")
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=BEIJING)
    except ValueError:
        raise _business("ACQ.INVALID_PARAMETER", "参数无效: time_expire is not a valid time") from None


def _parse_timeout(text: str | None, default: timedelta) -> timedelta:
    """``timeout_express``: ``90m``, ``2h``, ``1d`` (``1c``, "until the end of today", taken as a day)."""
    match = re.fullmatch(r"(\d{1,5})([mhdc])", (text or "").strip())
    if not match:
        return default
    number, unit = int(match.group(1)), match.group(2)
    return {"m": timedelta(minutes=number), "h": timedelta(hours=number)}.get(unit, timedelta(days=number))


class AlipayFault(Exception):
    """An answer other than success: Alipay's ``code``/``msg``/``sub_code``/``sub_msg``."""

    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(sub_code)
        self.content = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}


def _business(sub_code: str, sub_msg: str) -> AlipayFault:
    return AlipayFault("40004", "Business Failed", sub_code, sub_msg)


def _invalid(sub_code: str, sub_msg: str) -> AlipayFault:
    return AlipayFault("40002", "Invalid Arguments", sub_code, sub_msg)


def _missing(sub_code: str, sub_msg: str) -> AlipayFault:
    return AlipayFault("40001", "Missing Required Arguments", sub_code, sub_msg)


# -- trades ----------------------------------------------------------------------------------------------------------

@dataclass
class SandboxTrade:
    """One trade as the sandbox gateway keeps it."""

    out_trade_no: str
    trade_no: str
    total_amount: Decimal
    subject: str
    method: str
    token: str
    created: datetime
    expires: datetime
    notify_url: str | None = None
    return_url: str | None = None
    status: str = UNSCANNED
    gmt_create: datetime | None = None
    gmt_payment: datetime | None = None
    gmt_close: datetime | None = None
    buyer_id: str = ""
    buyer_logon_id: str = ""
    passback_params: str | None = None
    refunds: dict[str, tuple[Decimal, datetime]] = field(default_factory=dict)
    #: refunds the gateway took without moving money yet (``refunds_wait``): ``out_request_no`` -> amount
    waiting_refunds: dict[str, Decimal] = field(default_factory=dict)
    #: refunds ended ``FAILED`` (nothing refunded) and not sent again since
    failed_refunds: set[str] = field(default_factory=set)
    notify_attempts: list[dict[str, Any]] = field(default_factory=list)
    notify_delivered: bool = False

    @property
    def refunded(self) -> Decimal:
        """The total refunded so far."""
        return sum((amount for amount, _ in self.refunds.values()), Decimal("0.00"))


class AlipaySandbox(SandboxBase):
    """The simulated gateway of one merchant app: its keys, its trades (in memory, thread-safe) and its routes. Held
    notifications and most of the Python API for tests are :class:`~jitpay_sandbox.common.SandboxBase`'s."""

    provider: ClassVar[str] = "alipay"
    #: hold new refunds (``fund_change: "N"``, not found by the refund query) until :meth:`finish_refund` ends them
    refunds_wait: bool = False
    #: when set, a ``sub_code`` (e.g. ``ACQ.SELLER_BALANCE_NOT_ENOUGH``) every new refund is refused with
    refunds_refused: str | None = None

    def __init__(self, *, app_id: str, seller_id: str, app_public_key: rsa.RSAPublicKey,
                 gateway_private_key: rsa.RSAPrivateKey, merchant_name: str = "JitPay Sandbox Merchant",
                 notify_delays: tuple[float, ...] = DEFAULT_NOTIFY_DELAYS, notify_timeout: float = 5.0,
                 timestamp_tolerance: float = 1800.0, notify_mode: str = "send") -> None:
        super().__init__(notify_mode=notify_mode)
        self.app_id = app_id
        self.seller_id = seller_id
        self.merchant_name = merchant_name
        self.notify_delays = tuple(notify_delays)
        self.notify_timeout = notify_timeout
        self.timestamp_tolerance = timestamp_tolerance
        self._app_public_key = app_public_key
        self._private_key = gateway_private_key
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._templates = templates(strict=True)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "AlipaySandbox":
        """Build the sandbox from ``settings.sandbox.alipay`` (see the module docstring); ``ConfigError`` names a bad
        key without showing any key material."""
        def text(key: str, required: bool = True) -> str | None:
            value = settings.get(key)
            if value is None or str(value).strip() == "":
                if required:
                    raise ConfigError(f"sandbox: settings.sandbox.alipay.{key} is required")
                return None
            return str(value).strip()

        # notifyRetryDelays is the name the WeChat Pay sandbox uses too; notifyDelays is kept as an alias
        delays = settings.get("notifyRetryDelays", settings.get("notifyDelays", DEFAULT_NOTIFY_DELAYS))
        try:
            delays = tuple(float(d) for d in delays)
            if not delays or any(d < 0 for d in delays):
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError("sandbox: settings.sandbox.alipay.notifyRetryDelays must be a non-empty list of seconds "
                              "(one per notification attempt)") from None
        try:
            notify_timeout = float(settings.get("notifyTimeout", 5))
            tolerance = float(settings.get("timestampTolerance", 1800))
        except (TypeError, ValueError):
            raise ConfigError("sandbox: settings.sandbox.alipay.notifyTimeout and timestampTolerance are seconds") \
                from None
        notify_mode = read_notify_mode(settings, "sandbox: settings.sandbox.alipay")
        return cls(app_id=text("appId") or "", seller_id=text("sellerId") or "",
                   app_public_key=_read_key(settings.get("appPublicKey"), private=False, setting="appPublicKey"),
                   gateway_private_key=_read_key(settings.get("gatewayPrivateKey"), private=True,
                                                 setting="gatewayPrivateKey"),
                   merchant_name=text("merchantName", required=False) or "JitPay Sandbox Merchant",
                   notify_delays=delays, notify_timeout=notify_timeout, timestamp_tolerance=tolerance,
                   notify_mode=notify_mode)

    def routes(self) -> list[BaseRoute]:
        """The Starlette routes of this sandbox, under ``/sandbox/alipay/``."""
        return [
            Route(f"{PREFIX}/gateway.do", self.gateway, methods=["GET", "POST"], name="alipay_gateway"),
            Route(f"{PREFIX}/wallet/{{token}}", self.wallet, methods=["GET"], name="alipay_wallet"),
            Route(f"{PREFIX}/wallet/{{token}}/pay", self.wallet_pay, methods=["POST"], name="alipay_wallet_pay"),
        ]

    def stop(self) -> None:
        """Stop retrying notifications (threads end at their next wait) and wait briefly for them."""
        self._stopping.set()
        for thread in list(self._threads):
            thread.join(timeout=self.notify_timeout + 1)

    # -- the Python API for tests (notify_mode, pay, captured, refunded, references, held_notifications,
    #    take_notifications: SandboxBase's) -------------------------------------------------------------------------
    def trade(self, out_trade_no: str) -> SandboxTrade | None:
        """The trade of ``out_trade_no`` (for tests and the demo), or None. The live object: read it, do not change
        it."""
        with self._lock:
            trade = self._trades.get(out_trade_no)
            if trade is not None:
                self._expire(trade)
            return trade

    def finish_refund(self, out_request_no: str, outcome: str = "SUCCESS", out_trade_no: str | None = None) -> bool:
        """End a refund held by :attr:`refunds_wait`: ``SUCCESS`` (refunded: the refund query finds it) or
        ``FAILED`` (Alipay did not refund it: the query finds nothing, and the same ``out_request_no`` sent again is
        made anew). ``out_trade_no`` names the trade when several hold that ``out_request_no``. True when this call
        ended it; False when it was not waiting; ``KeyError`` for a refund the sandbox never saw."""
        if outcome not in ("SUCCESS", "FAILED"):
            raise ValueError(f"a held Alipay refund ends SUCCESS or FAILED, not {outcome!r}")
        with self._lock:
            trades = [t for t in self._trades.values() if out_trade_no in (None, t.out_trade_no)
                      and any(out_request_no in known for known in (t.waiting_refunds, t.refunds, t.failed_refunds))]
            if not trades:
                raise KeyError(out_request_no)
            trade = next((t for t in trades if out_request_no in t.waiting_refunds), None)
            if trade is None:
                return False
            amount = trade.waiting_refunds.pop(out_request_no)
            if outcome == "SUCCESS":
                self._refund_now(trade, out_request_no, amount)
            else:
                trade.failed_refunds.add(out_request_no)
            return True

    def processing_refunds(self) -> list[tuple[str, str]]:
        """``(out_trade_no, out_request_no)`` of every refund :attr:`refunds_wait` holds, oldest trade first."""
        with self._lock:
            return [(t.out_trade_no, request_no) for t in self._trades.values() for request_no in t.waiting_refunds]

    def _complete(self, trade: SandboxTrade, paid: bool) -> bool:
        """Pay ``trade`` (Alipay has no failed payments: a buyer who does not pay leaves the trade open)."""
        return self._pay(trade)

    def _captured_amount(self, trade: SandboxTrade) -> Decimal:
        """The trade's amount once paid (also after refunds)."""
        return trade.total_amount if trade.gmt_payment is not None else Decimal("0.00")

    def _refunded_amount(self, trade: SandboxTrade) -> Decimal:
        return trade.refunded

    # -- gateway.do -------------------------------------------------------------------------------------------------
    async def gateway(self, request: Request) -> Response:
        """``gateway.do``: API methods answer signed JSON; the page methods send the browser to the wallet page."""
        body = await request.body()
        method = ""
        try:
            params = self._read_params(request, body)
            method = params.get("method", "")
            if method in PAGE_METHODS:
                return self._page_pay(request, params)
            self._check_request(params)
            content = self._dispatch(request, method, params)
        except AlipayFault as fault:
            if method in PAGE_METHODS:
                return self._error_page(fault.content, status_code=400)
            key = f"{method.replace('.', '_')}_response" if method in API_METHODS else "error_response"
            return self._signed_json(key, fault.content)
        return self._signed_json(f"{method.replace('.', '_')}_response", {"code": "10000", "msg": "Success",
                                                                          **content})

    def _read_params(self, request: Request, body: bytes) -> dict[str, str]:
        if len(body) > MAX_REQUEST_BYTES:
            raise _invalid("isv.invalid-parameter", "请求过大 request too large")
        pairs: list[tuple[str, str]] = []
        try:
            pairs += parse_qsl(request.url.query, keep_blank_values=True, encoding="utf-8", errors="strict")
            media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if body and media == "application/x-www-form-urlencoded":
                pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise _invalid("isv.invalid-charset", "参数不是合法的 utf-8 编码 parameters are not valid utf-8") from None
        params: dict[str, str] = {}
        for key, value in pairs:
            if key in params and params[key] != value:
                raise _invalid("isv.invalid-parameter", f"参数 {key} 重复 parameter {key} given twice")
            params[key] = value
        return params

    def _check_request(self, params: Mapping[str, str]) -> None:
        """What Alipay's gateway checks before any method runs, in its order."""
        method = params.get("method")
        if not method:
            raise _missing("isv.missing-method", "缺少方法名参数")
        if method not in API_METHODS and method not in PAGE_METHODS:
            raise _invalid("isv.invalid-method", "不存在的方法名")
        if not params.get("app_id"):
            raise _missing("isv.missing-app-id", "缺少AppID参数")
        if params["app_id"] != self.app_id:
            raise _invalid("isv.invalid-app-id", "无效的AppID参数")
        if not params.get("sign"):
            raise _missing("isv.missing-signature", "缺少签名参数")
        if not params.get("sign_type"):
            raise _missing("isv.missing-signature-type", "缺少签名类型参数")
        if params["sign_type"] != "RSA2":
            raise _invalid("isv.invalid-signature-type", "无效的签名类型参数 (the sandbox speaks RSA2)")
        charset = params.get("charset", "")
        if charset.lower() not in ("utf-8", "utf8"):
            raise _invalid("isv.invalid-charset", "字符集不合法 (the sandbox speaks utf-8)")
        content = _content(params, ("sign",))
        if not _verify(self._app_public_key, content, params["sign"]):
            raise _invalid("isv.invalid-signature", "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，"
                           f"网关生成的验签字符串为：{content}")
        if not params.get("timestamp"):
            raise _missing("isv.missing-timestamp", "缺少时间戳参数")
        try:
            stamp = datetime.strptime(params["timestamp"], TIME_FORMAT).replace(tzinfo=BEIJING)
        except ValueError:
            raise _invalid("isv.invalid-timestamp", "非法的时间戳参数") from None
        if abs((stamp - _now()).total_seconds()) > self.timestamp_tolerance:
            raise _invalid("isv.invalid-timestamp", "非法的时间戳参数 (more than "
                           f"{self.timestamp_tolerance:g}s from Beijing time now)")
        if params.get("version", "1.0") != "1.0":
            raise _invalid("isv.invalid-version", "版本号不合法")

    @staticmethod
    def _biz(params: Mapping[str, str]) -> dict[str, Any]:
        try:
            biz = json.loads(params.get("biz_content") or "{}")
        except ValueError:
            raise _invalid("isv.invalid-parameter", "biz_content 不是合法的 JSON") from None
        if not isinstance(biz, dict):
            raise _invalid("isv.invalid-parameter", "biz_content 不是 JSON 对象")
        return biz

    def _dispatch(self, request: Request, method: str, params: Mapping[str, str]) -> dict[str, Any]:
        biz = self._biz(params)
        handlers: dict[str, Callable[[Request, Mapping[str, str], dict[str, Any]], dict[str, Any]]] = {
            "alipay.trade.precreate": self._precreate,
            "alipay.trade.query": self._query,
            "alipay.trade.close": self._close,
            "alipay.trade.refund": self._refund,
            "alipay.trade.fastpay.refund.query": self._refund_query,
        }
        with self._lock:
            return handlers[method](request, params, biz)

    # -- trade creation ---------------------------------------------------------------------------------------------
    def _order_fields(self, biz: Mapping[str, Any]) -> tuple[str, Decimal, str]:
        out_trade_no = str(biz.get("out_trade_no") or "")
        if not OUT_TRADE_NO_RE.fullmatch(out_trade_no):
            raise _business("ACQ.INVALID_PARAMETER", "参数无效: out_trade_no must be 1-64 letters, digits or _")
        raw_amount = str(biz.get("total_amount") or "")
        try:
            amount = Decimal(raw_amount)
        except InvalidOperation:
            raise _business("ACQ.INVALID_PARAMETER", "参数无效: total_amount is not a number") from None
        if (not amount.is_finite() or amount != amount.quantize(Decimal("0.01"))
                or not Decimal("0.01") <= amount <= MAX_AMOUNT):
            raise _business("ACQ.INVALID_PARAMETER", "参数无效: total_amount must be 0.01 to 100000000.00 yuan")
        subject = str(biz.get("subject") or "")
        if not subject or len(subject) > 256:
            raise _business("ACQ.INVALID_PARAMETER", "参数无效: subject is required, at most 256 characters")
        return out_trade_no, amount, subject

    def _create_or_reuse(self, method: str, params: Mapping[str, str], biz: Mapping[str, Any],
                         default_timeout: timedelta) -> SandboxTrade:
        out_trade_no, amount, subject = self._order_fields(biz)
        trade = self._trades.get(out_trade_no)
        if trade is not None:
            self._expire(trade)
            if trade.status in PAID_STATES:
                raise _business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            if trade.status == TRADE_CLOSED:
                raise _business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            if trade.total_amount != amount or trade.subject != subject:
                raise _business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            trade.notify_url = params.get("notify_url") or trade.notify_url
            trade.return_url = params.get("return_url") or trade.return_url
            return trade
        now = _now()
        if biz.get("time_expire") is not None:  # absolute, and it wins over timeout_express
            expires = _parse_time_expire(biz.get("time_expire"))
        else:
            expires = now + _parse_timeout(biz.get("timeout_express"), default_timeout)
        token = secrets.token_urlsafe(18)
        trade = SandboxTrade(
            out_trade_no=out_trade_no,
            trade_no=f"{now:%Y%m%d}22001{secrets.randbelow(10 ** 15):015d}",
            total_amount=amount, subject=subject, method=method, token=token, created=now,
            expires=expires,
            notify_url=params.get("notify_url") or None, return_url=params.get("return_url") or None,
            buyer_id=f"2088{secrets.randbelow(10 ** 12):012d}", buyer_logon_id="buy***@sandbox.example",
            passback_params=str(biz["passback_params"]) if biz.get("passback_params") else None)
        self._add_trade(trade)
        return trade

    def _precreate(self, request: Request, params: Mapping[str, str], biz: dict[str, Any]) -> dict[str, Any]:
        trade = self._create_or_reuse("alipay.trade.precreate", params, biz, timedelta(hours=2))
        qr_code = str(request.url_for("alipay_wallet", token=trade.token))
        return {"out_trade_no": trade.out_trade_no, "qr_code": qr_code}

    def _page_pay(self, request: Request, params: Mapping[str, str]) -> Response:
        """``alipay.trade.wap.pay`` / ``alipay.trade.page.pay``: the browser arrives with the signed parameters;
        once they check out, it goes on to the wallet page of the trade."""
        self._check_request(params)
        biz = self._biz(params)
        method = params["method"]
        product_code = biz.get("product_code")
        if product_code and product_code != PAGE_METHODS[method]:
            raise _business("ACQ.INVALID_PARAMETER", f"参数无效: product_code must be {PAGE_METHODS[method]}")
        with self._lock:
            trade = self._create_or_reuse(method, params, biz, timedelta(days=15))
            self._scan(trade)
        return RedirectResponse(str(request.url_for("alipay_wallet", token=trade.token)), status_code=303)

    # -- the other methods ------------------------------------------------------------------------------------------
    def _existing(self, biz: Mapping[str, Any]) -> SandboxTrade:
        """The trade named by ``out_trade_no`` or ``trade_no``, if Alipay would know it."""
        out_trade_no = biz.get("out_trade_no")
        trade_no = biz.get("trade_no")
        if not out_trade_no and not trade_no:
            raise _business("ACQ.INVALID_PARAMETER", "参数无效: out_trade_no or trade_no is required")
        trade = self._trades.get(str(out_trade_no)) if out_trade_no else None
        if trade is None and trade_no:
            trade = next((t for t in self._trades.values() if t.trade_no == trade_no), None)
        if trade is None or (trade_no and trade.trade_no != trade_no):
            raise _business("ACQ.TRADE_NOT_EXIST", "交易不存在")
        self._expire(trade)
        if trade.status == UNSCANNED:
            raise _business("ACQ.TRADE_NOT_EXIST", "交易不存在")
        return trade

    def _query(self, request: Request, params: Mapping[str, str], biz: dict[str, Any]) -> dict[str, Any]:
        trade = self._existing(biz)
        content: dict[str, Any] = {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": trade.buyer_logon_id,
            "trade_status": trade.status,
            "total_amount": _money(trade.total_amount),
            "buyer_user_id": trade.buyer_id,
        }
        if trade.gmt_payment is not None:
            content.update({"buyer_pay_amount": _money(trade.total_amount),
                            "receipt_amount": _money(trade.total_amount),
                            "invoice_amount": _money(trade.total_amount), "point_amount": "0.00",
                            "send_pay_date": _fmt(trade.gmt_payment)})
        else:
            content.update({"buyer_pay_amount": "0.00", "receipt_amount": "0.00", "invoice_amount": "0.00",
                            "point_amount": "0.00"})
        return content

    def _close(self, request: Request, params: Mapping[str, str], biz: dict[str, Any]) -> dict[str, Any]:
        trade = self._existing(biz)
        if trade.status in PAID_STATES:
            raise _business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法: the trade is paid; refund it instead")
        if trade.status == WAIT_BUYER_PAY:
            trade.status = TRADE_CLOSED
            trade.gmt_close = _now()
        return {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no}

    def _refund(self, request: Request, params: Mapping[str, str], biz: dict[str, Any]) -> dict[str, Any]:
        trade = self._existing(biz)
        try:
            amount = Decimal(str(biz.get("refund_amount") or ""))
        except InvalidOperation:
            raise _business("ACQ.INVALID_PARAMETER", "参数无效: refund_amount is not a number") from None
        if not amount.is_finite() or amount <= 0 or amount != amount.quantize(Decimal("0.01")):
            raise _business("ACQ.INVALID_PARAMETER", "参数无效: refund_amount must be positive, two decimals")
        request_no = str(biz.get("out_request_no") or trade.out_trade_no)
        made = trade.refunds.get(request_no)
        previous = made[0] if made is not None else trade.waiting_refunds.get(request_no)
        fund_change = "Y"
        if previous is not None:
            if previous != amount:
                raise _business("ACQ.DISCORDANT_REPEAT_REQUEST", "不一致的请求: out_request_no was used with "
                                "another refund_amount")
            fund_change = "N"  # the same refund again: nothing moves
        else:
            if trade.status not in PAID_STATES:
                raise _business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
            if trade.refunded + sum(trade.waiting_refunds.values()) + amount > trade.total_amount:
                raise _business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
            if self.refunds_refused:
                raise _business(self.refunds_refused, "退款被拒绝 (sandbox: refunds_refused)")
            trade.failed_refunds.discard(request_no)
            if self.refunds_wait:
                trade.waiting_refunds[request_no] = amount
                fund_change = "N"  # taken, not moved yet: the refund query tells when it is
            else:
                self._refund_now(trade, request_no, amount)
        content = {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no,
                   "buyer_logon_id": trade.buyer_logon_id, "fund_change": fund_change,
                   "refund_fee": _money(trade.refunded), "buyer_user_id": trade.buyer_id}
        if request_no in trade.refunds:
            content["gmt_refund_pay"] = _fmt(trade.refunds[request_no][1])
        return content

    @staticmethod
    def _refund_now(trade: SandboxTrade, request_no: str, amount: Decimal) -> None:
        """Move ``amount`` back to the buyer under ``request_no``; a trade refunded in full closes."""
        trade.refunds[request_no] = (amount, _now())
        if trade.refunded == trade.total_amount:
            trade.status = TRADE_CLOSED
            trade.gmt_close = _now()

    def _refund_query(self, request: Request, params: Mapping[str, str], biz: dict[str, Any]) -> dict[str, Any]:
        trade = self._existing(biz)
        request_no = str(biz.get("out_request_no") or trade.out_trade_no)
        refund = trade.refunds.get(request_no)
        content: dict[str, Any] = {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no,
                                   "out_request_no": request_no}
        if refund is not None:  # Alipay answers success without refund fields for an unknown refund
            content.update({"total_amount": _money(trade.total_amount), "refund_amount": _money(refund[0]),
                            "refund_status": "REFUND_SUCCESS", "gmt_refund_pay": _fmt(refund[1])})
        return content

    # -- state ------------------------------------------------------------------------------------------------------
    def _expire(self, trade: SandboxTrade) -> None:
        """An unpaid trade past its ``timeout_express`` closes (an unscanned one simply never existed)."""
        if trade.status == WAIT_BUYER_PAY and _now() >= trade.expires:
            trade.status = TRADE_CLOSED
            trade.gmt_close = trade.expires

    def _scan(self, trade: SandboxTrade) -> None:
        self._expire(trade)
        if trade.status == UNSCANNED and _now() < trade.expires:
            trade.status = WAIT_BUYER_PAY
            trade.gmt_create = _now()

    # -- responses --------------------------------------------------------------------------------------------------
    def _signed_json(self, key: str, content: Mapping[str, Any]) -> Response:
        """``{"<key>": <content>, "sign": "..."}`` where the signature covers exactly the content text in the body."""
        text = json.dumps(dict(content), ensure_ascii=False, separators=(",", ":"))
        body = json.dumps(key) + ":" + text
        body = "{" + body + "," + json.dumps("sign") + ":" + json.dumps(_sign(self._private_key, text)) + "}"
        return Response(body.encode("utf-8"), media_type="application/json; charset=utf-8")

    def _render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self._templates.get_template(template).render(merchant=self.merchant_name, **context)
        return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})

    def _error_page(self, content: Mapping[str, Any], status_code: int) -> HTMLResponse:
        return self._render("alipay_error.html", status_code=status_code, error=dict(content))

    # -- the wallet -------------------------------------------------------------------------------------------------
    def _no_such_trade_page(self) -> Response:
        return self._error_page({"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST",
                                 "sub_msg": "交易不存在 / no such trade"}, status_code=404)

    async def wallet(self, request: Request) -> Response:
        """The buyer's wallet page: opening it scans the QR code; it shows the trade and a Pay button."""
        with self._lock:
            trade = self._trade_for_token(request.path_params["token"])
            if trade is None:
                return self._no_such_trade_page()
            self._scan(trade)
            view = self._view(trade)
        return self._render("alipay_wallet.html", trade=view,
                            pay_action=str(request.url_for("alipay_wallet_pay", token=trade.token)))

    async def wallet_pay(self, request: Request) -> Response:
        """The Pay button: the trade becomes ``TRADE_SUCCESS`` and the notification goes out."""
        with self._lock:
            trade = self._trade_for_token(request.path_params["token"])
            if trade is None:
                return self._no_such_trade_page()
            self._pay(trade)
        return RedirectResponse(str(request.url_for("alipay_wallet", token=trade.token)), status_code=303)

    def _view(self, trade: SandboxTrade) -> dict[str, Any]:
        return_link = None
        if trade.return_url and trade.status in PAID_STATES:
            return_link = self._return_link(trade)
        return {
            "out_trade_no": trade.out_trade_no, "trade_no": trade.trade_no, "subject": trade.subject,
            "amount": _money(trade.total_amount), "status": trade.status, "paid": trade.status in PAID_STATES,
            "payable": trade.status == WAIT_BUYER_PAY, "closed": trade.status == TRADE_CLOSED,
            "refunded": _money(trade.refunded) if trade.refunds else None,
            "gmt_payment": _fmt(trade.gmt_payment), "expires": _fmt(trade.expires),
            "notify_url": trade.notify_url, "notify_delivered": trade.notify_delivered,
            "notify_attempts": len(trade.notify_attempts), "return_link": return_link,
        }

    def _return_link(self, trade: SandboxTrade) -> str:
        """Alipay's synchronous return: the browser goes to ``return_url`` with signed parameters."""
        fields = {"charset": "utf-8", "out_trade_no": trade.out_trade_no, "method": f"{trade.method}.return",
                  "total_amount": _money(trade.total_amount), "trade_no": trade.trade_no, "auth_app_id": self.app_id,
                  "version": "1.0", "app_id": self.app_id, "seller_id": self.seller_id,
                  "timestamp": _fmt(trade.gmt_payment)}
        fields["sign"] = _sign(self._private_key, _content(fields, ("sign", "sign_type")))
        fields["sign_type"] = "RSA2"
        separator = "&" if urlsplit(trade.return_url or "").query else "?"
        return f"{trade.return_url}{separator}{urlencode(fields)}"

    def _pay(self, trade: SandboxTrade) -> bool:
        """Scan (if need be) and pay ``trade``, then notify; the caller holds the lock."""
        self._scan(trade)
        if trade.status != WAIT_BUYER_PAY:
            return False
        trade.status = TRADE_SUCCESS
        trade.gmt_payment = _now()
        if trade.notify_url:
            fields = self._notification(trade)
            if self._notify_mode == "hold":
                self._hold(trade.out_trade_no, "paid", trade.notify_url, urlencode(fields).encode("ascii"),
                           NOTIFY_HEADERS)
            else:
                self._send_later(trade, fields)
        return True

    # -- notifications ----------------------------------------------------------------------------------------------
    def _notification(self, trade: SandboxTrade) -> dict[str, str]:
        """The signed form fields of the ``trade_status_sync`` notification for ``trade``'s current state."""
        amount = _money(trade.total_amount)
        fields = {
            "notify_time": _fmt(_now()), "notify_type": "trade_status_sync", "notify_id": uuid.uuid4().hex,
            "app_id": self.app_id, "auth_app_id": self.app_id, "charset": "utf-8", "version": "1.0",
            "trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no, "trade_status": trade.status,
            "total_amount": amount, "receipt_amount": amount, "buyer_pay_amount": amount, "invoice_amount": amount,
            "point_amount": "0.00", "gmt_create": _fmt(trade.gmt_create or trade.created),
            "gmt_payment": _fmt(trade.gmt_payment), "seller_id": self.seller_id, "buyer_id": trade.buyer_id,
            "buyer_logon_id": trade.buyer_logon_id, "subject": trade.subject,
            "fund_bill_list": json.dumps([{"amount": amount, "fundChannel": "ALIPAYACCOUNT"}],
                                         separators=(",", ":")),
        }
        if trade.passback_params:
            fields["passback_params"] = trade.passback_params
        fields = {k: v for k, v in fields.items() if v != ""}
        fields["sign"] = _sign(self._private_key, _content(fields, ("sign", "sign_type")))
        fields["sign_type"] = "RSA2"
        return fields

    def _send_later(self, trade: SandboxTrade, fields: dict[str, str]) -> None:
        thread = threading.Thread(target=self._deliver, args=(trade, trade.notify_url, fields),
                                  name=f"alipay-notify-{trade.out_trade_no}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _deliver(self, trade: SandboxTrade, url: str, fields: dict[str, str]) -> None:
        """Post the notification until the answer is exactly ``success``, waiting ``notify_delays[i]`` before try
        ``i``; like Alipay, give up after the last one."""
        body = urlencode(fields).encode("ascii")
        headers = dict(NOTIFY_HEADERS)
        with httpx.Client(timeout=self.notify_timeout, trust_env=False, follow_redirects=False) as client:
            for attempt, delay in enumerate(self.notify_delays, start=1):
                if self._stopping.wait(delay):
                    return
                started = time.monotonic()
                record: dict[str, Any] = {"attempt": attempt, "at": _fmt(_now())}
                try:
                    response = client.post(url, content=body, headers=headers)
                    record.update(status=response.status_code, body=response.text[:200])
                    ok = response.status_code == 200 and response.content == b"success"
                except httpx.HTTPError as exc:
                    record.update(error=type(exc).__name__)
                    ok = False
                record["seconds"] = round(time.monotonic() - started, 3)
                with self._lock:
                    trade.notify_attempts.append(record)
                    if ok:
                        trade.notify_delivered = True
                if ok:
                    return
                log.info("alipay sandbox: notification %s for %s not accepted (attempt %d)", fields["notify_id"],
                         trade.out_trade_no, attempt)


def alipay_routes(app: Any) -> list[BaseRoute]:
    """The Alipay sandbox's routes for ``app``, configured by ``app.settings["sandbox"]["alipay"]``; no routes when
    the app's sandbox settings have no ``alipay`` block. The sandbox object is reachable as ``route.endpoint.__self__``
    and as ``jitpay_sandbox.sandbox_of(app, "alipay")`` (tests use it to pay, look at trades and notifications)."""
    def build(settings: Any) -> AlipaySandbox:
        if not isinstance(settings, Mapping):
            raise ConfigError("sandbox: settings.sandbox.alipay must be a mapping")
        return AlipaySandbox.from_settings(settings)

    return mount(app, "alipay", build)
