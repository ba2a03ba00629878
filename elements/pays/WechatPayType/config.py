"""The configuration of a ``pays.WechatPayType`` element, checked once at load."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from elements.pays.helpers import ConfigReader

from .signing import SIGN_TYPES

#: Every key the element's ``config`` may hold.
CONFIG_KEYS = ("appId", "mchId", "apiKey", "signType", "gateway", "notifyUrl", "certPath", "keyPath",
               "spbillCreateIp", "timeout")


@dataclass(frozen=True)
class WechatConfig:
    """The checked configuration. ``certPath``/``keyPath`` are absolute; ``gateway`` has no trailing slash."""

    appId: str
    mchId: str
    apiKey: str
    signType: str
    gateway: str
    notifyUrl: str
    spbillCreateIp: str
    timeout: float
    certPath: str | None = None
    keyPath: str | None = None

    def __repr__(self) -> str:  # the API key never shows up in a log or a traceback
        return (f"WechatConfig(appId={self.appId!r}, mchId={self.mchId!r}, signType={self.signType!r}, "
                f"gateway={self.gateway!r}, notifyUrl={self.notifyUrl!r})")


def read_config(fullName: str, raw: Mapping[str, Any], app: Any,
                default_notify_path: str = "wechatNotify") -> WechatConfig:
    """Check ``raw`` (the element's merged config) and return it typed. ``app`` supplies ``baseUrl`` and ``appId``
    for the default ``notifyUrl`` (``{baseUrl}/api/{appId}/pays/services/PaySvc/{default_notify_path}``) and ``root``
    for relative certificate paths.

    Raises :class:`~jitcore.errors.ConfigError` naming ``fullName`` and the key (never a secret's value)."""

    config = ConfigReader(fullName, raw, CONFIG_KEYS, what="WeChat Pay")
    fail, text = config.fail, config.text

    appId = text("appId")
    mchId = text("mchId")
    # Keys often come from {$file: ...}: a trailing newline is not part of the key.
    apiKey = text("apiKey")
    if not apiKey or any(c.isspace() for c in apiKey):
        raise fail("apiKey", "must be the merchant API key (32 characters, no spaces)")

    signType = (text("signType", required=False) or "MD5").upper()
    if signType not in SIGN_TYPES:
        raise fail("signType", f"must be one of {', '.join(SIGN_TYPES)}")

    gateway = (text("gateway", required=False) or "https://api.mch.weixin.qq.com").rstrip("/")
    if not gateway.startswith(("https://", "http://")):
        raise fail("gateway", "must be an http(s) base URL, e.g. https://api.mch.weixin.qq.com")

    notifyUrl = text("notifyUrl", required=False)
    if notifyUrl is None:
        baseUrl = (getattr(app, "baseUrl", None) or "").rstrip("/")
        appKey = getattr(app, "appId", None)
        if not baseUrl or not appKey:
            raise fail("notifyUrl", "is not set and the app has no baseUrl to build it from")
        notifyUrl = f"{baseUrl}/api/{appKey}/pays/services/PaySvc/{default_notify_path}"
    if not notifyUrl.startswith(("https://", "http://")):
        raise fail("notifyUrl", "must be an absolute http(s) URL")

    ip = config.ip_address("spbillCreateIp")
    timeout = config.seconds("timeout", default=10, most=300)

    root = Path(getattr(app, "root", None) or ".")

    def path(key: str) -> str | None:
        value = text(key, required=False)
        if value is None:
            return None
        p = Path(value).expanduser()
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise fail(key, f"names a file that does not exist: {p}")
        return str(p.resolve())

    certPath = path("certPath")
    keyPath = path("keyPath")
    if keyPath and not certPath:
        raise fail("certPath", "is required when keyPath is set")
    if certPath:
        from .api import client_ssl_context

        try:
            client_ssl_context(certPath, keyPath)
        except (OSError, ssl.SSLError) as exc:
            raise fail("certPath", f"cannot be loaded as the client certificate ({type(exc).__name__})") from None

    return WechatConfig(appId=appId, mchId=mchId, apiKey=apiKey, signType=signType, gateway=gateway,  # type: ignore[arg-type]
                        notifyUrl=notifyUrl, spbillCreateIp=ip, timeout=timeout, certPath=certPath, keyPath=keyPath)
