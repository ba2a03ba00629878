"""App plugins for tests/elements/pays/test_event_delivery.py: two implementations of ``jit_order_paid`` that record
every delivery they get in the app's own database, keyed by (implementation, event id, attempt).

``grant`` is listed first under ``plugins:`` (the higher layer, so it is delivered first); ``mail`` second. With the
environment variable ``JITPAY_TEST_EXIT_IN=grant``, ``grant`` ends its process with ``os._exit(EXIT_CODE)`` on the
first delivery (attempt 1) of an event, right after its record of that delivery is committed.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, select

GRANT = "tests.elements.pays.events_support.grant"
MAIL = "tests.elements.pays.events_support.mail"
EXIT_ENV = "JITPAY_TEST_EXIT_IN"
EXIT_CODE = 17

metadata = MetaData()

deliveries_table = Table(
    "test_delivery", metadata,
    Column("impl", String(16), primary_key=True),
    Column("eventId", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("event", String(64), nullable=False),
    Column("orderId", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    #: "delivered" (returned normally) or "exiting" (the process ends right after this record)
    Column("outcome", String(16), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("at", DateTime, nullable=False),
)


def create_table(engine: Any) -> None:
    """The records' table (created by the test before any process delivers)."""
    metadata.create_all(engine)


def deliveries(engine: Any) -> list[dict[str, Any]]:
    """Every delivery recorded so far, as dicts, in (impl, eventId, attempt) order."""
    t = deliveries_table.c
    with engine.connect() as conn:
        rows = conn.execute(select(deliveries_table).order_by(t.impl, t.eventId, t.attempt)).all()
    return [dict(row._mapping) for row in rows]


def deliver(app: Any, impl: str, order: dict[str, Any], event: dict[str, Any]) -> None:
    """Record this delivery (committed before returning), then exit the process if asked to."""
    exiting = event["attempt"] == 1 and os.environ.get(EXIT_ENV) == impl
    with app.engine.begin() as conn:
        conn.execute(deliveries_table.insert().values(
            impl=impl, eventId=event["id"], attempt=event["attempt"], event=event["name"], orderId=order["orderId"],
            status=order["status"], outcome="exiting" if exiting else "delivered", pid=os.getpid(),
            at=datetime.now(UTC).replace(tzinfo=None)))
    if exiting:
        os._exit(EXIT_CODE)
