"""The WeChat Pay API v3 HTTP client and the verifier of WeChat Pay's signatures.

One call is one pipeline: serialize the JSON body once → build the request → sign exactly the URL and the bytes that
go out → send → read a bounded answer → verify the signature of every 2xx answer → parse it. Every failure is a
:class:`~elements.pays.errors.ProviderError`; one after which the request may still have been carried out (no answer,
a 5xx, ``SYSTEM_ERROR``, an answer that does not parse or does not verify) carries ``details["outcomeUnknown"]`` and
``details["failure"]``, the contract's convention. Nothing secret ever goes into an error or a log line.

:class:`SignatureVerifier` picks the key a signature was made with by its ``Wechatpay-Serial``: the configured WeChat
Pay public key (``PUB_KEY_ID_…``), or a platform certificate fetched from ``GET /v3/certificates`` (decrypted with the
APIv3 key, associated data ``certificate``) and fetched again, at most once a minute, when an unknown serial shows up.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Collection, Mapping
from urllib.parse import urlsplit

import httpx
from cryptography import x509

from elements.pays.errors import ProviderError

from .config import WechatV3Config
from .crypto import (AUTH_SCHEMA, RSA_BITS, DecryptError, KeyFormatError, PublicKey, aes_gcm_decrypt, authorization,
                     certificate_serial, load_certificate, normalize_serial, response_message, rsa_verify,
                     timestamp_fresh)

__all__ = ["WechatV3Api", "Answer", "SignatureVerifier", "VerifyFailure", "RESPONSE_MAX_BYTES", "USER_AGENT"]

log = logging.getLogger(__name__)

#: the largest answer read from the API (WeChat Pay's answers are a few KiB; the certificate list a few more)
RESPONSE_MAX_BYTES = 256 * 1024
USER_AGENT = "jitpay-wechatpay-v3/0.1 (+https://github.com/jitpay)"
#: the least time between two downloads of the platform certificates caused by an unknown serial
CERTIFICATE_REFRESH_INTERVAL = 60.0
#: error codes after which WeChat Pay asks for the same request again: it may or may not have been carried out
RETRY_SAME_REQUEST = frozenset({"SYSTEM_ERROR", "SYSTEMERROR", "BANK_ERROR", "BANKERROR"})


def _unknown(failure: str) -> dict[str, Any]:
    return {"outcomeUnknown": True, "failure": failure}


class VerifyFailure(Exception):
    """A response or callback whose signature cannot be accepted. ``kind`` is one of ``signature_missing``,
    ``signature_invalid``, ``timestamp``, ``unknown_serial``; the message is safe to show."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Answer:
    """One API answer: the HTTP ``status``, the parsed JSON ``data`` (``{}`` for a 204), and for an error answer
    the caller accepted, its ``code`` and ``message``."""

    status: int
    data: dict[str, Any] = field(default_factory=dict)
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class SignatureVerifier:
    """Verifies WeChat Pay's signatures (responses and callbacks) for one merchant configuration.

    ``fetch_certificates`` downloads the platform certificate list (raw answer body and headers); it is called lazily,
    the first time a signature names a serial that is not the public key id, and again for an unknown serial at most
    every :data:`CERTIFICATE_REFRESH_INTERVAL` seconds (a forged serial cannot make us hammer the API)."""

    def __init__(self, settings: WechatV3Config,
                 fetch_certificates: Callable[[], tuple[bytes, Mapping[str, str]]] | None = None) -> None:
        self.settings = settings
        self._fetch = fetch_certificates
        self._lock = threading.Lock()
        self._certificates: dict[str, x509.Certificate] = {}
        self._last_refresh: float | None = None

    # -- keys -----------------------------------------------------------------------------------------------------
    def platform_serials(self) -> list[str]:
        """The serials of the platform certificates currently known."""
        with self._lock:
            return sorted(self._certificates)

    def key_for(self, serial: str, *, refresh: bool = True) -> PublicKey | None:
        """The public key of ``serial``: the WeChat Pay public key when it is its id, else a platform certificate's
        (fetched, or fetched again, when unknown and ``refresh``). ``None`` when no configured or downloadable key has
        that serial."""
        s = self.settings
        if s.wechatpayPublicKeyId and serial == s.wechatpayPublicKeyId:
            return s.wechatpayPublicKey
        if not s.platformCertificates or not serial or serial.startswith("PUB_KEY_ID_"):
            return None
        wanted = normalize_serial(serial)
        with self._lock:
            cert = self._certificates.get(wanted)
            due = self._last_refresh is None or time.monotonic() - self._last_refresh >= CERTIFICATE_REFRESH_INTERVAL
        if cert is None and refresh and due and self._fetch is not None:
            try:
                self.refresh_certificates()
            except ProviderError as exc:
                log.warning("WeChat Pay platform certificates could not be refreshed: %s", exc.message)
            with self._lock:
                cert = self._certificates.get(wanted)
        return cert.public_key() if cert is not None else None  # type: ignore[return-value]

    def refresh_certificates(self) -> list[str]:
        """Download the platform certificates (``GET /v3/certificates``), decrypt each ``encrypt_certificate`` with
        the APIv3 key, keep those whose serial matches their ``serial_no`` and that are valid now, and install them
        once the answer's own signature verifies with one of them (or with the public key). Returns the serials.
        Raises :class:`ProviderError` when the list cannot be fetched, read or verified; what was known stays."""
        if self._fetch is None:
            raise ProviderError("no way to download WeChat Pay platform certificates", provider_code="CERT_UNAVAILABLE")
        with self._lock:
            self._last_refresh = time.monotonic()
        body, headers = self._fetch()
        try:
            listing = json.loads(body)
            entries = listing["data"]
            if not isinstance(entries, list):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            raise ProviderError("WeChat Pay's platform certificate list is not the expected JSON",
                                provider_code="INVALID_RESPONSE") from None
        found: dict[str, x509.Certificate] = {}
        now = datetime.now(timezone.utc)
        for entry in entries:
            try:
                cert = self._decrypt_certificate(entry)
            except (KeyFormatError, DecryptError, TypeError, KeyError, AttributeError) as exc:
                log.warning("WeChat Pay platform certificate %r skipped: %s", str((entry or {}).get("serial_no"))[:64]
                            if isinstance(entry, dict) else "?", exc)
                continue
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                continue
            found[normalize_serial(certificate_serial(cert))] = cert
        if not found:
            raise ProviderError("WeChat Pay's platform certificate list holds no usable certificate (check "
                                "apiV3Key: the certificates are encrypted with it)", provider_code="CERT_UNAVAILABLE")
        serial = headers.get("Wechatpay-Serial", "")
        key = (self.settings.wechatpayPublicKey if self.settings.wechatpayPublicKeyId
               and serial == self.settings.wechatpayPublicKeyId else None)
        if key is None:
            cert = found.get(normalize_serial(serial)) if serial else None
            with self._lock:
                cert = cert or self._certificates.get(normalize_serial(serial) if serial else "")
            key = cert.public_key() if cert is not None else None  # type: ignore[assignment]
        try:
            self._check(headers, body, key)
        except VerifyFailure as exc:
            raise ProviderError(f"WeChat Pay's platform certificate list does not verify: {exc.message}",
                                provider_code="SIGNATURE_INVALID", details={"failure": exc.kind}) from None
        with self._lock:
            self._certificates.update(found)
        log.info("WeChat Pay platform certificates: %s", ", ".join(sorted(found)))
        return sorted(found)

    def _decrypt_certificate(self, entry: Mapping[str, Any]) -> x509.Certificate:
        sealed = entry["encrypt_certificate"]
        if sealed.get("algorithm") != "AEAD_AES_256_GCM":
            raise KeyFormatError(f"unknown algorithm {str(sealed.get('algorithm'))[:32]!r}")
        pem = aes_gcm_decrypt(self.settings.apiV3Key, sealed["nonce"], sealed.get("associated_data"),
                              sealed["ciphertext"])
        cert = load_certificate(pem)
        if normalize_serial(certificate_serial(cert)) != normalize_serial(str(entry["serial_no"])):
            raise KeyFormatError("its certificate does not carry the serial_no it is listed under")
        if cert.public_key().key_size != RSA_BITS:  # type: ignore[union-attr]
            raise KeyFormatError(f"its key is not {RSA_BITS}-bit RSA")
        return cert

    # -- verification ---------------------------------------------------------------------------------------------
    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> str:
        """Verify a response's or a callback's signature headers over ``body`` (raw bytes). Returns the serial of
        the key that verified it; raises :class:`VerifyFailure`. ``headers`` must look names up case-insensitively
        (httpx and :class:`~elements.pays.Meta.NotifyHeaders` do)."""
        serial = headers.get("Wechatpay-Serial") or ""
        if not serial:
            raise VerifyFailure("signature_missing", "no Wechatpay-Serial header")
        self._check(headers, body, None, serial=serial, now=now)
        return serial

    def _check(self, headers: Mapping[str, str], body: bytes, key: PublicKey | None, *, serial: str | None = None,
               now: float | None = None) -> None:
        signature = headers.get("Wechatpay-Signature")
        timestamp = headers.get("Wechatpay-Timestamp")
        nonce = headers.get("Wechatpay-Nonce")
        if not signature or not timestamp or not nonce:
            raise VerifyFailure("signature_missing", "no Wechatpay-Signature, -Timestamp or -Nonce header")
        kind = headers.get("Wechatpay-Signature-Type")
        if kind and kind != AUTH_SCHEMA:
            raise VerifyFailure("signature_invalid", f"unsupported Wechatpay-Signature-Type {kind[:40]!r}")
        if not timestamp_fresh(timestamp, now):
            raise VerifyFailure("timestamp", "Wechatpay-Timestamp is more than 5 minutes away from our clock "
                                             "(a replay, or a clock that is off)")
        if key is None:
            key = self.key_for(serial or "")
            if key is None:
                raise VerifyFailure("unknown_serial", f"signed with a key this merchant does not know "
                                                      f"(Wechatpay-Serial {(serial or '')[:64]!r})")
        try:
            message = response_message(timestamp, nonce, body)
        except ValueError:
            raise VerifyFailure("signature_invalid", "malformed signature headers") from None
        if not rsa_verify(key, message, signature):
            raise VerifyFailure("signature_invalid", "the signature does not verify")


