"""Payment events, added to every app's plugin manager by the official library.

Each is called after the change is committed, at most once per change (the order life cycle guarantees that
``jit_order_paid`` fires exactly once per order). An exception raised by an implementation is logged and recorded in
the audit log; it never undoes the change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jitcore.hookspecs import hookspec

if TYPE_CHECKING:
    from jitcore.app import App


@hookspec
def jit_order_created(app: "App", order: dict[str, Any]) -> None:
    """An order was created. ``order`` is the same dict ``PaySvc.query`` returns."""


@hookspec
def jit_order_paid(app: "App", order: dict[str, Any]) -> None:
    """An order was paid (``order["status"] == "success"``, ``order["provider"]`` and ``order["tradeNo"]`` say who
    confirmed it). Fires exactly once per order, after the change is committed: grant what was bought here."""


@hookspec
def jit_order_closed(app: "App", order: dict[str, Any]) -> None:
    """An unpaid order was closed (by the merchant, or because the provider reports the trade closed)."""


@hookspec
def jit_order_refunded(app: "App", order: dict[str, Any], refund: dict[str, Any]) -> None:
    """A refund succeeded. ``refund`` has ``refundId`` and ``amount``; ``order["status"]`` is ``refunded`` once the
    whole amount is refunded."""
