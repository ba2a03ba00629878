"""PaySvc on a test-only provider, on embedded SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

import jitcore
from tests.elements.pays.paysvc import fake_plugin

PLUGIN = "tests.elements.pays.paysvc.fake_plugin"


def write_app(directory: Path, database: str | None, **extra: Any) -> Path:
    """An app with the test-only provider under two names."""
    config: dict[str, Any] = {
        "appId": "shop",
        "baseUrl": "http://shop.example",
        "plugins": [PLUGIN],
        "elements": {
            "testpay.FakePayType": {"config": {"merchant": "m1"}},
            "shop.OtherPay": {"type": "testpay.FakePayType", "config": {"merchant": "m1", "secret": "other"}},
        },
        **extra,
    }
    if database:
        config["database"] = database
    path = directory / "app.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An embedded SQLite file, or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pay.db'}"
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> Iterator[Any]:
    """A loaded app; the fake provider's state and the recorded events are reset."""
    fake_plugin.EVENTS.clear()
    fake_plugin.RAISE_ON_PAID.clear()
    fake_plugin.DELIVERIES.clear()
    loaded = jitcore.load_app(write_app(tmp_path, database_url))
    fake = fake_class(loaded)
    for store in (fake.trades, fake.refunds):
        store.clear()
    fake.prepared.clear()
    fake.closed.clear()
    fake.fail_next.clear()
    yield loaded
    loaded.close()


def fake_class(app: Any) -> Any:
    """The FakePayType class as loaded."""
    return app.classOf(app.getDefine("testpay.FakePayType"))


@pytest.fixture
def pay(app: Any) -> Any:
    """``app.getElement("pays.services.PaySvc")``."""
    return app.getElement("pays.services.PaySvc")
