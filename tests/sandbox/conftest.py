"""A shop for the sandbox tests: both simulators (Alipay and WeChat Pay v2) and the shop's two notify endpoints on one
real uvicorn server on loopback, and both providers' production code pointed at it. The notify endpoints parse and
verify with the providers and record what arrived."""

from __future__ import annotations

import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from elements.pays.AliPayType import AliPayType
from elements.pays.errors import PayError
from elements.pays.Meta import OrderView, TradeState
from elements.pays.WechatPayType import WechatPayType
from jitpay_sandbox.alipay import AlipaySandbox, alipay_routes, generate_alipay_keys
from jitpay_sandbox.wechat import WechatSandbox, wechat_routes
from tests.elements.pays.alipay.conftest import make_provider as make_alipay
from tests.elements.pays.wechat.conftest import make_provider as make_wechat
from tests.support.live import ServerThread, bind_loopback

ALIPAY_APP_ID = "2021000000000001"
SELLER_ID = "2088000000000001"
WECHAT_APP_ID = "wx0000000000000001"
MCH_ID = "1900000001"
ALIPAY_NOTIFY = "/api/shop/pays/services/PaySvc/alipayNotify"
WECHAT_NOTIFY = "/api/shop/pays/services/PaySvc/wechatNotify"

_counter = iter(range(10**9))


def new_order(amount: str = "12.34", subject: str = "沙箱测试 Sandbox test", *,
              expires_in: timedelta | None = None, expiresAt: datetime | None = None) -> OrderView:
    """A fresh order (unique id); ``expires_in`` sets ``expiresAt`` relative to now."""
    now = datetime.now(timezone.utc)
    if expires_in is not None:
        expiresAt = now + expires_in
    return OrderView(orderId=f"S{time.time_ns()}{next(_counter)}"[:32], subject=subject, amount=Decimal(amount),
                     createdAt=now, expiresAt=expiresAt)


@dataclass
class Received:
    """One notification as the shop's endpoint saw it."""

    provider: str
    body: bytes
    contentType: str | None
    fields: dict[str, str] | None = None
    state: TradeState | None = None
    error: PayError | None = None


@dataclass
class Shop:
    url: str
    app: SimpleNamespace
    alipay: AliPayType
    wechat: WechatPayType
    alipaySandbox: AlipaySandbox
    wechatSandbox: WechatSandbox
    wechatApiKey: str
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def provider(self, name: str) -> Any:
        return self.alipay if name == "alipay" else self.wechat

    def sandbox(self, name: str) -> Any:
        return self.alipaySandbox if name == "alipay" else self.wechatSandbox

    def notifications(self, provider: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.received if provider is None or r.provider == provider]

    def wait_notified(self, count: int, provider: str | None = None, timeout: float = 10) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(got := self.notifications(provider)) < count:
            assert time.monotonic() < deadline, f"expected {count} notifications, got {got}"
            time.sleep(0.02)
        return got


def _receiver(shop_holder: dict[str, Shop], provider: str) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        shop = shop_holder["shop"]
        p = shop.provider(provider)
        body = await request.body()
        record = Received(provider=provider, body=body, contentType=request.headers.get("content-type"))
        try:
            record.fields = p.parse_notify_body(body, record.contentType)
            record.state = p.verify_notify(record.fields)
            reply = p.notify_reply(True)
        except PayError as exc:
            record.error = exc
            reply = p.notify_reply(False, exc.message)
        with shop.lock:
            shop.received.append(record)
        return Response(reply.body, status_code=reply.status, media_type=reply.mediaType)

    return endpoint


@pytest.fixture(scope="session")
def alipay_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("sandbox-alipay-keys")
    generate_alipay_keys(directory)
    return {name: (directory / f"alipay_{name}.pem").read_text()
            for name in ("app_private_key", "app_public_key", "gateway_private_key", "gateway_public_key")}


@pytest.fixture
def shop_factory(tmp_path: Path, alipay_keys: dict[str, str]) -> Iterator[Callable[..., Shop]]:
    """``shop_factory(alipay={...}, wechat={...}, wechatSignType="MD5")``: a started shop; the dicts are sandbox
    settings merged over fast notification retries."""
    servers: list[ServerThread] = []
    shops: list[Shop] = []

    def build(*, alipay: dict[str, Any] | None = None, wechat: dict[str, Any] | None = None,
              wechatSignType: str = "MD5") -> Shop:
        sock = bind_loopback()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        api_key = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
        settings = {"sandbox": {
            "alipay": {"appId": ALIPAY_APP_ID, "sellerId": SELLER_ID, "appPublicKey": alipay_keys["app_public_key"],
                       "gatewayPrivateKey": alipay_keys["gateway_private_key"],
                       "notifyRetryDelays": [0, 0.05, 0.1, 0.2], "notifyTimeout": 2, **(alipay or {})},
            "wechat": {"appId": WECHAT_APP_ID, "mchId": MCH_ID, "apiKey": api_key,
                       "notifyRetryDelays": [0.05, 0.1, 0.2], "notifyTimeout": 2, **(wechat or {})},
        }}
        app = SimpleNamespace(appId="shop", title="沙箱商店 Sandbox shop", baseUrl=url, root=tmp_path,
                              settings=settings)
        a_routes: list[BaseRoute] = alipay_routes(app)
        w_routes: list[BaseRoute] = wechat_routes(app)
        holder: dict[str, Shop] = {}
        keys = {"app_private": alipay_keys["app_private_key"], "gateway_public": alipay_keys["gateway_public_key"]}
        shop = Shop(url=url, app=app,
                    alipay=make_alipay(app, keys, gateway=f"{url}/sandbox/alipay/gateway.do", sellerId=SELLER_ID,
                                       appId=ALIPAY_APP_ID),
                    wechat=make_wechat(app, appId=WECHAT_APP_ID, mchId=MCH_ID, apiKey=api_key,
                                       signType=wechatSignType, gateway=f"{url}/sandbox/wechat", timeout=5),
                    alipaySandbox=a_routes[0].endpoint.__self__,  # type: ignore[attr-defined]
                    wechatSandbox=next(r.endpoint.__self__ for r in w_routes  # type: ignore[attr-defined]
                                       if hasattr(r.endpoint, "__self__")),
                    wechatApiKey=api_key)
        holder["shop"] = shop
        routes = [*a_routes, *w_routes, Route(ALIPAY_NOTIFY, _receiver(holder, "alipay"), methods=["POST"]),
                  Route(WECHAT_NOTIFY, _receiver(holder, "wechat"), methods=["POST"])]
        servers.append(ServerThread(Starlette(routes=routes), sock).start())
        shops.append(shop)
        return shop

    yield build
    for shop in shops:
        shop.alipaySandbox.stop()
        shop.alipay.gateway.close()
    for server in servers:
        server.stop()


@pytest.fixture
def shop(shop_factory: Callable[..., Shop]) -> Shop:
    """Both sandboxes posting their notifications (``notifyMode: send``)."""
    return shop_factory()


@pytest.fixture
def held(shop_factory: Callable[..., Shop]) -> Shop:
    """Both sandboxes holding their notifications (``notifyMode: hold``) for the test to deliver."""
    return shop_factory(alipay={"notifyMode": "hold"}, wechat={"notifyMode": "hold"})
