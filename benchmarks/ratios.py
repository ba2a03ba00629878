"""Issue 14's in-process bars, each a ratio against a floor measured in the same run, on SQLite and PostgreSQL:

- ``getPayUrl(pays.AliPayType, mobile)`` against python-alipay-sdk's ``api_alipay_trade_wap_pay`` building the same
  ``alipay.trade.wap.pay`` order string (bar: JitPay at least 1.5 times faster);
- ``create`` against a floor INSERT of the same row and its commit (bar: at most 6 times);
- ``query`` against a floor primary-key SELECT (bar: at most 8 times);
- one whole flow (create, getPayUrl mobile, a verified Alipay notification as it arrives over HTTP, query) against
  the sum of its unavoidable parts: one INSERT, one RSA2 signature, one RSA2 verification, one conditional UPDATE
  plus an audit INSERT in one transaction, one SELECT (bar: floor / JitPay at least 0.4).

The floors run on the bare driver (sqlite3, psycopg) over a connection from the same engine factory as JitPay's
(``jitcore.app.create_engine``), against copies of the order and audit tables in the same database, with durable
commits the plain way: SQLite in WAL mode with ``synchronous=FULL`` (JitPay's commits are as durable, synced after
the writer's turn: :class:`jitcore.sqlite.WalSync`); PostgreSQL with fsync on (:func:`_support.durable_postgres`). A single statement runs
in autocommit, as a hand-written program would. JitPay runs through ``app.getElement`` (argument checking
included), with the payment ledger, the outbox and one subscriber of ``jit_order_paid``.

    .venv/bin/python benchmarks/ratios.py [--skip-postgres] [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta, timezone
from itertools import count
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

from _support import ROOT, Bar, durable_postgres, interleaved, machine, print_table, write_bench_app

import jitcore  # noqa: E402
import jitcore.app  # noqa: E402
from elements.pays.AliPayType.signing import (NOTIFY_UNSIGNED_KEYS, load_rsa_key, rsa2_sign, rsa2_verify,  # noqa: E402
                                              sign_content)
from elements.pays.Meta import NotifyRequest  # noqa: E402
from tests.support.live import ALIPAY_APP_ID, signed_alipay_payment  # noqa: E402

SUBJECT = "Benchmark order"
AMOUNT = "99.99"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
_serial = count(1)


def _order_id(prefix: str) -> str:
    return f"{prefix}{datetime.now(timezone.utc):%Y%m%d%H%M%S}{next(_serial):08d}"


class Floor:
    """The bare driver on copies of ``jitpay_order`` and ``jitpay_audit`` (``floor_order``, ``floor_audit``: same
    columns, same indexes) in JitPay's database, through a connection with JitPay's settings."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import MetaData, Table

        from elements.pays.services.PaySvc.models import PayAudit, PayOrder

        self.engine = jitcore.app.create_engine(url)
        self.sqlite = self.engine.dialect.name == "sqlite"
        metadata = MetaData()
        for table, name in ((PayOrder.__table__, "floor_order"), (PayAudit.__table__, "floor_audit")):
            Table(name, metadata, *[column._copy() for column in table.columns])
        metadata.create_all(self.engine)
        self.pooled = self.engine.raw_connection()
        self.conn = self.pooled.driver_connection
        if self.sqlite:  # durable commits the plain way: SQLite syncs the WAL in each commit, under the write lock
            self.conn.execute("PRAGMA synchronous=FULL")
        else:
            self.conn.autocommit = True
        p = "?" if self.sqlite else "%s"
        self.insert_sql = (f'INSERT INTO floor_order ("orderId", subject, "amountFen", status, "refundedFen", '
                           f'"cashierToken", "expiresAt", "createdAt", "updatedAt") VALUES ({", ".join([p] * 9)})')
        self.select_sql = f'SELECT * FROM floor_order WHERE "orderId" = {p}'
        self.update_sql = (f'UPDATE floor_order SET status = {p}, "paymentId" = {p}, provider = {p}, "tradeNo" = {p}, '
                           f'"payTime" = {p}, "updatedAt" = {p} WHERE "orderId" = {p} AND status = {p}')
        self.audit_sql = (f'INSERT INTO floor_audit (at, kind, provider, "orderId", verified, outcome, payload) '
                          f'VALUES ({", ".join([p] * 7)})')

    def _now(self) -> Any:
        now = datetime.now(timezone.utc)
        return now.replace(tzinfo=None).isoformat(" ", "microseconds") if self.sqlite else now

    def insert(self, order_id: str) -> None:
        now = self._now()
        self.conn.execute(self.insert_sql, (order_id, SUBJECT, 9999, "pending", 0, "t" * 32, now, now, now))

    def select(self, order_id: str) -> Any:
        row = self.conn.execute(self.select_sql, (order_id,)).fetchone()
        assert row is not None
        return row

    def pay(self, order_id: str, payload: str) -> None:
        """One conditional UPDATE plus an audit INSERT, in one transaction."""
        now = self._now()
        if self.sqlite:
            self.conn.execute("BEGIN IMMEDIATE")
            self._pay(order_id, payload, now)
            self.conn.commit()
        else:
            with self.conn.transaction():
                self._pay(order_id, payload, now)

    def _pay(self, order_id: str, payload: str, now: Any) -> None:
        changed = self.conn.execute(self.update_sql, ("success", 1, "pays.AliPayType", "2026000000", now, now,
                                                      order_id, "pending")).rowcount
        assert changed == 1
        self.conn.execute(self.audit_sql, (now, "notify", "pays.AliPayType", order_id, True, "pending->success",
                                           payload))

    def close(self) -> None:
        self.pooled.close()
        self.engine.dispose()


