"""The buyer's cashier: a page per order with a QR code (PC) or a payment link (phone), and live status.

Routes (``{orderId}`` is the order's id, ``token`` its unguessable cashier token from ``order["cashierUrl"]``):

``GET /pays/cashier/{orderId}?token=...``
    the page: what is bought and the amount, a choice of the payment elements this app configures (Alipay, WeChat
    Pay, ...), the QR code on a PC and the link on a phone, and a "paid" view it switches to by itself.
``GET /pays/cashier/{orderId}/status`` (token in the ``X-Cashier-Token`` header)
    ``{"orderId", "status", "amount", "payTime"}`` (amount as its exact string), polled by the page every 1.5 s
    while it is visible, with ``If-None-Match``: an unchanged status is a bodiless ``304``. A poll costs one read of
    the order; a pending order's providers are asked at most every 15 s (every 2 minutes once the order is 10
    minutes old).
``POST /pays/cashier/{orderId}/pay`` (token in the ``X-Cashier-Token`` header)
    form or JSON ``{"fullName", "payType"}`` → ``PaySvc.getPayUrl`` → ``{"orderId", "payUrl", "qrCode",
    "expiresAt"}``; an error is ``{"error": {"code", "message"}}`` with its HTTP status.

Without the right token every route answers the same 404, whether or not the order exists (tokens are compared in
constant time by :meth:`PaySvc.cashier_order`). Responses are never cached, cannot be framed, and send no referrer (the
token is in the page's URL). The token is a secret, so it stays out of logs: the page's script sends it in the
``X-Cashier-Token`` header for its polling and payments (``?token=`` is still accepted there), and the access log of
``jit serve`` masks ``token=`` in the one request that carries it in its URL (:func:`jitcore.http.redact_access_log`).
The page loads nothing from elsewhere: its CSS and JS are inline, allowed by a per-response CSP nonce, and the QR code
is a ``data:`` image.

The choices are every payment element the app configures, a plugin's too, presented as its ``cashier:`` block and
``settings.cashier.elements`` say (:mod:`.choices`).

Optional app setting: ``settings.cashier.returnUrl``, a link shown in the paid view ("back to the shop"); ``{orderId}``
in it is replaced by the order's id.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from elements.pays.services.PaySvc.choices import cashier_choices
from jitcore.errors import JitError
from jitcore.http import read_body

if TYPE_CHECKING:
    from jitcore.app import App

log = logging.getLogger("jitpay.cashier")

PAYSVC = "pays.services.PaySvc"
#: the request header the page's script sends the cashier token in (kept out of URLs, so out of access logs)
TOKEN_HEADER = "X-Cashier-Token"
#: the largest body the pay endpoint reads (two short fields)
PAY_BODY_LIMIT = 4096
MOBILE_UA = re.compile(r"Mobile|Android|iPhone|iPad|iPod|MicroMessenger|AlipayClient", re.IGNORECASE)
NOT_FOUND_MESSAGE = "not found"

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def security_headers(nonce: str | None = None) -> dict[str, str]:
    """Headers of every cashier response: no caching, no framing, no referrer; scripts and styles only inline with
    this response's nonce; images only from here or ``data:`` (the QR code)."""
    inline = f" 'nonce-{nonce}'" if nonce else ""
    return {
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Content-Security-Policy": (f"default-src 'self'; script-src 'self'{inline}; style-src 'self'{inline}; "
                                    "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                                    "base-uri 'none'; object-src 'none'; frame-ancestors 'none'"),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def _json(body: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, headers=security_headers())


def _not_found_json() -> JSONResponse:
    return _json({"error": {"code": "NOT_FOUND", "message": NOT_FOUND_MESSAGE}}, 404)


def _not_found_page() -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = _templates.get_template("cashier_not_found.html").render(nonce=nonce)
    return HTMLResponse(html, status_code=404, headers=security_headers(nonce))


def _error_json(error: JitError) -> JSONResponse:
    return _json({"error": {"code": error.code, "message": error.message}}, error.http_status)


def _client_ip(request: Request) -> str | None:
    host = request.client.host if request.client else None
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None


def available_providers(service: Any) -> list[dict[str, Any]]:
    """The payment elements the buyer can choose from: every one the app configures, with the title, icon, colour
    and order of its ``cashier:`` block or the app's ``settings.cashier.elements`` (:mod:`.choices`)."""
    try:
        return cashier_choices(service)
    except Exception:  # a broken element must not take the cashier down; the log says which
        log.exception("listing the payment elements failed")
        return []


def status_dict(service: Any, order: Any) -> dict[str, Any]:
    """What the page's status endpoint tells: id, status, amount (exact string) and payment time (ISO 8601)."""
    view = service.order_dict(order)
    pay_time = view.get("payTime")
    return {"orderId": view["orderId"], "status": view["status"], "amount": f"{view['amount']:.2f}",
            "payTime": pay_time.isoformat() if pay_time is not None else None}


def _status_response(found: dict[str, Any], if_none_match: str | None) -> Response:
    """The status JSON with an ``ETag`` (a digest of it); ``304 Not Modified`` without a body when the page's
    ``If-None-Match`` names it already (the page polls with the last one it got)."""
    body = json.dumps(found, separators=(",", ":")).encode()
    etag = f'"{hashlib.sha256(body).hexdigest()[:24]}"'
    headers = {**security_headers(), "ETag": etag}
    if if_none_match and etag in (tag.strip().removeprefix("W/") for tag in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _return_url(app: "App", order_id: str) -> str | None:
    cashier_settings = (app.settings or {}).get("cashier") or {}
    url = cashier_settings.get("returnUrl") if isinstance(cashier_settings, dict) else None
    if not isinstance(url, str) or not url:
        return None
    return url.replace("{orderId}", order_id)


async def _read_pay_arguments(request: Request) -> dict[str, Any]:
    """``fullName`` and ``payType`` from a form or JSON body (at most :data:`PAY_BODY_LIMIT` bytes)."""
    body = await read_body(request, PAY_BODY_LIMIT)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
        if content_type == "application/json":
            data = json.loads(text) if text.strip() else {}
        else:
            data = dict(parse_qsl(text, keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        raise JitError("the body must be a form or a JSON object with fullName and payType",
                       code="BAD_REQUEST") from None
    if not isinstance(data, dict):
        raise JitError("the body must be a JSON object with fullName and payType", code="BAD_REQUEST")
    arguments = {}
    for name in ("fullName", "payType"):
        value = data.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > 255:
            raise JitError(f"{name} is required (text)", code="ARGUMENT_INVALID", details={"argument": name})
        arguments[name] = value.strip()
    return arguments


def cashier_routes(app: "App") -> list[Route]:
    """The cashier's routes for ``app`` (see the module docstring)."""

    def service() -> Any:
        return app.loadElement(PAYSVC)

    async def find_order(request: Request) -> tuple[Any, Any]:
        svc = await run_in_threadpool(service)
        token = request.headers.get(TOKEN_HEADER) or request.query_params.get("token", "")
        order = await run_in_threadpool(svc.cashier_order, request.path_params["orderId"], token)
        return svc, order

    async def page(request: Request) -> Response:
        try:
            svc, order = await find_order(request)
        except Exception:
            log.exception("cashier page of %s failed", request.path_params.get("orderId"))
            return HTMLResponse("internal error", status_code=500, headers=security_headers())
        if order is None:
            return _not_found_page()
        view = svc.order_dict(order)
        providers = await run_in_threadpool(available_providers, svc)
        nonce = secrets.token_urlsafe(16)
        status = status_dict(svc, order)
        html = _templates.get_template("cashier.html").render(
            nonce=nonce,
            order=view,
            status=status,
            amount=status["amount"],
            providers=providers,
            token=request.query_params.get("token", ""),
            mobile=bool(MOBILE_UA.search(request.headers.get("user-agent", ""))),
            return_url=_return_url(app, view["orderId"]),
            app_title=app.title,
        )
        return HTMLResponse(html, headers=security_headers(nonce))

    def current_status(order_id: str, token: str) -> dict[str, Any] | None:
        """The status a polling page gets (None: no such order, or not its token): one read of the order, and now
        and then a question to the providers while it is pending (a notification may not reach us: a wrong baseUrl,
        a firewall)."""
        svc = service()
        order = svc.cashier_order(order_id, token)
        if order is None:
            return None
        if order.status == "pending":
            try:
                order = svc.refresh_pending(order.orderId, order) or order
            except Exception:
                log.exception("cashier status check of %s failed", order.orderId)
        return status_dict(svc, order)

    async def status(request: Request) -> Response:
        token = request.headers.get(TOKEN_HEADER) or request.query_params.get("token", "")
        try:  # one trip to the thread pool
            found = await run_in_threadpool(current_status, request.path_params["orderId"], token)
        except Exception:
            log.exception("cashier status of %s failed", request.path_params.get("orderId"))
            return _json({"error": {"code": "INTERNAL_ERROR", "message": "internal error"}}, 500)
        if found is None:
            return _not_found_json()
        return _status_response(found, request.headers.get("if-none-match"))

    async def pay(request: Request) -> Response:
        try:
            svc, order = await find_order(request)
            if order is None:
                return _not_found_json()
            arguments = await _read_pay_arguments(request)
            result = await run_in_threadpool(svc.getPayUrl, order.orderId, arguments["fullName"],
                                             arguments["payType"], _client_ip(request))
        except JitError as exc:
            return _error_json(exc)
        except Exception:
            log.exception("cashier payment of %s failed", request.path_params.get("orderId"))
            return _json({"error": {"code": "INTERNAL_ERROR", "message": "internal error, see the server log"}}, 500)
        expires = result.get("expiresAt")
        return _json({"orderId": result["orderId"], "payUrl": result["payUrl"], "qrCode": result.get("qrCode"),
                      "expiresAt": expires.isoformat() if expires is not None else None})

    return [
        Route("/pays/cashier/{orderId}", page, methods=["GET"]),
        Route("/pays/cashier/{orderId}/status", status, methods=["GET"]),
        Route("/pays/cashier/{orderId}/pay", pay, methods=["POST"]),
    ]
