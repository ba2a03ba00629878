"""Key material for the WeChat Pay v3 tests, made here with ``cryptography`` (independently of the sandbox's
``jit-sandbox init``): a merchant key and certificate, a WeChat Pay public key pair, platform certificates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

PUBLIC_KEY_ID = "PUB_KEY_ID_0119000000012026112700000000000001"
APIV3_KEY = "0123456789abcdefghijklmnopqrstuv"


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def public_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def certificate(key: rsa.RSAPrivateKey, name: str, *, days: int = 365,
                not_before: datetime | None = None) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = not_before or datetime.now(timezone.utc) - timedelta(days=1)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + timedelta(days=days)).sign(key, hashes.SHA256()))


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "X")


@dataclass(frozen=True)
class KeyPair:
    key: rsa.RSAPrivateKey

    @property
    def private_pem(self) -> str:
        return private_pem(self.key)

    @property
    def public_pem(self) -> str:
        return public_pem(self.key)


@dataclass(frozen=True)
class CertifiedKey(KeyPair):
    cert: x509.Certificate

    @property
    def cert_pem(self) -> str:
        return cert_pem(self.cert)

    @property
    def serial(self) -> str:
        return serial(self.cert)


def new_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@lru_cache(maxsize=None)
def merchant() -> CertifiedKey:
    key = new_key()
    return CertifiedKey(key, certificate(key, "1900000002 merchant"))


@lru_cache(maxsize=None)
def wechatpay() -> KeyPair:
    """The WeChat Pay public key pair (the private half is WeChat Pay's)."""
    return KeyPair(new_key())


@lru_cache(maxsize=None)
def platform(n: int = 0) -> CertifiedKey:
    key = new_key()
    return CertifiedKey(key, certificate(key, f"Tenpay platform {n}"))
