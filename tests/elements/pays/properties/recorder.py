"""An app plugin for the ledger's property test: every delivery of every payment event is recorded in the app's
database (table ``prop_events``), so the test can tell that each event reached this implementation."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from jitcore import hookimpl

TABLE = "CREATE TABLE IF NOT EXISTS prop_events (event_id VARCHAR(32), name VARCHAR(32), order_id VARCHAR(32))"


def _record(app: Any, event: dict[str, Any], order: dict[str, Any]) -> None:
    with app.engine.begin() as conn:
        conn.execute(text("INSERT INTO prop_events VALUES (:i, :n, :o)"),
                     {"i": event["id"], "n": event["name"], "o": order["orderId"]})


@hookimpl
def jit_order_created(app: Any, order: dict[str, Any], event: dict[str, Any]) -> None:
    """Record it."""
    _record(app, event, order)


@hookimpl
def jit_order_paid(app: Any, order: dict[str, Any], event: dict[str, Any]) -> None:
    """Record it."""
    _record(app, event, order)


@hookimpl
def jit_order_closed(app: Any, order: dict[str, Any], event: dict[str, Any]) -> None:
    """Record it."""
    _record(app, event, order)


@hookimpl
def jit_order_refunded(app: Any, order: dict[str, Any], refund: dict[str, Any], event: dict[str, Any]) -> None:
    """Record it."""
    _record(app, event, order)


@hookimpl
def jit_payment_surplus(app: Any, order: dict[str, Any], payment: dict[str, Any], event: dict[str, Any]) -> None:
    """Record it."""
    _record(app, event, order)


@hookimpl
def jit_surplus_refunded(app: Any, order: dict[str, Any], payment: dict[str, Any], refund: dict[str, Any],
                         event: dict[str, Any]) -> None:
    """Record it."""
    _record(app, event, order)
