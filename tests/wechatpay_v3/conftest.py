"""Helpers for the WeChat Pay v3 tests: a checked config and a provider built the way the runtime builds them, and
callbacks and certificate lists made by hand (with ``cryptography``, not with the code under test's helpers)."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jitpay_wechatpay_v3.config import WechatV3Config, read_config
from jitpay_wechatpay_v3.provider import WechatPayV3Type

from . import keys

APP_ID = "wx0000000000000002"
MCH_ID = "1900000002"
NOTIFY_URL = "https://shop.example/api/shop/pays/services/PaySvc/notify/wechatv3"


def base_config(mode: str = "publicKey", **overrides: Any) -> dict[str, Any]:
    """A valid element config: ``mode`` is ``publicKey``, ``certificate`` or ``both``."""
    merchant = keys.merchant()
    config: dict[str, Any] = {"appId": APP_ID, "mchId": MCH_ID, "apiV3Key": keys.APIV3_KEY,
                              "merchantSerialNo": merchant.serial, "privateKey": merchant.private_pem,
                              "notifyUrl": NOTIFY_URL}
    if mode in ("publicKey", "both"):
        config.update(wechatpayPublicKey=keys.wechatpay().public_pem, wechatpayPublicKeyId=keys.PUBLIC_KEY_ID)
    if mode in ("certificate", "both"):
        config["platformCertificates"] = True
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


def settings(mode: str = "publicKey", **overrides: Any) -> WechatV3Config:
    return read_config("pays.WechatPayV3Type", base_config(mode, **overrides), NOTIFY_URL)


def make_app(baseUrl: str = "https://shop.example", **app_settings: Any) -> SimpleNamespace:
    """A stand-in for jitcore's App: what the provider reads."""
    return SimpleNamespace(appId="shop", title="演示商店 Demo shop", baseUrl=baseUrl, root=Path("."),
                           settings=app_settings)


def e_yaml_defaults() -> dict[str, Any]:
    import jitpay_wechatpay_v3

    path = Path(jitpay_wechatpay_v3.__file__).parent / "elements" / "pays" / "WechatPayV3Type" / "e.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))["config"]


def make_provider(app: Any = None, mode: str = "publicKey", **config: Any) -> WechatPayV3Type:
    """``pays.WechatPayV3Type`` loaded the way the runtime loads it: ``e.yaml`` defaults under the config."""
    define = SimpleNamespace(fullName="pays.WechatPayV3Type",
                             config={**e_yaml_defaults(), **base_config(mode, **config)})
    return WechatPayV3Type.jit_load(app or make_app(), define)  # type: ignore[arg-type]


# -- WeChat Pay's side, by hand ----------------------------------------------------------------------------------------
def sign(key: rsa.RSAPrivateKey, timestamp: str, nonce: str, body: bytes) -> str:
    message = timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def signed_headers(body: bytes, *, key: rsa.RSAPrivateKey | None = None, serial: str | None = None,
                   timestamp: int | None = None) -> dict[str, str]:
    """``Wechatpay-*`` headers signing ``body``: by the WeChat Pay public key's private half unless ``key``/``serial``
    name another."""
    key = key or keys.wechatpay().key
    serial = serial or keys.PUBLIC_KEY_ID
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = secrets.token_hex(16).upper()
    return {"Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce, "Wechatpay-Serial": serial,
            "Wechatpay-Signature": sign(key, ts, nonce, body),
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048", "Content-Type": "application/json"}


def seal(plaintext: bytes, associated_data: str, apiv3_key: str = keys.APIV3_KEY) -> dict[str, str]:
    nonce = secrets.token_hex(6)
    sealed = AESGCM(apiv3_key.encode()).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {"algorithm": "AEAD_AES_256_GCM", "ciphertext": base64.b64encode(sealed).decode(), "nonce": nonce,
            "associated_data": associated_data}


def callback_body(resource: Mapping[str, Any], event: str = "TRANSACTION.SUCCESS", *,
                  apiv3_key: str = keys.APIV3_KEY) -> bytes:
    original = "transaction" if event.startswith("TRANSACTION") else "refund"
    body = {"id": str(uuid.uuid4()), "create_time": "2026-11-27T12:00:00+08:00", "resource_type": "encrypt-resource",
            "event_type": event, "summary": "支付成功",
            "resource": {"original_type": original,
                         **seal(json.dumps(resource, ensure_ascii=False).encode(), original, apiv3_key)}}
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def transaction(out_trade_no: str, attach: str, total: int = 1234, **changes: Any) -> dict[str, Any]:
    data = {"appid": APP_ID, "mchid": MCH_ID, "out_trade_no": out_trade_no, "transaction_id": "4200000000" + "1" * 18,
            "trade_type": "NATIVE", "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
            "attach": attach, "success_time": "2026-11-27T12:00:05+08:00", "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9"},
            "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"}}
    data.update(changes)
    return data


def certificate_listing(*certified: keys.CertifiedKey, apiv3_key: str = keys.APIV3_KEY,
                        serial_override: dict[int, str] | None = None) -> bytes:
    entries = []
    for n, c in enumerate(certified):
        entries.append({"serial_no": (serial_override or {}).get(n, c.serial),
                        "effective_time": "2026-01-01T00:00:00+08:00", "expire_time": "2031-01-01T00:00:00+08:00",
                        "encrypt_certificate": seal(c.cert_pem.encode(), "certificate", apiv3_key)})
    return json.dumps({"data": entries}).encode()


from .sandbox_support import harness_factory, v3_keys  # noqa: E402,F401  (fixtures for the sandbox tests)
