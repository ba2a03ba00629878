"""A local simulator of the WeChat Pay merchant API v3, served under ``/sandbox/wechatpay-v3/``. WeChat Pay has no
v3 sandbox of its own; this is the place to try v3 end to end.

Written from the protocol (the WeChat Pay v3 section of PROTOCOLS.md), apart from any client: it checks every
request's ``Authorization: WECHATPAY2-SHA256-RSA2048 ...`` (merchant id, the merchant certificate's serial, a timestamp
within 5 minutes, SHA256withRSA over ``METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n`` with the exact path, query and body
bytes received) and answers ``401 SIGN_ERROR`` when it fails; it signs every other answer (``Wechatpay-Timestamp``,
``-Nonce``, ``-Signature``, ``-Serial``, ``-Signature-Type``) with the WeChat Pay public key's private half
(public-key mode) or a platform certificate's key (certificate mode); it serves ``GET /v3/certificates`` with each
certificate encrypted under the APIv3 key (AEAD_AES_256_GCM, associated data ``certificate``); it keeps trades and
refunds; and it posts callbacks (``TRANSACTION.SUCCESS``, ``REFUND.SUCCESS``) with their ``resource`` encrypted under
the APIv3 key and signed, freshly for each attempt, until the merchant answers 200 or 204. In place of the WeChat app
there is a wallet page (the ``code_url``/``h5_url`` it hands out) where a person presses "Pay".

Which key signs: an answer to a request that names the public key id in ``Wechatpay-Serial`` is signed with the public
key, any other answer with the newest platform certificate when there is one. Callbacks are signed as
``callbackSigner`` says: ``publicKey``, ``certificate``, or ``alternate`` (one, then the other: a merchant in the
middle of moving from platform certificates to the public key, whose callbacks come signed by either).

Endpoints (below the prefix): ``POST /v3/pay/transactions/native`` (→ ``code_url``), ``POST /v3/pay/transactions/h5``
(→ ``h5_url``), ``GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=``, ``GET
/v3/pay/transactions/id/{transaction_id}?mchid=``, ``POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close``
(→ 204), ``POST /v3/refund/domestic/refunds``, ``GET /v3/refund/domestic/refunds/{out_refund_no}``, ``GET
/v3/certificates``.

Differences from the real service, on purpose:

- it is mounted below ``/sandbox/wechatpay-v3``; a signature covers the path below that prefix (``/v3/...``), which is
  exactly what WeChat Pay's own host receives, so a client signs the same text for both;
- ``code_url`` / ``h5_url`` are ``http://`` URLs of the wallet page (``weixin://wxpay/bizpayurl?pr=...`` and
  ``wx.tenpay.com`` in production), built from the base URL the request came in on; ``notify_url`` may be ``http://``;
- a refund is answered ``PROCESSING`` and is ``SUCCESS`` at once afterwards (``REFUND.SUCCESS`` goes to the refund's
  ``notify_url`` when it names one); with :attr:`~WechatV3Sandbox.refunds_wait` set it stays ``PROCESSING`` until
  :meth:`~WechatV3Sandbox.finish_refund` ends it (``SUCCESS``, ``CLOSED`` or ``ABNORMAL``, with its callback);
- callbacks are retried after ``notifyRetryDelays`` seconds (default 2, 5, 10, 30, 60), far shorter than WeChat Pay's
  schedule over 24 hours; trades live in the memory of the serving process;
- error codes for cases the public documentation leaves open (a paid order closed: ``ORDERPAID``; a reused
  ``out_trade_no`` with other parameters: ``INVALID_REQUEST`` "201 商户订单号重复") are the sandbox's best reading.

Settings (``app.settings["sandbox"]["wechatV3"]``): ``appId``, ``mchId``, ``apiV3Key``, ``merchantCertificate`` (the
merchant API certificate, whose serial and key the requests must match), and the keys WeChat Pay signs with:
``publicKeyId`` + ``publicKeyPrivateKey`` (public-key mode) and/or ``platformPrivateKey`` + ``platformCertificate``
(certificate mode); optional ``callbackSigner``, ``timeExpireMinSeconds`` (default 60), ``notifyRetryDelays``,
``notifyTimeout``, ``notifyMode`` (``send`` | ``hold``) and ``merchantName``. ``jit-sandbox init`` writes every key
(:func:`generate_wechat_v3_keys`).

For tests, the sandbox object (:func:`jitpay_sandbox.sandbox_of` ``(app, "wechatV3")``) has a thread-safe Python API:
:meth:`~WechatV3Sandbox.pay`, :meth:`~WechatV3Sandbox.fail`, :meth:`~WechatV3Sandbox.trade`,
:meth:`~WechatV3Sandbox.refund`, :meth:`~WechatV3Sandbox.references`, :meth:`~WechatV3Sandbox.captured`,
:meth:`~WechatV3Sandbox.refunded`, :meth:`~WechatV3Sandbox.held_notifications`,
:meth:`~WechatV3Sandbox.take_notifications`, :meth:`~WechatV3Sandbox.callback`,
:meth:`~WechatV3Sandbox.rotate_platform_certificate`, :attr:`~WechatV3Sandbox.notify_mode` and
:attr:`~WechatV3Sandbox.callback_signer`.
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
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Awaitable, Callable, ClassVar, Mapping

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from jitcore.errors import ConfigError

from .common import (ALNUM, BEIJING, WechatWalletSandbox, digits, mount, read_limited, read_notify_mode, read_numbers,
                     required_text, sandbox_block, write_new, yuan)
from .held import HeldNotification

__all__ = ["wechat_v3_routes", "generate_wechat_v3_keys", "WechatV3Sandbox", "WechatV3SandboxSettings", "PREFIX",
           "KEY_FILES", "CALLBACK_SIGNERS"]

log = logging.getLogger(__name__)

PREFIX = "/sandbox/wechatpay-v3"
MAX_BODY_BYTES = 64 * 1024
AUTH_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
TIMESTAMP_TOLERANCE = 300
CALLBACK_SIGNERS = ("publicKey", "certificate", "alternate")
#: the files :func:`generate_wechat_v3_keys` writes (the merchant's and WeChat Pay's halves)
KEY_FILES = {
    "apiV3Key": "wechatpay_v3_apiv3_key.txt",
    "merchantPrivateKey": "wechatpay_v3_merchant_private_key.pem",     # the merchant's apiclient_key.pem
    "merchantCertificate": "wechatpay_v3_merchant_certificate.pem",    # the merchant's apiclient_cert.pem
    "merchantSerialNo": "wechatpay_v3_merchant_serial.txt",
    "publicKey": "wechatpay_v3_public_key.pem",                        # WeChat Pay's pub_key.pem (the merchant's)
    "publicKeyPrivateKey": "wechatpay_v3_public_key_private.pem",      # its private half (the sandbox's)
    "platformPrivateKey": "wechatpay_v3_platform_private_key.pem",     # the platform certificate's key (sandbox's)
    "platformCertificate": "wechatpay_v3_platform_certificate.pem",    # served by GET /v3/certificates
}
_OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_\-|*]{6,32}")
_OUT_REFUND_NO = re.compile(r"[A-Za-z0-9_\-|*@]{1,64}")
_PAYABLE = ("NOTPAY", "USERPAYING")
_PAID = ("SUCCESS", "REFUND")
_STATE_DESC = {"NOTPAY": "订单未支付", "USERPAYING": "用户支付中", "SUCCESS": "支付成功", "REFUND": "转入退款",
               "CLOSED": "已关闭", "REVOKED": "已撤销", "PAYERROR": "支付失败"}


# -- keys --------------------------------------------------------------------------------------------------------------
def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _self_signed(key: rsa.RSAPrivateKey, common_name: str, days: int = 3650,
                 not_before: datetime | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "JitPay sandbox"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = not_before or datetime.now(timezone.utc) - timedelta(days=1)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + timedelta(days=days)).sign(key, hashes.SHA256()))


def _key_from_file(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA private key")
    return key


def _private_key_file(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        return _key_from_file(path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if not write_new(path, _private_pem(key), 0o600):
        return _key_from_file(path)  # written concurrently: keep theirs
    return key


def generate_wechat_v3_keys(directory: Path, mchId: str = "1900000002") -> None:
    """Write the WeChat Pay v3 sandbox's keys into ``directory`` (created if missing), keeping every file that exists
    (a missing derived file is made from the existing private key, so pairs always match): the APIv3 key (32
    letters and digits), the merchant's API key and self-signed certificate (and its serial, upper-case hex), the
    WeChat Pay public key and its private half, and a platform certificate with its key. 2048-bit RSA; private keys
    PKCS#8 PEM with mode 0600. File names: :data:`KEY_FILES`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = {name: directory / file for name, file in KEY_FILES.items()}
    write_new(path["apiV3Key"], ("".join(secrets.choice(ALNUM) for _ in range(32)) + "\n").encode(), 0o600)

    merchant = _private_key_file(path["merchantPrivateKey"])
    if not path["merchantCertificate"].exists():
        cert = _self_signed(merchant, f"{mchId} JitPay sandbox merchant")
        write_new(path["merchantCertificate"], cert.public_bytes(serialization.Encoding.PEM), 0o644)
    if not path["merchantSerialNo"].exists():
        cert = x509.load_pem_x509_certificate(path["merchantCertificate"].read_bytes())
        write_new(path["merchantSerialNo"], (format(cert.serial_number, "X") + "\n").encode(), 0o644)

    public = _private_key_file(path["publicKeyPrivateKey"])
    write_new(path["publicKey"], public.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)

    platform = _private_key_file(path["platformPrivateKey"])
    if not path["platformCertificate"].exists():
        cert = _self_signed(platform, "Tenpay.com Root CA (JitPay sandbox platform)", days=5 * 365)
        write_new(path["platformCertificate"], cert.public_bytes(serialization.Encoding.PEM), 0o644)


