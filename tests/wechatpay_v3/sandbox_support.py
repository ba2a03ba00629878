"""The WeChat Pay v3 sandbox for tests: keys from ``generate_wechat_v3_keys`` (what ``jit-sandbox init`` writes), the
sandbox's settings and the provider's config in each key mode, and a small harness serving the sandbox with a
callback receiver on a real loopback server."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
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

from jitpay_sandbox.wechat_v3 import KEY_FILES, PREFIX, WechatV3Sandbox, generate_wechat_v3_keys, wechat_v3_routes
from tests.support.live import LiveApp, ServerThread, bind_loopback

APP_ID = "wx0000000000000003"
MCH_ID = "1900000003"
PUBLIC_KEY_ID = "PUB_KEY_ID_0119000000032026112700000000000001"
RECEIVER = "/callbacks/wechatv3"
MODES = ("publicKey", "certificate", "both")


def read(keys_dir: Path, name: str) -> str:
    return (keys_dir / KEY_FILES[name]).read_text()


def sandbox_settings(keys_dir: Path | str, mode: str = "publicKey", *, files: bool = False,
                     **extra: Any) -> dict[str, Any]:
    """``settings.sandbox.wechatV3`` for ``mode``; ``files`` writes ``{$file: ...}`` references (for app YAML)
    instead of the keys' text."""
    def value(name: str) -> Any:
        return {"$file": f"{keys_dir}/{KEY_FILES[name]}"} if files else read(Path(keys_dir), name)

    settings: dict[str, Any] = {"appId": APP_ID, "mchId": MCH_ID, "apiV3Key": value("apiV3Key"),
                                "merchantCertificate": value("merchantCertificate"),
                                "notifyRetryDelays": [0.05, 0.1, 0.2], "notifyTimeout": 2, "timeExpireMinSeconds": 0}
    if mode in ("publicKey", "both"):
        settings.update(publicKeyId=PUBLIC_KEY_ID, publicKeyPrivateKey=value("publicKeyPrivateKey"))
    if mode in ("certificate", "both"):
        settings.update(platformPrivateKey=value("platformPrivateKey"),
                        platformCertificate=value("platformCertificate"))
    settings.update(extra)
    return settings


def provider_config(keys_dir: Path | str, base_url: str, mode: str = "publicKey", *, files: bool = False,
                    **extra: Any) -> dict[str, Any]:
    """The ``pays.WechatPayV3Type`` config against the sandbox at ``base_url`` in ``mode``."""
    def value(name: str) -> Any:
        return {"$file": f"{keys_dir}/{KEY_FILES[name]}"} if files else read(Path(keys_dir), name)

    config: dict[str, Any] = {"appId": APP_ID, "mchId": MCH_ID, "apiV3Key": value("apiV3Key"),
                              "merchantSerialNo": value("merchantSerialNo"), "privateKey": value("merchantPrivateKey"),
                              "gateway": f"{base_url}{PREFIX}", "timeout": 5}
    if mode in ("publicKey", "both"):
        config.update(wechatpayPublicKey=value("publicKey"), wechatpayPublicKeyId=PUBLIC_KEY_ID)
    if mode in ("certificate", "both"):
        config["platformCertificates"] = True
    config.update(extra)
    return config


