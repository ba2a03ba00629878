"""No secret in logs (issue 11, item 4): ``jit serve`` as a buyer's cashier uses it, with uvicorn's access log on as
``jit serve`` has it, and every line it wrote is read back: the cashier token never appears, though every request is
logged."""

from __future__ import annotations

import logging
import logging.config
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from jitcore.http import RedactSecrets, redact_access_log, redact_url
from tests.http.test_api import sandbox_secrets
from tests.support.live import API_KEY, LiveApp, generate_sandbox_keys, sandbox_app_config

JIT = str(Path(sys.executable).parent / "jit")
SVC = "/api/shop/pays/services/PaySvc"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_jit_serve_never_logs_the_cashier_token(tmp_path: Path) -> None:
    generate_sandbox_keys(tmp_path / ".sandbox")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(sandbox_app_config(url), sort_keys=False))
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        server = subprocess.Popen([JIT, "serve", "app.yaml", "--port", str(port)], cwd=tmp_path, stdout=out,
                                  stderr=err)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"{url}/healthz", timeout=2).status_code == 200
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, stderr.read_text()
                time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {API_KEY}"}) as api:
            order = api.post(f"{SVC}/create", json={"subject": "Logged?", "amount": "5.00"}).json()
        link = urlsplit(order["cashierUrl"])
        token = link.query.removeprefix("token=")
        assert link.query == f"token={token}" and len(token) >= 32
        with httpx.Client(base_url=url, timeout=10) as buyer:
            # the buyer opens the link, then the page polls and pays with the token in its header
            page = buyer.get(f"{link.path}?{link.query}")
            assert page.status_code == 200 and "Logged?" in page.text
            for _ in range(3):
                status = buyer.get(f"{link.path}/status", headers={"X-Cashier-Token": token})
                assert status.status_code == 200 and status.json()["status"] == "pending"
            paid = buyer.post(f"{link.path}/pay", headers={"X-Cashier-Token": token},
                              json={"fullName": "pays.AliPayType", "payType": "pc"})
            assert paid.status_code == 200, paid.text
            # a page of an older version, or a script of the merchant's, may still send ?token=: accepted, not logged
            assert buyer.get(f"{link.path}/status", params={"token": token}).status_code == 200
            assert buyer.get(f"{link.path}/status?%74oken={token}").status_code == 200
            # a wrong token (it may be another order's) is not logged either
            assert buyer.get(link.path, params={"token": token[::-1]}).status_code == 404
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    logged = stdout.read_text() + stderr.read_text()
    path = link.path
    # access logging was on: every request is there, with its status
    assert f'"GET {path}?token=[redacted] HTTP/1.1" 200' in logged, logged
    assert logged.count(f'"GET {path}/status HTTP/1.1" 200') == 3, logged
    assert f'"POST {path}/pay HTTP/1.1" 200' in logged
    assert f'"GET {path}/status?token=[redacted] HTTP/1.1" 200' in logged
    assert f'"GET {path}/status?%74oken=[redacted] HTTP/1.1" 200' in logged
    assert f'"GET {path}?token=[redacted] HTTP/1.1" 404' in logged
    # and no secret is anywhere in it
    assert token not in logged and token[::-1] not in logged
    live = LiveApp(app=None, url=url, yaml_path=tmp_path / "app.yaml")  # type: ignore[arg-type]
    for secret in sandbox_secrets(live):
        assert secret not in logged


@pytest.mark.parametrize("line, expected", [
    ("/pays/cashier/X?token=abc", "/pays/cashier/X?token=[redacted]"),
    ("/a?x=1&token=abc&y=2", "/a?x=1&token=[redacted]&y=2"),
    ("/a?%74oken=abc&TOKEN=def", "/a?%74oken=[redacted]&TOKEN=[redacted]"),
    ("/a?access_token=abc&api_key=k&password=p", "/a?access_token=[redacted]&api_key=[redacted]&password=[redacted]"),
    ("GET /a?token=abc HTTP/1.1", "GET /a?token=[redacted] HTTP/1.1"),
    ("/a?tokens=1&token=", "/a?tokens=1&token="),
    ("/pays/cashier/X/status", "/pays/cashier/X/status"),
])
def test_redact_url(line: str, expected: str) -> None:
    assert redact_url(line) == expected


def test_the_filter_survives_uvicorns_logging_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn configures its loggers with dictConfig when it starts, after the app was built: the filter stays."""
    from uvicorn.config import LOGGING_CONFIG

    redact_access_log()
    redact_access_log()  # once per process, however often apps are built
    access = logging.getLogger("uvicorn.access")
    assert sum(isinstance(f, RedactSecrets) for f in access.filters) == 1
    logging.config.dictConfig(LOGGING_CONFIG)
    try:
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/pays/cashier/X?token=s3cret", "1.1", 200)
        assert "s3cret" not in capsys.readouterr().out
    finally:
        access.handlers.clear()
        access.propagate = True
