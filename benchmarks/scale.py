"""Issue 14's scale bar: ``query`` and a verified notification with 1,000,000 orders in the database at most 1.3
times as slow as with 1,000, on SQLite and PostgreSQL.

Two databases per engine, built the same way: ``--small`` (1,000) and ``--orders`` (1,000,000) paid orders, each
with its accepted payment, its audit record and its delivered ``jit_order_paid`` event job, the shape of a shop
that has taken that many payments. The rows are generated in the database in bulk (``INSERT ... SELECT`` over a
recursive CTE on SQLite, over ``generate_series`` on PostgreSQL, in chunks), not through PaySvc; PostgreSQL is then
``ANALYZE``\\ d, as its autovacuum would. The measurements alternate between the two databases (best batch of each
kept): ``query`` of random generated orders, and ``handleNotify`` paying a fresh order (created untimed) with a
signed Alipay notification. tests/elements/pays/test_query_plans.py checks that the statements involved use indexes.

    .venv/bin/python benchmarks/scale.py [--skip-postgres] [--orders 1000000] [--small 1000]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from _support import ROOT, Bar, durable_postgres, interleaved, machine, print_table, write_bench_app
from ratios import AMOUNT, FORM, SUBJECT, Bench, _serial

from elements.pays.Meta import NotifyRequest  # noqa: E402

CHUNK = 100_000
#: what the generated rows look like (sizes of a real audit payload and event job)
AUDIT_PAYLOAD = ('{"app_id": "2021000000000001", "buyer_id": "2088102177846880", "gmt_payment": "2026-11-25 12:00:00", '
                 '"notify_type": "trade_status_sync", "seller_id": "2088000000000001", "sign_type": "RSA2", '
                 '"total_amount": "99.99", "trade_status": "TRADE_SUCCESS", "version": "1.0"}')
JOB_PAYLOAD = ('{"event":"jit_order_paid","eventId":"0123456789abcdef0123456789abcdef","plugin":"bench_events",'
               '"createdAt":{"$datetime":"2026-11-25T12:00:00+00:00"},"kwargs":{"order":{"orderId":"x"}}}')


def _id_sql(sqlite: bool) -> str:
    """The generated order id of row ``i``: 2025, sixteen digits, eight letters (28 characters, older than any new
    order id, as a real id is)."""
    return "('2025' || printf('%016d', i) || 'GENERATE')" if sqlite else "('2025' || lpad(i::text, 16, '0') || 'GENERATE')"


def populate(engine: Any, orders: int) -> float:
    """Generate ``orders`` paid orders with their payment, audit record and done event job; seconds taken."""
    from sqlalchemy import text

    sqlite = engine.dialect.name == "sqlite"
    started = time.perf_counter()
    now = datetime.now(timezone.utc)
    stamp: Any = now.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite else now
    naive: Any = stamp if sqlite else now.replace(tzinfo=None)
    oid = _id_sql(sqlite)
    tag = "printf('%016d', i)" if sqlite else "lpad(i::text, 16, '0')"
    for low in range(1, orders + 1, CHUNK):
        high = min(orders, low + CHUNK - 1)
        series = (f"WITH RECURSIVE s(i) AS (SELECT {low} UNION ALL SELECT i + 1 FROM s WHERE i < {high}) "
                  if sqlite else "")
        source = "FROM s" if sqlite else f"FROM generate_series({low}, {high}) AS i"
        statements = [
            f'INSERT INTO jitpay_order ("orderId", subject, "amountFen", status, "paymentId", provider, "tradeNo", '
            f'"payTime", "refundedFen", "cashierToken", "expiresAt", "createdAt", "updatedAt") '
            f"SELECT {oid}, 'Generated order', 9999, 'success', i, 'pays.AliPayType', 'T' || {tag}, :t, 0, "
            f"'token' || {tag} || 'abcdefghijklmnop', :t, :t, :t {source}",
            f'INSERT INTO jitpay_payment (id, "orderId", provider, "providerName", "payType", reference, "tradeNo", '
            f'"amountFen", status, role, "reservedFen", "refundedFen", "paidAt", "checkedAt", "createdAt", '
            f'"updatedAt") SELECT i, {oid}, \'pays.AliPayType\', \'alipay\', \'mobile\', {oid}, \'T\' || {tag}, '
            f"9999, 'paid', 'accepted', 0, 0, :t, :t, :t, :t {source}",
            f'INSERT INTO jitpay_audit (at, kind, provider, "orderId", verified, outcome, payload) '
            f"SELECT :t, 'notify', 'pays.AliPayType', {oid}, {'1' if sqlite else 'true'}, 'pending->success', "
            f":payload {source}",
            f'INSERT INTO jit_job (kind, payload, state, attempts, "dueAt", "createdAt", "updatedAt", "finishedAt", '
            f'"sequenceKey") SELECT \'jit.event\', :job, \'done\', 1, :n, :n, :n, :n, '
            f"'order:' || {oid} || '|bench_events' {source}",
        ]
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(series + statement if sqlite else statement),
                             {"t": stamp, "n": naive, "payload": AUDIT_PAYLOAD, "job": JOB_PAYLOAD})
    pooled = engine.raw_connection()
    try:
        if sqlite:
            pooled.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            pooled.driver_connection.autocommit = True
            pooled.driver_connection.execute("SELECT setval(pg_get_serial_sequence('jitpay_payment', 'id'), "
                                             "(SELECT max(id) FROM jitpay_payment))")
            pooled.driver_connection.execute("ANALYZE")
            pooled.driver_connection.autocommit = False
    finally:
        pooled.close()
    return time.perf_counter() - started


class Scaled(Bench):
    """The benchmark app on a database generated with ``orders`` orders."""

    def __init__(self, directory: Path, database: str | None, orders: int) -> None:
        write_bench_app(directory, database)  # the tables come first: the generated rows go in before any use
        import jitcore

        app = jitcore.load_app(directory / "app.yaml")
        app.loadElement("pays.services.PaySvc").ledger.ensure_schema()
        app.jobs.ensure_schema()
        self.populate_seconds = populate(app.engine, orders)
        app.close()
        self.orders = orders
        super().__init__(directory, database)

    def random_orders(self, n: int, rng: random.Random) -> list[str]:
        return [f"2025{rng.randint(1, self.orders):016d}GENERATE" for _ in range(n)]

    def query_batch(self, rng: random.Random) -> Callable[[int], Callable[[], None]]:
        def batch(n: int) -> Callable[[], None]:
            ids = self.random_orders(n, rng)
            return lambda: [self.pay.query(order_id) for order_id in ids] and None
        return batch

    def notify_batch(self) -> Callable[[int], Callable[[], None]]:
        def batch(n: int) -> Callable[[], None]:
            requests = []
            for _ in range(n):
                order_id = self.pay.create(SUBJECT, AMOUNT)["orderId"]
                body, _ = self.notification(order_id, next(_serial))
                requests.append(NotifyRequest.of(body, FORM))

            def run() -> None:
                for request in requests:
                    assert self.svc.handleNotify("alipay", request).body == b"success"
            return run
        return batch


def run(label: str, base: Path, databases: tuple[str | None, str | None], *, orders: int, small: int,
        rounds: int = 5) -> tuple[list[Bar], list[str]]:
    (base / "small").mkdir()
    (base / "large").mkdir()
    few = Scaled(base / "small", databases[0], small)
    many = Scaled(base / "large", databases[1], orders)
    try:
        rng = random.Random(14)
        small_query, large_query = interleaved(few.query_batch(rng), many.query_batch(rng), rounds=rounds, n=300)
        small_notify, large_notify = interleaved(few.notify_batch(), many.notify_batch(), rounds=rounds, n=150)
    finally:
        few.close()
        many.close()
    ms = 1e3
    floor_name = f"the same with {small:,} orders"
    bars = [
        Bar(f"scale: query, {orders:,} / {small:,} orders", label, "ms", large_query * ms, small_query * ms,
            floor_name, "max", 1.3, large_query / small_query),
        Bar(f"scale: notification, {orders:,} / {small:,} orders", label, "ms", large_notify * ms,
            small_notify * ms, floor_name, "max", 1.3, large_notify / small_notify,
            "verify, pay, outbox, event delivered"),
    ]
    lines = [f"{label}: generated {orders:,} orders (with payments, audit records, event jobs) in "
             f"{many.populate_seconds:.0f} s"]
    return bars, lines


def run_all(*, skip_postgres: bool = False, orders: int = 1_000_000, small: int = 1000) -> tuple[list[Bar], list[str]]:
    bars: list[Bar] = []
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix=".bench-", dir=ROOT) as tmp:
        found, described = run("SQLite", Path(tmp), (None, None), orders=orders, small=small)
        bars += found
        lines += described
    if not skip_postgres:
        with durable_postgres() as server, tempfile.TemporaryDirectory(prefix=".bench-", dir=ROOT) as tmp:
            found, described = run(f"PostgreSQL {server.version.split()[0]}", Path(tmp),
                                   (server.new_database(), server.new_database()), orders=orders, small=small)
            bars += found
            lines += described
    return bars, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--orders", type=int, default=1_000_000, help="orders in the large database")
    parser.add_argument("--small", type=int, default=1000, help="orders in the small database")
    args = parser.parse_args()
    bars, lines = run_all(skip_postgres=args.skip_postgres, orders=args.orders, small=args.small)
    print(f"== issue 14, scale ({machine()}) ==")
    for line in lines:
        print(line)
    print_table(bars)


if __name__ == "__main__":
    main()
