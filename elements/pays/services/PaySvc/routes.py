"""The payment library's HTTP routes: the providers' notification callbacks and the buyer's cashier page.

``POST /api/{appId}/pays/services/PaySvc/notify/{providerName}`` takes the notifications of every provider the app
configures (``providerName`` as the provider's class says it: ``alipay``, ``wechat``, a plugin's); JitAi's paths
``.../alipayNotify`` and ``.../wechatNotify`` stay for Alipay and WeChat Pay. They are mounted before the generic
function API, so the raw request (body bytes, headers, query string, client address) reaches the provider's parser
exactly as it was sent (:meth:`PaySvc.handleNotify`). An unknown provider is a 404 JSON error, a body over the
provider's limit a 413, and nothing a request holds is ever answered with a 500.

:func:`read_notify_request` and :func:`reply_response` are the two halves an app with its own Starlette or FastAPI
routes needs (docs/PROVIDERS.md, "Notifications in your own web framework").
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from elements.pays.errors import UnknownPayType
from elements.pays.Meta import NotifyReply, NotifyRequest
from jitcore.errors import JitError
from jitcore.http import BodyTooLarge, error_response, read_body

if TYPE_CHECKING:
    from jitcore.app import App

log = logging.getLogger("jitpay")

#: the largest notification body read when a provider does not say (Alipay's and WeChat Pay's are a few KiB)
NOTIFY_BODY_LIMIT = 64 * 1024
PAYSVC = "pays.services.PaySvc"


async def read_notify_request(request: Request, limit: int = NOTIFY_BODY_LIMIT) -> NotifyRequest:
    """A Starlette (or FastAPI) request as a :class:`NotifyRequest`: the raw body (at most ``limit`` bytes, else
    :class:`~jitcore.http.BodyTooLarge`), every header, the query string and the client's address."""
    body = await read_body(request, limit)
    return NotifyRequest(body=body, headers=request.headers.raw, query=request.url.query,
                         client=request.client.host if request.client else None)


def reply_response(reply: NotifyReply) -> Response:
    """A provider's :class:`NotifyReply` as a Starlette response: its status, body, media type and headers."""
    return Response(reply.body, status_code=reply.status, media_type=reply.mediaType, headers=dict(reply.headers))


def notify_endpoint(app: "App", provider_name: str | None = None) -> Any:
    """An endpoint that hands a provider's notification to ``PaySvc.handleNotify``: for ``provider_name``, or for
    the ``providerName`` of the path."""

    async def endpoint(request: Request) -> Response:
        name = provider_name or request.path_params["providerName"]
        try:
            service = app.loadElement(PAYSVC)
            # loading the payment elements may do I/O once: off the event loop; after that a lookup
            providers = (service.notify_providers(name) if service.providers_loaded
                         else await run_in_threadpool(service.notify_providers, name))
        except UnknownPayType as exc:
            return error_response(exc)
        except Exception:
            log.exception("the %s notification could not be handled", name)
            return error_response(JitError("payments are not available right now", code="UNAVAILABLE",
                                           http_status=503))
        try:
            notification = await read_notify_request(request, max(p.notifyMaxBytes for p in providers))
        except BodyTooLarge as exc:
            try:
                await run_in_threadpool(partial(service.ledger.audit, "notify", "rejected",
                                                provider=providers[0].fullName, verified=False, error_code=exc.code,
                                                message=exc.message,
                                                source=request.client.host if request.client else None))
            except Exception:
                log.exception("recording a too large %s notification failed", name)
            return error_response(exc)
        except Exception:  # the client went away mid-body
            log.info("the %s notification's body could not be read", name, exc_info=True)
            return reply_response(providers[0].notify_reply(False, "incomplete request"))
        # handleNotify answers every failure in the provider's own format; nothing here becomes a 500
        return reply_response(await run_in_threadpool(service.handleNotify, name, notification))

    return endpoint


def pay_routes(app: "App") -> list[Any]:
    """The notification callbacks (the generic one and JitAi's two) and the cashier."""
    from elements.pays.services.PaySvc.cashier import cashier_routes

    base = f"/api/{app.appId}/pays/services/PaySvc"
    return [
        Route(f"{base}/notify/{{providerName}}", notify_endpoint(app), methods=["POST"]),
        Route(f"{base}/alipayNotify", notify_endpoint(app, "alipay"), methods=["POST"]),
        Route(f"{base}/wechatNotify", notify_endpoint(app, "wechat"), methods=["POST"]),
        *cashier_routes(app),
    ]
