"""The Alipay Open API client: common parameters, signing, the HTTP call to ``gateway.do`` and verification of the
synchronous response.

Every way a call can fail (timeout, connection error, HTTP error status, a body that is not Alipay's JSON, a missing
or bad response signature, a business error) becomes :class:`elements.pays.errors.ProviderError`, carrying Alipay's
``sub_code``/``sub_msg`` when there are any, and ``details["failure"]`` naming the kind of failure. No message carries
a key, a signature or a request parameter.
"""

from __future__ import annotations

import json
import re
import string
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from elements.pays.errors import ProviderError

from .signing import ResponseFormatError, response_key, rsa2_verify, sign_request, top_level_spans

#: Beijing time (UTC+8, no daylight saving): Alipay's timestamps are in it.
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
SUCCESS_CODE = "10000"
#: a response body larger than this is not Alipay's
MAX_RESPONSE_BYTES = 1024 * 1024


def beijing_now() -> datetime:
    """The current time in Beijing, aware."""
    return datetime.now(BEIJING)


def format_timestamp(moment: datetime | None = None) -> str:
    """``yyyy-MM-dd HH:mm:ss`` in Beijing time (``moment`` must be aware; default now)."""
    moment = beijing_now() if moment is None else moment.astimezone(BEIJING)
    return moment.strftime(TIME_FORMAT)


#: the form Alipay writes its times in, read without ``strptime`` (which takes longer than verifying a notification's
#: amount); anything else still goes through ``strptime`` and its leniency (single digits)
_TIME_TEXT = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})", re.ASCII)


def parse_beijing_time(text: str | None) -> datetime | None:
    """An Alipay ``yyyy-MM-dd HH:mm:ss`` Beijing time as an aware UTC datetime; ``None`` for empty or malformed."""
    if not text:
        return None
    text = text.strip()
    try:
        found = _TIME_TEXT.fullmatch(text)
        moment = (datetime(*map(int, found.groups())) if found is not None  # type: ignore[arg-type]
                  else datetime.strptime(text, TIME_FORMAT))
        return moment.replace(tzinfo=BEIJING).astimezone(timezone.utc)
    except (ValueError, OverflowError):  # (OverflowError: 0001-01-01 00:00 in Beijing is before year 1 in UTC)
        return None


def format_amount(amount: Decimal) -> str:
    """Yuan as Alipay wants it: a string with exactly two decimals (``Decimal("9.9")`` → ``"9.90"``). Refuses floats
    and amounts with more precision than a fen, rather than rounding money."""
    if isinstance(amount, bool) or not isinstance(amount, (Decimal, int)):
        raise TypeError("amounts must be Decimal, never float")
    value = Decimal(amount)
    if not value.is_finite():
        raise ValueError("amount is not a finite number")
    quantized = value.quantize(Decimal("0.01"))
    if quantized != value:
        raise ValueError("amount has more than two decimal places")
    return f"{quantized:.2f}"


#: how Alipay writes an amount: yuan, two decimals, no sign, no leading zero, no exponent, no spaces
CANONICAL_AMOUNT = re.compile(r"(0|[1-9][0-9]*)\.[0-9]{2}")


def parse_amount(text: Any) -> Decimal | None:
    """An Alipay amount as ``Decimal``; ``None`` when absent or not in Alipay's canonical form (``"12.34"``): text
    that merely means the same number (``"1234E-2"``, ``" 12.34"``, ``"12.340"``) is not an amount Alipay wrote."""
    if not isinstance(text, str) or not CANONICAL_AMOUNT.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid numbers
        return None


#: how ``urllib.parse.quote_plus`` writes each byte of UTF-8 text: letters, digits and ``_.-~`` as they are, a space
#: as ``+``, every other byte as ``%XX`` (upper-case hex); indexed by the byte
_FORM_QUOTED = tuple(chr(byte) if chr(byte) in string.ascii_letters + string.digits + "_.-~"
                     else "+" if byte == 0x20 else f"%{byte:02X}" for byte in range(256))


