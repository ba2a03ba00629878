"""Fixtures for the WeChat Pay v2 provider tests: real uvicorn servers on loopback, a stand-in app object, and a
provider built through the element loader from the Type's own ``e.yaml`` defaults."""

from __future__ import annotations

import secrets
import string
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[4]
try:  # installed by `make venv`; fall back to the source tree
    import jitpay_sandbox.wechat  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(ROOT / "plugins" / "jitpay-sandbox"))

from elements.pays.errors import NotifyInvalid, SignatureInvalid  # noqa: E402
from elements.pays.WechatPayType import WechatPayType  # noqa: E402
from jitpay_sandbox.wechat import WechatSandbox, WechatSandboxSettings  # noqa: E402
from tests.support.live import ServerThread as LoopbackServer  # noqa: E402

E_YAML = ROOT / "elements" / "pays" / "WechatPayType" / "e.yaml"
APP_ID = "wx0000000000000001"
MCH_ID = "1900000001"
NOTIFY_PATH = "/api/shop/pays/services/PaySvc/wechatNotify"


def random_key() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))


def make_app(root: Path, baseUrl: str = "", **settings: Any) -> SimpleNamespace:
    """A stand-in for ``jitcore``'s App: the attributes the provider and the sandbox read."""
    return SimpleNamespace(appId="shop", title="演示商店 Demo shop", baseUrl=baseUrl, root=root, settings=settings)


def make_provider(app: Any, **config: Any) -> WechatPayType:
    """``pays.WechatPayType`` loaded the way the runtime loads it: ``e.yaml`` defaults under the given config."""
    defaults = yaml.safe_load(E_YAML.read_text(encoding="utf-8"))["config"]
    define = SimpleNamespace(fullName="pays.WechatPayType", config={**defaults, **config})
    return WechatPayType.jit_load(app, define)  # type: ignore[arg-type]


@dataclass
class NotifyReceiver:
    """Stands in for PaySvc's notify route: parse, verify, record, reply. ``fail_first`` makes it answer FAIL (or
    HTTP 500) to the first n deliveries, to exercise the sandbox's retries."""

    provider: WechatPayType | None = None
    fail_first: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    async def endpoint(self, request: Request) -> Response:
        assert self.provider is not None
        body = await request.body()
        record: dict[str, Any] = {"body": body}
        self.received.append(record)
        if len(self.received) <= self.fail_first:
            if len(self.received) % 2:
                reply = self.provider.notify_reply(False, "busy")
                return Response(reply.body, media_type=reply.mediaType)
            return Response("oops", status_code=500)
        try:
            fields = self.provider.parse_notify_body(body, request.headers.get("content-type"))
            record["fields"] = fields
            record["state"] = self.provider.verify_notify(fields)
            reply = self.provider.notify_reply(True)
        except (SignatureInvalid, NotifyInvalid) as exc:
            record["error"] = exc
            reply = self.provider.notify_reply(False, exc.message)
        self.event.set()
        return Response(reply.body, media_type=reply.mediaType, status_code=reply.status)

    def wait(self, timeout: float = 10) -> dict[str, Any]:
        assert self.event.wait(timeout), "no notification arrived"
        return next(r for r in reversed(self.received) if "fields" in r or "error" in r)


@dataclass
class SandboxWorld:
    """One loopback server carrying the WeChat sandbox and a notify receiver, and a provider pointed at it."""

    server: LoopbackServer
    sandbox: WechatSandbox
    receiver: NotifyReceiver
    app: SimpleNamespace
    apiKey: str
    signType: str
    make: Callable[..., WechatPayType]

    @property
    def provider(self) -> WechatPayType:
        assert self.receiver.provider is not None
        return self.receiver.provider


@pytest.fixture(params=["MD5", "HMAC-SHA256"])
def sign_type(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def world_factory(tmp_path: Path) -> Iterator[Callable[..., SandboxWorld]]:
    """Build a sandbox world; keyword arguments go to the sandbox settings (e.g. ``closeMinAgeSeconds``)."""
    servers: list[LoopbackServer] = []

    def build(signType: str = "MD5", **sandbox_settings: Any) -> SandboxWorld:
        apiKey = random_key()
        settings = {"appId": APP_ID, "mchId": MCH_ID, "apiKey": apiKey, "notifyRetryDelays": [0.05, 0.1, 0.2],
                    "notifyTimeout": 2, **sandbox_settings}
        app = make_app(tmp_path, sandbox={"wechat": settings})
        sandbox = WechatSandbox(WechatSandboxSettings.from_app(app))
        receiver = NotifyReceiver()
        asgi = Starlette(routes=[*sandbox.routes(), Route(NOTIFY_PATH, receiver.endpoint, methods=["POST"])])
        server = LoopbackServer(asgi).__enter__()
        servers.append(server)
        app.baseUrl = server.url

        def make(**config: Any) -> WechatPayType:
            base = {"appId": APP_ID, "mchId": MCH_ID, "apiKey": apiKey, "signType": signType,
                    "gateway": f"{server.url}/sandbox/wechat", "timeout": 5}
            return make_provider(app, **{**base, **config})

        receiver.provider = make()
        return SandboxWorld(server=server, sandbox=sandbox, receiver=receiver, app=app, apiKey=apiKey,
                            signType=signType, make=make)

    yield build
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture
def world(world_factory: Callable[..., SandboxWorld], sign_type: str) -> SandboxWorld:
    return world_factory(sign_type)
