"""Fixtures for the Alipay provider and sandbox tests: keys made at test time, real uvicorn servers on loopback, and
a merchant "app" that hosts the sandbox gateway beside its own notification endpoint (as the demo app does)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from elements.pays.AliPayType import AliPayType
from elements.pays.errors import PayError
from elements.pays.Meta import OrderView, TradeState
from jitpay_sandbox.alipay import AlipaySandbox, alipay_routes, generate_alipay_keys
from tests.support.live import ServerThread, bind_loopback

E_YAML = Path(__file__).resolve().parents[4] / "elements" / "pays" / "AliPayType" / "e.yaml"
APP_ID = "2021000000000001"
SELLER_ID = "2088000000000001"
MERCHANT_APP = "shop"


class LoopbackServer:
    """A real uvicorn server on 127.0.0.1 and a free port; its URL is known before the app is built."""

    def __init__(self) -> None:
        self.sock = bind_loopback()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ServerThread | None = None

    def start(self, app: Any) -> "LoopbackServer":
        self.server = ServerThread(app, self.sock).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        else:
            self.sock.close()


@pytest.fixture
def loopback() -> Any:
    """Start servers with ``loopback(app_factory)`` where ``app_factory(url)`` builds the ASGI app; all are stopped
    at the end of the test."""
    servers: list[LoopbackServer] = []

    def start(factory: Callable[[str], Any]) -> LoopbackServer:
        server = LoopbackServer()
        servers.append(server)
        return server.start(factory(server.url))

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The four sandbox PEMs (made by the sandbox's own generator) plus a stranger's key pair."""
    directory = tmp_path_factory.mktemp("alipay-keys")
    generate_alipay_keys(directory)
    other = tmp_path_factory.mktemp("alipay-other-keys")
    generate_alipay_keys(other)
    read = lambda d, name: (d / f"alipay_{name}.pem").read_text()  # noqa: E731
    return {
        "app_private": read(directory, "app_private_key"),
        "app_public": read(directory, "app_public_key"),
        "gateway_private": read(directory, "gateway_private_key"),
        "gateway_public": read(directory, "gateway_public_key"),
        "other_private": read(other, "app_private_key"),
        "other_public": read(other, "app_public_key"),
        "dir": str(directory),
    }


def make_app(base_url: str | None, settings: dict[str, Any] | None = None) -> SimpleNamespace:
    """A stand-in for ``jitcore.app.App``: what the provider and the sandbox read from it."""
    return SimpleNamespace(appId=MERCHANT_APP, title="Shop", baseUrl=base_url, settings=settings or {})


def make_provider(app: Any, keys: dict[str, str], **config: Any) -> AliPayType:
    """Load ``pays.AliPayType`` the way jitcore does (``jit_load``), with a stand-in define."""
    full_name = config.pop("fullName", "pays.AliPayType")
    # the Type's own defaults first, as jitcore merges them
    merged = dict(yaml.safe_load(E_YAML.read_text())["config"])
    merged.update({"appId": APP_ID, "privateKey": keys["app_private"], "alipayPublicKey": keys["gateway_public"]})
    merged.update(config)
    merged = {k: v for k, v in merged.items() if v is not None}
    define = SimpleNamespace(fullName=full_name, config=merged)
    provider = AliPayType.jit_load(app, define)  # type: ignore[arg-type]
    assert isinstance(provider, AliPayType)
    return provider


def sandbox_settings(keys: dict[str, str], **extra: Any) -> dict[str, Any]:
    settings = {"appId": APP_ID, "sellerId": SELLER_ID, "appPublicKey": keys["app_public"],
                "gatewayPrivateKey": keys["gateway_private"], "merchantName": "演示商户 Demo Shop",
                "notifyRetryDelays": [0, 0.05, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2], "notifyTimeout": 2}
    settings.update(extra)
    return settings


def order(order_id: str, amount: str = "9.99", subject: str = "测试商品 Test item") -> OrderView:
    return OrderView(orderId=order_id, subject=subject, amount=Decimal(amount), createdAt=datetime.now(timezone.utc))


@dataclass
class Merchant:
    """The merchant side of an end-to-end test: the server (sandbox + notify endpoint), the provider and what the
    notify endpoint saw."""

    url: str
    app: Any
    provider: AliPayType
    sandbox: AlipaySandbox
    notified: list[TradeState] = field(default_factory=list)
    rejected: list[PayError] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    #: how many times the notify endpoint should still answer "failure"
    fail_next: int = 0

    def wait_notified(self, count: int = 1, timeout: float = 10) -> list[TradeState]:
        deadline = time.monotonic() + timeout
        while len(self.notified) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} notification(s), got {len(self.notified)}; "
                                     f"rejected: {self.rejected}")
            time.sleep(0.02)
        return self.notified


@pytest.fixture
def merchant(loopback: Any, keys: dict[str, str]) -> Merchant:
    """A Starlette app on loopback with the Alipay sandbox routes (from ``alipay_routes(app)``) and the merchant's
    notify endpoint, which parses and verifies with the provider and answers with its ``notify_reply``."""
    holder: dict[str, Merchant] = {}

    async def notify(request: Request) -> Response:
        m = holder["m"]
        body = await request.body()
        m.bodies.append(body)
        provider = m.provider
        try:
            fields = provider.parse_notify_body(body, request.headers.get("content-type"))
            state = provider.verify_notify(fields)
        except PayError as exc:
            m.rejected.append(exc)
            reply = provider.notify_reply(False)
        else:
            if m.fail_next > 0:
                m.fail_next -= 1
                reply = provider.notify_reply(False)
            else:
                m.notified.append(state)
                reply = provider.notify_reply(True)
        return Response(reply.body, status_code=reply.status, media_type=reply.mediaType)

    def factory(url: str) -> Starlette:
        app = make_app(url, {"sandbox": {"alipay": sandbox_settings(keys)}})
        routes: list[BaseRoute] = alipay_routes(app)
        sandbox = routes[0].endpoint.__self__  # type: ignore[attr-defined]
        provider = make_provider(app, keys, gateway=f"{url}/sandbox/alipay/gateway.do", sellerId=SELLER_ID,
                                 returnUrl=f"{url}/shop/paid")
        holder["m"] = Merchant(url=url, app=app, provider=provider, sandbox=sandbox)
        routes.append(Route(f"/api/{MERCHANT_APP}/pays/services/PaySvc/alipayNotify", notify, methods=["POST"]))
        return Starlette(routes=routes)

    loopback(factory)
    m = holder["m"]
    yield m
    m.sandbox.stop()
    m.provider.gateway.close()


@pytest.fixture
def provider_factory(keys: dict[str, str]) -> Callable[..., AliPayType]:
    """``provider_factory(gateway=..., **config)`` for tests that need a provider against their own server."""
    made: list[AliPayType] = []

    def build(base_url: str | None = "http://127.0.0.1:9", **config: Any) -> AliPayType:
        provider = make_provider(make_app(base_url), keys, **config)
        made.append(provider)
        return provider

    yield build
    for provider in made:
        provider.gateway.close()


def keys_dir(keys: dict[str, str]) -> Path:
    return Path(keys["dir"])
