"""The payment ledger: the one place where orders, payments and refunds change.

Orders keep JitAi's states; payments and refunds move on their own, and drive the order::

    order     pending -> success (a payment is accepted) | closed (close, or expiry with nothing paid)
              success -> refunded (its accepted payment fully refunded)
              (failed: kept for version-1 data and for JitAi compatibility; JitPay itself never fails an order)
    payment   prepared -> paid | closed | failed | expired;  failed -> closed;  closed | failed | expired -> paid
              paid -> refunded (fully; a partial refund leaves it paid)
    refund    reserved -> sent -> confirmed | refused | unknown;  unknown -> sent (retried with the same id)
              refused -> reserved (the caller tries the same id again)

Every change is one conditional ``UPDATE ... WHERE status IN (allowed sources)`` (money too: ``reservedFen +
amount <= amountFen``), committed in one transaction with its audit record, its outbox events and the jobs it implies
(:mod:`jitcore.jobs`). A paid payment becomes the order's *accepted* payment only if the order is still ``pending``
at that moment; otherwise it is a *surplus*: recorded, announced (``jit_payment_surplus``) and, unless the app keeps
surplus money, refunded in full through its own provider by a job.

The money rule every change keeps, once the jobs are drained: for every order, what the providers captured minus
what they refunded equals ``amount - refundedAmount`` while the order is ``success`` (or ``refunded``), and zero
otherwise.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy import bindparam, exists, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from elements.pays.money import captured_fen, from_fen
from elements.pays.services.PaySvc.migrations import ensure_schema
from elements.pays.services.PaySvc.models import PayAudit, PayOrder, PayPayment, PayRefund
from elements.pays.services.PaySvc.rejections import RejectionLimiter, bounded_payload
from jitcore.sql import Conn, database

ORDERS = PayOrder.__table__
PAYMENTS = PayPayment.__table__
REFUNDS = PayRefund.__table__
AUDIT = PayAudit.__table__

ORDER_STATUSES = ("pending", "success", "failed", "closed", "refunded")
PAID_ORDER = ("success", "refunded")
#: payment states in which the trade may still capture money (until the order's expiry has passed)
LIVE_PAYMENT = ("prepared", "closed", "failed")
CAPTURED_PAYMENT = ("paid", "refunded")
#: refund states still counted against the payment but not yet final: not yet accepted by the provider (sent, or
#: sent again, with the same refundId until it is)
OPEN_REFUND = ("reserved", "sent", "unknown")
#: refund states the provider accepted without finishing (WeChat Pay's PROCESSING, and ABNORMAL: its money waits at
#: the provider for the merchant's hand): still counted against the payment, asked about (never sent again) until
#: the provider reports them refunded or closed
ACCEPTED_REFUND = ("processing", "abnormal")
NOT_FINAL_REFUND = OPEN_REFUND + ACCEPTED_REFUND
#: how many refunds of one surplus payment PaySvc makes by itself when the provider closes them after accepting
#: (or refuses them outright)
SURPLUS_REFUND_ATTEMPTS = 3
#: seconds before a surplus refund the provider refused outright is made again (with a new refundId)
SURPLUS_RETRY_AFTER_REFUSAL = 3600.0
PAYLOAD_LIMIT = 65536
#: how many orders a ledger remembers as it created them until their first offer (:meth:`Ledger.order_and_offer`)
FRESH_ORDERS = 1024

#: job kinds the ledger enqueues (handlers in :mod:`.background`)
JOB_CLOSE_TRADES = "pays.close_trades"
JOB_CHECK_TRADES = "pays.check_trades"
JOB_REFUND = "pays.refund"
#: asks the provider where an accepted refund stands (handler in :mod:`.background`)
JOB_REFUND_STATE = "pays.refund_state"
#: seconds after a refund is reserved at which its job makes sure it was finished (and retries an unknown outcome)
REFUND_FOLLOW_UP = 60.0

# The hot statements, built once and compiled once per database (jitcore.sql); tests/elements/pays/test_query_plans.py
# checks that each one finds its rows through an index.
ORDER_BY_ID = select(ORDERS).where(ORDERS.c.orderId == bindparam("orderId"))
PAYMENTS_OF_ORDER = select(PAYMENTS).where(PAYMENTS.c.orderId == bindparam("orderId")).order_by(PAYMENTS.c.id)
PAYMENT_BY_ID = select(PAYMENTS).where(PAYMENTS.c.id == bindparam("id"))
REFUNDS_OF_ORDER = select(REFUNDS).where(REFUNDS.c.orderId == bindparam("orderId")).order_by(REFUNDS.c.id)
REFUND_BY_ID = select(REFUNDS).where(REFUNDS.c.id == bindparam("id"))
REFUND_BY_REFUND_ID = select(REFUNDS).where(REFUNDS.c.orderId == bindparam("orderId"),
                                            REFUNDS.c.refundId == bindparam("refundId"))
OFFERED_PROVIDERS = (select(PAYMENTS.c.provider, func.max(PAYMENTS.c.id).label("last"))
                     .where(PAYMENTS.c.orderId == bindparam("orderId")).group_by(PAYMENTS.c.provider))
# The status is no index term here (``status || ''``): without statistics SQLite may otherwise prefer the sweep's
# (status, checkedAt) index, which holds every open trade of every order, to the order's own few rows; which one it
# picks depends on the order in which the indexes were created.
_REUSABLE = (PAYMENTS.c.orderId == bindparam("orderId"), PAYMENTS.c.provider == bindparam("provider"),
             PAYMENTS.c.payType == bindparam("payType"), PAYMENTS.c.status.concat("") == "prepared",
             PAYMENTS.c.payUrl.is_not(None), PAYMENTS.c.expiresAt > bindparam("validUntil"))
_OFFER = PAYMENTS.alias("offer")
#: the order and the columns of its latest reusable trade (``offer_*``, all None without one), in one statement
ORDER_AND_OFFER = (
    select(ORDERS, *[column.label(f"offer_{column.name}") for column in _OFFER.c])
    .select_from(ORDERS.outerjoin(_OFFER, _OFFER.c.id == select(PAYMENTS.c.id).where(*_REUSABLE)
                                  .order_by(PAYMENTS.c.updatedAt.desc()).limit(1).scalar_subquery()))
    .where(ORDERS.c.orderId == bindparam("orderId")))
ORDER_BY_ID_LOCKED = ORDER_BY_ID.with_for_update()
#: the order with each of its payments (``payment_*``; one row, all of them None, when it has none), oldest first,
#: and whether it has any refund (``hasRefunds``): what ``query`` shows, in one statement (one snapshot)
ORDER_WITH_PAYMENTS = (
    select(ORDERS, *[column.label(f"payment_{column.name}") for column in PAYMENTS.c],
           exists(select(REFUNDS.c.id).where(REFUNDS.c.orderId == bindparam("orderId"))).label("hasRefunds"))
    .select_from(ORDERS.outerjoin(PAYMENTS, PAYMENTS.c.orderId == ORDERS.c.orderId))
    .where(ORDERS.c.orderId == bindparam("orderId")).order_by(PAYMENTS.c.id))
PAYMENT_BY_REFERENCE = select(PAYMENTS).where(PAYMENTS.c.orderId == bindparam("orderId"),
                                              PAYMENTS.c.provider == bindparam("provider"),
                                              PAYMENTS.c.reference == bindparam("reference"))


def _insert_all(table: Any) -> Any:
    """INSERT of every column but an autoincrement key, each a bind named after it."""
    return insert(table).values({c.name: bindparam(c.name) for c in table.columns
                                 if not (c.primary_key and c.autoincrement is True or c.name == "id")})


def _scalar_defaults(table: Any) -> dict[str, Any]:
    """The columns' scalar defaults (what SQLAlchemy would insert for a value not given)."""
    return {c.name: c.default.arg for c in table.columns if c.default is not None and c.default.is_scalar}


