"""The payment library's HTTP routes: the providers' notification callbacks and the buyer's cashier page.

The callbacks sit at JitAi's path for the declared functions (``/api/{appId}/pays/services/PaySvc/alipayNotify`` and
``.../wechatNotify``) and are mounted before the generic function API, so the raw body reaches the provider's parser
exactly as it was sent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from elements.pays.errors import UnknownPayType
from jitcore.http import BodyTooLarge, error_response, read_body

if TYPE_CHECKING:
    from jitcore.app import App

log = logging.getLogger("jitpay")

#: the largest notification body accepted (Alipay's and WeChat Pay's are a few KiB)
NOTIFY_BODY_LIMIT = 64 * 1024
PAYSVC = "pays.services.PaySvc"


def notify_endpoint(app: "App", provider_name: str) -> Any:
    """An endpoint that hands a provider's raw notification body to ``PaySvc.handle_notify_body``."""

    async def endpoint(request: Request) -> Response:
        service = app.loadElement(PAYSVC)
        try:
            providers = await run_in_threadpool(service.notify_providers, provider_name)
        except UnknownPayType as exc:
            return error_response(UnknownPayType(exc.message, http_status=404))
        try:
            body = await read_body(request, NOTIFY_BODY_LIMIT)
        except BodyTooLarge as exc:
            await run_in_threadpool(service.ledger.audit, "notify", "rejected", provider=providers[0].fullName,
                                    verified=False, error_code=exc.code, message=exc.message)
            return error_response(exc)
        try:
            return await run_in_threadpool(service.handle_notify_body, provider_name, body,
                                           request.headers.get("content-type"))
        except Exception:
            # never a 500 to a provider: log it, answer "not processed" in its format so that it retries later
            log.exception("the %s notification could not be handled", provider_name)
            reply = providers[0].notify_reply(False, "internal error")
            return Response(reply.body, status_code=reply.status, media_type=reply.mediaType)

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