class Bench:
    """JitPay's app and the floor on one database."""

    def __init__(self, directory: Path, database: str | None) -> None:
        path = write_bench_app(directory, database)
        self.app = jitcore.load_app(path)
        self.pay = self.app.getElement("pays.services.PaySvc")
        self.svc = self.app.loadElement("pays.services.PaySvc")
        self.pay.create("warm-up", AMOUNT)  # the tables
        self.floor = Floor(self.app.database_url)
        keys = directory / ".sandbox"
        self.gateway_key = load_rsa_key((keys / "alipay_gateway_private_key.pem").read_text())
        self.gateway_public = load_rsa_key((keys / "alipay_gateway_public_key.pem").read_text())
        self.app_key_pem = (keys / "alipay_app_private_key.pem").read_text()
        self.app_key = load_rsa_key(self.app_key_pem)
        self.gateway_public_pem = (keys / "alipay_gateway_public_key.pem").read_text()
        self.alipay = self.app.loadElement("pays.AliPayType")

    def close(self) -> None:
        self.floor.close()
        self.app.close()

    def notification(self, order_id: str, serial: int) -> tuple[bytes, dict[str, str]]:
        signed = signed_alipay_payment(order_id, AMOUNT, f"2026{serial:016d}", self.gateway_key, f"n{serial}")
        return urlencode(signed).encode(), signed

    # -- getPayUrl against python-alipay-sdk -------------------------------------------------------------------------
    def sdk(self) -> Any:
        from alipay import AliPay

        return AliPay(appid=ALIPAY_APP_ID, app_notify_url=self.alipay.notifyUrl,
                      app_private_key_string=self.app_key_pem, alipay_public_key_string=self.gateway_public_pem,
                      sign_type="RSA2")

    def bench_pay_url(self, rounds: int, n: int) -> tuple[float, float]:
        sdk = self.sdk()
        expire = (datetime.now(timezone.utc) + timedelta(hours=2)).astimezone(timezone(timedelta(hours=8)))
        time_expire = expire.strftime("%Y-%m-%d %H:%M:%S")

        def floor(n: int) -> Callable[[], None]:
            ids = [_order_id("S") for _ in range(n)]
            return lambda: [sdk.api_alipay_trade_wap_pay(SUBJECT, order_id, AMOUNT, notify_url=self.alipay.notifyUrl,
                                                         time_expire=time_expire) for order_id in ids] and None

        def subject(n: int) -> Callable[[], None]:
            ids = [self.pay.create(SUBJECT, AMOUNT)["orderId"] for _ in range(n)]
            return lambda: [self.pay.getPayUrl(order_id, "pays.AliPayType", "mobile") for order_id in ids] and None

        return interleaved(floor, subject, rounds=rounds, n=n)

    # -- create and query against the floor ----------------------------------------------------------------------
    def bench_create(self, rounds: int, n: int) -> tuple[float, float]:
        def floor(n: int) -> Callable[[], None]:
            ids = [_order_id("F") for _ in range(n)]
            return lambda: [self.floor.insert(order_id) for order_id in ids] and None

        def subject(n: int) -> Callable[[], None]:
            return lambda: [self.pay.create(SUBJECT, AMOUNT) for _ in range(n)] and None

        return interleaved(floor, subject, rounds=rounds, n=n)

    def bench_query(self, rounds: int, n: int) -> tuple[float, float]:
        # orders as a buyer's page sees them: each offered once (one payment row)
        orders = [self.pay.create(SUBJECT, AMOUNT)["orderId"] for _ in range(n)]
        for order_id in orders:
            self.pay.getPayUrl(order_id, "pays.AliPayType", "mobile")
        floor_orders = [_order_id("Q") for _ in range(n)]
        for order_id in floor_orders:
            self.floor.insert(order_id)

        def floor(n: int) -> Callable[[], None]:
            return lambda: [self.floor.select(order_id) for order_id in floor_orders] and None

        def subject(n: int) -> Callable[[], None]:
            return lambda: [self.pay.query(order_id) for order_id in orders] and None

        return interleaved(floor, subject, rounds=rounds, n=n)

    # -- the whole flow against the sum of its unavoidable parts ------------------------------------------------
    def bench_flow(self, rounds: int, n: int) -> tuple[float, float]:
        content = sign_content(self.alipay.gateway.common_params("alipay.trade.wap.pay", {
            "out_trade_no": _order_id("C"), "total_amount": AMOUNT, "subject": SUBJECT,
            "time_expire": "2026-11-25 14:00:00", "product_code": "QUICK_WAP_WAY"}, notify_url=self.alipay.notifyUrl))

        def floor(n: int) -> Callable[[], None]:
            batch = []
            for _ in range(n):
                order_id = _order_id("W")
                _, fields = self.notification(order_id, next(_serial))
                batch.append((order_id, sign_content(fields, NOTIFY_UNSIGNED_KEYS), fields["sign"], str(fields)))

            def run() -> None:
                for order_id, signed_text, signature, payload in batch:
                    self.floor.insert(order_id)
                    rsa2_sign(self.app_key, content)
                    assert rsa2_verify(self.gateway_public, signed_text, signature)
                    self.floor.pay(order_id, payload)
                    self.floor.select(order_id)
            return run

        def subject(n: int) -> Callable[[], None]:
            batch = []
            for _ in range(n):
                order_id = _order_id("J")
                body, _ = self.notification(order_id, next(_serial))
                batch.append((order_id, NotifyRequest.of(body, FORM)))

            def run() -> None:
                for order_id, request in batch:
                    self.pay.create(SUBJECT, AMOUNT, order_id)
                    self.pay.getPayUrl(order_id, "pays.AliPayType", "mobile")
                    assert self.svc.handleNotify("alipay", request).body == b"success"
                    assert self.pay.query(order_id)["status"] == "success"
            return run

        return interleaved(floor, subject, rounds=rounds, n=n)


