"""Payment events, added to every app's plugin manager by the official library.

Events are a transactional outbox (:meth:`jitcore.jobs.JobQueue.publish`): each is written in the same transaction as
the change it announces, then delivered to every implementation after the commit (a first attempt right away, in the
thread that made the change) and redelivered by the job runner until that implementation succeeds. The guarantee:

- **at least once per implementation**: a process that dies after the commit, or an implementation that raises,
  gets the same event again later (``jit serve`` and ``jit worker`` run the runner);
- **in commit order per order**: an implementation sees one order's events in the order they were committed;
- a failing implementation is retried with backoff and ends ``dead`` (``jit jobs APP`` shows it with its error),
  never blocking other orders' events nor other implementations.

So make an implementation idempotent: every event carries ``event`` (``{"id", "name", "attempt", "createdAt"}``);
``event["id"]`` is the same on every delivery of one event. Declare ``event`` among your arguments to receive it;
implementations without it keep working. Arguments are snapshots taken when the change committed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jitcore.hookspecs import hookspec

if TYPE_CHECKING:
    from jitcore.app import App


@hookspec
def jit_order_created(app: "App", order: dict[str, Any], event: dict[str, Any]) -> None:
    """An order was created. ``order`` is the order as ``PaySvc.query`` shows it (without payments and refunds)."""


@hookspec
def jit_order_paid(app: "App", order: dict[str, Any], event: dict[str, Any]) -> None:
    """An order was paid: a payment was accepted (``order["status"] == "success"``; ``order["provider"]`` and
    ``order["tradeNo"]`` say which). Happens once per order; delivered at least once: grant what was bought here,
    idempotently (``event["id"]``, or the order id)."""


@hookspec
def jit_order_closed(app: "App", order: dict[str, Any], event: dict[str, Any]) -> None:
    """An unpaid order was closed (by the merchant, or by the sweep once its payment window ended unpaid)."""


@hookspec
def jit_order_refunded(app: "App", order: dict[str, Any], refund: dict[str, Any], event: dict[str, Any]) -> None:
    """A refund of the order's accepted payment was confirmed by the provider. ``refund`` has ``refundId``,
    ``amount`` and ``status`` (``confirmed``); ``order["status"]`` is ``refunded`` once the whole amount is
    refunded."""


@hookspec
def jit_payment_surplus(app: "App", order: dict[str, Any], payment: dict[str, Any], event: dict[str, Any]) -> None:
    """A provider captured money the order did not need: a second payment (another provider, WeChat Pay's other
    trade type), or one after the order was closed or refunded. ``payment`` is that payment (``role`` ``surplus``).
    With ``settings.pays.surplus: refund`` (the default) a job refunds it in full; with ``keep`` nothing else
    happens (refund it with ``PaySvc.refund(orderId, paymentId=...)``)."""


@hookspec
def jit_surplus_refunded(app: "App", order: dict[str, Any], payment: dict[str, Any], refund: dict[str, Any],
                         event: dict[str, Any]) -> None:
    """A refund of a surplus payment was confirmed: that money is back with the buyer. The order is unchanged."""


@hookspec
def jit_refund_failed(app: "App", order: dict[str, Any], refund: dict[str, Any], event: dict[str, Any]) -> None:
    """A refund the provider had accepted did not reach the buyer, or one was refused outright when no caller heard
    the answer (a surplus refund; a refund a job sent again after its call ended without an answer).
    ``refund["status"]`` says how:

    - ``refused`` (``refund["error"]["code"]`` is ``REFUND_CLOSED``, or the provider's code for a refund it refused
      outright, e.g. ``ACQ.SELLER_BALANCE_NOT_ENOUGH``): nothing was refunded, the money stayed with the
      merchant and is refundable again (with a new ``refundId``). A surplus refund is tried again by itself (at most
      :data:`~elements.pays.services.PaySvc.ledger.SURPLUS_REFUND_ATTEMPTS` times in all; after an outright refusal,
      an hour later).
    - ``abnormal``: the provider could not pay it back the way it came (WeChat Pay: the buyer's card was cancelled or
      frozen); the money waits at the provider for the merchant's hand (WeChat Pay's merchant platform, Transactions
      → refunds). The refund stays counted; JitPay keeps asking and confirms it (``jit_order_refunded``) once the
      provider reports it refunded."""