# -- signatures and encryption (written apart from the provider's on purpose) ------------------------------------------
def _sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def _verify(key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), message, padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, binascii.Error, ValueError):
        return False


def _encrypt(api_v3_key: bytes, associated_data: str, plaintext: bytes) -> dict[str, str]:
    nonce = "".join(secrets.choice(ALNUM) for _ in range(12))
    sealed = AESGCM(api_v3_key).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {"algorithm": "AEAD_AES_256_GCM", "ciphertext": base64.b64encode(sealed).decode("ascii"),
            "associated_data": associated_data, "nonce": nonce}


def _rfc3339(moment: datetime | None = None) -> str:
    return (moment or datetime.now(BEIJING)).astimezone(BEIJING).strftime("%Y-%m-%dT%H:%M:%S+08:00")


def _serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "X")


# -- settings ----------------------------------------------------------------------------------------------------------
def _pem(value: Any, where: str) -> bytes:
    if isinstance(value, str):
        value = value.strip().encode("ascii", "replace")
    if not isinstance(value, bytes) or not value:
        raise ConfigError(f"{where} is required (PEM text, e.g. {{$file: .sandbox/...}})", details={"key": where})
    return value


@dataclass(frozen=True)
class _Signer:
    """A key WeChat Pay signs with, and the serial it names in ``Wechatpay-Serial``."""

    kind: str  # "publicKey" or "certificate"
    serial: str
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate | None = None


