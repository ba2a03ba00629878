"""A live app for tests: sandbox keys, an app YAML pointing both providers at the sandbox, and a real uvicorn server
on a free loopback port serving the app's ASGI application (notify callbacks, sandbox gateways, cashier, API)."""

from __future__ import annotations

import asyncio
import html
import re
import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urljoin

import httpx
import pytest
import uvicorn
import yaml

import jitcore
from jitcore.app import App
from jitcore.defines import deep_merge
from jitcore.http import build_asgi_app

API_KEY = "test-api-key-0123456789abcdef"
ALIPAY_APP_ID = "2021000000000001"
ALIPAY_SELLER_ID = "2088000000000001"


def signed_alipay_payment(order_id: str, amount: str, trade_no: str, key: Any, notify_id: str = "n1") -> dict[str, str]:
    """The fields of an Alipay ``TRADE_SUCCESS`` notification paying ``amount`` for ``order_id`` to the sandbox
    merchant (``ALIPAY_APP_ID``, ``ALIPAY_SELLER_ID``), signed with ``key`` (the sandbox gateway's private key)."""
    from datetime import datetime

    from elements.pays.AliPayType.signing import sign_notify

    fields = {"notify_time": datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "notify_type": "trade_status_sync",
              "notify_id": notify_id, "app_id": ALIPAY_APP_ID, "charset": "utf-8", "version": "1.0",
              "trade_no": trade_no, "out_trade_no": order_id, "trade_status": "TRADE_SUCCESS",
              "total_amount": amount, "seller_id": ALIPAY_SELLER_ID, "gmt_payment": "2026-11-25 12:00:00"}
    return sign_notify(fields, key)
WECHAT_APP_ID = "wx0000000000000001"
WECHAT_MCH_ID = "1900000001"


def generate_sandbox_keys(directory: Path) -> None:
    """Fresh sandbox keys (Alipay app and gateway key pairs, the WeChat Pay API key) in ``directory``."""
    from jitpay_sandbox.alipay import generate_alipay_keys
    from jitpay_sandbox.wechat import generate_wechat_key

    directory.mkdir(parents=True, exist_ok=True)
    generate_alipay_keys(directory)
    generate_wechat_key(directory)


def sandbox_app_config(base_url: str, keys: str = ".sandbox", *, database: str | None = None,
                       wechat_sign_type: str = "MD5", plugins: list[str] | None = None,
                       elements: dict[str, Any] | None = None, settings: dict[str, Any] | None = None,
                       omit: tuple[str, ...] = ()) -> dict[str, Any]:
    """An app YAML (as a dict) with both providers configured against the sandbox served at ``base_url``;
    ``elements`` and ``settings`` merge over it; element names in ``omit`` are left unconfigured."""
    config: dict[str, Any] = {
        "appId": "shop",
        "title": "Test shop",
        "baseUrl": base_url,
        "apiKeys": [API_KEY],
        "plugins": plugins or [],
        "settings": {"sandbox": {
            "alipay": {"appId": ALIPAY_APP_ID, "sellerId": ALIPAY_SELLER_ID,
                       "appPublicKey": {"$file": f"{keys}/alipay_app_public_key.pem"},
                       "gatewayPrivateKey": {"$file": f"{keys}/alipay_gateway_private_key.pem"}},
            "wechat": {"appId": WECHAT_APP_ID, "mchId": WECHAT_MCH_ID,
                       "apiKey": {"$file": f"{keys}/wechat_api_key.txt"}},
        }},
        "elements": {
            "pays.AliPayType": {"config": {
                "appId": ALIPAY_APP_ID, "sellerId": ALIPAY_SELLER_ID,
                "privateKey": {"$file": f"{keys}/alipay_app_private_key.pem"},
                "alipayPublicKey": {"$file": f"{keys}/alipay_gateway_public_key.pem"},
                "gateway": f"{base_url}/sandbox/alipay/gateway.do", "timeout": 5}},
            "pays.WechatPayType": {"config": {
                "appId": WECHAT_APP_ID, "mchId": WECHAT_MCH_ID, "signType": wechat_sign_type,
                "apiKey": {"$file": f"{keys}/wechat_api_key.txt"},
                "gateway": f"{base_url}/sandbox/wechat", "timeout": 5}},
        },
    }
    if database:
        config["database"] = database
    if settings:
        config["settings"] = deep_merge(config["settings"], settings)
    if elements:
        config["elements"] = deep_merge(config["elements"], elements)
    for name in omit:
        config["elements"].pop(name, None)
    return config


class ServerThread:
    """A uvicorn server for an ASGI app on a loopback socket (a free port unless one is given), in a background
    thread. ``start``/``stop``, or use it as a context manager."""

    def __init__(self, asgi: Any, sock: socket.socket | None = None) -> None:
        self.sock = sock or bind_loopback()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning", lifespan="off", access_log=False,
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Shut the server down (gracefully for a second, then forced) and close its socket once it has stopped
        using it (closed under a server still shutting down, the socket made its thread fail)."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=20)
        if not self.thread.is_alive():
            self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def bind_loopback() -> socket.socket:
    """A listening-ready socket on a free port of 127.0.0.1. Its protocol is TCP by name: asyncio sets
    ``TCP_NODELAY`` only on connections of such a socket, and without it every response waited 40 ms for the
    client's delayed ACK (see ``jitcore.listeners.share_tcp_socket``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class LiveApp:
    """A loaded app served over real HTTP."""

    app: App
    url: str
    yaml_path: Path

    @property
    def pay_service(self) -> Any:
        """``app.getElement("pays.services.PaySvc")``."""
        return self.app.getElement("pays.services.PaySvc")

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client for the server, with the API key."""
        headers = {"Authorization": f"Bearer {API_KEY}", **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, **kwargs)


@contextlib.contextmanager
def start_live_app(directory: Path, *, run_jobs: bool = True, **options: Any) -> Iterator[LiveApp]:
    """Write an app YAML into ``directory`` (keys in ``directory/.sandbox``), load it and serve it, with the app's
    job runner in the background as ``jit serve`` has it (unless ``run_jobs`` is false: the test then runs the jobs
    itself). Options go to :func:`sandbox_app_config`."""
    generate_sandbox_keys(directory / ".sandbox")
    sock = bind_loopback()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yaml_path = directory / "app.yaml"
    yaml_path.write_text(yaml.safe_dump(sandbox_app_config(url, **options), sort_keys=False))
    app = jitcore.load_app(yaml_path)
    server = ServerThread(build_asgi_app(app), sock)
    server.start()
    if run_jobs:
        app.jobs.start()
    try:
        yield LiveApp(app, url, yaml_path)
    finally:
        app.close()  # first: the job runner may still talk to the sandbox
        server.stop()


def pay_in_wallet(pay_url: str) -> None:
    """What the buyer does in the sandbox wallet: open the payment (scan the QR code / follow the link), press pay."""
    page = httpx.get(pay_url, timeout=10, follow_redirects=True)
    assert page.status_code == 200, page.text
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action, page.text
    paid = httpx.post(urljoin(str(page.url), html.unescape(action.group(1))), timeout=10)
    assert paid.status_code in (200, 303), paid.text


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def live_app(tmp_path: Path) -> Iterator[LiveApp]:
    """The sandbox app on embedded SQLite, served on a free loopback port."""
    with start_live_app(tmp_path) as live:
        yield live
