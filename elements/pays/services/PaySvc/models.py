"""The payment tables (SQLModel). Money is integer fen; times are UTC (``timestamptz`` on
PostgreSQL).

Schema evolution: ``jitpay_schema`` holds the schema version these models describe (:data:`SCHEMA_VERSION`). Tables
are created on first use. A later version adds its changes as an ordered migration step (run in one transaction
when a database at an older version is first used, then the version row moves); a database newer than the code is
refused rather than guessed at.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 1


class PayOrder(SQLModel, table=True):
    """An order and where it is in its life cycle."""

    __tablename__ = "jitpay_order"

    orderId: str = Field(primary_key=True, max_length=32)
    subject: str = Field(max_length=256)
    amountFen: int = Field(sa_column=Column(BigInteger, nullable=False))
    status: str = Field(default="pending", max_length=16, index=True)
    #: the payment element that confirmed payment, and its trade number
    provider: str | None = Field(default=None, max_length=128)
    tradeNo: str | None = Field(default=None, max_length=64)
    payTime: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    refundedFen: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    cashierToken: str = Field(max_length=64)
    createdAt: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updatedAt: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class PayAttempt(SQLModel, table=True):
    """A payment prepared with a provider (a QR code or a link), reused while it is valid."""

    __tablename__ = "jitpay_attempt"
    __table_args__ = (Index("ix_jitpay_attempt_order", "orderId", "provider", "payType"),)

    id: int | None = Field(default=None, primary_key=True)
    orderId: str = Field(max_length=32, foreign_key="jitpay_order.orderId")
    provider: str = Field(max_length=128)
    providerName: str = Field(max_length=32)
    payType: str = Field(max_length=16)
    payUrl: str = Field(sa_column=Column(Text, nullable=False))
    qrCode: str | None = Field(default=None, sa_column=Column(Text))
    expiresAt: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    createdAt: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class PayRefund(SQLModel, table=True):
    """A refund of (part of) a paid order, idempotent per ``refundId``."""

    __tablename__ = "jitpay_refund"
    __table_args__ = (UniqueConstraint("orderId", "refundId", name="uq_jitpay_refund_order_refund"),)

    id: int | None = Field(default=None, primary_key=True)
    orderId: str = Field(max_length=32, foreign_key="jitpay_order.orderId")
    refundId: str = Field(max_length=64)
    amountFen: int = Field(sa_column=Column(BigInteger, nullable=False))
    status: str = Field(default="pending", max_length=16)  # pending | success | failed
    provider: str = Field(max_length=128)
    refundNo: str | None = Field(default=None, max_length=64)
    reason: str | None = Field(default=None, max_length=256)
    createdAt: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updatedAt: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class PayAudit(SQLModel, table=True):
    """Everything a provider told us, and what it changed: notifications, active checks, rejections, event errors."""

    __tablename__ = "jitpay_audit"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    kind: str = Field(max_length=16)  # notify | check | prepare | close | refund | event
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


TABLES = [PayOrder.__table__, PayAttempt.__table__, PayRefund.__table__, PayAudit.__table__, PaySchema.__table__]
