"""The payment ledger's tables (SQLModel declarations, written through SQLAlchemy Core statements). Money is
integer fen; times are UTC (``timestamptz`` on PostgreSQL).

Three records (see :mod:`.ledger` for how each one changes):

- :class:`PayOrder`: what is sold, in JitAi's states (``pending``, ``success``, ``failed``, ``closed``,
  ``refunded``); ``paymentId`` names its accepted payment once paid.
- :class:`PayPayment`: one per provider trade (payment element + the reference sent to the provider): prepared,
  then paid, closed, failed or expired; a paid one may be refunded in part or in full. Exactly one payment of a paid
  order is ``accepted``; any other that captured money is a ``surplus``.
- :class:`PayRefund`: belongs to one payment: reserved, sent, then confirmed, refused or unknown (retried); or
  processing / abnormal (accepted by the provider, finished later) until confirmed or refused.

Schema evolution: ``jitpay_schema`` holds the schema version these models describe (:data:`SCHEMA_VERSION`);
:mod:`.migrations` moves an older database forward in one transaction the first time it is used. A database newer
than the code is refused rather than guessed at.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 2


class PayOrder(SQLModel, table=True):
    """An order and where it is in its life cycle."""

    __tablename__ = "jitpay_order"

    orderId: str = Field(primary_key=True, max_length=32)
    subject: str = Field(max_length=256)
    amountFen: int = Field(sa_column=Column(BigInteger, nullable=False))
    status: str = Field(default="pending", max_length=16, index=True)
    #: the accepted payment (:class:`PayPayment` id) once paid, with its element, trade number and time
    paymentId: int | None = Field(default=None, sa_column=Column(BigInteger))
    provider: str | None = Field(default=None, max_length=128)
    tradeNo: str | None = Field(default=None, max_length=64)
    payTime: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    #: confirmed refunds of the accepted payment
    refundedFen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    cashierToken: str = Field(max_length=64)
    #: no trade of the order may be paid after this moment (sent to the providers as their own expiry)
    expiresAt: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    createdAt: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updatedAt: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class PayPayment(SQLModel, table=True):
    """One trade at one provider for one order: what was offered to the buyer and what the provider captured."""

    __tablename__ = "jitpay_payment"
    __table_args__ = (UniqueConstraint("orderId", "provider", "reference", name="uq_jitpay_payment_trade"),
                      Index("ix_jitpay_payment_sweep", "status", "checkedAt"))

    id: int | None = Field(default=None, primary_key=True)
    orderId: str = Field(max_length=32, foreign_key="jitpay_order.orderId", index=True)
    #: the payment element (fullName) and its provider name (``alipay``, ``wechat``, ...)
    provider: str = Field(max_length=128)
    providerName: str = Field(max_length=32)
    payType: str = Field(max_length=16)
    #: the reference the trade carries at the provider (its ``out_trade_no``)
    reference: str = Field(max_length=64)
    tradeNo: str | None = Field(default=None, max_length=64)
    amountFen: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: prepared | paid | refunded (fully) | closed | failed | expired
    status: str = Field(default="prepared", max_length=16)
    #: accepted | surplus, once paid
    role: str | None = Field(default=None, max_length=16)
    #: refunds counted against the payment (reserved, sent, unknown, processing, abnormal and confirmed) and those
    #: confirmed
    reservedFen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    refundedFen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    #: the last pay URL handed out for this trade, its payType, and until when it may be reused
    payUrl: str | None = Field(default=None, sa_column=Column(Text))
    qrCode: str | None = Field(default=None, sa_column=Column(Text))
    expiresAt: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    paidAt: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    #: when the provider was last asked about the trade (the sweep of pending trades)
    checkedAt: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    createdAt: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updatedAt: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class PayRefund(SQLModel, table=True):
    """A refund of (part of) one payment, idempotent per ``refundId`` within its order."""

    __tablename__ = "jitpay_refund"
    __table_args__ = (UniqueConstraint("orderId", "refundId", name="uq_jitpay_refund_order_refund"),
                      # the sweep's open refunds (status IN reserved, sent, unknown; untouched since ...); added to
                      # version 2 later: migrations.ensure_schema creates it in a version-2 database without it
                      Index("ix_jitpay_refund_open", "status", "updatedAt"))

    id: int | None = Field(default=None, primary_key=True)
    orderId: str = Field(max_length=32, foreign_key="jitpay_order.orderId")
    paymentId: int | None = Field(default=None, sa_column=Column(BigInteger, index=True))
    refundId: str = Field(max_length=64)
    amountFen: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: reserved | sent | unknown | processing | abnormal | confirmed | refused
    status: str = Field(default="reserved", max_length=16)
    #: merchant (asked for through ``refund``) | surplus (money the order did not need, returned automatically)
    kind: str = Field(default="merchant", max_length=16)
    provider: str = Field(max_length=128)
    refundNo: str | None = Field(default=None, max_length=64)
    reason: str | None = Field(default=None, max_length=256)
    #: the provider's code and message of the last refusal or unknown outcome
    errorCode: str | None = Field(default=None, max_length=64)
    errorMessage: str | None = Field(default=None, sa_column=Column(Text))
    createdAt: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updatedAt: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class PayAudit(SQLModel, table=True):
    """Everything a provider told us, and what it changed: notifications, active checks, rejections, event errors."""

    __tablename__ = "jitpay_audit"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    kind: str = Field(max_length=16)  # notify | check | prepare | close | refund | settle | sweep | event
    provider: str | None = Field(default=None, max_length=128)
    orderId: str | None = Field(default=None, max_length=64, index=True)
    verified: bool | None = None
    outcome: str = Field(max_length=64)  # e.g. "pending->success", "unchanged", "rejected"
    errorCode: str | None = Field(default=None, max_length=64)
    message: str | None = Field(default=None, sa_column=Column(Text))
    payload: str | None = Field(default=None, sa_column=Column(Text))


class PaySchema(SQLModel, table=True):
    """The schema version of the payment tables."""

    __tablename__ = "jitpay_schema"

    id: int = Field(default=1, primary_key=True)
    version: int


TABLES = [PayOrder.__table__, PayPayment.__table__, PayRefund.__table__, PayAudit.__table__, PaySchema.__table__]

#: indexes added to the version-2 tables after version 2 shipped (no schema change a query could notice: a database
#: without them is still version 2, and ensure_schema adds them)
ADDED_INDEXES = [index for index in PayRefund.__table__.indexes if index.name == "ix_jitpay_refund_open"]