@dataclass(frozen=True)
class WechatV3SandboxSettings:
    """The sandbox merchant, the keys and the behaviour knobs (see the module docstring)."""

    appId: str
    mchId: str
    apiV3Key: bytes
    merchantSerialNo: str
    merchantKey: rsa.RSAPublicKey
    publicKey: _Signer | None
    platform: _Signer | None
    callbackSigner: str
    timeExpireMinSeconds: float = 60.0
    notifyRetryDelays: tuple[float, ...] = (2, 5, 10, 30, 60)
    notifyTimeout: float = 5.0
    notifyMode: str = "send"
    merchantName: str = "JitPay Sandbox Merchant"

    def __repr__(self) -> str:
        return f"WechatV3SandboxSettings(appId={self.appId!r}, mchId={self.mchId!r})"

    @classmethod
    def from_app(cls, app: Any) -> "WechatV3SandboxSettings":
        """Read ``app.settings["sandbox"]["wechatV3"]``; ``ConfigError`` names a missing or wrong key."""
        where = "settings.sandbox.wechatV3"
        raw = sandbox_block(app, "wechatV3")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} is missing: the WeChat Pay v3 sandbox needs appId, mchId, apiV3Key, "
                              f"merchantCertificate and a key to sign with")
        known = {"appId", "mchId", "apiV3Key", "merchantCertificate", "publicKeyId", "publicKeyPrivateKey",
                 "platformPrivateKey", "platformCertificate", "callbackSigner", "timeExpireMinSeconds",
                 "notifyRetryDelays", "notifyTimeout", "notifyMode", "merchantName"}
        extra = sorted(set(raw) - known)
        if extra:
            raise ConfigError(f"{where}.{extra[0]} is not a WeChat Pay v3 sandbox setting (known: "
                              f"{', '.join(sorted(known))})")

        def text(key: str) -> str:
            return required_text(raw, where, key)

        api_v3_key = text("apiV3Key").encode("utf-8")
        if len(api_v3_key) != 32:
            raise ConfigError(f"{where}.apiV3Key must be 32 bytes", details={"key": f"{where}.apiV3Key"})
        try:
            merchant_cert = x509.load_pem_x509_certificate(_pem(raw.get("merchantCertificate"),
                                                                f"{where}.merchantCertificate"))
        except ValueError:
            raise ConfigError(f"{where}.merchantCertificate is not a PEM certificate") from None
        merchant_key = merchant_cert.public_key()
        if not isinstance(merchant_key, rsa.RSAPublicKey):
            raise ConfigError(f"{where}.merchantCertificate is not the certificate of an RSA key")

        def private(key: str) -> rsa.RSAPrivateKey:
            try:
                loaded = serialization.load_pem_private_key(_pem(raw.get(key), f"{where}.{key}"), password=None)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                raise ConfigError(f"{where}.{key} must be an unencrypted PEM private key") from None
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ConfigError(f"{where}.{key} is not an RSA private key")
            return loaded

        public_signer = platform_signer = None
        if raw.get("publicKeyId") or raw.get("publicKeyPrivateKey"):
            key_id = text("publicKeyId")
            if not re.fullmatch(r"PUB_KEY_ID_[0-9]+", key_id):
                raise ConfigError(f"{where}.publicKeyId must be PUB_KEY_ID_ followed by digits")
            public_signer = _Signer("publicKey", key_id, private("publicKeyPrivateKey"))
        if raw.get("platformCertificate") or raw.get("platformPrivateKey"):
            key = private("platformPrivateKey")
            try:
                cert = x509.load_pem_x509_certificate(_pem(raw.get("platformCertificate"),
                                                           f"{where}.platformCertificate"))
            except ValueError:
                raise ConfigError(f"{where}.platformCertificate is not a PEM certificate") from None
            pub = cert.public_key()
            if not isinstance(pub, rsa.RSAPublicKey) or pub.public_numbers() != key.public_key().public_numbers():
                raise ConfigError(f"{where}.platformCertificate is not the certificate of platformPrivateKey")
            platform_signer = _Signer("certificate", _serial(cert), key, cert)
        if public_signer is None and platform_signer is None:
            raise ConfigError(f"{where} needs a key to sign with: publicKeyId + publicKeyPrivateKey (public-key "
                              f"mode) and/or platformPrivateKey + platformCertificate (certificate mode)")
        signer = raw.get("callbackSigner") or ("alternate" if public_signer and platform_signer
                                               else "publicKey" if public_signer else "certificate")
        if signer not in CALLBACK_SIGNERS:
            raise ConfigError(f"{where}.callbackSigner must be one of {', '.join(CALLBACK_SIGNERS)}")
        if (signer != "certificate" and public_signer is None) or (signer != "publicKey" and platform_signer is None):
            raise ConfigError(f"{where}.callbackSigner {signer} needs the keys of that mode configured")
        values = read_numbers(raw, where, ("timeExpireMinSeconds", "notifyTimeout"))
        values["notifyMode"] = read_notify_mode(raw, where, cls.notifyMode)
        if raw.get("merchantName"):
            values["merchantName"] = str(raw["merchantName"])
        return cls(appId=text("appId"), mchId=text("mchId"), apiV3Key=api_v3_key,
                   merchantSerialNo=_serial(merchant_cert), merchantKey=merchant_key, publicKey=public_signer,
                   platform=platform_signer, callbackSigner=signer, **values)


# -- state -------------------------------------------------------------------------------------------------------------
@dataclass
class _Refund:
    out_refund_no: str
    refund_id: str
    refund: int
    reason: str
    notify_url: str
    created: str
    status: str = "PROCESSING"
    success_time: str = ""
    notify_attempts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Trade:
    out_trade_no: str
    trade_type: str                 # NATIVE or MWEB (what v3 reports for H5)
    token: str
    params: dict[str, Any]          # the order request's body (for the repeat rule)
    created: float
    expires: datetime | None = None
    state: str = "NOTPAY"
    transaction_id: str = ""
    openid: str = ""
    success_time: str = ""
    refunds: dict[str, _Refund] = field(default_factory=dict)
    notify_attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return int(self.params["amount"]["total"])

    @property
    def refunded(self) -> int:
        """What left the merchant: refunds made or on their way (not closed ones, nor abnormal ones)."""
        return sum(r.refund for r in self.refunds.values() if r.status in ("PROCESSING", "SUCCESS"))


class _Answer(Exception):
    """An error answer: HTTP ``status`` with ``{"code", "message"}``."""

    def __init__(self, status: int, code: str, message: str, *, signed: bool = True) -> None:
        super().__init__(code)
        self.status, self.code, self.message, self.signed = status, code, message, signed


