"""A fake AcmePay gateway for tests: the API of :mod:`acmepay.protocol` in memory, a checkout page with a Pay button,
and signed webhooks, sent at once or held for the test to deliver.

    with FakeAcmePay(merchants={"m_1": ("api-key", "webhook-secret")}).serve() as gateway:
        ...                       # configure acmepay.AcmePayType with gateway=gateway.url
        gateway.pay(order_id)     # the buyer pays (a webhook is sent, or held)
        gateway.notify_mode = "hold"; gateway.take_notifications()[0].deliver()

Every method is thread-safe (the gateway serves HTTP from its own thread).
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from acmepay.protocol import AMOUNT_RE, SIGNATURE_HEADER, signature_header


@dataclass(frozen=True)
class Webhook:
    """One webhook exactly as the gateway posts it (``body`` bytes, ``headers``) to ``url``."""

    url: str
    body: bytes
    headers: dict[str, str]
    event: str
    reference: str

    def deliver(self, timeout: float = 10.0) -> httpx.Response:
        """POST it once, byte for byte."""
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            return client.post(self.url, content=self.body, headers=self.headers)


@dataclass
class _Payment:
    id: str
    merchant: str
    reference: str
    amount: Decimal
    description: str
    method: str
    expires_at: datetime | None
    notify_url: str
    status: str = "pending"
    refunded: Decimal = Decimal("0.00")
    paid_at: datetime | None = None
    refunds: dict[str, Decimal] = field(default_factory=dict)


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FakeAcmePay:
    """The gateway's state and its Starlette app (:attr:`asgi`). ``merchants`` maps a merchant id to its
    ``(apiKey, webhookSecret)``."""

    def __init__(self, merchants: dict[str, tuple[str, str]]) -> None:
        self.merchants = dict(merchants)
        self.notify_mode = "send"
        #: while True every API call answers 503 (an outage: the caller cannot tell whether anything happened)
        self.down = False
        self.url = ""
        self._lock = threading.RLock()
        self._payments: dict[tuple[str, str], _Payment] = {}
        self._held: list[Webhook] = []
        self._ids = itertools.count(1)
        self.asgi = Starlette(routes=[
            Route("/v1/payments", self._create, methods=["POST"]),
            Route("/v1/payments/by-reference/{reference}", self._get, methods=["GET"]),
            Route("/v1/payments/{id}/cancel", self._cancel, methods=["POST"]),
            Route("/v1/refunds", self._refund, methods=["POST"]),
            Route("/checkout/{id}", self._checkout, methods=["GET", "POST"]),
        ])

    # -- the Python API for tests -------------------------------------------------------------------------------------
    def pay(self, reference: str, merchant: str | None = None) -> bool:
        """The buyer pays the pending payment ``reference``: True if this call paid it; False if it cannot be paid
        (expired, canceled, failed, paid). A webhook follows (sent, or held)."""
        return self._finish(reference, merchant, "succeeded")

    def fail(self, reference: str, merchant: str | None = None) -> bool:
        """The buyer's payment fails (their bank said no): ``payment.failed``."""
        return self._finish(reference, merchant, "failed")

    def payment(self, reference: str, merchant: str | None = None) -> dict[str, Any] | None:
        """The payment as the API shows it, or None."""
        with self._lock:
            found = self._find(reference, merchant)
            return self._view(found) if found else None

    def captured(self, reference: str, merchant: str | None = None) -> Decimal:
        """Yuan the buyer paid into that payment (stays after refunds)."""
        with self._lock:
            found = self._find(reference, merchant)
            return found.amount if found and found.paid_at else Decimal("0.00")

    def refunded(self, reference: str, merchant: str | None = None) -> Decimal:
        """Yuan refunded from that payment so far."""
        with self._lock:
            found = self._find(reference, merchant)
            return found.refunded if found else Decimal("0.00")

    def take_notifications(self) -> list[Webhook]:
        """The webhooks held so far (``notify_mode = "hold"``), oldest first, removing them."""
        with self._lock:
            held, self._held = self._held, []
            return held

    def webhook(self, reference: str, event: str, merchant: str | None = None) -> Webhook:
        """The webhook the gateway would send now about payment ``reference`` (signed, not sent)."""
        with self._lock:
            found = self._find(reference, merchant)
            if found is None:
                raise KeyError(reference)
            return self._webhook(found, event)

    # -- serving ------------------------------------------------------------------------------------------------------
    def serve(self) -> "_Serving":
        """Serve the gateway on a free loopback port in a background thread (a context manager; ``url`` is set)."""
        return _Serving(self)

    # -- internals ----------------------------------------------------------------------------------------------------
    def _find(self, reference: str, merchant: str | None) -> _Payment | None:
        if merchant is not None:
            return self._payments.get((merchant, reference))
        return next((p for (m, r), p in self._payments.items() if r == reference), None)

    def _finish(self, reference: str, merchant: str | None, status: str) -> bool:
        with self._lock:
            found = self._find(reference, merchant)
            if found is None:
                raise KeyError(reference)
            self._expire(found)
            if found.status != "pending":
                return False
            found.status = status
            if status == "succeeded":
                found.paid_at = datetime.now(timezone.utc).replace(microsecond=0)
            hook = self._webhook(found, "payment." + status)
            if self.notify_mode == "hold":
                self._held.append(hook)
                return True
        threading.Thread(target=self._send, args=(hook,), daemon=True).start()
        return True

    def _send(self, hook: Webhook) -> None:
        for delay in (0, 1, 2, 4):
            time.sleep(delay)
            try:
                if 200 <= hook.deliver(timeout=5).status_code < 300:
                    return
            except httpx.HTTPError:
                pass

    def _webhook(self, payment: _Payment, event: str) -> Webhook:
        body = json.dumps({"id": f"evt_{next(self._ids)}", "type": event, "payment": self._view(payment)},
                          separators=(",", ":")).encode("utf-8")
        secret = self.merchants[payment.merchant][1]
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature_header(secret, body)}
        return Webhook(payment.notify_url, body, headers, event, payment.reference)

    @staticmethod
    def _expire(payment: _Payment) -> None:
        if payment.status == "pending" and payment.expires_at and payment.expires_at <= datetime.now(timezone.utc):
            payment.status = "canceled"

    def _view(self, p: _Payment) -> dict[str, Any]:
        self._expire(p)
        return {"id": p.id, "merchant": p.merchant, "reference": p.reference, "amount": f"{p.amount:.2f}",
                "currency": "CNY", "status": p.status, "amount_refunded": f"{p.refunded:.2f}",
                "checkout_url": f"{self.url}/checkout/{p.id}",
                "expires_at": p.expires_at.isoformat() if p.expires_at else None,
                "paid_at": p.paid_at.isoformat() if p.paid_at else None}

    def _merchant(self, request: Request) -> str:
        if self.down:
            raise _ApiError(503, "unavailable", "AcmePay is down for maintenance")
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        for merchant, (api_key, _secret) in self.merchants.items():
            if scheme.lower() == "bearer" and key == api_key:
                return merchant
        raise _ApiError(401, "unauthorized", "unknown API key")

    async def _json(self, request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.body())
        except ValueError:
            raise _ApiError(400, "invalid_json", "the body is not JSON") from None
        if not isinstance(data, dict):
            raise _ApiError(400, "invalid_json", "the body is not a JSON object")
        return data

    def _api(handler: Any) -> Any:  # type: ignore[misc]  # a decorator used in the class body
        async def endpoint(self: "FakeAcmePay", request: Request) -> Response:
            try:
                merchant = self._merchant(request)
                result = await handler(self, request, merchant)
            except _ApiError as exc:
                return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status)
            return JSONResponse(result)
        return endpoint

    @_api
    async def _create(self, request: Request, merchant: str) -> dict[str, Any]:
        data = await self._json(request)
        reference, amount = str(data.get("reference", "")), str(data.get("amount", ""))
        if not reference or not AMOUNT_RE.fullmatch(amount) or Decimal(amount) <= 0:
            raise _ApiError(400, "invalid_request", "reference and a positive amount are required")
        if data.get("merchant") != merchant or data.get("currency") != "CNY":
            raise _ApiError(400, "invalid_request", "merchant or currency")
        if data.get("method") not in ("qr", "link"):
            raise _ApiError(400, "invalid_request", "method must be qr or link")
        expires = datetime.fromisoformat(data["expires_at"]) if data.get("expires_at") else None
        with self._lock:
            found = self._payments.get((merchant, reference))
            if found is not None:
                if (found.amount, found.expires_at) != (Decimal(amount), expires):
                    raise _ApiError(409, "reference_in_use", "another payment has this reference")
                return self._view(found)
            payment = _Payment(id=f"pay_{next(self._ids)}", merchant=merchant, reference=reference,
                               amount=Decimal(amount), description=str(data.get("description", "")),
                               method=data["method"], expires_at=expires, notify_url=str(data.get("notify_url", "")))
            self._payments[(merchant, reference)] = payment
            return self._view(payment)

    @_api
    async def _get(self, request: Request, merchant: str) -> dict[str, Any]:
        with self._lock:
            found = self._payments.get((merchant, request.path_params["reference"]))
            if found is None:
                raise _ApiError(404, "not_found", "no such payment")
            return self._view(found)

    def _by_id(self, merchant: str | None, payment_id: str) -> _Payment:
        found = next((p for p in self._payments.values() if p.id == payment_id
                      and (merchant is None or p.merchant == merchant)), None)
        if found is None:
            raise _ApiError(404, "not_found", "no such payment")
        return found

    @_api
    async def _cancel(self, request: Request, merchant: str) -> dict[str, Any]:
        with self._lock:
            payment = self._by_id(merchant, request.path_params["id"])
            self._expire(payment)
            if payment.status in ("succeeded", "refunded"):
                raise _ApiError(409, "payment_succeeded", "a paid payment cannot be canceled")
            if payment.status == "pending":
                payment.status = "canceled"
            return self._view(payment)

    @_api
    async def _refund(self, request: Request, merchant: str) -> dict[str, Any]:
        data = await self._json(request)
        key, amount = str(data.get("idempotency_key", "")), str(data.get("amount", ""))
        if not key or not AMOUNT_RE.fullmatch(amount) or Decimal(amount) <= 0:
            raise _ApiError(400, "invalid_request", "idempotency_key and a positive amount are required")
        with self._lock:
            payment = self._by_id(merchant, str(data.get("payment", "")))
            if key in payment.refunds:
                if payment.refunds[key] != Decimal(amount):
                    raise _ApiError(409, "idempotency_mismatch", "this key was used with another amount")
            else:
                if payment.status not in ("succeeded", "refunded"):
                    raise _ApiError(409, "payment_not_paid", "only a paid payment can be refunded")
                if payment.refunded + Decimal(amount) > payment.amount:
                    raise _ApiError(400, "amount_too_large", "more than is left to refund")
                payment.refunds[key] = Decimal(amount)
                payment.refunded += Decimal(amount)
                if payment.refunded == payment.amount:
                    payment.status = "refunded"
            return {"id": f"re_{payment.id}_{key}", "payment": payment.id, "amount": amount, "status": "succeeded"}

    async def _checkout(self, request: Request) -> Response:
        """The buyer's checkout page (what the QR code or the link opens): a Pay button."""
        with self._lock:
            try:
                payment = self._by_id(None, request.path_params["id"])
            except _ApiError:
                return HTMLResponse("no such payment", status_code=404)
        if request.method == "POST":
            self.pay(payment.reference, payment.merchant)
            return RedirectResponse(str(request.url), status_code=303)
        return HTMLResponse(f"<!doctype html><title>AcmePay checkout</title><h1>AcmePay</h1>"
                            f"<p>{html.escape(payment.description)}: ¥{payment.amount:.2f} ({payment.status})</p>"
                            f'<form method="post" action="/checkout/{payment.id}">'
                            f'<button id="pay-button">Pay</button></form>')


class _Serving:
    """A uvicorn server for the gateway on a free loopback port, in a thread."""

    def __init__(self, gateway: FakeAcmePay) -> None:
        self.gateway = gateway
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.server = uvicorn.Server(uvicorn.Config(gateway.asgi, log_level="warning", lifespan="off",
                                                    access_log=False, timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])),
                                       daemon=True)

    def __enter__(self) -> FakeAcmePay:
        self.gateway.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the fake AcmePay gateway did not start")
            time.sleep(0.01)
        return self.gateway

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serving(merchants: dict[str, tuple[str, str]]) -> Iterator[FakeAcmePay]:
    """A generator for a pytest fixture: a served gateway, stopped afterwards."""
    with FakeAcmePay(merchants).serve() as gateway:
        yield gateway
