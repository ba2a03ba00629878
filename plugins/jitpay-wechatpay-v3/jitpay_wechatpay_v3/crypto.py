"""WeChat Pay API v3 cryptography: keys, request signatures, response and callback verification, AES-256-GCM.

The rules (WeChat Pay's API v3 signing guide; see the v3 section of PROTOCOLS.md):

* a **request** is signed with the merchant API private key, SHA256withRSA (PKCS#1 v1.5), over
  ``METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n``: URL is the path and query, BODY the exact bytes sent (empty for a
  GET), and goes out as ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",signature="…",
  timestamp="…",serial_no="…"``;
* a **response** or a **callback** is verified over ``TIMESTAMP\\nNONCE\\nBODY\\n`` (the ``Wechatpay-Timestamp`` and
  ``Wechatpay-Nonce`` headers, the raw body; empty for a 204) against ``Wechatpay-Signature`` with the key the
  ``Wechatpay-Serial`` header names (the WeChat Pay public key ``PUB_KEY_ID_…`` or a platform certificate).
  Signatures starting with ``WECHATPAY/SIGNTEST/`` are WeChat's probes and never verify; a timestamp more than five
  minutes off is refused;
* callback resources and downloaded platform certificates are AEAD_AES_256_GCM, keyed with the 32-byte APIv3 key,
  with a 12-byte ``nonce`` and ``associated_data``; the base64 ``ciphertext`` ends with the 16-byte tag.

Everything works on bytes, so nothing is re-encoded between what was received and what is verified. No function here
puts key material, a signature or a signed string into an exception message.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import string
import time
from typing import Any, Union

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography import x509

__all__ = [
    "AUTH_SCHEMA", "SIGNTEST_PREFIX", "TIMESTAMP_TOLERANCE", "RSA_BITS", "APIV3_KEY_BYTES",
    "KeyFormatError", "DecryptError",
    "load_private_key", "load_public_key", "load_certificate", "certificate_serial", "same_public_key",
    "request_message", "response_message", "rsa_sign", "rsa_verify", "authorization", "parse_authorization",
    "nonce_str", "timestamp_fresh", "aes_gcm_encrypt", "aes_gcm_decrypt", "normalize_serial",
]

#: the authentication scheme of the ``Authorization`` header and of ``Wechatpay-Signature-Type``
AUTH_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
#: signatures WeChat Pay sends to probe whether a merchant really verifies; they must never verify
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"
#: how far (seconds) a ``Wechatpay-Timestamp`` may be from our clock
TIMESTAMP_TOLERANCE = 300
#: the size of every RSA key in the scheme (merchant key, WeChat Pay public key, platform certificates)
RSA_BITS = 2048
#: the size of the APIv3 key (AES-256)
APIV3_KEY_BYTES = 32
_NONCE_ALPHABET = string.ascii_uppercase + string.digits

PrivateKey = rsa.RSAPrivateKey
PublicKey = rsa.RSAPublicKey
KeyText = Union[str, bytes]


class KeyFormatError(ValueError):
    """A key or certificate that cannot be used. The message says what is wrong, never what the key holds."""


class DecryptError(ValueError):
    """An AEAD_AES_256_GCM ciphertext that does not decrypt (wrong key, nonce, associated data, or tampered)."""


# -- keys --------------------------------------------------------------------------------------------------------------
def _text(value: KeyText) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise KeyFormatError("is not text (a PEM file was expected)") from None
    if not isinstance(value, str):
        raise KeyFormatError(f"must be text (a PEM file), not {type(value).__name__}")
    value = value.strip()
    if "\\n" in value and "\n" not in value:  # a PEM pasted into an environment variable with literal \n
        value = value.replace("\\n", "\n")
    if not value:
        raise KeyFormatError("is empty")
    return value


def _der(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("is neither PEM nor base64") from None


def load_private_key(value: KeyText) -> PrivateKey:
    """An RSA private key from PEM (PKCS#8 ``BEGIN PRIVATE KEY`` as in ``apiclient_key.pem``, or PKCS#1) or the bare
    base64 of its DER. :class:`KeyFormatError` when it is a public key or a certificate (a common mix-up), encrypted,
    not RSA, or unreadable."""
    text = _text(value)
    first_line = text.split("\n", 1)[0]
    if text.startswith("-----BEGIN"):
        if "PRIVATE KEY" not in first_line:
            what = "a certificate" if "CERTIFICATE" in first_line else "a public key" if "PUBLIC" in first_line \
                else "not a private key"
            raise KeyFormatError(f"holds {what}; it needs the merchant API private key (apiclient_key.pem)")
        try:
            key: Any = serialization.load_pem_private_key(text.encode("ascii", "replace"), password=None)
        except TypeError:
            raise KeyFormatError("is an encrypted private key; give it unencrypted") from None
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFormatError("does not parse as a PEM private key") from None
    else:
        der = _der(text)
        try:
            key = serialization.load_der_private_key(der, password=None)
        except TypeError:
            raise KeyFormatError("is an encrypted private key; give it unencrypted") from None
        except (ValueError, UnsupportedAlgorithm):
            if _parses_as_public(der):
                raise KeyFormatError("holds a public key; it needs the merchant API private key "
                                     "(apiclient_key.pem)") from None
            raise KeyFormatError("does not parse as a private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFormatError("is not an RSA key (WeChat Pay API v3 signs with RSA)")
    return key


def _parses_as_public(der: bytes) -> bool:
    try:
        serialization.load_der_public_key(der)
        return True
    except (ValueError, UnsupportedAlgorithm):
        try:
            x509.load_der_x509_certificate(der)
            return True
        except ValueError:
            return False


def load_public_key(value: KeyText) -> PublicKey:
    """An RSA public key from PEM (``BEGIN PUBLIC KEY`` as in WeChat Pay's ``pub_key.pem``, or ``BEGIN RSA PUBLIC
    KEY``), from a certificate's PEM (its key), or from the bare base64 of its DER. :class:`KeyFormatError` when it is
    a private key (it must never be configured where a public one belongs), not RSA, or unreadable."""
    text = _text(value)
    first_line = text.split("\n", 1)[0]
    if text.startswith("-----BEGIN"):
        if "PRIVATE KEY" in first_line:
            raise KeyFormatError("holds a private key; it needs WeChat Pay's public key (pub_key.pem)")
        data = text.encode("ascii", "replace")
        try:
            key: Any = (x509.load_pem_x509_certificate(data).public_key() if "CERTIFICATE" in first_line
                        else serialization.load_pem_public_key(data))
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFormatError("does not parse as a PEM public key") from None
    else:
        der = _der(text)
        try:
            key = serialization.load_der_public_key(der)
        except (ValueError, UnsupportedAlgorithm):
            try:
                serialization.load_der_private_key(der, password=None)
            except (TypeError, ValueError, UnsupportedAlgorithm):
                raise KeyFormatError("does not parse as a public key") from None
            raise KeyFormatError("holds a private key; it needs WeChat Pay's public key (pub_key.pem)") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFormatError("is not an RSA key (WeChat Pay API v3 signs with RSA)")
    return key


def load_certificate(value: KeyText) -> x509.Certificate:
    """An X.509 certificate from PEM (``apiclient_cert.pem``, a platform certificate). :class:`KeyFormatError` for a
    key or anything else."""
    text = _text(value)
    first_line = text.split("\n", 1)[0]
    if "PRIVATE KEY" in first_line:
        raise KeyFormatError("holds a private key, not a certificate")
    try:
        cert = x509.load_pem_x509_certificate(text.encode("ascii", "replace"))
    except ValueError:
        raise KeyFormatError("does not parse as a PEM certificate") from None
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise KeyFormatError("is not the certificate of an RSA key")
    return cert


def certificate_serial(cert: x509.Certificate) -> str:
    """A certificate's serial number as WeChat Pay writes it: upper-case hex (``serial_no``, ``Wechatpay-Serial``)."""
    return format(cert.serial_number, "X")


def normalize_serial(serial: str) -> str:
    """A certificate serial for comparison: upper case, no leading zeros (hex serials are compared as numbers)."""
    return serial.strip().upper().lstrip("0") or "0"


def same_public_key(a: PrivateKey | PublicKey, b: PrivateKey | PublicKey) -> bool:
    """Whether two keys (private or public) have the same public half."""
    def der(key: PrivateKey | PublicKey) -> bytes:
        public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der(a) == der(b)


# -- signatures --------------------------------------------------------------------------------------------------------
def _ascii(value: str, what: str) -> bytes:
    if "\n" in value:
        raise ValueError(f"the {what} of a signed message cannot contain a line break")
    return value.encode("utf-8")


def request_message(method: str, url: str, timestamp: str, nonce: str, body: bytes = b"") -> bytes:
    """What a request signature covers: ``METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n`` (``url`` is the path and
    query, ``body`` the exact bytes sent)."""
    head = b"\n".join(_ascii(v, n) for v, n in ((method.upper(), "method"), (url, "URL"), (timestamp, "timestamp"),
                                                 (nonce, "nonce")))
    return head + b"\n" + body + b"\n"


def response_message(timestamp: str, nonce: str, body: bytes = b"") -> bytes:
    """What a response or callback signature covers: ``TIMESTAMP\\nNONCE\\nBODY\\n`` over the raw body bytes."""
    return _ascii(timestamp, "timestamp") + b"\n" + _ascii(nonce, "nonce") + b"\n" + body + b"\n"


def rsa_sign(private_key: PrivateKey, message: bytes) -> str:
    """SHA256withRSA (PKCS#1 v1.5) of ``message``, base64 without line breaks."""
    return base64.b64encode(private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def rsa_verify(public_key: PublicKey, message: bytes, signature: str | None) -> bool:
    """Whether ``signature`` (base64) is a SHA256withRSA signature of ``message`` by ``public_key``. Never raises: a
    missing, malformed or probe (``WECHATPAY/SIGNTEST/…``) signature simply does not verify."""
    if not signature or not isinstance(signature, str) or signature.startswith(SIGNTEST_PREFIX):
        return False
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        public_key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def nonce_str(length: int = 32) -> str:
    """A random nonce of ``length`` upper-case letters and digits (from :mod:`secrets`)."""
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(length))


def authorization(*, mchid: str, serial_no: str, private_key: PrivateKey, method: str, url: str, body: bytes = b"",
                  timestamp: str | None = None, nonce: str | None = None) -> str:
    """The ``Authorization`` header value of one request: ``WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",
    signature="…",timestamp="…",serial_no="…"``. ``timestamp`` (Unix seconds) and ``nonce`` are fresh unless given."""
    timestamp = timestamp or str(int(time.time()))
    nonce = nonce or nonce_str()
    signature = rsa_sign(private_key, request_message(method, url, timestamp, nonce, body))
    return (f'{AUTH_SCHEMA} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{timestamp}",serial_no="{serial_no}"')


def parse_authorization(header: str) -> dict[str, str] | None:
    """The parameters of a ``WECHATPAY2-SHA256-RSA2048`` ``Authorization`` header (``mchid``, ``nonce_str``,
    ``signature``, ``timestamp``, ``serial_no``), or ``None`` when it is not one."""
    schema, _, rest = (header or "").strip().partition(" ")
    if schema != AUTH_SCHEMA:
        return None
    params: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or len(value) < 2 or not (value[0] == value[-1] == '"'):
            return None
        params[name] = value[1:-1]
    return params


def timestamp_fresh(timestamp: str | None, now: float | None = None, tolerance: int = TIMESTAMP_TOLERANCE) -> bool:
    """Whether ``timestamp`` (Unix seconds, plain digits) is within ``tolerance`` seconds of ``now``."""
    if not timestamp or not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs((time.time() if now is None else now) - int(timestamp)) <= tolerance


# -- AEAD_AES_256_GCM --------------------------------------------------------------------------------------------------
def _key_bytes(key: str | bytes) -> bytes:
    data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(data) != APIV3_KEY_BYTES:
        raise ValueError(f"the APIv3 key must be {APIV3_KEY_BYTES} bytes")
    return data


def aes_gcm_encrypt(key: str | bytes, nonce: str, associated_data: str, plaintext: bytes | str) -> str:
    """AEAD_AES_256_GCM of ``plaintext`` under the APIv3 ``key``: the base64 ``ciphertext`` (ending with the tag) as
    WeChat Pay sends it in a callback's ``resource`` or a certificate's ``encrypt_certificate``."""
    data = plaintext.encode("utf-8") if isinstance(plaintext, str) else plaintext
    sealed = AESGCM(_key_bytes(key)).encrypt(nonce.encode("utf-8"), data, associated_data.encode("utf-8"))
    return base64.b64encode(sealed).decode("ascii")


def aes_gcm_decrypt(key: str | bytes, nonce: str, associated_data: str | None, ciphertext: str) -> bytes:
    """Open an AEAD_AES_256_GCM ``ciphertext`` (base64, tag at the end) with the APIv3 ``key``, ``nonce`` and
    ``associated_data`` (``None`` as empty). :class:`DecryptError` when it does not authenticate or is malformed."""
    try:
        sealed = base64.b64decode(ciphertext, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise DecryptError("the ciphertext is not base64") from None
    if not isinstance(nonce, str) or not nonce:
        raise DecryptError("the nonce is missing")
    if len(sealed) < 16:
        raise DecryptError("the ciphertext is shorter than its tag")
    try:
        return AESGCM(_key_bytes(key)).decrypt(nonce.encode("utf-8"), sealed, (associated_data or "").encode("utf-8"))
    except InvalidTag:
        raise DecryptError("the ciphertext does not authenticate (wrong APIv3 key, nonce or associated data, or "
                           "altered)") from None