class WechatV3Sandbox(WechatWalletSandbox):
    """The simulator: one merchant, its trades and refunds in memory (guarded by a lock), and the routes. The wallet,
    held callbacks and most of the Python API for tests are :class:`~jitpay_sandbox.common.WechatWalletSandbox`'s."""

    provider: ClassVar[str] = "wechatV3"
    prefix: ClassVar[str] = PREFIX
    wallet_route_name: ClassVar[str] = "wechat_v3_sandbox_wallet"
    wallet_template: ClassVar[str] = "wechat_v3_wallet.html"

    def __init__(self, settings: WechatV3SandboxSettings) -> None:
        super().__init__(notify_mode=settings.notifyMode)
        self.settings = settings
        self._callback_signer = settings.callbackSigner
        self._alternate = 0
        # every platform certificate WeChat Pay lists (the newest signs); rotation adds one
        self._platforms: list[_Signer] = [settings.platform] if settings.platform else []
        self._stopping = threading.Event()

    # -- routes -----------------------------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        """The Starlette routes, all below :data:`PREFIX`."""
        api: list[tuple[str, str, Callable[..., Any]]] = [
            ("POST", "/v3/pay/transactions/native", self._native),
            ("POST", "/v3/pay/transactions/h5", self._h5),
            ("GET", "/v3/pay/transactions/out-trade-no/{out_trade_no}", self._query),
            ("GET", "/v3/pay/transactions/id/{transaction_id}", self._query_by_id),
            ("POST", "/v3/pay/transactions/out-trade-no/{out_trade_no}/close", self._close),
            ("POST", "/v3/refund/domestic/refunds", self._refund),
            ("GET", "/v3/refund/domestic/refunds/{out_refund_no}", self._refund_query),
            ("GET", "/v3/certificates", self._certificates),
        ]
        routes: list[BaseRoute] = [Route(PREFIX + path, self._endpoint(handler), methods=[method])
                                   for method, path, handler in api]
        return routes + self._wallet_routes()

    def stop(self) -> None:
        """Stop posting callbacks (pending retries are dropped)."""
        self._stopping.set()

    # -- the Python API for tests (notify_mode, pay, fail, captured, refunded, references, held_notifications,
    #    take_notifications: WechatWalletSandbox's) ----------------------------------------------------------------
    @property
    def callback_signer(self) -> str:
        """Which key signs callbacks: ``publicKey``, ``certificate`` or ``alternate``. Settable at run time (a
        merchant's migration: from ``certificate`` through ``alternate`` to ``publicKey``)."""
        return self._callback_signer

    @callback_signer.setter
    def callback_signer(self, signer: str) -> None:
        if signer not in CALLBACK_SIGNERS:
            raise ValueError(f"callback_signer must be one of {', '.join(CALLBACK_SIGNERS)}")
        if (signer != "certificate" and self.settings.publicKey is None) or \
                (signer != "publicKey" and not self._platforms):
            raise ValueError(f"callback_signer {signer} needs the keys of that mode configured")
        with self._lock:
            self._callback_signer = signer

    def rotate_platform_certificate(self) -> str:
        """WeChat Pay issues a new platform certificate: it is listed by ``GET /v3/certificates`` beside the old one
        and signs everything from now on. Returns its serial."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _self_signed(key, "Tenpay.com Root CA (JitPay sandbox platform, rotated)", days=5 * 365)
        with self._lock:
            self._platforms.append(_Signer("certificate", _serial(cert), key, cert))
        return _serial(cert)

    def trade(self, reference: str) -> dict[str, Any] | None:
        """A snapshot of the order ``reference`` (its ``out_trade_no``): ``state``, ``trade_type``, ``total``,
        ``transaction_id``, ``refunded``, ``refunds`` (``{out_refund_no: {refund, status}}``), ``time_expire``,
        ``attach``, ``notify_attempts`` (each with the ``signedBy`` serial); ``None`` for one it never saw."""
        with self._lock:
            trade = self._trades.get(reference)
            if trade is None:
                return None
            self._expire(trade)
            return {"out_trade_no": trade.out_trade_no, "trade_type": trade.trade_type, "state": trade.state,
                    "total": trade.total, "transaction_id": trade.transaction_id, "refunded": trade.refunded,
                    "attach": trade.params.get("attach", ""), "time_expire": trade.params.get("time_expire", ""),
                    "notify_url": trade.params.get("notify_url", ""),
                    "scene_info": trade.params.get("scene_info"),
                    "refunds": {r.out_refund_no: {"refund": r.refund, "status": r.status,
                                                  "notify_attempts": [dict(a) for a in r.notify_attempts]}
                                for r in trade.refunds.values()},
                    "notify_attempts": [dict(a) for a in trade.notify_attempts]}

    def refund(self, out_refund_no: str) -> dict[str, Any] | None:
        """The refund ``out_refund_no`` as ``GET /v3/refund/domestic/refunds/{out_refund_no}`` answers it, or
        ``None``."""
        with self._lock:
            found = self._find_refund(out_refund_no)
            return None if found is None else self._refund_json(*found)

    def _captured_amount(self, trade: _Trade) -> Decimal:
        """The order's total once paid (also after refunds), in yuan."""
        return yuan(trade.total if trade.transaction_id else 0)

    def _refunded_amount(self, trade: _Trade) -> Decimal:
        return yuan(trade.refunded)

    def callback(self, reference: str, *, event: str = "TRANSACTION.SUCCESS", out_refund_no: str | None = None,
                 timestamp: int | None = None, signer: str | None = None) -> HeldNotification:
        """A callback about order ``reference`` as it is now, signed and encrypted as the sandbox would post it,
        without posting it or changing anything: for tests that replay (``timestamp`` in the past), forge or re-sign
        one. ``event`` is ``TRANSACTION.SUCCESS`` or ``REFUND.SUCCESS`` (with ``out_refund_no``); ``signer``
        ``publicKey`` or ``certificate`` (default: as :attr:`callback_signer` says)."""
        with self._lock:
            trade = self._trades[reference]
            if event == "TRANSACTION.SUCCESS":
                body = self._callback_body(event, "transaction", self._transaction_json(trade))
                url = trade.params["notify_url"]
            else:
                refund = trade.refunds[out_refund_no or ""]
                body = self._callback_body(event, "refund", self._refund_resource(trade, refund))
                url = refund.notify_url or trade.params["notify_url"]
            headers = {"Content-Type": "application/json", **self._signature_headers(
                body, self._callback_key(signer), timestamp)}
        return self._held_notification(reference, event, url, body, headers)

    # -- request handling ---------------------------------------------------------------------------------------------
    def _endpoint(self, handler: Callable[..., Any]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            serial = request.headers.get("wechatpay-serial") or ""
            try:
                body = await read_limited(request, MAX_BODY_BYTES, _too_large)
                self._authenticate(request, body)
                data: Any = None
                if request.method == "POST":
                    if (request.headers.get("content-type") or "").split(";")[0].strip().lower() != "application/json":
                        raise _Answer(400, "PARAM_ERROR", "Content-Type必须为application/json")
                    try:
                        data = json.loads(body.decode("utf-8"))
                    except (UnicodeDecodeError, ValueError):
                        raise _Answer(400, "PARAM_ERROR", "请求的JSON格式错误 (body is not JSON)") from None
                    if not isinstance(data, dict):
                        raise _Answer(400, "PARAM_ERROR", "请求的JSON格式错误 (body is not a JSON object)")
                status, answer = handler(request, data)
            except _Answer as exc:
                content = json.dumps({"code": exc.code, "message": exc.message}, ensure_ascii=False).encode()
                if not exc.signed:
                    return Response(content, status_code=exc.status, media_type="application/json",
                                    headers={"Request-ID": str(uuid.uuid4())})
                return self._signed(exc.status, content, serial)
            if status == 204:
                return self._signed(204, b"", serial)
            return self._signed(status, json.dumps(answer, ensure_ascii=False).encode("utf-8"), serial)
        return endpoint

    def _authenticate(self, request: Request, body: bytes) -> None:
        """The request's ``Authorization`` over the exact method, path below the prefix, query and body bytes."""
        def refuse(why: str) -> _Answer:
            return _Answer(401, "SIGN_ERROR", f"签名错误 ({why})", signed=False)

        schema, _, rest = (request.headers.get("authorization") or "").strip().partition(" ")
        if schema != AUTH_SCHEMA:
            raise refuse(f"Authorization must use the {AUTH_SCHEMA} schema")
        params: dict[str, str] = {}
        for part in rest.split(","):
            name, sep, value = part.strip().partition("=")
            if not sep or len(value) < 2 or value[0] != '"' or value[-1] != '"':
                raise refuse("malformed Authorization parameters")
            params[name] = value[1:-1]
        missing = [p for p in ("mchid", "nonce_str", "signature", "timestamp", "serial_no") if not params.get(p)]
        if missing:
            raise refuse(f"Authorization lacks {', '.join(missing)}")
        if params["mchid"] != self.settings.mchId:
            raise refuse("mchid is not this merchant")
        if params["serial_no"].upper().lstrip("0") != self.settings.merchantSerialNo.upper().lstrip("0"):
            raise refuse("serial_no is not the merchant API certificate's serial number")
        ts = params["timestamp"]
        if not ts.isascii() or not ts.isdigit() or abs(time.time() - int(ts)) > TIMESTAMP_TOLERANCE:
            raise refuse("timestamp is more than 5 minutes away")
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = raw_path.decode("latin-1")
        if path.startswith(PREFIX):
            path = path[len(PREFIX):]
        query = request.scope.get("query_string") or b""
        url = path + ("?" + query.decode("latin-1") if query else "")
        message = (f"{request.method}\n{url}\n{ts}\n{params['nonce_str']}\n").encode("utf-8") + body + b"\n"
        if not _verify(self.settings.merchantKey, message, params["signature"]):
            raise refuse("the signature does not verify with the merchant API certificate")
        wanted = request.headers.get("wechatpay-serial")
        if wanted and wanted != (self.settings.publicKey.serial if self.settings.publicKey else None) and \
                wanted.upper().lstrip("0") not in {p.serial.lstrip("0") for p in self._platforms}:
            raise _Answer(400, "PARAM_ERROR", "Wechatpay-Serial 无效 (names no key of this merchant)")

    def _response_key(self, serial: str) -> _Signer:
        public = self.settings.publicKey
        if public is not None and (serial == public.serial or not self._platforms):
            return public
        with self._lock:
            return self._platforms[-1]

    def _callback_key(self, signer: str | None = None) -> _Signer:
        """The key that signs the next callback (the caller holds the lock)."""
        signer = signer or self._callback_signer
        if signer == "alternate":
            self._alternate += 1
            signer = "publicKey" if self._alternate % 2 else "certificate"
        if signer == "publicKey":
            assert self.settings.publicKey is not None
            return self.settings.publicKey
        return self._platforms[-1]

    @staticmethod
    def _signature_headers(body: bytes, signer: _Signer, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = secrets.token_hex(16).upper()
        message = ts.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"
        return {"Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce, "Wechatpay-Serial": signer.serial,
                "Wechatpay-Signature": _sign(signer.key, message), "Wechatpay-Signature-Type": AUTH_SCHEMA}

    def _signed(self, status: int, content: bytes, serial: str) -> Response:
        headers = {"Request-ID": str(uuid.uuid4()), **self._signature_headers(content, self._response_key(serial))}
        if status == 204:
            return Response(b"", status_code=204, headers=headers)
        return Response(content, status_code=status, media_type="application/json", headers=headers)

    # -- the API ------------------------------------------------------------------------------------------------------
    def _check_order(self, data: Mapping[str, Any], *, h5: bool) -> tuple[str, datetime | None]:
        for key in ("appid", "mchid", "description", "out_trade_no", "notify_url", "amount"):
            if data.get(key) in (None, ""):
                raise _Answer(400, "PARAM_ERROR", f"输入源“/body/{key}”映射到字段“{key}”必填性规则校验失败，此字段为必填项")
        if data["appid"] != self.settings.appId or data["mchid"] != self.settings.mchId:
            raise _Answer(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        if not _OUT_TRADE_NO.fullmatch(str(data["out_trade_no"])):
            raise _Answer(400, "PARAM_ERROR", "out_trade_no 须为6到32位的数字、大小写字母、_-|*")
        if not isinstance(data["description"], str) or len(data["description"].encode("utf-8")) > 127:
            raise _Answer(400, "PARAM_ERROR", "description 最长127字节")
        if not isinstance(data.get("attach", ""), str) or len(data.get("attach", "").encode("utf-8")) > 128:
            raise _Answer(400, "PARAM_ERROR", "attach 最长128字节")
        if not str(data["notify_url"]).startswith(("https://", "http://")):
            raise _Answer(400, "PARAM_ERROR", "notify_url 必须为完整的URL")
        amount = data["amount"]
        total = amount.get("total") if isinstance(amount, dict) else None
        if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
            raise _Answer(400, "PARAM_ERROR", "amount.total 必须为正整数（单位：分）")
        if amount.get("currency", "CNY") != "CNY":
            raise _Answer(400, "PARAM_ERROR", "amount.currency 仅支持CNY")
        expires = None
        if data.get("time_expire") is not None:
            text = data["time_expire"]
            try:
                if not isinstance(text, str) or "T" not in text:
                    raise ValueError
                expires = datetime.fromisoformat(text)
                if expires.tzinfo is None:
                    raise ValueError
            except ValueError:
                raise _Answer(400, "PARAM_ERROR", "time_expire 须为rfc3339格式，如2018-06-08T10:34:56+08:00") from None
            if (expires - datetime.now(timezone.utc)).total_seconds() < self.settings.timeExpireMinSeconds:
                raise _Answer(400, "PARAM_ERROR", f"time_expire 距下单时间不能少于"
                                                  f"{self.settings.timeExpireMinSeconds:g}秒")
        if h5:
            scene = data.get("scene_info")
            if not isinstance(scene, dict) or not scene.get("payer_client_ip") or \
                    not isinstance(scene.get("h5_info"), dict) or not scene["h5_info"].get("type"):
                raise _Answer(400, "PARAM_ERROR", "H5支付须传scene_info.payer_client_ip与scene_info.h5_info.type")
        return str(data["out_trade_no"]), expires

    def _create(self, request: Request, data: dict[str, Any], trade_type: str) -> _Trade:
        out_trade_no, expires = self._check_order(data, h5=trade_type == "MWEB")
        # a repeat must carry the same parameters; the payer's address may differ
        params = json.loads(json.dumps(data))
        comparable = json.loads(json.dumps(data))
        if isinstance(comparable.get("scene_info"), dict):
            comparable["scene_info"].pop("payer_client_ip", None)
        with self._lock:
            trade = self._trades.get(out_trade_no)
            if trade is not None:
                self._expire(trade)
                if trade.state in _PAID:
                    raise _Answer(400, "ORDERPAID", "该订单已支付")
                if trade.state == "CLOSED":
                    raise _Answer(400, "ORDER_CLOSED", "订单已关闭")
                previous = json.loads(json.dumps(trade.params))
                if isinstance(previous.get("scene_info"), dict):
                    previous["scene_info"].pop("payer_client_ip", None)
                if previous != comparable or trade.trade_type != trade_type:
                    raise _Answer(400, "INVALID_REQUEST", "201 商户订单号重复")
                return trade
            trade = _Trade(out_trade_no=out_trade_no, trade_type=trade_type, token=secrets.token_urlsafe(18),
                           params=params, created=time.monotonic(), expires=expires)
            self._add_trade(trade)
            return trade

    def _native(self, request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        trade = self._create(request, data, "NATIVE")
        return 200, {"code_url": self._wallet_url(request, trade)}

    def _h5(self, request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        trade = self._create(request, data, "MWEB")
        return 200, {"h5_url": f"{self._wallet_url(request, trade)}?prepay_id=wx{trade.token[:16]}"}

    def _check_mchid_query(self, request: Request) -> None:
        if request.query_params.get("mchid") != self.settings.mchId:
            raise _Answer(400, "PARAM_ERROR", "mchid 参数缺失或与商户号不符")

    def _query(self, request: Request, data: Any) -> tuple[int, Any]:
        self._check_mchid_query(request)
        with self._lock:
            trade = self._trades.get(request.path_params["out_trade_no"])
            if trade is None:
                raise _Answer(404, "ORDER_NOT_EXIST", "订单不存在")
            self._expire(trade)
            return 200, self._transaction_json(trade)

    def _query_by_id(self, request: Request, data: Any) -> tuple[int, Any]:
        self._check_mchid_query(request)
        with self._lock:
            trade = next((t for t in self._trades.values()
                          if t.transaction_id and t.transaction_id == request.path_params["transaction_id"]), None)
            if trade is None:
                raise _Answer(404, "ORDER_NOT_EXIST", "订单不存在")
            return 200, self._transaction_json(trade)

    def _close(self, request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        if data.get("mchid") != self.settings.mchId:
            raise _Answer(400, "PARAM_ERROR", "mchid 必填且须为本商户号")
        with self._lock:
            trade = self._trades.get(request.path_params["out_trade_no"])
            if trade is None:
                raise _Answer(404, "ORDER_NOT_EXIST", "订单不存在")
            self._expire(trade)
            if trade.state in _PAID:
                raise _Answer(400, "ORDERPAID", "订单已支付，不能关单")
            if trade.state == "CLOSED":
                raise _Answer(400, "ORDER_CLOSED", "订单已关闭，请勿重复提交")
            trade.state = "CLOSED"
        return 204, None

    def _refund(self, request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        out_refund_no = data.get("out_refund_no")
        if not isinstance(out_refund_no, str) or not _OUT_REFUND_NO.fullmatch(out_refund_no):
            raise _Answer(400, "PARAM_ERROR", "out_refund_no 须为1到64位的数字、大小写字母、_-|*@")
        amount = data.get("amount") if isinstance(data.get("amount"), dict) else {}
        refund, total = amount.get("refund"), amount.get("total")
        if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in (refund, total)):
            raise _Answer(400, "PARAM_ERROR", "amount.refund 与 amount.total 必须为正整数（单位：分）")
        if amount.get("currency") != "CNY":
            raise _Answer(400, "PARAM_ERROR", "amount.currency 必填，仅支持CNY")
        if data.get("notify_url") is not None and not str(data["notify_url"]).startswith(("https://", "http://")):
            raise _Answer(400, "PARAM_ERROR", "notify_url 必须为完整的URL")
        with self._lock:
            if data.get("transaction_id"):
                trade = next((t for t in self._trades.values() if t.transaction_id == data["transaction_id"]), None)
                if trade is not None and data.get("out_trade_no") not in (None, trade.out_trade_no):
                    raise _Answer(400, "INVALID_REQUEST", "transaction_id与out_trade_no不匹配")
            elif data.get("out_trade_no"):
                trade = self._trades.get(str(data["out_trade_no"]))
            else:
                raise _Answer(400, "PARAM_ERROR", "transaction_id 与 out_trade_no 必须二选一")
            if trade is None:
                raise _Answer(404, "RESOURCE_NOT_EXISTS", "订单不存在")
            if trade.state not in _PAID:
                raise _Answer(400, "INVALID_REQUEST", "订单状态不正确，未支付的订单不能退款")
            if total != trade.total:
                raise _Answer(400, "INVALID_REQUEST", "amount.total 与订单金额不符")
            existing = self._find_refund(out_refund_no)
            if existing is not None:
                owner, record = existing
                if owner is not trade or record.refund != refund:
                    raise _Answer(400, "INVALID_REQUEST", "同一退款单号out_refund_no的退款金额与订单须一致")
                return 200, self._refund_json(owner, record)
            if trade.refunded + refund > trade.total:
                raise _Answer(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
            record = _Refund(out_refund_no=out_refund_no, refund_id="50" + digits(27), refund=refund,
                             reason=str(data.get("reason") or ""), notify_url=str(data.get("notify_url") or ""),
                             created=_rfc3339())
            trade.refunds[out_refund_no] = record
            trade.state = "REFUND"
            answer = self._refund_json(trade, record)   # answered PROCESSING ...
            if not self.refunds_wait:
                self._end_refund(trade, record, "SUCCESS")  # ... and done right after
        return 200, answer

    def _end_refund(self, trade: _Trade, record: _Refund, status: str) -> None:
        """The refund ends ``status`` (SUCCESS, CLOSED, ABNORMAL); its callback goes to its ``notify_url``."""
        record.status = status
        if status == "SUCCESS":
            record.success_time = _rfc3339()
        if record.notify_url:
            self._notify(trade, f"REFUND.{status}", "refund", self._refund_resource(trade, record), record.notify_url,
                         record.notify_attempts)

    def _finish_refund(self, out_refund_no: str, outcome: str) -> bool:
        found = self._find_refund(out_refund_no)
        if found is None:
            raise KeyError(out_refund_no)
        trade, record = found
        if record.status not in ("PROCESSING", "ABNORMAL") or (record.status == "ABNORMAL" and outcome != "SUCCESS"):
            return False
        self._end_refund(trade, record, outcome)
        return True

    def _unfinished_refunds(self) -> list[str]:
        return [r.out_refund_no for t in self._trades.values() for r in t.refunds.values()
                if r.status in ("PROCESSING", "ABNORMAL")]

    def _refund_query(self, request: Request, data: Any) -> tuple[int, Any]:
        with self._lock:
            found = self._find_refund(request.path_params["out_refund_no"])
            if found is None:
                raise _Answer(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
            return 200, self._refund_json(*found)

    def _certificates(self, request: Request, data: Any) -> tuple[int, Any]:
        if not self._platforms:
            raise _Answer(404, "RESOURCE_NOT_EXISTS", "商户未使用平台证书：请使用微信支付公钥验签 (this merchant "
                                                      "verifies with the WeChat Pay public key)")
        with self._lock:
            platforms = list(self._platforms)
        listing = []
        for p in platforms:
            assert p.certificate is not None
            pem = p.certificate.public_bytes(serialization.Encoding.PEM)
            listing.append({"serial_no": p.serial, "effective_time": _rfc3339(p.certificate.not_valid_before_utc),
                            "expire_time": _rfc3339(p.certificate.not_valid_after_utc),
                            "encrypt_certificate": _encrypt(self.settings.apiV3Key, "certificate", pem)})
        return 200, {"data": listing}

    # -- JSON shapes --------------------------------------------------------------------------------------------------
    def _transaction_json(self, trade: _Trade) -> dict[str, Any]:
        answer: dict[str, Any] = {"appid": self.settings.appId, "mchid": self.settings.mchId,
                                  "out_trade_no": trade.out_trade_no, "trade_type": trade.trade_type,
                                  "trade_state": trade.state, "trade_state_desc": _STATE_DESC[trade.state]}
        if trade.params.get("attach"):
            answer["attach"] = trade.params["attach"]
        if trade.transaction_id:
            answer.update(transaction_id=trade.transaction_id, bank_type="OTHERS", success_time=trade.success_time,
                          payer={"openid": trade.openid},
                          amount={"total": trade.total, "payer_total": trade.total, "currency": "CNY",
                                  "payer_currency": "CNY"})
        else:
            answer["amount"] = {"payer_currency": "CNY"}
        return answer

    def _refund_json(self, trade: _Trade, refund: _Refund) -> dict[str, Any]:
        answer = {"refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no,
                  "transaction_id": trade.transaction_id, "out_trade_no": trade.out_trade_no, "channel": "ORIGINAL",
                  "user_received_account": "支付用户零钱", "create_time": refund.created, "status": refund.status,
                  "funds_account": "AVAILABLE",
                  "amount": {"total": trade.total, "refund": refund.refund, "payer_total": trade.total,
                             "payer_refund": refund.refund, "settlement_refund": refund.refund,
                             "settlement_total": trade.total, "discount_refund": 0, "currency": "CNY",
                             "refund_fee": 0}}
        if refund.success_time:
            answer["success_time"] = refund.success_time
        return answer

    def _refund_resource(self, trade: _Trade, refund: _Refund) -> dict[str, Any]:
        return {"mchid": self.settings.mchId, "out_trade_no": trade.out_trade_no,
                "transaction_id": trade.transaction_id, "out_refund_no": refund.out_refund_no,
                "refund_id": refund.refund_id, "refund_status": refund.status, "success_time": refund.success_time,
                "user_received_account": "支付用户零钱",
                "amount": {"total": trade.total, "refund": refund.refund, "payer_total": trade.total,
                           "payer_refund": refund.refund}}

    def _find_refund(self, out_refund_no: str) -> tuple[_Trade, _Refund] | None:
        for trade in self._trades.values():
            if out_refund_no in trade.refunds:
                return trade, trade.refunds[out_refund_no]
        return None

    def _expire(self, trade: _Trade) -> None:
        """An unpaid order past its ``time_expire`` is closed (the caller holds the lock)."""
        if trade.state in _PAYABLE and trade.expires is not None and datetime.now(timezone.utc) >= trade.expires:
            trade.state = "CLOSED"

    # -- the wallet ("scan with WeChat and pay"; the page and buttons are WechatWalletSandbox's) --------------------
    def _wallet_view(self, trade: _Trade) -> dict[str, Any]:
        return {"out_trade_no": trade.out_trade_no, "subject": trade.params["description"],
                "amount": f"{trade.total // 100}.{trade.total % 100:02d}", "trade_type": trade.trade_type,
                "attach": trade.params.get("attach", ""), "state": trade.state,
                "mch_id": self.settings.mchId, "merchant": self.settings.merchantName,
                "transaction_id": trade.transaction_id, "attempts": [dict(a) for a in trade.notify_attempts],
                "payable": trade.state in _PAYABLE, "notifies": trade.state in _PAID,
                "expires": trade.expires.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S") if trade.expires else "",
                "signer": self._callback_signer}

    def _complete(self, trade: _Trade, paid: bool) -> bool:
        """The buyer pays (``paid``) or the payment fails (the caller holds the lock)."""
        self._expire(trade)
        if trade.state not in _PAYABLE:
            return False
        if not paid:
            trade.state = "PAYERROR"
            return True
        trade.state = "SUCCESS"
        trade.transaction_id = "42000" + digits(23)
        trade.openid = "o" + secrets.token_urlsafe(20)[:27]
        trade.success_time = _rfc3339()
        self._notify(trade, "TRANSACTION.SUCCESS", "transaction", self._transaction_json(trade),
                     trade.params["notify_url"], trade.notify_attempts)
        return True

    # -- callbacks ----------------------------------------------------------------------------------------------------
    def _callback_body(self, event: str, original_type: str, resource: Mapping[str, Any]) -> bytes:
        summary = {"TRANSACTION.SUCCESS": "支付成功", "REFUND.SUCCESS": "退款成功", "REFUND.CLOSED": "退款关闭",
                   "REFUND.ABNORMAL": "退款异常"}.get(event, event)
        plaintext = json.dumps(resource, ensure_ascii=False).encode("utf-8")
        body = {"id": str(uuid.uuid4()), "create_time": _rfc3339(), "resource_type": "encrypt-resource",
                "event_type": event, "summary": summary,
                "resource": {"original_type": original_type,
                             **_encrypt(self.settings.apiV3Key, original_type, plaintext)}}
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def _notify(self, trade: _Trade, event: str, original_type: str, resource: Mapping[str, Any], url: str,
                attempts: list[dict[str, Any]]) -> None:
        """Post (or hold) one callback; the caller holds the lock."""
        body = self._callback_body(event, original_type, resource)
        if self._notify_mode == "hold":
            headers = {"Content-Type": "application/json", **self._signature_headers(body, self._callback_key())}
            self._hold(trade.out_trade_no, event, url, body, headers)
            return
        threading.Thread(target=self._deliver, args=(url, body, attempts),
                         name=f"wechat-v3-sandbox-notify-{trade.out_trade_no}", daemon=True).start()

    def _deliver(self, url: str, body: bytes, attempts: list[dict[str, Any]]) -> None:
        """POST the callback, signed afresh for each attempt, until the merchant answers 200 or 204 or the retries
        run out."""
        delays = (0.0, *self.settings.notifyRetryDelays)
        with httpx.Client(timeout=self.settings.notifyTimeout, trust_env=False, follow_redirects=False) as client:
            for attempt, delay in enumerate(delays, start=1):
                if self._stopping.wait(delay):
                    return
                with self._lock:
                    signer = self._callback_key()
                headers = {"Content-Type": "application/json", **self._signature_headers(body, signer)}
                outcome: dict[str, Any] = {"attempt": attempt,
                                           "at": datetime.now(BEIJING).isoformat(timespec="seconds"),
                                           "signedBy": signer.serial, "signerKind": signer.kind}
                try:
                    response = client.post(url, content=body, headers=headers)
                    outcome.update(status=response.status_code, ok=response.status_code in (200, 204),
                                   reply=response.text[:200])
                except httpx.HTTPError as exc:
                    outcome.update(ok=False, error=type(exc).__name__)
                with self._lock:
                    attempts.append(outcome)
                if outcome["ok"]:
                    return
                log.info("WeChat Pay v3 sandbox: callback to %s not acknowledged (attempt %d)", url, attempt)
        log.warning("WeChat Pay v3 sandbox: gave up a callback to %s after %d attempts", url, len(delays))


def _too_large() -> _Answer:
    return _Answer(413, "PARAM_ERROR", "请求包体过大 (body too large)")


def wechat_v3_routes(app: Any) -> list[BaseRoute]:
    """The WeChat Pay v3 sandbox's routes for ``app``, configured from ``app.settings["sandbox"]["wechatV3"]``; no
    routes without that block, ``ConfigError`` when it is incomplete or wrong. Each call makes a fresh sandbox; it
    is reachable as ``jitpay_sandbox.sandbox_of(app, "wechatV3")``."""
    return mount(app, "wechatV3", lambda _: WechatV3Sandbox(WechatV3SandboxSettings.from_app(app)))