@pytest.fixture(scope="session")
def v3_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One set of sandbox keys for the session (RSA key generation is the slow part)."""
    directory = tmp_path_factory.mktemp("wechatpay-v3-keys")
    generate_wechat_v3_keys(directory, MCH_ID)
    return directory


def copy_keys(source: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in KEY_FILES.values():
        shutil.copy2(source / name, directory / name)
    return directory


@dataclass
class Callback:
    """One callback as the receiver got it."""

    body: bytes
    headers: dict[str, str]


@dataclass
class Harness:
    """The sandbox served on loopback, beside ``RECEIVER`` (a callback endpoint answering with ``replies``, 204 once
    they run out)."""

    url: str
    sandbox: WechatV3Sandbox
    keys: Path
    mode: str
    received: list[Callback] = field(default_factory=list)
    replies: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def gateway(self) -> str:
        return f"{self.url}{PREFIX}"

    @property
    def notify_url(self) -> str:
        return f"{self.url}{RECEIVER}"

    def callbacks(self) -> list[Callback]:
        with self.lock:
            return list(self.received)

    def wait_callbacks(self, count: int, timeout: float = 10) -> list[Callback]:
        deadline = time.monotonic() + timeout
        while len(got := self.callbacks()) < count:
            assert time.monotonic() < deadline, f"expected {count} callbacks, got {len(got)}"
            time.sleep(0.02)
        return got


@pytest.fixture
def harness_factory(v3_keys: Path) -> Iterator[Callable[..., Harness]]:
    """``harness_factory(mode="publicKey", **sandbox settings)``: a started sandbox with a callback receiver."""
    servers: list[ServerThread] = []
    harnesses: list[Harness] = []

    def build(mode: str = "publicKey", **extra: Any) -> Harness:
        sock = bind_loopback()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = SimpleNamespace(appId="shop", title="Shop", baseUrl=url,
                              settings={"sandbox": {"wechatV3": sandbox_settings(v3_keys, mode, **extra)}})
        routes = wechat_v3_routes(app)
        sandbox = next(r.endpoint.__self__ for r in routes  # type: ignore[attr-defined]
                       if hasattr(r.endpoint, "__self__"))
        holder: dict[str, Harness] = {}

        async def receive(request: Request) -> Response:
            h = holder["h"]
            body = await request.body()
            with h.lock:
                h.received.append(Callback(body, dict(request.headers)))
                status = h.replies.pop(0) if h.replies else 204
            return Response(b"" if status == 204 else b'{"code":"FAIL","message":"not now"}', status_code=status)

        harness = Harness(url=url, sandbox=sandbox, keys=v3_keys, mode=mode)
        holder["h"] = harness
        servers.append(ServerThread(Starlette(routes=[*routes, Route(RECEIVER, receive, methods=["POST"])]),
                                    sock).start())
        harnesses.append(harness)
        return harness

    yield build
    for h in harnesses:
        h.sandbox.stop()
    for server in servers:
        server.stop()


def sandbox_provider(h: Harness, mode: str | None = None, *, app: Any = None, **overrides: Any) -> Any:
    """``pays.WechatPayV3Type`` loaded the way the runtime loads it (``e.yaml`` defaults under the config), against
    the harness's sandbox, notifying the harness's receiver."""
    from jitpay_wechatpay_v3.provider import WechatPayV3Type

    from .conftest import e_yaml_defaults, make_app

    config = {**e_yaml_defaults(), **provider_config(h.keys, h.url, mode or h.mode),
              "notifyUrl": h.notify_url, **overrides}
    define = SimpleNamespace(fullName="pays.WechatPayV3Type", config={k: v for k, v in config.items() if v is not None})
    return WechatPayV3Type.jit_load(app or make_app(h.url), define)  # type: ignore[arg-type]


# -- a live app (PaySvc, the generic notify route, the sandbox) on a real server ---------------------------------------
@contextlib.contextmanager
def start_v3_app(directory: Path, keys: Path, mode: str = "publicKey", *, keep_v2: bool = False,
                 sandbox: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                 settings: dict[str, Any] | None = None, run_jobs: bool = True) -> Iterator[LiveApp]:
    """The test shop with ``pays.WechatPayV3Type`` against the v3 sandbox in ``mode`` (keys copied from ``keys`` into
    ``directory/.sandbox``, read with ``{$file: ...}``), served on loopback with its job runner; ``keep_v2`` keeps
    ``pays.WechatPayType`` configured too (a merchant moving from v2 to v3)."""
    from tests.support.live import generate_sandbox_keys, sandbox_app_config

    import jitcore
    from jitcore.http import build_asgi_app

    generate_sandbox_keys(directory / ".sandbox")
    copy_keys(keys, directory / ".sandbox")
    sock = bind_loopback()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    v3_settings = {"sandbox": {"wechatV3": sandbox_settings(".sandbox", mode, files=True, **(sandbox or {}))}}
    elements = {"pays.WechatPayV3Type": {"config": provider_config(".sandbox", url, mode, files=True,
                                                                   **(config or {}))}}
    options = sandbox_app_config(url, settings={**v3_settings, **(settings or {})}, elements=elements,
                                 omit=() if keep_v2 else ("pays.WechatPayType",))
    yaml_path = directory / "app.yaml"
    yaml_path.write_text(yaml.safe_dump(options, sort_keys=False, allow_unicode=True))
    app = jitcore.load_app(yaml_path)
    server = ServerThread(build_asgi_app(app), sock)
    server.start()
    if run_jobs:
        app.jobs.start()
    try:
        yield LiveApp(app, url, yaml_path)
    finally:
        from jitpay_sandbox import sandbox_of

        app.close()
        sandbox_of(app, "wechatV3").stop()  # no callback retries into a server that is gone
        server.stop()
