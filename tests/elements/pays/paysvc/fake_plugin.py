"""An app plugin for the PaySvc tests: contributes the test-only provider and records payment events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text

from jitcore import hookimpl

EVENTS: list[tuple[str, str]] = []
#: every delivery of an event: (hook name, event id, attempt)
DELIVERIES: list[tuple[str, str, int]] = []
#: set to make the paid hook raise (to prove a failing hook never undoes the payment)
RAISE_ON_PAID: list[bool] = []


@hookimpl
def jit_element_dirs(app: Any) -> list[Path]:
    """The test-only provider's element folder."""
    return [Path(__file__).parent / "fake_elements"]


def _record(app: Any, event: str, order: dict[str, Any]) -> None:
    EVENTS.append((event, order["orderId"]))
    if app.settings.get("events", {}).get("table"):
        with app.engine.begin() as connection:
            connection.execute(text("CREATE TABLE IF NOT EXISTS test_events (event VARCHAR(16), order_id VARCHAR(32))"))
            connection.execute(text("INSERT INTO test_events VALUES (:e, :o)"), {"e": event, "o": order["orderId"]})


@hookimpl
def jit_order_created(app: Any, order: dict[str, Any]) -> None:
    """Record it (an implementation written before events carried ``event``)."""
    _record(app, "created", order)


@hookimpl
def jit_order_paid(app: Any, order: dict[str, Any], event: dict[str, Any]) -> None:
    """Record it, or fail on purpose."""
    DELIVERIES.append((event["name"], event["id"], event["attempt"]))
    if RAISE_ON_PAID:
        raise RuntimeError("the VIP grant service is down")
    _record(app, "paid", order)


@hookimpl
def jit_order_closed(app: Any, order: dict[str, Any]) -> None:
    """Record it."""
    _record(app, "closed", order)


@hookimpl
def jit_order_refunded(app: Any, order: dict[str, Any], refund: dict[str, Any]) -> None:
    """Record it."""
    _record(app, "refunded", order)


@hookimpl
def jit_payment_surplus(app: Any, order: dict[str, Any], payment: dict[str, Any]) -> None:
    """Record it."""
    _record(app, "surplus", order)


@hookimpl
def jit_surplus_refunded(app: Any, order: dict[str, Any], payment: dict[str, Any], refund: dict[str, Any]) -> None:
    """Record it."""
    _record(app, "surplus-refunded", order)