def signing_note(bench: Bench) -> str:
    """JitPay's RSA2 signature (cryptography) against the SDK's (pycryptodome), for information."""
    sdk = bench.sdk()
    text = "x" * 700
    best = {}
    for name, fn in (("cryptography", lambda: rsa2_sign(bench.app_key, text)), ("sdk", lambda: sdk._sign(text))):
        best[name] = min(_timed(fn, 100) for _ in range(3))
    return f"signing alone: JitPay {best['cryptography'] * 1e3:.2f} ms, SDK {best['sdk'] * 1e3:.2f} ms"


def _timed(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


BENCHES = ("getPayUrl", "create", "query", "flow")


def run(database: str | None, label: str, directory: Path, *, rounds: int = 5,
        only: tuple[str, ...] = BENCHES) -> list[Bar]:
    """The in-process bars (``only`` these) on one database."""
    bench = Bench(directory, database)
    ms = 1e3
    bars = []
    try:
        if "getPayUrl" in only:
            sdk_s, url_s = bench.bench_pay_url(rounds, 150)
            bars.append(Bar("getPayUrl(Alipay, mobile): SDK / JitPay", label, "ms", url_s * ms, sdk_s * ms,
                            "python-alipay-sdk api_alipay_trade_wap_pay", "min", 1.5, sdk_s / url_s,
                            signing_note(bench)))
        if "create" in only:
            insert_s, create_s = bench.bench_create(rounds, 200)
            bars.append(Bar("create / floor INSERT+commit", label, "ms", create_s * ms, insert_s * ms,
                            "INSERT, commit", "max", 6, create_s / insert_s))
        if "query" in only:
            select_s, query_s = bench.bench_query(rounds, 200)
            bars.append(Bar("query / floor SELECT by key", label, "ms", query_s * ms, select_s * ms,
                            "SELECT by primary key", "max", 8, query_s / select_s))
        if "flow" in only:
            parts_s, flow_s = bench.bench_flow(rounds, 100)
            bars.append(Bar("whole flow: floor / JitPay", label, "ms", flow_s * ms, parts_s * ms,
                            "INSERT + sign + verify + UPDATE&audit tx + SELECT", "min", 0.4, parts_s / flow_s,
                            "create, getPayUrl mobile, notification (parse, verify, pay, outbox), query"))
    finally:
        bench.close()
    return bars


def run_all(*, skip_postgres: bool = False, rounds: int = 5, only: tuple[str, ...] = BENCHES) -> list[Bar]:
    """The in-process bars on SQLite and (unless skipped) a durable PostgreSQL server."""
    bars = []
    # the repository's file system, like the app's own database (a tmpfs would make every fsync free)
    with tempfile.TemporaryDirectory(prefix=".bench-", dir=ROOT) as tmp:
        bars += run(None, "SQLite", Path(tmp), rounds=rounds, only=only)
    if not skip_postgres:
        with durable_postgres() as server, tempfile.TemporaryDirectory(prefix=".bench-", dir=ROOT) as tmp:
            bars += run(server.new_database(), f"PostgreSQL {server.version.split()[0]}", Path(tmp), rounds=rounds,
                        only=only)
    return bars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--rounds", type=int, default=5, help="alternating batches per side (best kept)")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"some of {','.join(BENCHES)}")
    args = parser.parse_args()
    bars = run_all(skip_postgres=args.skip_postgres, rounds=args.rounds, only=tuple(args.only.split(",")))
    print_table(bars, f"== issue 14, in-process bars ({machine()}) ==")


if __name__ == "__main__":
    main()
