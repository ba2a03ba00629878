"""``generate_alipay_keys``: four matching PEMs, private ones 0600, never overwriting."""

from __future__ import annotations

import stat

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jitpay_sandbox.alipay import AlipaySandbox, generate_alipay_keys

NAMES = ["alipay_app_private_key.pem", "alipay_app_public_key.pem", "alipay_gateway_private_key.pem",
         "alipay_gateway_public_key.pem"]


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_generates_matching_pairs(tmp_path):
    target = tmp_path / "new" / "keys"
    generate_alipay_keys(target)
    assert sorted(p.name for p in target.iterdir()) == sorted(NAMES)
    for side in ("app", "gateway"):
        private_path = target / f"alipay_{side}_private_key.pem"
        assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
        private = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
        public = serialization.load_pem_public_key((target / f"alipay_{side}_public_key.pem").read_bytes())
        assert _public_der(public) == _public_der(private.public_key())
    app = (target / NAMES[0]).read_bytes()
    gateway = (target / NAMES[2]).read_bytes()
    assert app != gateway


def test_never_overwrites_and_completes_pairs(tmp_path):
    generate_alipay_keys(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in NAMES}
    (tmp_path / "alipay_app_public_key.pem").unlink()
    generate_alipay_keys(tmp_path)
    after = {name: (tmp_path / name).read_bytes() for name in NAMES}
    assert after == before  # the missing public key is derived from the kept private key


def test_sandbox_reads_the_generated_keys(tmp_path):
    generate_alipay_keys(tmp_path)
    sandbox = AlipaySandbox.from_settings({
        "appId": "2021000000000001", "sellerId": "2088000000000001",
        "appPublicKey": (tmp_path / "alipay_app_public_key.pem").read_text(),
        "gatewayPrivateKey": (tmp_path / "alipay_gateway_private_key.pem").read_text()})
    assert [r.path for r in sandbox.routes()] == ["/sandbox/alipay/gateway.do", "/sandbox/alipay/wallet/{token}",
                                                  "/sandbox/alipay/wallet/{token}/pay"]


def test_sandbox_settings_errors(tmp_path):
    import pytest

    from jitcore.errors import ConfigError
    from jitpay_sandbox.alipay import alipay_routes

    generate_alipay_keys(tmp_path)
    good = {"appId": "1", "sellerId": "2", "appPublicKey": (tmp_path / NAMES[1]).read_text(),
            "gatewayPrivateKey": (tmp_path / NAMES[2]).read_text()}
    for key, value in [("appId", ""), ("appPublicKey", (tmp_path / NAMES[2]).read_text()),
                       ("gatewayPrivateKey", (tmp_path / NAMES[3]).read_text()), ("notifyRetryDelays", [])]:
        with pytest.raises(ConfigError) as info:
            AlipaySandbox.from_settings({**good, key: value})
        assert key in str(info.value)
        assert "MII" not in str(info.value)

    class App:
        settings = {"sandbox": {"wechat": {}}}
    assert alipay_routes(App()) == []