def form_quote(text: str) -> str:
    """``urllib.parse.quote_plus(text)``, character for character, in one pass of C code: the UTF-8 bytes of
    ``text`` (read as Latin-1, one character per byte) mapped through :data:`_FORM_QUOTED` by ``str.translate``.
    Text that is not valid UTF-8 (a lone surrogate) raises :class:`UnicodeEncodeError`, as ``quote_plus`` does."""
    return text.encode("utf-8").decode("latin-1").translate(_FORM_QUOTED)


def form_encode(params: Mapping[str, str]) -> str:
    """``urllib.parse.urlencode(params)`` for text keys and values (``k=v`` joined with ``&``, each quoted by
    :func:`form_quote`), the same text at about half the cost: after the signature, the largest CPU cost of a payment
    link."""
    return "&".join([form_quote(key) + "=" + form_quote(value) for key, value in params.items()])


def dump_biz_content(biz: Mapping[str, Any]) -> str:
    """``biz_content`` as compact JSON, non-ASCII kept as is (what Alipay's own SDKs send)."""
    return json.dumps(dict(biz), ensure_ascii=False, separators=(",", ":"))


class AlipayGateway:
    """One merchant app's connection to an Alipay gateway.

    ``app_id``, ``private_key`` (the app's, signs requests), ``alipay_public_key`` (verifies responses), ``gateway``
    (URL of ``gateway.do``), ``timeout`` (seconds per call). Thread-safe; keeps one pooled HTTP client.
    """

    def __init__(self, *, app_id: str, private_key: rsa.RSAPrivateKey, alipay_public_key: rsa.RSAPublicKey,
                 gateway: str, timeout: float, transport: httpx.BaseTransport | None = None) -> None:
        self.app_id = app_id
        self.gateway = gateway
        self.timeout = timeout
        self._private_key = private_key
        self._alipay_public_key = alipay_public_key
        self._transport = transport
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    # -- building requests ------------------------------------------------------------------------------------------
    def common_params(self, method: str, biz: Mapping[str, Any], *, notify_url: str | None = None,
                      return_url: str | None = None) -> dict[str, str]:
        """The common request parameters for ``method`` with ``biz_content``, not yet signed."""
        params = {
            "app_id": self.app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": format_timestamp(),
            "version": "1.0",
            "biz_content": dump_biz_content(biz),
        }
        if notify_url:
            params["notify_url"] = notify_url
        if return_url:
            params["return_url"] = return_url
        return params

    def signed_params(self, method: str, biz: Mapping[str, Any], *, notify_url: str | None = None,
                      return_url: str | None = None) -> dict[str, str]:
        """The common parameters for ``method`` plus ``sign``."""
        return sign_request(self.common_params(method, biz, notify_url=notify_url, return_url=return_url),
                            self._private_key)

    def page_url(self, method: str, biz: Mapping[str, Any], *, notify_url: str | None = None,
                 return_url: str | None = None) -> str:
        """A client-side payment URL (``alipay.trade.wap.pay``, ``alipay.trade.page.pay``): the gateway URL with the
        signed parameters, URL-encoded, in its query string. Nothing is sent."""
        params = self.signed_params(method, biz, notify_url=notify_url, return_url=return_url)
        separator = "&" if urlsplit(self.gateway).query else "?"
        return self.gateway + separator + form_encode(params)

    # -- calling the gateway ----------------------------------------------------------------------------------------
    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout, transport=self._transport,
                                            follow_redirects=False, trust_env=False)
            return self._client

    def close(self) -> None:
        """Release the pooled HTTP connections."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def call(self, method: str, biz: Mapping[str, Any], *, notify_url: str | None = None,
             accept_sub_codes: Iterable[str] = ()) -> dict[str, Any]:
        """Call ``method`` and return its verified response content (the parsed ``<method>_response`` object).

        A business error (``code`` other than ``10000``) raises :class:`ProviderError`, unless its ``sub_code`` is in
        ``accept_sub_codes`` (e.g. ``ACQ.TRADE_NOT_EXIST`` for a query): then the verified content is returned and the
        caller decides.
        """
        params = self.signed_params(method, biz, notify_url=notify_url)
        # Like Alipay's own SDKs: the common parameters in the query string (Alipay reads `charset` from there), the
        # business content in the form body.
        body_params = {"biz_content": params.pop("biz_content")}
        what = f"Alipay {method}"
        try:
            response = self._http().post(self.gateway, params=params, data=body_params,
                                          headers={"Accept": "application/json"})
        except httpx.TimeoutException:
            raise ProviderError(f"{what}: the gateway did not answer within {self.timeout:g}s",
                                details={"failure": "timeout", "method": method}) from None
        except httpx.HTTPError as exc:
            raise ProviderError(f"{what}: cannot reach the gateway ({type(exc).__name__})",
                                details={"failure": "connection", "method": method}) from None
        if response.status_code != 200:
            raise ProviderError(f"{what}: the gateway answered HTTP {response.status_code}",
                                details={"failure": "http_status", "method": method,
                                         "httpStatus": response.status_code})
        return self.verify_response(method, response.content, accept_sub_codes=accept_sub_codes)

    def verify_response(self, method: str, raw: bytes, *, accept_sub_codes: Iterable[str] = ()) -> dict[str, Any]:
        """Check a synchronous response body of ``method`` and return its content; see :meth:`call`."""
        what = f"Alipay {method}"

        def invalid(reason: str) -> ProviderError:
            return ProviderError(f"{what}: {reason}", details={"failure": "invalid_response", "method": method})

        if len(raw) > MAX_RESPONSE_BYTES:
            raise invalid("the response is too large")
        try:
            text = raw.decode("utf-8")
            document = json.loads(text)
            spans = top_level_spans(text)
        except (UnicodeDecodeError, ValueError, ResponseFormatError):
            raise invalid("the response is not Alipay's JSON") from None
        if not isinstance(document, dict):
            raise invalid("the response is not a JSON object")

        key = response_key(method)
        if key not in spans and "error_response" in spans:
            key = "error_response"
        if key not in spans:
            raise invalid(f"the response has no {response_key(method)}")
        start, end = spans[key]
        content_text = text[start:end]
        content = json.loads(content_text)
        if not isinstance(content, dict):
            raise invalid(f"{key} is not an object")
        code = str(content.get("code", ""))
        sub_code = content.get("sub_code")

        signature = document.get("sign")
        if not signature:
            # Alipay leaves some gateway-level errors (bad signature, bad app id) unsigned. An unsigned answer is
            # never trusted for anything but failure.
            if code and code != SUCCESS_CODE:
                raise self._business_error(what, method, content, signed=False)
            raise ProviderError(f"{what}: the response is not signed",
                                details={"failure": "signature_missing", "method": method})
        if not isinstance(signature, str) or not rsa2_verify(self._alipay_public_key, content_text, signature):
            raise ProviderError(f"{what}: the response signature does not verify with alipayPublicKey",
                                details={"failure": "signature_invalid", "method": method})
        if key == "error_response" or code != SUCCESS_CODE:
            if key != "error_response" and sub_code and sub_code in set(accept_sub_codes):
                return content
            raise self._business_error(what, method, content, signed=True)
        return content

    @staticmethod
    def _business_error(what: str, method: str, content: Mapping[str, Any], *, signed: bool) -> ProviderError:
        code = str(content.get("code", "")) or None
        sub_code = content.get("sub_code")
        msg = content.get("msg")
        sub_msg = content.get("sub_msg")
        provider_code = str(sub_code) if sub_code else code
        provider_message = str(sub_msg) if sub_msg else (str(msg) if msg else None)
        text = f"{what} failed: {provider_code}"
        if provider_message:
            text += f" ({provider_message})"
        return ProviderError(text, provider_code=provider_code, provider_message=provider_message,
                             details={"failure": "business", "method": method, "code": code, "msg": msg,
                                      "signed": signed})
