"""The order life cycle and the payment tables' access: the one place where an order changes.

Allowed transitions (anything else changes nothing)::

    pending -> success | failed | closed
    success -> refunded            (when the whole amount is refunded)

Each transition is a single conditional ``UPDATE ... WHERE status IN (allowed sources)``: when two deliveries of the
same outcome race (a retried notification, a ``check`` against a notification, two processes), exactly one of them
changes the row and is told so; that one fires the event.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from elements.pays.services.PaySvc.models import (SCHEMA_VERSION, TABLES, PayAttempt, PayAudit, PayOrder, PayRefund,
                                                  PaySchema)
from jitcore.errors import ConfigError

ALLOWED_SOURCES: dict[str, tuple[str, ...]] = {
    "success": ("pending",),
    "failed": ("pending",),
    "closed": ("pending",),
    "refunded": ("success",),
}
STATUSES = ("pending", "success", "failed", "closed", "refunded")
PAYLOAD_LIMIT = 65536


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite gives back naive UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def storable_text(text: str | None) -> str | None:
    """Hostile text made storable in any database, keeping what it said: NUL characters (PostgreSQL refuses them)
    and lone surrogates (not UTF-8) are written as escapes."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _commit_unless_duplicate(session: Session) -> bool:
    """Commit; False (rolled back) if a unique key says the row is already there."""
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    return True


