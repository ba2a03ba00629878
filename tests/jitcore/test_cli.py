"""The ``jit`` command: elements, call, and clean one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

JIT = str(Path(sys.executable).parent / "jit")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JIT, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(text)
    return path


def test_elements_lists_kind_type_layer_and_overrides(tmp_path: Path) -> None:
    write(tmp_path, "appId: shop\nelements:\n  pays.services.PaySvc:\n    title: Our payments\n"
                    "  shop.services.Hello:\n    type: acme.services.HelloSvc\n")
    result = run("elements", "app.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert lines["pays.services.PaySvc"][1:5] == ["Instance", "services.NormalType", "app", "official"]
    assert lines["pays.AliPayType"][1:5] == ["Type", "pays.Meta", "official", "-"]
    assert lines["services.Meta"][1:3] == ["Meta", "-"]
    assert lines["acme.services.HelloSvc"][3] == "installed:acme"
    assert lines["shop.services.Hello"][1:4] == ["Instance", "acme.services.HelloSvc", "app"]


def test_call_prints_json(tmp_path: Path) -> None:
    write(tmp_path, "appId: shop\n")
    result = run("call", "app.yaml", "acme.services.HelloSvc.hello", "name=Ada", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"greeting": "Hello, Ada!", "from": "acme"}
    created = run("call", "app.yaml", "pays.services.PaySvc.create", "subject=VIP", "amount=99.99",
                  "orderId=CLI_ORDER_1", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    order = json.loads(created.stdout)
    assert order["amount"] == "99.99" and order["status"] == "pending"
    queried = run("call", "app.yaml", "pays.services.PaySvc.query", "orderId=CLI_ORDER_1", cwd=tmp_path)
    assert json.loads(queried.stdout)["orderId"] == "CLI_ORDER_1"


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    write(tmp_path, "appId: shop\n")
    cases = [
        ("call", "app.yaml", "pays.services.PaySvc.query", "orderId=NOPE_000001"),
        ("call", "app.yaml", "pays.services.PaySvc.create", "subject=x", "amount=0.001"),
        ("call", "app.yaml", "pays.services.PaySrv.query"),
        ("call", "app.yaml", "pays.services.PaySvc.nothing"),
        ("call", "app.yaml", "pays.services.PaySvc.query", "orderId"),
        ("elements", "missing.yaml"),
    ]
    codes = []
    for args in cases:
        result = run(*args, cwd=tmp_path)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        codes.append(result.stderr.split()[1].rstrip(":"))
    assert codes[:4] == ["ORDER_NOT_EXIST", "AMOUNT_INVALID", "ELEMENT_NOT_FOUND", "FUNCTION_NOT_FOUND"]


def test_serve_runs_the_app_over_http(tmp_path: Path) -> None:
    import socket
    import time

    import httpx

    write(tmp_path, "appId: shop\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for workers in ("1", "2"):
        server = subprocess.Popen([JIT, "serve", "app.yaml", "--port", str(port), "--workers", workers], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "jit serve did not come up"
                    time.sleep(0.2)
            assert response.json() == {"status": "ok", "database": "ok", "app": "shop"}
            created = httpx.post(f"http://127.0.0.1:{port}/api/shop/pays/services/PaySvc/create",
                                 json={"subject": "x", "amount": "1.00"}, timeout=5)
            assert created.status_code == 401  # no API key configured: every protected function is closed
        finally:
            server.terminate()
            server.wait(timeout=20)
    bad = run("serve", "missing.yaml", cwd=tmp_path)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