class WechatV3Api:
    """A configured client of one merchant's WeChat Pay API v3. Thread-safe; one pooled HTTP client per instance
    (:meth:`close` releases it)."""

    def __init__(self, settings: WechatV3Config, *, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.verifier = SignatureVerifier(settings, self._fetch_certificates)
        self._transport = transport
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        # the gateway's own path (a sandbox mounted below a prefix): signatures cover the path below it, which is
        # the whole path for WeChat Pay's own host
        self._prefix = urlsplit(settings.gateway).path.rstrip("/")

    def __repr__(self) -> str:
        return f"WechatV3Api(gateway={self.settings.gateway!r}, mchId={self.settings.mchId!r})"

    def close(self) -> None:
        """Close the pooled HTTP client (a later call opens a new one)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _http(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.settings.timeout, follow_redirects=False,
                                            transport=self._transport)
            return self._client

    # -- the pipeline -----------------------------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
             query: Mapping[str, str] | None = None, accept: Collection[str] = ()) -> Answer:
        """``method`` ``path`` (below ``/v3/``, already percent-encoded) with the JSON ``body`` and ``query``; returns
        the verified :class:`Answer`. An error answer whose ``code`` is in ``accept`` is returned, not raised.

        Raises :class:`ProviderError` (``provider_code`` = WeChat Pay's ``code``, ``provider_message`` its
        ``message``) for an error answer, a timeout, a connection failure, an unreadable answer or a 2xx whose
        signature does not verify; those after which the request may have been carried out carry
        ``details["outcomeUnknown"]``."""
        raw, response = self.send(method, path, body, query=query)
        status = response.status_code
        headers = response.headers
        if 200 <= status < 300:
            try:
                self.verifier.verify(headers, raw)
            except VerifyFailure as exc:
                log.warning("WeChat Pay %s %s: answer signature rejected (%s)", method, path, exc.kind)
                failure = "signature_missing" if exc.kind == "signature_missing" else "signature_invalid"
                raise ProviderError(f"WeChat Pay's answer to {method} {path} was ignored: {exc.message}",
                                    provider_code="SIGNATURE_INVALID" if failure == "signature_invalid"
                                    else "SIGNATURE_MISSING", details=_unknown(failure)) from None
            if not raw:
                return Answer(status)
            data = _json_object(raw)
            if data is None:
                raise ProviderError(f"WeChat Pay answered {method} {path} with something that is not a JSON object",
                                    provider_code="INVALID_RESPONSE", details=_unknown("invalid_response"))
            return Answer(status, data)
        error = _json_object(raw) or {}
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
        if headers.get("Wechatpay-Signature"):
            try:
                self.verifier.verify(headers, raw)
            except VerifyFailure as exc:
                # an error answer that claims to be signed must verify; what it says is shown, but not believed
                said = f"HTTP {status}" + (f" {code}" if code else "") + (f" ({message[:200]})" if message else "")
                raise ProviderError(f"WeChat Pay answered {method} {path} with {said}, but that answer does not "
                                    f"verify: {exc.message}", provider_code=code or "SIGNATURE_INVALID",
                                    provider_message=message, details=_unknown("signature_invalid")) from None
        if code and code in accept:
            return Answer(status, error, code, message)
        unknown = status >= 500 or (code or "").upper() in RETRY_SAME_REQUEST
        text = f"WeChat Pay {method} {path} failed: HTTP {status}" + (f" {code}" if code else "") + \
            (f" ({message[:200]})" if message else "")
        raise ProviderError(text, provider_code=code or f"HTTP_{status}", provider_message=message,
                            details={**(_unknown("http_status") if unknown else {}), "httpStatus": status})

    def send(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
             query: Mapping[str, str] | None = None) -> tuple[bytes, httpx.Response]:
        """Sign and send one request; return the raw answer body (bounded) and the response (its body consumed).
        Raises :class:`ProviderError` for transport failures and oversized answers."""
        method = method.upper()
        content = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.settings.wechatpayPublicKeyId:
            headers["Wechatpay-Serial"] = self.settings.wechatpayPublicKeyId
        client = self._http()
        request = client.build_request(method, self.settings.gateway + path, params=query or None, content=content,
                                       headers=headers)
        # sign exactly what goes on the wire: the encoded path and query httpx will send, the bytes of the body
        target = request.url.raw_path.decode("ascii")
        if self._prefix and target.startswith(self._prefix + "/"):
            target = target[len(self._prefix):]
        request.headers["Authorization"] = authorization(
            mchid=self.settings.mchId, serial_no=self.settings.merchantSerialNo,
            private_key=self.settings.privateKey, method=method, url=target, body=content)
        try:
            response = client.send(request, stream=True)
            try:
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > RESPONSE_MAX_BYTES:
                        raise ProviderError(f"WeChat Pay's answer to {method} {path} is over {RESPONSE_MAX_BYTES} "
                                            f"bytes", provider_code="INVALID_RESPONSE",
                                            details=_unknown("invalid_response"))
                    chunks.append(chunk)
            finally:
                response.close()
        # chained on purpose: PaySvc also tells "outcome unknown" from the httpx cause
        except httpx.TimeoutException as exc:
            raise ProviderError(f"WeChat Pay {method} {path} did not answer within {self.settings.timeout:g} s",
                                provider_code="TIMEOUT", details=_unknown("timeout")) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"could not reach WeChat Pay at {self.settings.gateway} ({type(exc).__name__})",
                                provider_code="NETWORK_ERROR", details=_unknown("connection")) from exc
        return b"".join(chunks), response

    def _fetch_certificates(self) -> tuple[bytes, Mapping[str, str]]:
        """``GET /v3/certificates``: the raw list and its headers (verified by the caller against the list itself)."""
        raw, response = self.send("GET", "/v3/certificates")
        if response.status_code != 200:
            error = _json_object(raw) or {}
            code = error.get("code") if isinstance(error.get("code"), str) else None
            raise ProviderError(f"WeChat Pay GET /v3/certificates failed: HTTP {response.status_code}"
                                + (f" {code}" if code else ""), provider_code=code or f"HTTP_{response.status_code}",
                                provider_message=error.get("message") if isinstance(error.get("message"), str)
                                else None)
        return raw, response.headers


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None
