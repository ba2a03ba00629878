"""App plugin ``grant``: grants what was bought (records it); may end its process on a first delivery (see the
package docstring)."""

from __future__ import annotations

from typing import Any

from jitcore import hookimpl
from tests.elements.pays.events_support import deliver


@hookimpl
def jit_order_paid(app: Any, order: dict[str, Any], event: dict[str, Any]) -> None:
    """Record the delivery; with ``JITPAY_TEST_EXIT_IN=grant``, exit on attempt 1."""
    deliver(app, "grant", order, event)
