"""The WeChat Pay v2 HTTP client: sign, send, read a bounded answer, verify it, map every failure to
:class:`~elements.pays.errors.ProviderError`.

One call is one pipeline (after yansongda/pay): add the common fields → sign → POST the XML → parse safely →
``return_code`` (was the call delivered?) → response signature → ``result_code`` (did the business call succeed?).
Nothing secret (the API key, the string that was signed) ever goes into an error or a log line.
"""

from __future__ import annotations

import logging
import secrets
import ssl
import string
import threading
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

import httpx

from elements.pays.errors import ProviderError
from jitcore.errors import ArgumentError

from .signing import calculate_sign, has_edge_whitespace, verify_sign
from .wirexml import XmlRejected, build_xml, parse_xml

log = logging.getLogger(__name__)

#: The largest answer we read from the API (WeChat's answers are a few KiB).
RESPONSE_MAX_BYTES = 256 * 1024
_NONCE_ALPHABET = string.ascii_letters + string.digits
#: err_codes after which WeChat asks for the same request again: the call may or may not have taken effect.
RETRY_SAME_REQUEST = frozenset({"SYSTEMERROR", "BIZERR_NEED_RETRY", "FREQUENCY_LIMITED"})
# ProviderError details for failures whose outcome is unknown (the request may have been carried out): a refund that
# ends like this must be retried with the same out_refund_no, never given up or re-issued under another id.
_UNKNOWN = {"outcomeUnknown": True}


def client_ssl_context(certPath: str, keyPath: str | None = None) -> ssl.SSLContext:
    """A TLS context that verifies the server against the certifi roots and presents the merchant client
    certificate (``certPath``, a PEM; ``keyPath`` its key when kept apart). Raises ``OSError``/``ssl.SSLError``
    for unreadable or mismatched files."""
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    context.load_cert_chain(certPath, keyPath)
    return context


def nonce_str(length: int = 32) -> str:
    """A random ``nonce_str`` of ``length`` letters and digits (from :mod:`secrets`)."""
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(length))


