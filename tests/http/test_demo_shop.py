"""The demo shop's ``POST /buy`` over real HTTP (issue 11, item 10): a body limit (by Content-Length and while
streaming a chunked body), and never a 500 for a large or malformed body; a refused body creates no order."""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest
from sqlalchemy import func, select

from demo.shop import BUY_BODY_LIMIT, deliveries
from tests.support.live import LiveApp, start_live_app

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    with start_live_app(tmp_path_factory.mktemp("demo"), plugins=["demo.shop"]) as live:
        yield live


@pytest.fixture
def client(shop: LiveApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shop.url, timeout=10) as buyer:
        yield buyer


def orders(shop: LiveApp) -> int:
    with shop.app.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(deliveries)).scalar_one()


def test_a_purchase_goes_to_the_cashier(shop: LiveApp, client: httpx.Client) -> None:
    before = orders(shop)
    response = client.post("/buy", content=b"product=sticker", headers=FORM)
    assert response.status_code == 303 and response.headers["location"].startswith("/pays/cashier/")
    assert orders(shop) == before + 1


def chunks(total: int, size: int = 65536) -> Iterator[bytes]:
    yield b"product=vip&padding="
    for _ in range(total // size):
        yield b"x" * size


@pytest.mark.parametrize("case, content, headers, status", [
    ("over-the-limit", b"product=vip&padding=" + b"x" * BUY_BODY_LIMIT, FORM, 413),
    ("at-the-limit", b"product=vip&padding=" + b"x" * (BUY_BODY_LIMIT - 20), FORM, 303),
    ("not-utf8", b"product=vip&x=\xff\xfe", FORM, 400),
    ("unknown-product", b"product=yacht", FORM, 400),
    ("percent-garbage", b"product=%FF%FE", FORM, 400),
    ("no-product", b"", FORM, 400),
    ("json", b'{"product": "vip"}', {"content-type": "application/json"}, 400),
    ("nul", b"product=vip\x00", FORM, 400),
    ("many-fields", b"&".join(b"f%d=1" % n for n in range(100)), FORM, 400),
    ("list-product", b"product=vip&product=ebook", FORM, 303),  # the last one counts, as in any form parser
])
def test_bodies(shop: LiveApp, client: httpx.Client, case: str, content: bytes, headers: dict[str, str],
                status: int) -> None:
    before = orders(shop)
    response = client.post("/buy", content=content, headers=headers)
    assert response.status_code == status, (case, response.text)
    assert orders(shop) == before + (1 if status == 303 else 0)


def test_a_huge_chunked_body_is_cut_off_not_read(shop: LiveApp, client: httpx.Client) -> None:
    before = orders(shop)
    try:
        response = client.post("/buy", content=chunks(64 * 1024 * 1024), headers=FORM)  # 64 MiB, no Content-Length
    except httpx.TransportError:
        pass  # the server answered 413 and closed the connection while the client was still sending
    else:
        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert response.status_code == 413, response.text
    assert orders(shop) == before


@pytest.mark.parametrize("length", ["abc", "99999999999999999999", "2048"])
def test_a_declared_length_over_the_limit_or_not_a_number_is_refused(shop: LiveApp, length: str) -> None:
    # raw, so the Content-Length is exactly what the test says (a client library would correct it)
    import socket

    host, port = shop.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /buy HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     f"Content-Length: {length}\r\nConnection: close\r\n\r\nproduct=vip".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 413), answer[:200]


def test_a_failing_order_is_a_503_not_a_500(shop: LiveApp, client: httpx.Client,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    service = shop.app.loadElement("pays.services.PaySvc")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the database is away")

    monkeypatch.setattr(service.ledger, "create_order", broken)
    response = client.post("/buy", content=b"product=vip", headers=FORM)
    assert response.status_code == 503 and "try again" in response.text