class OrderStore:
    """Reads and writes the payment tables of one database."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._ready = False
        self._lock = threading.Lock()

    # -- schema -------------------------------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the tables on first use and check the schema version."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            PayOrder.metadata.create_all(self.engine, tables=TABLES)
            with Session(self.engine) as session:
                row = session.get(PaySchema, 1)
                if row is None:
                    session.add(PaySchema(id=1, version=SCHEMA_VERSION))
                    try:
                        session.commit()
                    except IntegrityError:  # another process created it first
                        session.rollback()
                        row = session.get(PaySchema, 1)
                if row is not None and row.version > SCHEMA_VERSION:
                    raise ConfigError(f"the database's payment schema is version {row.version}, newer than this "
                                      f"JitPay ({SCHEMA_VERSION}); upgrade JitPay")
            self._ready = True

    def session(self) -> Session:
        """A new session (tables ensured)."""
        self.ensure_schema()
        return Session(self.engine, expire_on_commit=False)

    # -- orders -------------------------------------------------------------------------------------------------------
    def insert_order(self, order: PayOrder) -> bool:
        """Insert a new order; False if the orderId exists."""
        with self.session() as session:
            session.add(order)
            return _commit_unless_duplicate(session)

    def get(self, order_id: str) -> PayOrder | None:
        """The order, or None."""
        with self.session() as session:
            return session.get(PayOrder, order_id)

    def transition(self, order_id: str, target: str, *, record: PayAudit | None = None, **fields: Any) -> bool:
        """Move the order to ``target`` if it is in one of the allowed source states, setting ``fields`` too. One
        conditional UPDATE; True if this call made the change. ``record`` (an :meth:`audit_row`) is written in the
        same transaction when the change is made, so a change is never without its record."""
        sources = ALLOWED_SOURCES[target]
        values = {"status": target, "updatedAt": utcnow(), **fields}
        with self.session() as session:
            result = session.execute(update(PayOrder)
                                     .where(PayOrder.orderId == order_id, PayOrder.status.in_(sources))
                                     .values(**values))
            changed = result.rowcount == 1
            if changed and record is not None:
                session.add(record)
            session.commit()
            return changed

    # -- attempts -----------------------------------------------------------------------------------------------------
    def add_attempt(self, attempt: PayAttempt) -> None:
        """Record a prepared payment."""
        with self.session() as session:
            session.add(attempt)
            session.commit()

    def reusable_attempt(self, order_id: str, provider: str, pay_type: str, valid_until: datetime) -> PayAttempt | None:
        """The latest prepared payment of this kind still valid at ``valid_until``."""
        with self.session() as session:
            return session.execute(select(PayAttempt)
                                .where(PayAttempt.orderId == order_id, PayAttempt.provider == provider,
                                       PayAttempt.payType == pay_type, PayAttempt.expiresAt > valid_until)
                                .order_by(PayAttempt.id.desc()).limit(1)).scalars().first()

    def attempted_providers(self, order_id: str) -> list[str]:
        """The payment elements a payment was prepared with for this order, most recent first."""
        with self.session() as session:
            rows = session.execute(select(PayAttempt.provider, func.max(PayAttempt.id))
                                .where(PayAttempt.orderId == order_id)
                                .group_by(PayAttempt.provider)).all()
        return [provider for provider, _ in sorted(rows, key=lambda r: -r[1])]

    # -- refunds ------------------------------------------------------------------------------------------------------
    def get_refund(self, order_id: str, refund_id: str) -> PayRefund | None:
        """A refund by its id."""
        with self.session() as session:
            return session.execute(select(PayRefund).where(PayRefund.orderId == order_id,
                                                        PayRefund.refundId == refund_id)).scalars().first()

    @staticmethod
    def _count_refund(session: Session, refund: PayRefund) -> bool:
        """Add ``refund`` to the order's refunded total, only while the order is paid and the total stays within its
        amount (one conditional UPDATE)."""
        result = session.execute(update(PayOrder)
                                 .where(PayOrder.orderId == refund.orderId, PayOrder.status == "success",
                                        PayOrder.refundedFen + refund.amountFen <= PayOrder.amountFen)
                                 .values(refundedFen=PayOrder.refundedFen + refund.amountFen, updatedAt=utcnow()))
        return result.rowcount == 1

    def reserve_refund(self, refund: PayRefund) -> bool:
        """Count ``refund`` against the order and record it as pending, in one transaction. False if it would exceed
        what was paid (or the same refundId raced in)."""
        with self.session() as session:
            if not self._count_refund(session, refund):
                session.rollback()
                return False
            session.add(refund)
            return _commit_unless_duplicate(session)

    def retry_refund(self, refund: PayRefund) -> bool:
        """Count a previously refused refund again (the caller retries it with the same id)."""
        with self.session() as session:
            moved = session.execute(update(PayRefund)
                                    .where(PayRefund.id == refund.id, PayRefund.status == "failed")
                                    .values(status="pending", updatedAt=utcnow()))
            if moved.rowcount != 1 or not self._count_refund(session, refund):
                session.rollback()
                return False
            session.commit()
            return True

    def finish_refund(self, refund: PayRefund, refund_no: str | None) -> None:
        """Mark a refund done."""
        with self.session() as session:
            session.execute(update(PayRefund).where(PayRefund.id == refund.id)
                            .values(status="success", refundNo=refund_no, updatedAt=utcnow()))
            session.commit()

    def fail_refund(self, refund: PayRefund) -> None:
        """The provider refused the refund: stop counting it against the order."""
        with self.session() as session:
            moved = session.execute(update(PayRefund).where(PayRefund.id == refund.id, PayRefund.status == "pending")
                                    .values(status="failed", updatedAt=utcnow()))
            if moved.rowcount == 1:
                session.execute(update(PayOrder).where(PayOrder.orderId == refund.orderId)
                                .values(refundedFen=PayOrder.refundedFen - refund.amountFen, updatedAt=utcnow()))
            session.commit()

    def refunds(self, order_id: str) -> list[PayRefund]:
        """The order's refunds, oldest first."""
        with self.session() as session:
            return list(session.execute(select(PayRefund).where(PayRefund.orderId == order_id)
                                     .order_by(PayRefund.id)).scalars().all())

    # -- audit --------------------------------------------------------------------------------------------------------
    def audit(self, kind: str, outcome: str, **fields: Any) -> None:
        """Record what a provider told us (or what we refused), in its own transaction so that it is kept whatever
        else happens. ``fields`` as for :meth:`audit_row`."""
        with self.session() as session:
            session.add(self.audit_row(kind, outcome, **fields))
            session.commit()

    @staticmethod
    def audit_row(kind: str, outcome: str, *, provider: str | None = None, order_id: str | None = None,
                  verified: bool | None = None, error_code: str | None = None, message: str | None = None,
                  payload: Any = None) -> PayAudit:
        """An audit record (not yet written): what happened (``outcome``, e.g. ``pending->success``, ``unchanged``,
        ``rejected``), about which provider and order, whether the signature verified, the error code of a
        rejection and the raw payload (JSON, cut at 64 KiB, hostile characters escaped)."""
        if payload is not None and not isinstance(payload, str):
            payload = json.dumps(payload, ensure_ascii=False, default=str, sort_keys=True)
        if payload is not None and len(payload) > PAYLOAD_LIMIT:
            payload = payload[:PAYLOAD_LIMIT] + "...(truncated)"
        return PayAudit(at=utcnow(), kind=kind, outcome=outcome[:64], provider=provider,
                        orderId=storable_text(order_id[:64]) if isinstance(order_id, str) else None,
                        verified=verified, errorCode=error_code, message=storable_text(message),
                        payload=storable_text(payload))

    def audit_log(self, order_id: str | None = None, kinds: Iterable[str] | None = None) -> list[PayAudit]:
        """Audit rows, oldest first (for one order, of some kinds)."""
        statement = select(PayAudit).order_by(PayAudit.id)
        if order_id is not None:
            statement = statement.where(PayAudit.orderId == order_id)
        if kinds is not None:
            statement = statement.where(PayAudit.kind.in_(list(kinds)))
        with self.session() as session:
            return list(session.execute(statement).scalars().all())
