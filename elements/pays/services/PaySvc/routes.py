"""The payment library's HTTP routes: the providers' notification callbacks and the buyer's cashier page.

The callbacks sit at JitAi's path for the declared functions (``/api/{appId}/pays/services/PaySvc/alipayNotify`` and
``.../wechatNotify``) and are mounted before the generic function API, so the raw body reaches the provider's parser
exactly as it was sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from elements.pays.errors import UnknownPayType

if TYPE_CHECKING:
    from jitcore.app import App

#: the largest notification body accepted (Alipay's and WeChat Pay's are a few KiB)
NOTIFY_BODY_LIMIT = 64 * 1024
PAYSVC = "pays.services.PaySvc"


class BodyTooLarge(Exception):
    """The request body is over the limit."""


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (checked on Content-Length and while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge()
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def notify_endpoint(app: "App", provider_name: str) -> Any:
    """An endpoint that hands a provider's raw notification body to ``PaySvc.handle_notify_body``."""

    async def endpoint(request: Request) -> Response:
        service = app.loadElement(PAYSVC)
        try:
            body = await read_limited_body(request, NOTIFY_BODY_LIMIT)
        except BodyTooLarge:
            await run_in_threadpool(service.store.audit, "notify", "rejected", provider=provider_name,
                                    verified=False, error_code="BODY_TOO_LARGE",
                                    message=f"body over {NOTIFY_BODY_LIMIT} bytes")
            return JSONResponse({"error": {"code": "BODY_TOO_LARGE",
                                           "message": f"body over {NOTIFY_BODY_LIMIT} bytes"}}, status_code=413)
        try:
            return await run_in_threadpool(service.handle_notify_body, provider_name, body,
                                           request.headers.get("content-type"))
        except UnknownPayType as exc:
            return JSONResponse({"error": exc.to_dict()}, status_code=404)

    return endpoint


def pay_routes(app: "App") -> list[Any]:
    """The notification callbacks and the cashier."""
    from elements.pays.services.PaySvc.cashier import cashier_routes

    base = f"/api/{app.appId}/pays/services/PaySvc"
    return [
        Route(f"{base}/alipayNotify", notify_endpoint(app, "alipay"), methods=["POST"]),
        Route(f"{base}/wechatNotify", notify_endpoint(app, "wechat"), methods=["POST"]),
        *cashier_routes(app),
    ]