INSERT_ORDER = _insert_all(ORDERS)
INSERT_AUDIT = _insert_all(AUDIT)
ORDER_DEFAULTS = _scalar_defaults(ORDERS)
PAYMENT_DEFAULTS = _scalar_defaults(PAYMENTS)
#: a new trade: its id, or none when the same trade (order, element, reference) is there already
INSERT_PAYMENT = {
    "sqlite": sqlite_insert(PAYMENTS).values({c.name: bindparam(c.name) for c in PAYMENTS.columns if c.name != "id"})
    .on_conflict_do_nothing(index_elements=["orderId", "provider", "reference"]).returning(PAYMENTS.c.id),
    "postgresql": postgresql_insert(PAYMENTS)
    .values({c.name: bindparam(c.name) for c in PAYMENTS.columns if c.name != "id"})
    .on_conflict_do_nothing(index_elements=["orderId", "provider", "reference"]).returning(PAYMENTS.c.id),
}
ORDER_STILL_PENDING = (update(ORDERS).where(ORDERS.c.orderId == bindparam("orderId"), ORDERS.c.status == "pending")
                       .values(updatedAt=bindparam("now")))
_STILL_PENDING = ORDER_STILL_PENDING.returning(ORDERS.c.orderId).cte("still_pending")
_NEW_PAYMENT_COLUMNS = [c for c in PAYMENTS.columns if c.name != "id"]
#: PostgreSQL: a new trade of a pending order, and the order locked for it, in one statement (so one round trip in
#: autocommit): ORDER_STILL_PENDING, then INSERT_PAYMENT if it matched. Its id; none when the order is not pending or
#: the trade is recorded already (then the transaction of Ledger.record_prepared decides)
NEW_OFFER_OF_PENDING_ORDER = (
    postgresql_insert(PAYMENTS)
    .from_select([c.name for c in _NEW_PAYMENT_COLUMNS],
                 select(*[_STILL_PENDING.c.orderId if c.name == "orderId" else bindparam(c.name, type_=c.type)
                          for c in _NEW_PAYMENT_COLUMNS]).select_from(_STILL_PENDING))
    .on_conflict_do_nothing(index_elements=["orderId", "provider", "reference"]).returning(PAYMENTS.c.id))
PAYMENT_OFFER = (update(PAYMENTS).where(PAYMENTS.c.id == bindparam("paymentId"))
                 .values(payType=bindparam("payType"), payUrl=bindparam("payUrl"), qrCode=bindparam("qrCode"),
                         expiresAt=bindparam("expiresAt"), updatedAt=bindparam("updatedAt")))
PAYMENT_AMOUNT = (update(PAYMENTS).where(PAYMENTS.c.id == bindparam("paymentId"),
                                         PAYMENTS.c.status.in_(LIVE_PAYMENT + ("expired",)))
                  .values(amountFen=bindparam("amountFen")))
PAYMENT_CAPTURED = (update(PAYMENTS).where(PAYMENTS.c.id == bindparam("paymentId"),
                                           PAYMENTS.c.status.in_(LIVE_PAYMENT + ("expired",)))
                    .values(status="paid", tradeNo=bindparam("tradeNo"), paidAt=bindparam("paidAt"),
                            role=bindparam("role"), updatedAt=bindparam("now"), checkedAt=bindparam("now")))
ORDER_ACCEPTED = (update(ORDERS).where(ORDERS.c.orderId == bindparam("orderId"), ORDERS.c.status == "pending")
                  .values(status="success", paymentId=bindparam("paymentId"), provider=bindparam("provider"),
                          tradeNo=bindparam("tradeNo"), payTime=bindparam("payTime"), updatedAt=bindparam("now")))


def _captured_and_accepted() -> Any:
    """PostgreSQL: a pending order paid, in one statement (one round trip instead of three): PAYMENT_CAPTURED, then
    ORDER_ACCEPTED and the audit record (its columns bound as ``audit_<column>``) only if the capture matched. One
    row: how many payments were captured (0 or 1) and how many orders accepted."""
    captured = PAYMENT_CAPTURED.returning(PAYMENTS.c.id).cte("captured")
    accepted = ORDER_ACCEPTED.where(exists(select(captured.c.id))).returning(ORDERS.c.orderId).cte("accepted")
    columns = [c for c in AUDIT.columns if c.name != "id"]
    audited = (insert(AUDIT).from_select([c.name for c in columns],
                                         select(*[bindparam(f"audit_{c.name}", type_=c.type) for c in columns])
                                         .where(exists(select(accepted.c.orderId))))
               .returning(AUDIT.c.id).cte("audited"))
    return (select(select(func.count()).select_from(captured).scalar_subquery().label("captured"),
                   select(func.count()).select_from(accepted).scalar_subquery().label("accepted"))
            .add_cte(audited))


CAPTURED_AND_ACCEPTED = _captured_and_accepted()


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


def audit_values(kind: str, outcome: str, *, provider: str | None = None, order_id: str | None = None,
                 verified: bool | None = None, error_code: str | None = None, message: str | None = None,
                 payload: Any = None) -> dict[str, Any]:
    """An audit record's column values: what happened (``outcome``, e.g. ``pending->success``, ``unchanged``,
    ``rejected``), about which provider and order, whether the signature verified, the error code of a rejection and
    the raw payload (JSON, cut at 64 KiB, hostile characters escaped)."""
    if payload is not None and not isinstance(payload, str):
        payload = json.dumps(payload, ensure_ascii=False, default=str, sort_keys=True)
    if payload is not None and len(payload) > PAYLOAD_LIMIT:
        payload = payload[:PAYLOAD_LIMIT] + "...(truncated)"
    return {"at": utcnow(), "kind": kind, "outcome": outcome[:64], "provider": provider,
            "orderId": storable_text(order_id[:64]) if isinstance(order_id, str) else None,
            "verified": verified, "errorCode": error_code[:64] if error_code else None,
            "message": storable_text(message), "payload": storable_text(payload)}


@dataclass
class Audit:
    """What a change is recorded with: the audit fields except the outcome, which the ledger decides."""

    kind: str
    provider: str | None = None
    verified: bool | None = None
    payload: Any = None
    message: str | None = None

    def values(self, outcome: str, order_id: str | None, *, error_code: str | None = None,
               message: str | None = None) -> dict[str, Any]:
        return audit_values(self.kind, outcome, provider=self.provider, order_id=order_id, verified=self.verified,
                            error_code=error_code, message=message or self.message, payload=self.payload)


@dataclass
class _Tx:
    conn: Connection
    #: the same transaction for compiled statements
    fast: Conn
    #: jobs to run right after the commit (event deliveries, closing trades a caller waits for)
    events: list[int] = field(default_factory=list)
    #: jobs left to the runner
    jobs: int = 0


class _NoRoom(Exception):
    """Rolls a refund's transaction back: it no longer fits in what the payment captured."""


@dataclass(frozen=True)
class PaidOutcome:
    """What a report of captured money did: ``accepted`` (the order is now paid by it), ``surplus`` (recorded as
    money the order did not need), ``known`` (this payment was already recorded); or, changing nothing,
    ``missing`` (no such order: ``order`` and ``payment`` are None) and ``mismatch`` (a notification says an amount
    was captured that is not the order's, or says no amount: ``payment`` is None; the provider is to be asked)."""

    outcome: str
    payment: Row | None
    order: Row | None


