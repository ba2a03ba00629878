"""The AcmePay jitcore plugin (entry point ``acmepay``): its element folder, and the buyer's return page.

Notifications need no route of the plugin's own: PaySvc serves every configured provider at
``/api/{appId}/pays/services/PaySvc/notify/acmepay``. The return page is mounted only in apps that configure an
AcmePay element (the documented pattern, docs/PROVIDERS.md): elsewhere its path is a plain 404.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from jitcore import hookimpl

ELEMENT = "acmepay.AcmePayType"


@hookimpl
def jit_element_dirs(app: Any) -> list[Path]:
    """The acmepay element folder."""
    return [Path(__file__).parent / "elements"]


def configured_elements(app: Any) -> list[str]:
    """The AcmePay elements this app configures: the Type itself, or instances of it."""
    return [name for name in app.elementNames()
            if app.configures(name) and app.isA(name, ELEMENT)]


@hookimpl
def jit_routes(app: Any) -> list[Any]:
    """``GET /acmepay/return``: where AcmePay sends the buyer back after paying. Only in apps that configure
    AcmePay."""
    if not configured_elements(app):
        return []

    async def returned(request: Request) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>AcmePay</title><p>Thank you: the shop confirms your payment "
                            "shortly.</p>")

    return [Route("/acmepay/return", returned, methods=["GET"])]
