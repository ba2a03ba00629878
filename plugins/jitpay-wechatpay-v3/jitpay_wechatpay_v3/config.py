"""The configuration of a ``pays.WechatPayV3Type`` element, checked once at load.

Every problem is a :class:`~jitcore.errors.ConfigError` that names the element and the setting and says how to fix
it; none ever contains a setting's value (keys come from ``{$file: ...}`` / ``{$env: ...}`` and must stay out of logs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from cryptography import x509

from elements.pays.helpers import ConfigReader

from .crypto import (APIV3_KEY_BYTES, RSA_BITS, KeyFormatError, PrivateKey, PublicKey, certificate_serial,
                     load_certificate, load_private_key, load_public_key, normalize_serial, same_public_key)

__all__ = ["CONFIG_KEYS", "WechatV3Config", "read_config", "DEFAULT_GATEWAY"]

DEFAULT_GATEWAY = "https://api.mch.weixin.qq.com"
#: Every key the element's ``config`` may hold.
CONFIG_KEYS = ("appId", "mchId", "apiV3Key", "merchantSerialNo", "privateKey", "merchantCertificate",
               "wechatpayPublicKey", "wechatpayPublicKeyId", "platformCertificates", "gateway", "notifyUrl",
               "payerClientIp", "timeout")
_PUBLIC_KEY_ID = re.compile(r"PUB_KEY_ID_[0-9]{1,64}")
_SERIAL = re.compile(r"[0-9A-Fa-f]{1,64}")
_MCHID = re.compile(r"[0-9]{1,32}")


@dataclass(frozen=True)
class WechatV3Config:
    """The checked configuration. ``privateKey`` and ``wechatpayPublicKey`` are loaded key objects;
    ``platformCertificates`` says whether platform certificates are fetched from ``GET /v3/certificates`` (the
    certificate mode), ``wechatpayPublicKeyId`` whether the public-key mode is on; both may be (a migration)."""

    appId: str
    mchId: str
    apiV3Key: bytes
    merchantSerialNo: str
    privateKey: PrivateKey
    wechatpayPublicKey: PublicKey | None
    wechatpayPublicKeyId: str | None
    platformCertificates: bool
    gateway: str
    notifyUrl: str
    payerClientIp: str
    timeout: float

    def __repr__(self) -> str:  # keys never show up in a log or a traceback
        return (f"WechatV3Config(appId={self.appId!r}, mchId={self.mchId!r}, merchantSerialNo="
                f"{self.merchantSerialNo!r}, wechatpayPublicKeyId={self.wechatpayPublicKeyId!r}, platformCertificates="
                f"{self.platformCertificates!r}, gateway={self.gateway!r}, notifyUrl={self.notifyUrl!r})")

    @property
    def keyModes(self) -> tuple[str, ...]:
        """``("publicKey",)``, ``("certificate",)`` or both (a merchant moving from platform certificates to the
        WeChat Pay public key)."""
        return (("publicKey",) if self.wechatpayPublicKeyId else ()) + \
            (("certificate",) if self.platformCertificates else ())


def read_config(fullName: str, raw: Mapping[str, Any], notifyUrl: str) -> WechatV3Config:
    """Check ``raw`` (the element's merged config) and return it typed. ``notifyUrl`` is the default notify URL
    (the contract's :meth:`~elements.pays.Meta.PayProvider.notify_url`), used unless ``raw`` sets one.

    Raises :class:`ConfigError` naming ``fullName`` and the key, never a value."""

    config = ConfigReader(fullName, raw, CONFIG_KEYS, what="WeChat Pay v3")
    fail, text = config.fail, config.text

    appId = text("appId")
    mchId = text("mchId")
    if not _MCHID.fullmatch(mchId or ""):
        raise fail("mchId", "must be the merchant id WeChat Pay gave (digits only)")

    apiV3Key = raw.get("apiV3Key")
    if apiV3Key is None or apiV3Key == "":
        raise fail("apiV3Key", "is required (the APIv3 key set in the merchant platform, 32 characters)")
    if not isinstance(apiV3Key, str):
        raise fail("apiV3Key", f"must be text, not {type(apiV3Key).__name__}")
    key_text = apiV3Key.strip()  # a {$file: ...} may end with a line break
    key_bytes = key_text.encode("utf-8")
    if len(key_bytes) != APIV3_KEY_BYTES or not key_text.isascii() or any(c.isspace() for c in key_text):
        raise fail("apiV3Key", f"must be the APIv3 key: exactly {APIV3_KEY_BYTES} ASCII characters with no spaces "
                               f"(this one has {len(key_bytes)} bytes)")

    def key(keyname: str, loader: Any, required: bool) -> Any:
        value = raw.get(keyname)
        if value is None or value == "":
            if required:
                raise fail(keyname, "is required")
            return None
        try:
            return loader(value)
        except KeyFormatError as exc:
            raise fail(keyname, str(exc)) from None

    privateKey: PrivateKey = key("privateKey", load_private_key, True)
    if privateKey.key_size != RSA_BITS:
        raise fail("privateKey", f"must be a {RSA_BITS}-bit RSA key (the merchant API key of WECHATPAY2-SHA256-"
                                 f"RSA2048), not {privateKey.key_size}-bit")

    certificate: x509.Certificate | None = key("merchantCertificate", load_certificate, False)
    serial = text("merchantSerialNo", required=certificate is None)
    if serial is not None and not _SERIAL.fullmatch(serial):
        raise fail("merchantSerialNo", "must be the merchant API certificate's serial number (hexadecimal, as the "
                                       "merchant platform shows it)")
    if certificate is not None:
        cert_serial = certificate_serial(certificate)
        if serial is not None and normalize_serial(serial) != normalize_serial(cert_serial):
            raise fail("merchantSerialNo", "does not match the serial number of merchantCertificate; copy it from the "
                                           "certificate (or leave it out: it is read from merchantCertificate)")
        if not same_public_key(certificate.public_key(), privateKey):
            raise fail("privateKey", "does not belong to merchantCertificate (apiclient_key.pem and apiclient_cert.pem "
                                     "must be one pair)")
        serial = serial or cert_serial
    merchantSerialNo = (serial or "").upper()

    publicKey: PublicKey | None = key("wechatpayPublicKey", load_public_key, False)
    publicKeyId = text("wechatpayPublicKeyId", required=False)
    if (publicKey is None) != (publicKeyId is None):
        missing = "wechatpayPublicKeyId" if publicKeyId is None else "wechatpayPublicKey"
        raise fail(missing, "is required with " + ("wechatpayPublicKey" if publicKeyId is None
                                                    else "wechatpayPublicKeyId") +
                   " (the WeChat Pay public key and its id PUB_KEY_ID_... go together)")
    if publicKeyId is not None and not _PUBLIC_KEY_ID.fullmatch(publicKeyId):
        raise fail("wechatpayPublicKeyId", "must be the WeChat Pay public key id: PUB_KEY_ID_ followed by digits")
    if publicKey is not None:
        if publicKey.key_size != RSA_BITS:
            raise fail("wechatpayPublicKey", f"must be a {RSA_BITS}-bit RSA key, not {publicKey.key_size}-bit")
        if same_public_key(publicKey, privateKey):
            raise fail("wechatpayPublicKey", "is the merchant's own public key (the other half of privateKey); it "
                                             "needs WeChat Pay's public key (pub_key.pem from the merchant platform)")

    platform = raw.get("platformCertificates", publicKey is None)
    if not isinstance(platform, bool):
        raise fail("platformCertificates", "must be true or false")
    if not platform and publicKey is None:
        raise fail("platformCertificates", "is false and no wechatpayPublicKey is set: WeChat Pay's signatures could "
                                           "not be verified; configure the public key (and its id) or platform "
                                           "certificates")

    gateway = (text("gateway", required=False) or DEFAULT_GATEWAY).rstrip("/")
    if not gateway.startswith(("https://", "http://")):
        raise fail("gateway", f"must be an http(s) base URL, e.g. {DEFAULT_GATEWAY}")

    notify = text("notifyUrl", required=False) or notifyUrl
    if not notify.startswith("https://") and not notify.startswith("http://"):
        raise fail("notifyUrl", "must be an absolute http(s) URL")

    ip = config.ip_address("payerClientIp")
    timeout = config.seconds("timeout", default=10, most=300)

    return WechatV3Config(appId=appId or "", mchId=mchId or "", apiV3Key=key_bytes, merchantSerialNo=merchantSerialNo,
                          privateKey=privateKey, wechatpayPublicKey=publicKey, wechatpayPublicKeyId=publicKeyId,
                          platformCertificates=platform, gateway=gateway, notifyUrl=notify, payerClientIp=ip,
                          timeout=timeout)