class _Clients:
    """The HTTP clients of one :class:`WechatApi`, made on first use and kept (a client holds a TLS context, whose
    CA bundle takes tens of milliseconds to load, and the pooled connections): one plain, one presenting the merchant
    client certificate (``/secapi/`` calls)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.plain: httpx.Client | None = None
        self.certified: httpx.Client | None = None

    def get(self, api: "WechatApi", use_cert: bool) -> httpx.Client:
        certified = bool(use_cert and api.sslContext)
        with self.lock:
            client = self.certified if certified else self.plain
            if client is None:
                client = httpx.Client(timeout=api.timeout, follow_redirects=False,
                                      verify=api.sslContext if certified else True)  # type: ignore[arg-type]
                if certified:
                    self.certified = client
                else:
                    self.plain = client
            return client

    def close(self) -> None:
        with self.lock:
            for client in (self.plain, self.certified):
                if client is not None:
                    client.close()
            self.plain = self.certified = None


@dataclass(frozen=True)
class WechatApi:
    """A configured client of one merchant's WeChat Pay v2 API.

    ``gateway`` is the base URL without a trailing slash (``https://api.mch.weixin.qq.com`` or the sandbox's
    ``http://host:port/sandbox/wechat``); ``sslContext`` carries the merchant's client certificate for the ``/secapi/``
    calls (see :func:`client_ssl_context`); other calls use httpx's default verification.
    """

    gateway: str
    appId: str
    mchId: str
    apiKey: str
    signType: str = "MD5"
    timeout: float = 10.0
    sslContext: ssl.SSLContext | None = None
    _clients: _Clients = field(default_factory=_Clients, init=False, repr=False, compare=False)

    def close(self) -> None:
        """Release the pooled HTTP connections (a later call opens new ones)."""
        self._clients.close()

    def __repr__(self) -> str:  # never show the key
        return f"WechatApi(gateway={self.gateway!r}, appId={self.appId!r}, mchId={self.mchId!r}, signType={self.signType!r})"

    def signed_request(self, fields: Mapping[str, Any]) -> dict[str, str]:
        """The complete request for ``fields``: ``appid``, ``mch_id``, ``nonce_str``, ``sign_type`` (for
        HMAC-SHA256) and ``sign`` added; ``None`` and empty values dropped (WeChat would not sign them either); every
        value text. A value with whitespace at either end is refused (``ArgumentError``) rather than sent: WeChat
        trims values before checking the signature, so what it computes would depend on how it trims; the provider
        trims free text (``body``, ``refund_desc``, the client IP) before it gets here."""
        payload: dict[str, str] = {"appid": self.appId, "mch_id": self.mchId, "nonce_str": nonce_str()}
        for key, value in fields.items():
            text = "" if value is None else str(value)
            if text == "":
                continue
            if has_edge_whitespace(text):
                raise ArgumentError(f"WeChat Pay field {key} would be sent with whitespace at its start or end; "
                                    f"trim it first", details={"field": key})
            payload[key] = text
        if self.signType != "MD5":
            payload["sign_type"] = self.signType
        payload.pop("sign", None)
        payload["sign"] = calculate_sign(payload, self.apiKey, self.signType)
        return payload

    def call(self, path: str, fields: Mapping[str, Any], *, use_cert: bool = False,
             accept_errors: Collection[str] = ()) -> dict[str, str]:
        """POST ``fields`` (signed) to ``{gateway}/{path}`` and return the verified answer's fields.

        Raises :class:`ProviderError` on a timeout, a connection failure, an HTTP error status, an answer that is not
        safe WeChat XML, ``return_code`` other than ``SUCCESS`` (``provider_code`` is the return_code,
        ``provider_message`` the ``return_msg``), a response signature that does not verify, an answer addressed to
        another app or merchant, or ``result_code=FAIL`` (``provider_code`` = ``err_code``, ``provider_message`` =
        ``err_code_des``); failures after which the request may still have taken effect (timeouts, connection
        errors, 5xx, unreadable or unverifiable answers, ``SYSTEMERROR``...) carry ``details["outcomeUnknown"]``.
        Except when the ``err_code`` is in ``accept_errors``: then the answer is returned as is
        for the caller to interpret."""
        path = path.strip("/")
        body = build_xml(self.signed_request(fields))
        raw = self._post(path, body, use_cert=use_cert)
        try:
            answer = parse_xml(raw, max_bytes=RESPONSE_MAX_BYTES)
        except XmlRejected as exc:
            raise ProviderError(f"WeChat Pay {path} answered with something that is not valid XML: {exc}",
                                provider_code="INVALID_RESPONSE", details=_UNKNOWN) from None
        return_code = answer.get("return_code")
        if return_code != "SUCCESS":
            message = answer.get("return_msg") or ""
            raise ProviderError(f"WeChat Pay refused {path}: {message or return_code or 'no return_code'}",
                                provider_code=return_code or "INVALID_RESPONSE", provider_message=message or None)
        if not verify_sign(answer, self.apiKey, self.signType):
            log.warning("WeChat Pay %s: response signature does not verify", path)
            raise ProviderError(f"the signature of WeChat Pay's answer to {path} does not verify; the answer was "
                                f"ignored (check apiKey, or whether something between us and WeChat alters answers)",
                                provider_code="SIGNATURE_INVALID", details=_UNKNOWN)
        for field, expected in (("appid", self.appId), ("mch_id", self.mchId)):
            if answer.get(field) not in (None, "", expected):
                raise ProviderError(f"WeChat Pay's answer to {path} is for another {field}",
                                    provider_code="INVALID_RESPONSE")
        if answer.get("result_code") != "SUCCESS":
            err_code = answer.get("err_code") or answer.get("result_code") or "FAIL"
            if err_code in accept_errors:
                return answer
            err_des = answer.get("err_code_des") or ""
            raise ProviderError(f"WeChat Pay {path} failed: {err_code}" + (f" ({err_des})" if err_des else ""),
                                provider_code=err_code, provider_message=err_des or None,
                                details=_UNKNOWN if err_code in RETRY_SAME_REQUEST else None)
        return answer

    def _post(self, path: str, body: bytes, *, use_cert: bool) -> bytes:
        url = f"{self.gateway}/{path}"
        try:
            client = self._clients.get(self, use_cert)
            with client.stream("POST", url, content=body,
                               headers={"Content-Type": "text/xml; charset=utf-8"}) as response:
                if response.status_code >= 300:
                    raise ProviderError(f"WeChat Pay {path} answered HTTP {response.status_code}",
                                        provider_code=f"HTTP_{response.status_code}",
                                        details=_UNKNOWN if response.status_code >= 500 else None)
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > RESPONSE_MAX_BYTES:
                        raise ProviderError(f"WeChat Pay's answer to {path} is over {RESPONSE_MAX_BYTES} bytes",
                                            provider_code="INVALID_RESPONSE")
                    chunks.append(chunk)
                return b"".join(chunks)
        # Chained (``from exc``) on purpose: callers tell "not delivered / outcome unknown" from a refusal by the
        # httpx cause, and by ``details["outcomeUnknown"]``.
        except httpx.TimeoutException as exc:
            raise ProviderError(f"WeChat Pay {path} did not answer within {self.timeout:g} s",
                                provider_code="TIMEOUT", details=_UNKNOWN) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"could not reach WeChat Pay at {self.gateway} ({type(exc).__name__})",
                                provider_code="NETWORK_ERROR", details=_UNKNOWN) from exc