class Ledger:
    """Reads and changes the payment tables of one database. ``order_dict`` makes the public view of an order row
    (the one events carry); ``jobs`` is the app's :class:`jitcore.jobs.JobQueue`."""

    def __init__(self, engine: Engine, jobs: Any, order_dict: Callable[[Row], dict[str, Any]],
                 surplus: str = "refund", rejections: RejectionLimiter | None = None) -> None:
        self.engine = engine
        self.db = database(engine)
        self.jobs = jobs
        self.order_dict = order_dict
        self.surplus = surplus
        #: which rejected notifications are stored (:mod:`.rejections`)
        self.rejections = rejections or RejectionLimiter()
        self._ready = False
        #: orders this ledger created and has not offered, closed or seen paid since: their rows as written
        self._fresh: OrderedDict[str, Row] = OrderedDict()
        self._fresh_lock = threading.Lock()

    # -- plumbing -----------------------------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create or migrate the tables on first use."""
        if not self._ready:
            ensure_schema(self.engine)
            self._ready = True

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        self.ensure_schema()
        with self.engine.connect() as conn:
            yield conn

    def _reading(self) -> Any:
        """A connection for the hot reads (compiled statements, autocommit): ``with self._reading() as conn``."""
        if not self._ready:
            self.ensure_schema()
        return self.db.read()

    @contextmanager
    def _write(self) -> Iterator[_Tx]:
        """One transaction; after it commits, the events it wrote get their first delivery and the runner is woken
        for the jobs it enqueued."""
        self.ensure_schema()
        with self.engine.begin() as conn:
            tx = _Tx(conn, self.db.on(conn))
            yield tx
        if tx.events:
            self.jobs.run_now(tx.events)
        if tx.jobs:
            self.jobs.wake()

    def _publish(self, tx: _Tx, event: str, order_id: str, **kwargs: Any) -> None:
        # claimed in this transaction: delivered right after the commit without a claiming transaction
        tx.events += self.jobs.publish(tx.conn, event, kwargs, sequenceKey=f"order:{order_id}", claim=True)

    def _enqueue(self, tx: _Tx, kind: str, payload: dict[str, Any], *, run_now: bool = False,
                 **options: Any) -> None:
        """Enqueue a job in the transaction; ``run_now``: its first attempt right after the commit, in this
        thread (else the runner is woken for it)."""
        job_id = self.jobs.enqueue(tx.conn, kind, payload, **options)
        if job_id is None:
            return
        if run_now:
            tx.events.append(job_id)
        else:
            tx.jobs += 1

    @staticmethod
    def _audit(tx: _Tx, values: dict[str, Any]) -> None:
        tx.fast.rowcount(INSERT_AUDIT, values)

    @staticmethod
    def _order(conn: Connection, order_id: str, *, lock: bool = False) -> Row | None:
        """The order row; ``lock``: held until the transaction ends (PostgreSQL ``FOR UPDATE``; SQLite's
        transactions hold the database already). Every writer that changes an order and its payments locks the
        order first, so two of them never wait on each other in opposite orders."""
        return _fast(conn).first(ORDER_BY_ID_LOCKED if lock else ORDER_BY_ID, {"orderId": order_id})

    def _insert_payment(self, tx: _Tx, values: dict[str, Any]) -> tuple[Row, bool]:
        """Insert a payment, or find the one a concurrent transaction inserted for the same trade; and whether this
        call inserted it. A new row is made from what was written, not read back."""
        values = {**PAYMENT_DEFAULTS, **values}
        statement = INSERT_PAYMENT.get(self.db.name)
        if statement is not None:
            payment_id = tx.fast.scalar(statement, {c.name: values.get(c.name) for c in PAYMENTS.columns})
            if payment_id is not None:
                return self.db.compiled(PAYMENT_BY_ID).row_of({**values, "id": payment_id}), True
        else:  # pragma: no cover - other databases: a plain insert
            tx.conn.execute(PAYMENTS.insert().values(**values))
        row = tx.fast.first(PAYMENT_BY_REFERENCE, values)
        assert row is not None
        return row, False

    @staticmethod
    def _payment(conn: Connection, payment_id: int) -> Row | None:
        return _fast(conn).first(PAYMENT_BY_ID, {"id": payment_id})

    @staticmethod
    def _refund(conn: Connection, refund_row_id: int) -> Row | None:
        return _fast(conn).first(REFUND_BY_ID, {"id": refund_row_id})

    # -- reads --------------------------------------------------------------------------------------------------------
    def order(self, order_id: str) -> Row | None:
        """The order, or None."""
        with self._reading() as conn:
            return conn.first(ORDER_BY_ID, {"orderId": order_id})

    def order_details(self, order_id: str) -> tuple[Row | None, list[Row], list[Row]]:
        """The order (or None), its payments and its refunds, oldest first, as one moment saw them: the order and its
        payments in one statement; if it has refunds, that again and the refunds in one snapshot (a refund confirmed
        between two reads would show beside its payment as it was before)."""
        key = {"orderId": order_id}
        with self._reading() as conn:
            rows = conn.all(ORDER_WITH_PAYMENTS, key)
        refunds: list[Row] = []
        if rows and rows[0].hasRefunds:
            with self.db.snapshot() as conn:
                rows = conn.all(ORDER_WITH_PAYMENTS, key)
                refunds = conn.all(REFUNDS_OF_ORDER, key)
        if not rows:
            return None, [], []
        split = [self._order_and_payment(row) for row in rows]
        return split[0][0], [payment for _, payment in split if payment is not None], refunds

    def _order_and_payment(self, row: Any) -> tuple[Row, Row | None]:
        """A row of ORDER_AND_OFFER or ORDER_WITH_PAYMENTS split into the order and the payment joined to it (None
        when none was: its columns are all None)."""
        orders = len(ORDERS.columns)
        payment = row[orders:orders + len(PAYMENTS.columns)]
        return (self.db.compiled(ORDER_BY_ID).row_from(row[:orders]),
                self.db.compiled(PAYMENT_BY_ID).row_from(payment) if payment[0] is not None else None)

    def payments(self, order_id: str) -> list[Row]:
        """The order's payments, oldest first."""
        with self._reading() as conn:
            return conn.all(PAYMENTS_OF_ORDER, {"orderId": order_id})

    def payment(self, payment_id: int) -> Row | None:
        """One payment by id."""
        with self._reading() as conn:
            return conn.first(PAYMENT_BY_ID, {"id": payment_id})

    def refunds(self, order_id: str) -> list[Row]:
        """The order's refunds, oldest first."""
        with self._reading() as conn:
            return conn.all(REFUNDS_OF_ORDER, {"orderId": order_id})

    def refund(self, refund_row_id: int) -> Row | None:
        """One refund by its row id."""
        with self._reading() as conn:
            return conn.first(REFUND_BY_ID, {"id": refund_row_id})

    def refund_by_id(self, order_id: str, refund_id: str) -> Row | None:
        """A refund by the order and its ``refundId``."""
        with self._reading() as conn:
            return conn.first(REFUND_BY_REFUND_ID, {"orderId": order_id, "refundId": refund_id})

    def offered_providers(self, order_id: str) -> list[str]:
        """The payment elements the order has trades with, most recent first."""
        with self._reading() as conn:
            rows = conn.all(OFFERED_PROVIDERS, {"orderId": order_id})
        return [provider for provider, _ in sorted(rows, key=lambda r: -r[1])]

    def order_and_offer(self, order_id: str, provider: str, pay_type: str,
                        valid_until: datetime) -> tuple[Row | None, Row | None]:
        """The order (or None) and its latest prepared trade with ``provider`` of ``pay_type`` whose pay URL is still
        valid at ``valid_until`` (or None), read together in one statement.

        The first call for an order this ledger created (and has not closed or seen paid) reads nothing: the order
        as it was written, without an offer. What another process may have done to it meanwhile (closed it, offered
        it) is met by :meth:`record_prepared`'s conditional write, which the caller makes before handing out a trade;
        the columns taken from the row (subject, amount, payment window) never change."""
        fresh = self._forget_fresh(order_id)
        if fresh is not None:
            return fresh, None
        with self._reading() as conn:
            row = conn.first(ORDER_AND_OFFER, {"orderId": order_id, "provider": provider, "payType": pay_type,
                                               "validUntil": valid_until})
        return self._order_and_payment(row) if row is not None else (None, None)

    def sweep_candidates(self, *, checked_before: datetime, created_before: datetime, limit: int) -> list[Row]:
        """Trades that may still capture money, not asked about since ``checked_before``, created before
        ``created_before``; least recently checked first."""
        with self._read() as conn:
            return list(conn.execute(select(PAYMENTS).where(
                PAYMENTS.c.status.in_(LIVE_PAYMENT), PAYMENTS.c.createdAt < created_before,
                or_(PAYMENTS.c.checkedAt.is_(None), PAYMENTS.c.checkedAt < checked_before))
                .order_by(PAYMENTS.c.checkedAt.is_not(None), PAYMENTS.c.checkedAt, PAYMENTS.c.id)
                .limit(limit)).all())

    def stale_refunds(self, updated_before: datetime, limit: int,
                      statuses: tuple[str, ...] = OPEN_REFUND) -> list[Row]:
        """Refunds in ``statuses`` (default the open ones: reserved, sent, unknown) untouched since
        ``updated_before`` (an accepted refund is touched each time the provider is asked about it)."""
        with self._read() as conn:
            return list(conn.execute(select(REFUNDS).where(REFUNDS.c.status.in_(statuses),
                                                           REFUNDS.c.updatedAt < updated_before)
                                     .order_by(REFUNDS.c.id).limit(limit)).all())

    def expired_pending_orders(self, expired_before: datetime, limit: int) -> list[Row]:
        """Pending orders whose payment window ended before ``expired_before`` and none of whose trades can still
        capture money."""
        live = select(PAYMENTS.c.id).where(PAYMENTS.c.orderId == ORDERS.c.orderId,
                                           PAYMENTS.c.status.in_(LIVE_PAYMENT)).exists()
        with self._read() as conn:
            return list(conn.execute(select(ORDERS).where(ORDERS.c.status == "pending",
                                                          ORDERS.c.expiresAt < expired_before, ~live)
                                     .limit(limit)).all())

    def audit_log(self, order_id: str | None = None, kinds: Iterable[str] | None = None) -> list[Row]:
        """Audit rows, oldest first (for one order, of some kinds)."""
        statement = select(AUDIT).order_by(AUDIT.c.id)
        if order_id is not None:
            statement = statement.where(AUDIT.c.orderId == order_id)
        if kinds is not None:
            statement = statement.where(AUDIT.c.kind.in_(list(kinds)))
        with self._read() as conn:
            return list(conn.execute(statement).all())

    def audit(self, kind: str, outcome: str, *, source: str | None = None, bounded: bool | None = None,
              **fields: Any) -> None:
        """Record what a provider told us (or what we refused), in its own transaction so that it is kept whatever
        else happens. ``fields`` as for :func:`audit_values`.

        A *bounded* record (by default: a rejected notification whose signature did not verify) is what strangers
        can cause, so it keeps an excerpt and a hash of its payload, and is stored only within the
        :class:`.rejections.RejectionLimiter`'s limits for its provider and ``source`` address (else counted, and
        summarised once the window ends)."""
        if bounded is None:
            bounded = kind == "notify" and outcome == "rejected" and fields.get("verified") is not True
        rows = []
        if bounded:
            store, ended = self.rejections.admit(fields.get("provider"), source, fields.get("error_code"))
            if store:
                fields["payload"] = bounded_payload(fields.get("payload"), source)
                rows.append(audit_values(kind, outcome, **fields))
        else:
            ended = self.rejections.flush()
            rows.append(audit_values(kind, outcome, **fields))
        rows[:0] = [audit_values("notify", "rejected-summary", **self.rejections.summary_fields(item))
                    for item in ended]
        if rows:
            self._insert_audit(rows)

    def flush_rejections(self, *, force: bool = False) -> int:
        """Store the summaries of rejected notifications counted but not stored in an ended window (``force``: in
        the current one too, e.g. at shutdown). Returns how many summary rows were written."""
        ended = self.rejections.flush(force=force)
        if ended:
            self._insert_audit([audit_values("notify", "rejected-summary", **self.rejections.summary_fields(item))
                                for item in ended])
        return len(ended)

    def _insert_audit(self, rows: list[dict[str, Any]]) -> None:
        self.ensure_schema()
        with self.engine.begin() as conn:
            fast = self.db.on(conn)
            for row in rows:
                fast.rowcount(INSERT_AUDIT, row)

    # -- orders -------------------------------------------------------------------------------------------------------
    def create_order(self, values: dict[str, Any]) -> tuple[Row, bool]:
        """Insert a new order and announce it (``jit_order_created``); ``(existing order, False)`` if the orderId
        is taken."""
        values = {**ORDER_DEFAULTS, **values}
        columns = {c.name: values.get(c.name) for c in ORDERS.columns}
        row = self.db.compiled(ORDER_BY_ID).row_of(values)  # as written: not read back
        try:
            if self.db.name == "postgresql" and not self.jobs.subscribed("jit_order_created"):
                self.ensure_schema()  # nothing to announce: the insert alone, one statement in autocommit
                with self.db.autocommit() as conn:
                    conn.rowcount(INSERT_ORDER, columns)
            else:
                with self._write() as tx:
                    tx.fast.rowcount(INSERT_ORDER, columns)
                    self._publish(tx, "jit_order_created", row.orderId, order=self.order_dict(row))
            self._remember_fresh(row)
            return row, True
        except IntegrityError:
            existing = self.order(values["orderId"])
            if existing is None:  # pragma: no cover - the insert failed for another reason
                raise
            return existing, False

    def _remember_fresh(self, row: Row) -> None:
        """Remember an order this ledger just created, as written (the newest :data:`FRESH_ORDERS`)."""
        with self._fresh_lock:
            self._fresh[row.orderId] = row
            if len(self._fresh) > FRESH_ORDERS:
                self._fresh.popitem(last=False)

    def _forget_fresh(self, order_id: str) -> Row | None:
        """Forget an order remembered by :meth:`_remember_fresh`; its row if it was."""
        with self._fresh_lock:
            return self._fresh.pop(order_id, None)

    def close_order(self, order_id: str, audit: Audit, outcome: str = "pending->closed") -> bool:
        """Move a pending order to ``closed`` (from then on no trade of it is accepted, and ``getPayUrl`` refuses
        it), announce it and enqueue closing its trades at every provider it has one with. True if this call
        closed it."""
        self._forget_fresh(order_id)
        with self._write() as tx:
            moved = tx.conn.execute(update(ORDERS).where(ORDERS.c.orderId == order_id, ORDERS.c.status == "pending")
                                    .values(status="closed", updatedAt=utcnow())).rowcount == 1
            if not moved:
                return False
            self._audit(tx, audit.values(outcome, order_id))
            providers = tx.conn.execute(select(PAYMENTS.c.provider).distinct().where(
                PAYMENTS.c.orderId == order_id, PAYMENTS.c.status.in_(LIVE_PAYMENT))).scalars().all()
            for provider in sorted(providers):
                self._enqueue(tx, JOB_CLOSE_TRADES, {"orderId": order_id, "provider": provider},
                              dedupeKey=f"close:{order_id}:{provider}", run_now=True)
            row = self._order(tx.conn, order_id)
            self._publish(tx, "jit_order_closed", order_id, order=self.order_dict(row))
        return True

    # -- payments -----------------------------------------------------------------------------------------------------
    def record_prepared(self, order_id: str, *, provider: str, providerName: str, payType: str, reference: str,
                        amountFen: int, payUrl: str, qrCode: str | None,
                        expiresAt: datetime | None) -> tuple[Row, bool]:
        """Record a trade handed to the buyer, and whether the order was still ``pending`` when it was recorded
        (checked and held in the same transaction, so a ``close`` cannot slip in between). If it was not, the trade
        is recorded all the same (so the sweep watches it) and a job closes it; the caller refuses the pay URL."""
        now = utcnow()
        trade = {"orderId": order_id, "provider": provider, "providerName": providerName, "reference": reference,
                 "amountFen": amountFen, "status": "prepared", "reservedFen": 0, "refundedFen": 0, "createdAt": now}
        if self.db.name == "postgresql":  # the usual case (a new trade of a pending order) in one statement
            values = {**PAYMENT_DEFAULTS, **trade, "payType": payType, "payUrl": payUrl, "qrCode": qrCode,
                      "expiresAt": expiresAt, "updatedAt": now}
            self.ensure_schema()
            with self.db.autocommit() as conn:
                payment_id = conn.scalar(NEW_OFFER_OF_PENDING_ORDER,
                                         {**{c.name: values.get(c.name) for c in _NEW_PAYMENT_COLUMNS}, "now": now})
            if payment_id is not None:
                return self.db.compiled(PAYMENT_BY_ID).row_of({**values, "id": payment_id}), True
        with self._write() as tx:
            pending = tx.fast.rowcount(ORDER_STILL_PENDING, {"orderId": order_id, "now": now}) == 1
            offer = {"payType": payType, "payUrl": payUrl if pending else None, "qrCode": qrCode if pending else None,
                     "expiresAt": expiresAt, "updatedAt": now}
            payment, inserted = self._insert_payment(tx, {**trade, **offer})
            if not inserted and payment.status == "prepared":  # the same trade offered again
                tx.fast.rowcount(PAYMENT_OFFER, {"paymentId": payment.id, **offer})
                payment = payment._replace(**offer)
            if not pending:
                self._enqueue(tx, JOB_CLOSE_TRADES, {"orderId": order_id, "provider": provider},
                              dedupeKey=f"close:{order_id}:{provider}", run_now=True)
            return payment, pending

    def _find_or_add_payment(self, tx: _Tx, order: Row, payments: list[Row], provider: str, providerName: str,
                             reference: str, tradeNo: str | None, *, amountFen: int | None = None) -> Row:
        """The payment (of the order's ``payments``) a provider's report is about: by trade number first (a trade
        already recorded paid, whatever reference it was filed under), then by reference; a trade nobody recorded (a
        crash between the provider call and the record, or another copy of the app) is added, for ``amountFen``
        (default: the order's amount)."""
        ours = [row for row in payments if row.provider == provider]
        if tradeNo:
            known = next((row for row in ours if row.tradeNo == tradeNo), None)
            if known is not None:
                return known
        row = next((row for row in ours if row.reference == reference), None)
        if row is not None and (row.status not in CAPTURED_PAYMENT or not tradeNo or row.tradeNo == tradeNo):
            return row
        if row is not None:  # the reference is taken by another captured trade: file this one beside it
            reference = f"{reference}#{tradeNo}"[:64]
        now = utcnow()
        return self._insert_payment(tx, {
            "orderId": order.orderId, "provider": provider, "providerName": providerName, "payType": "unknown",
            "reference": reference, "amountFen": order.amountFen if amountFen is None else amountFen,
            "status": "prepared", "reservedFen": 0,
            "refundedFen": 0, "createdAt": now, "updatedAt": now})[0]

    def _capture(self, fast: Conn, order_id: str, payment_id: int, *, provider: str, tradeNo: str | None,
                 paid_at: datetime, now: datetime, audit: Audit | None) -> bool:
        """Record payment ``payment_id`` paid, under the lock of its order. With ``audit``, as the accepted payment
        of the pending order: the order becomes ``success`` and the audit records ``pending->success`` (on PostgreSQL
        in one statement); else as a surplus. False, and nothing changed, if the payment was captured already."""
        values = {"paymentId": payment_id, "tradeNo": tradeNo, "paidAt": paid_at, "payTime": paid_at, "now": now,
                  "orderId": order_id, "provider": provider, "role": "accepted" if audit is not None else "surplus"}
        if audit is None:
            return fast.rowcount(PAYMENT_CAPTURED, values) == 1
        record = audit.values("pending->success", order_id)
        if self.db.name == "postgresql":
            row = fast.first(CAPTURED_AND_ACCEPTED, {**values, **{f"audit_{k}": v for k, v in record.items()}})
            captured, accepted = row.captured == 1, row.accepted == 1
        else:
            captured = fast.rowcount(PAYMENT_CAPTURED, values) == 1
            accepted = captured and fast.rowcount(ORDER_ACCEPTED, values) == 1
            if accepted:
                fast.rowcount(INSERT_AUDIT, record)
        if captured and not accepted:  # pragma: no cover - the lock makes this impossible
            raise RuntimeError(f"order {order_id} changed under its lock; nothing was recorded")
        return captured

    def apply_paid(self, order_id: str, *, provider: str, providerName: str, reference: str, tradeNo: str | None,
                   payTime: datetime | None, paidAmount: Decimal | None, audit: Audit,
                   settleHere: bool = True, asked: bool = False) -> PaidOutcome:
        """A provider reports ``paidAmount`` captured. Unless the order is missing (nothing changes), the payment
        becomes ``paid``; it is the order's accepted payment if the order is still ``pending`` and the amount is the
        order's (the order becomes ``success``, ``jit_order_paid`` fires, the order's other trades are closed by
        jobs), else a surplus (``jit_payment_surplus``, and a full refund by a job unless the app keeps surplus
        money).

        An amount that is not the order's is believed only when PaySvc ``asked`` the provider (a query, not a
        notification): the payment is then a surplus of the amount captured (audited ``AMOUNT_MISMATCH``). A
        notification saying so changes nothing (``mismatch``: the caller records the rejection and has the provider
        asked), unless that very capture is recorded already (``known``: a notification sent again).

        ``settleHere``: the paying element is settled by a job even when no other trade of the order is recorded
        with it (its ``settle`` does something where the payment was taken; the default ``settle`` does not)."""
        now = utcnow()
        paid_at = as_utc(payTime) or now
        self._forget_fresh(order_id)
        with self._write() as tx:
            fast = tx.fast
            # the order is locked until the commit: its status read here is the one the updates below meet, and no
            # trade of it is added or paid meanwhile (every such writer locks the order first)
            order = fast.first(ORDER_BY_ID_LOCKED, {"orderId": order_id})
            if order is None:
                return PaidOutcome("missing", None, None)
            paid_fen = captured_fen(paidAmount)
            mismatched = paid_fen != order.amountFen
            believed = not mismatched or (asked and paid_fen is not None)
            if not believed and not tradeNo:
                return PaidOutcome("mismatch", None, order)
            # a statement of its own, after the lock: one that waited for the lock (a join, say) would see the
            # payments as they were before the writer it waited for committed (PostgreSQL's read committed)
            payments = fast.all(PAYMENTS_OF_ORDER, {"orderId": order_id})
            if not believed and not any(row.provider == provider and row.tradeNo == tradeNo and row.status in
                                        CAPTURED_PAYMENT and row.amountFen == paid_fen for row in payments):
                return PaidOutcome("mismatch", None, order)  # unless it is the very capture recorded before
            payment = self._find_or_add_payment(tx, order, payments, provider, providerName, reference, tradeNo,
                                                amountFen=paid_fen)
            accepted = order.status == "pending" and not mismatched
            role = "accepted" if accepted else "surplus"
            if mismatched and payment.amountFen != paid_fen:  # what the trade captured, not what it was made for
                fast.rowcount(PAYMENT_AMOUNT, {"paymentId": payment.id, "amountFen": paid_fen})
            if not self._capture(fast, order_id, payment.id, provider=provider, tradeNo=tradeNo, paid_at=paid_at,
                                 now=now, audit=audit if accepted else None):
                self._audit(tx, audit.values("unchanged", order_id, message="already processed"))
                return PaidOutcome("known", payment, order)
            # what was just written, not read back (the order is locked: nothing else changed it)
            payment = payment._replace(status="paid", tradeNo=tradeNo, paidAt=paid_at, updatedAt=now, checkedAt=now,
                                       role=role, amountFen=paid_fen if mismatched else payment.amountFen)
            if accepted:
                order = order._replace(status="success", paymentId=payment.id, provider=provider, tradeNo=tradeNo,
                                       payTime=paid_at, updatedAt=now)
            order_view = self.order_dict(order)
            if accepted:
                self._publish(tx, "jit_order_paid", order_id, order=order_view)
                # the elements with trades that may still capture money (the paid one is no longer among them)
                others = {row.provider for row in payments if row.status in LIVE_PAYMENT and row.id != payment.id}
                for other in sorted(others | {provider} if settleHere else others):
                    self._enqueue(tx, JOB_CLOSE_TRADES, {"orderId": order_id, "provider": other},
                                  dedupeKey=f"close:{order_id}:{other}")
                return PaidOutcome("accepted", payment, order)
            if mismatched:
                message = (f"{provider} trade {tradeNo} captured {from_fen(payment.amountFen)} for order {order_id} "
                           f"of {from_fen(order.amountFen)}, which is {order.status}: not the order's amount")
            else:
                message = (f"{provider} trade {tradeNo} captured {payment.amountFen} fen for order {order_id}, which "
                           f"is {order.status}" + (f" (paid by {order.provider} {order.tradeNo})" if order.tradeNo
                                                   else ""))
            message += "; refunding it" if self.surplus == "refund" else "; kept (settings.pays.surplus: keep)"
            self._audit(tx, audit.values("surplus", order_id, message=message,
                                         error_code="AMOUNT_MISMATCH" if mismatched else "SURPLUS_PAYMENT"))
            self._publish(tx, "jit_payment_surplus", order_id, order=order_view, payment=payment_dict(payment))
            if self.surplus == "refund":
                self._reserve(tx, order, payment, refund_id=f"SURPLUS-{payment.id}", fen=payment.amountFen,
                              reason="surplus payment returned", kind="surplus", send_in=0)
            return PaidOutcome("surplus", payment, order)

    def ask_provider(self, order_id: str, provider: str) -> None:
        """Have a job ask payment element ``provider`` about the order's trades and apply the answers (a
        notification said something PaySvc does not take at its word). One such job per order and provider at a
        time."""
        with self._write() as tx:
            self._enqueue(tx, JOB_CHECK_TRADES, {"orderId": order_id, "provider": provider},
                          dedupeKey=f"check:{order_id}:{provider}")

    def apply_unpaid(self, order_id: str, *, provider: str, providerName: str, reference: str, status: str,
                     audit: Audit) -> bool:
        """A provider reports a trade ``closed`` or ``failed``: that payment changes, never the order (the buyer may
        still pay another way). True if the payment changed."""
        with self._write() as tx:
            row = tx.conn.execute(select(PAYMENTS).where(PAYMENTS.c.orderId == order_id,
                                                         PAYMENTS.c.provider == provider,
                                                         PAYMENTS.c.reference == reference)).first()
            # a failed attempt may still be closed; a late "failed" never reopens a closed trade
            sources = ("prepared", "failed") if status == "closed" else ("prepared",)
            changed = row is not None and tx.conn.execute(
                update(PAYMENTS).where(PAYMENTS.c.id == row.id, PAYMENTS.c.status.in_(sources))
                .values(status=status, updatedAt=utcnow(), checkedAt=utcnow())).rowcount == 1
            outcome = f"payment {row.status}->{status}" if changed and row is not None else "unchanged"
            self._audit(tx, audit.values(outcome, order_id, message=None if changed else
                                         f"{provider} reports the trade {status}"))
            return changed

    def mark_checked(self, payment_ids: Iterable[int]) -> None:
        """Note that the providers were just asked about these trades."""
        ids = list(payment_ids)
        if ids:
            with self._write() as tx:
                tx.conn.execute(update(PAYMENTS).where(PAYMENTS.c.id.in_(ids)).values(checkedAt=utcnow()))

    def expire_payment(self, payment_id: int, audit: Audit) -> bool:
        """A trade whose order's payment window is over and that captured nothing: no longer asked about."""
        with self._write() as tx:
            row = self._payment(tx.conn, payment_id)
            changed = row is not None and tx.conn.execute(
                update(PAYMENTS).where(PAYMENTS.c.id == payment_id, PAYMENTS.c.status.in_(LIVE_PAYMENT))
                .values(status="expired", updatedAt=utcnow(), checkedAt=utcnow())).rowcount == 1
            if changed and row is not None:
                self._audit(tx, audit.values(f"payment {row.status}->expired", row.orderId))
            return changed

    # -- refunds ------------------------------------------------------------------------------------------------------
    def _reserve(self, tx: _Tx, order: Row, payment: Row, *, refund_id: str, fen: int, reason: str | None,
                 kind: str, send_in: float) -> Row | None:
        conn = tx.conn
        counted = conn.execute(update(PAYMENTS).where(
            PAYMENTS.c.id == payment.id, PAYMENTS.c.status == "paid",
            PAYMENTS.c.reservedFen + fen <= PAYMENTS.c.amountFen)
            .values(reservedFen=PAYMENTS.c.reservedFen + fen, updatedAt=utcnow())).rowcount == 1
        if not counted:
            return None
        now = utcnow()
        result = conn.execute(REFUNDS.insert().values(
            orderId=order.orderId, paymentId=payment.id, refundId=refund_id, amountFen=fen, status="reserved",
            kind=kind, provider=payment.provider, reason=reason, createdAt=now, updatedAt=now))
        row_id = result.inserted_primary_key[0]
        # the job finishes the refund if the caller dies or gets no definite answer (or, for a surplus, does it);
        # should the caller still be waiting for the provider then, the same id is simply sent twice
        self._enqueue(tx, JOB_REFUND, {"refund": row_id}, delay=send_in, dedupeKey=f"refund:{row_id}")
        return self._refund(conn, row_id)

    def reserve_refund(self, order_id: str, payment_id: int, *, refund_id: str, fen: int, reason: str | None,
                       kind: str = "merchant") -> Row | None:
        """Count a new refund of ``fen`` against the payment (one conditional UPDATE keeps the payment's refunds
        within what it captured, whatever runs concurrently) and record it ``reserved``, with a job that finishes it
        should the caller die. A merchant refund needs the order ``success``. None if it does not fit (or the order
        is not refundable)."""
        with self._write() as tx:
            order = self._order(tx.conn, order_id)
            payment = self._payment(tx.conn, payment_id)
            if order is None or payment is None:
                return None
            if kind == "merchant" and tx.conn.execute(update(ORDERS).where(
                    ORDERS.c.orderId == order_id, ORDERS.c.status == "success",
                    ORDERS.c.paymentId == payment_id).values(updatedAt=utcnow())).rowcount != 1:
                return None
            try:
                with tx.conn.begin_nested():
                    return self._reserve(tx, order, payment, refund_id=refund_id, fen=fen, reason=reason, kind=kind,
                                         send_in=REFUND_FOLLOW_UP)
            except IntegrityError:  # the same refundId raced in
                return None

    def reopen_refund(self, refund_row_id: int) -> Row | None:
        """A refused refund tried again with the same id: reserved again if it still fits. None if not."""
        try:
            with self._write() as tx:
                refund = self._refund(tx.conn, refund_row_id)
                if refund is None or refund.status != "refused":
                    return refund
                if tx.conn.execute(update(REFUNDS).where(REFUNDS.c.id == refund.id, REFUNDS.c.status == "refused")
                                   .values(status="reserved", updatedAt=utcnow())).rowcount != 1:
                    return self._refund(tx.conn, refund.id)
                if tx.conn.execute(update(PAYMENTS).where(
                        PAYMENTS.c.id == refund.paymentId, PAYMENTS.c.status == "paid",
                        PAYMENTS.c.reservedFen + refund.amountFen <= PAYMENTS.c.amountFen)
                        .values(reservedFen=PAYMENTS.c.reservedFen + refund.amountFen,
                                updatedAt=utcnow())).rowcount != 1:
                    raise _NoRoom
                self._enqueue(tx, JOB_REFUND, {"refund": refund.id}, delay=REFUND_FOLLOW_UP,
                          dedupeKey=f"refund:{refund.id}")
                return self._refund(tx.conn, refund.id)
        except _NoRoom:
            return None

    def refund_sent(self, refund_row_id: int) -> bool:
        """Note that the refund is about to go to the provider (from reserved or unknown). False if it is final."""
        with self._write() as tx:
            return tx.conn.execute(update(REFUNDS).where(REFUNDS.c.id == refund_row_id,
                                                         REFUNDS.c.status.in_(OPEN_REFUND))
                                   .values(status="sent", updatedAt=utcnow())).rowcount == 1

    def confirm_refund(self, refund_row_id: int, refund_no: str | None, audit: Audit) -> Row:
        """The provider refunded: the refund is ``confirmed`` and counts (on the payment; on the order when it is
        the accepted payment, which becomes ``refunded`` once fully refunded). Announced as ``jit_order_refunded``
        (a merchant refund) or ``jit_surplus_refunded``. Confirming twice changes nothing."""
        now = utcnow()
        with self._write() as tx:
            conn = tx.conn
            refund = self._refund(conn, refund_row_id)
            assert refund is not None
            self._order(conn, refund.orderId, lock=True)
            moved = conn.execute(update(REFUNDS).where(REFUNDS.c.id == refund.id,
                                                       REFUNDS.c.status.in_(NOT_FINAL_REFUND))
                                 .values(status="confirmed", refundNo=refund_no or refund.refundNo, errorCode=None,
                                         errorMessage=None, updatedAt=now)).rowcount == 1
            if not moved:
                return refund
            conn.execute(update(PAYMENTS).where(PAYMENTS.c.id == refund.paymentId)
                         .values(refundedFen=PAYMENTS.c.refundedFen + refund.amountFen, updatedAt=now))
            conn.execute(update(PAYMENTS).where(PAYMENTS.c.id == refund.paymentId, PAYMENTS.c.status == "paid",
                                                PAYMENTS.c.refundedFen >= PAYMENTS.c.amountFen)
                         .values(status="refunded"))
            order = self._order(conn, refund.orderId)
            assert order is not None
            accepted = order.paymentId == refund.paymentId
            outcome = "refunded"
            if accepted:
                conn.execute(update(ORDERS).where(ORDERS.c.orderId == order.orderId)
                             .values(refundedFen=ORDERS.c.refundedFen + refund.amountFen, updatedAt=now))
                if conn.execute(update(ORDERS).where(ORDERS.c.orderId == order.orderId,
                                                     ORDERS.c.status == "success",
                                                     ORDERS.c.refundedFen >= ORDERS.c.amountFen)
                                .values(status="refunded")).rowcount == 1:
                    outcome = "success->refunded"
            refund = self._refund(conn, refund.id)
            order = self._order(conn, refund.orderId)
            payment = self._payment(conn, refund.paymentId)
            assert refund is not None and order is not None and payment is not None
            self._audit(tx, audit.values(outcome, order.orderId))
            if accepted:
                self._publish(tx, "jit_order_refunded", order.orderId, order=self.order_dict(order),
                              refund=refund_dict(refund))
            else:
                self._publish(tx, "jit_surplus_refunded", order.orderId, order=self.order_dict(order),
                              payment=payment_dict(payment), refund=refund_dict(refund))
            return refund

    def refuse_refund(self, refund_row_id: int, code: str, message: str, audit: Audit, *,
                      announce: bool = False) -> Row:
        """The provider definitely did not refund: the reservation is released. A refund the provider had accepted
        and then closed is announced (``jit_refund_failed``), and so is one it refused outright when no caller hears
        that answer: ``announce`` (a job sent it), or a surplus refund; a surplus refund is then made again with a
        new refundId (at most
        :data:`SURPLUS_REFUND_ATTEMPTS` in all; one refused outright after :data:`SURPLUS_RETRY_AFTER_REFUSAL`
        seconds, since what made the provider refuse, a short balance say, takes time to change), unless the app
        keeps surplus money."""
        with self._write() as tx:
            conn = tx.conn
            refund = self._refund(conn, refund_row_id)
            assert refund is not None
            if refund.status in ACCEPTED_REFUND:
                self._order(conn, refund.orderId, lock=True)  # one change of the order's refunds at a time
            if conn.execute(update(REFUNDS).where(REFUNDS.c.id == refund.id, REFUNDS.c.status.in_(NOT_FINAL_REFUND))
                            .values(status="refused", errorCode=code[:64], errorMessage=storable_text(message),
                                    updatedAt=utcnow())).rowcount == 1:
                conn.execute(update(PAYMENTS).where(PAYMENTS.c.id == refund.paymentId)
                             .values(reservedFen=PAYMENTS.c.reservedFen - refund.amountFen, updatedAt=utcnow()))
                self._audit(tx, audit.values("refused", refund.orderId, error_code=code, message=message))
                if refund.status in ACCEPTED_REFUND:
                    self._refund_failed(tx, refund.id)
                elif refund.kind == "surplus":
                    self._refund_failed(tx, refund.id, again_in=SURPLUS_RETRY_AFTER_REFUSAL)
                elif announce:
                    self._refund_failed(tx, refund.id)
            found = self._refund(conn, refund.id)
            assert found is not None
            return found

    def accept_refund(self, refund_row_id: int, refund_no: str | None, status: str, audit: Audit,
                      *, next_ask: float) -> Row:
        """The provider accepted the refund without finishing it: ``processing`` (on its way), or ``abnormal`` (it
        could not be paid back the way it came; announced as ``jit_refund_failed``). It stays counted against the
        payment, not in the order's ``refundedAmount``, and a job asks the provider again in ``next_ask`` seconds.
        A refund already final is returned unchanged."""
        assert status in ACCEPTED_REFUND
        now = utcnow()
        with self._write() as tx:
            conn = tx.conn
            refund = self._refund(conn, refund_row_id)
            assert refund is not None
            if refund.status not in NOT_FINAL_REFUND:
                return refund
            if refund.status == status:  # asked again, same answer: noted (the sweep revives a silent one)
                conn.execute(update(REFUNDS).where(REFUNDS.c.id == refund.id, REFUNDS.c.status == status)
                             .values(updatedAt=now))
            else:
                if conn.execute(update(REFUNDS).where(REFUNDS.c.id == refund.id, REFUNDS.c.status == refund.status)
                                .values(status=status, refundNo=refund_no or refund.refundNo,
                                        errorCode="REFUND_ABNORMAL" if status == "abnormal" else None,
                                        errorMessage=None, updatedAt=now)).rowcount != 1:
                    found = self._refund(conn, refund.id)  # it moved meanwhile: that answer stands
                    assert found is not None
                    return found
                self._audit(tx, audit.values(f"refund {status}", refund.orderId,
                                             error_code="REFUND_ABNORMAL" if status == "abnormal" else None))
                if status == "abnormal":
                    self._refund_failed(tx, refund.id)
            # the refund's follow-up (when one is already waiting, that one asks)
            self._enqueue(tx, JOB_REFUND_STATE, {"refund": refund.id}, delay=next_ask,
                          dedupeKey=f"refund-state:{refund.id}")
            found = self._refund(conn, refund.id)
            assert found is not None
            return found

    def _refund_failed(self, tx: _Tx, refund_row_id: int, *, again_in: float = 0) -> None:
        """Announce a refund that did not reach the buyer (``jit_refund_failed``); a refused surplus refund is made
        again in ``again_in`` seconds (:meth:`_refund_surplus_again`)."""
        refund = self._refund(tx.conn, refund_row_id)
        order = self._order(tx.conn, refund.orderId) if refund is not None else None
        assert refund is not None and order is not None
        self._publish(tx, "jit_refund_failed", order.orderId, order=self.order_dict(order),
                      refund=refund_dict(refund))
        if refund.status == "refused" and refund.kind == "surplus" and self.surplus == "refund":
            self._refund_surplus_again(tx, refund, order, again_in)

    def _refund_surplus_again(self, tx: _Tx, closed: Row, order: Row, send_in: float) -> None:
        """The provider closed or refused a surplus refund: refund what is left of that payment with a new refundId
        (``SURPLUS-{payment}-{n}``, sent in ``send_in`` seconds), unless :data:`SURPLUS_REFUND_ATTEMPTS` were made or
        the merchant took that id; then it is left to the merchant (audit ``surplus-kept``)."""
        conn = tx.conn
        made = conn.execute(select(func.count()).select_from(REFUNDS).where(
            REFUNDS.c.paymentId == closed.paymentId, REFUNDS.c.kind == "surplus")).scalar_one()
        payment = self._payment(conn, closed.paymentId)
        assert payment is not None
        refund_id = f"SURPLUS-{payment.id}-{made + 1}"
        why = None
        if made >= SURPLUS_REFUND_ATTEMPTS:
            why = f"{made} refunds of surplus payment {payment.id} were closed or refused by {closed.provider}"
        elif payment.amountFen > payment.reservedFen:
            try:
                with conn.begin_nested():
                    self._reserve(tx, order, payment, refund_id=refund_id, fen=payment.amountFen - payment.reservedFen,
                                  reason="surplus payment returned", kind="surplus", send_in=send_in)
            except IntegrityError:  # the merchant took that refundId: the surplus is theirs to refund
                why = f"refundId {refund_id} is taken"
        if why is not None:
            self._audit(tx, Audit("refund", provider=closed.provider).values(
                "surplus-kept", order.orderId, error_code="SURPLUS_REFUND_FAILED",
                message=f"{why}; refund surplus payment {payment.id} with PaySvc.refund(orderId, "
                        f"paymentId={payment.id})"))

    def refund_unknown(self, refund_row_id: int, code: str, message: str, audit: Audit, retry_in: float) -> Row:
        """Whether the provider refunded is unknown: the refund stays counted, and its job asks again with the same
        id (the one enqueued with the reservation, or a new one due in ``retry_in`` seconds)."""
        with self._write() as tx:
            refund = self._refund(tx.conn, refund_row_id)
            assert refund is not None
            if tx.conn.execute(update(REFUNDS).where(REFUNDS.c.id == refund.id, REFUNDS.c.status.in_(OPEN_REFUND))
                               .values(status="unknown", errorCode=code[:64], errorMessage=storable_text(message),
                                       updatedAt=utcnow())).rowcount == 1:
                self._audit(tx, audit.values("outcome-unknown", refund.orderId, error_code=code, message=message))
                self._enqueue(tx, JOB_REFUND, {"refund": refund.id}, delay=retry_in, dedupeKey=f"refund:{refund.id}")
            found = self._refund(tx.conn, refund.id)
            assert found is not None
            return found

    # -- the money rule -----------------------------------------------------------------------------------------------
    def money_check(self, order_id: str) -> tuple[int, int]:
        """``(net captured, expected)`` in fen for one order: what the providers captured minus confirmed refunds,
        and what that should be (``amount - refundedAmount`` if the order is paid, else 0). Equal once the jobs are
        drained."""
        with self._read() as conn:
            order = self._order(conn, order_id)
            assert order is not None
            captured = conn.execute(select(func.coalesce(func.sum(PAYMENTS.c.amountFen), 0)).where(
                PAYMENTS.c.orderId == order_id, PAYMENTS.c.status.in_(CAPTURED_PAYMENT))).scalar_one()
            refunded = conn.execute(select(func.coalesce(func.sum(REFUNDS.c.amountFen), 0)).where(
                REFUNDS.c.orderId == order_id, REFUNDS.c.status == "confirmed")).scalar_one()
        expected = order.amountFen - order.refundedFen if order.status in PAID_ORDER else 0
        return int(captured) - int(refunded), expected


def _fast(conn: Connection) -> Conn:
    """The compiled statements on an open SQLAlchemy connection."""
    return database(conn.engine).on(conn)


def payment_dict(payment: Row) -> dict[str, Any]:
    """The public view of a payment."""
    return {"paymentId": payment.id, "fullName": payment.provider, "payType": payment.payType,
            "reference": payment.reference, "tradeNo": payment.tradeNo, "amount": from_fen(payment.amountFen),
            "status": payment.status, "role": payment.role, "accepted": payment.role == "accepted",
            "refundedAmount": from_fen(payment.refundedFen), "paidAt": as_utc(payment.paidAt),
            "createdAt": as_utc(payment.createdAt)}


def refund_dict(refund: Row) -> dict[str, Any]:
    """The public view of a refund."""
    return {"orderId": refund.orderId, "refundId": refund.refundId, "paymentId": refund.paymentId,
            "amount": from_fen(refund.amountFen), "status": refund.status, "kind": refund.kind,
            "refundNo": refund.refundNo, "reason": refund.reason,
            "error": ({"code": refund.errorCode, "message": refund.errorMessage} if refund.errorCode else None),
            "createdAt": as_utc(refund.createdAt)}
