"""App plugin ``mail``: the second implementation of ``jit_order_paid`` (sends a receipt: records it)."""

from __future__ import annotations

from typing import Any

from jitcore import hookimpl
from tests.elements.pays.events_support import deliver


@hookimpl
def jit_order_paid(app: Any, order: dict[str, Any], event: dict[str, Any]) -> None:
    """Record the delivery."""
    deliver(app, "mail", order, event)
