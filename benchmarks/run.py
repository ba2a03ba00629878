"""JitPay benchmarks: the cost of checking a declared-function call, and PaySvc's throughput on the embedded SQLite
database and on PostgreSQL (a throw-away server, as the tests start it).

    make bench            # or: .venv/bin/python benchmarks/run.py [--skip-postgres]

Numbers are wall-clock on this machine; each line says what was measured. SQLite runs twice in the same run: as
JitPay runs it (each commit's WAL synced before the commit returns, :class:`jitcore.sqlite.WalSync`) and with the
commits left in the operating system's cache (``synchronous=NORMAL`` and no sync: the floor it is compared with), on
the file system of the repository (``--dir``): a tmpfs ``/tmp`` would make every fsync free.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jitcore  # noqa: E402
import jitcore.app  # noqa: E402
from elements.pays.AliPayType.signing import load_rsa_key  # noqa: E402
from tests.support.live import generate_sandbox_keys, sandbox_app_config, signed_alipay_payment  # noqa: E402


def per_call(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``fn``: the best of 5 runs of ``number`` calls."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def bench_function_check(directory: Path) -> None:
    """The overhead of calling through the element proxy (argument checking) over calling the method directly."""
    (directory / "bench_service.py").write_text(
        "from elements.services.NormalType import NormalService\n"
        "class Bench(NormalService):\n"
        "    def add(self, subject, amount, count=1):\n"
        "        return amount\n")
    path = directory / "app.yaml"
    path.write_text(yaml.safe_dump({"appId": "bench", "elements": {"bench.services.Bench": {
        "type": "services.NormalType", "class": "bench_service:Bench",
        "functionList": [{"name": "add", "args": [{"name": "subject", "dataType": "Stext", "required": True},
                                                   {"name": "amount", "dataType": "Money", "required": True},
                                                   {"name": "count", "dataType": "Integer"}]}]}}}))
    app = jitcore.load_app(path)
    proxy = app.getElement("bench.services.Bench")
    raw = app.loadElement("bench.services.Bench")
    n = 200_000
    checked_kw = per_call(lambda: proxy.add(subject="VIP", amount=99.99, count=2), n)
    checked_pos = per_call(lambda: proxy.add("VIP", Decimal("99.99"), 2), n)
    direct = per_call(lambda: raw.add(subject="VIP", amount=99.99, count=2), n)
    print(f"checked call, 3 arguments (keywords, float money): {checked_kw * 1e6:6.2f} us/call, "
          f"overhead {(checked_kw - direct) * 1e6:5.2f} us over the bare method ({direct * 1e6:.2f} us)")
    print(f"checked call, 3 arguments (positional, Decimal)  : {checked_pos * 1e6:6.2f} us/call, "
          f"overhead {(checked_pos - direct) * 1e6:5.2f} us   [target: overhead < 20 us]")


def bench_pay_service(directory: Path, database: str | None) -> dict[str, float]:
    """create, query and a verified Alipay notification (RSA2) applied through the life cycle: seconds per call."""
    keys = directory / ".sandbox"
    generate_sandbox_keys(keys)
    config = sandbox_app_config("http://127.0.0.1:1", database=database)
    path = directory / "app.yaml"
    path.write_text(yaml.safe_dump(config))
    app = jitcore.load_app(path)
    pay = app.getElement("pays.services.PaySvc")
    svc = app.loadElement("pays.services.PaySvc")
    gateway_key = load_rsa_key((keys / "alipay_gateway_private_key.pem").read_text())
    n = 300
    start = time.perf_counter()
    orders = [pay.create("Benchmark order", "99.99")["orderId"] for _ in range(n)]
    create_s = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for order_id in orders:
        pay.query(orderId=order_id)
    query_s = (time.perf_counter() - start) / n
    notes = []
    for i, order_id in enumerate(orders):
        notes.append(signed_alipay_payment(order_id, "99.99", f"2026{i:010d}", gateway_key, f"n{i}"))
    start = time.perf_counter()
    for fields in notes:
        assert svc.handle_notify("alipay", fields).body == b"success"
    notify_s = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for fields in notes:  # the provider's retries: already processed
        assert svc.handle_notify("alipay", fields).body == b"success"
    replay_s = (time.perf_counter() - start) / n
    app.close()
    return {"create": create_s, "query": query_s, "notify": notify_s, "replay": replay_s}


def print_pay_service(label: str, t: dict[str, float]) -> None:
    print(f"{label:17s} create {t['create'] * 1e3:6.2f} ms | query {t['query'] * 1e3:6.2f} ms | "
          f"notify (verify RSA2 + pay) {t['notify'] * 1e3:6.2f} ms | replayed notify {t['replay'] * 1e3:6.2f} ms")


def bench_commit(directory: Path, n: int = 300) -> float:
    """Seconds per committed one-row INSERT transaction (engine.begin()): the bare cost of a durable commit."""
    from sqlalchemy import text

    engine = jitcore.app.create_engine(f"sqlite:///{directory / 'commit.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    start = time.perf_counter()
    for i in range(n):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": f"row {i}"})
    seconds = (time.perf_counter() - start) / n
    engine.dispose()
    return seconds


def bench_sqlite_synchronous(base: Path, rounds: int = 2) -> None:
    """PaySvc and a bare commit on SQLite with durable commits (the WAL synced by each commit, as JitPay runs)
    against the floor without syncs (``synchronous=NORMAL`` alone), measured alternately in this run (the best of
    ``rounds`` each), with the ratio durable / not synced."""
    import jitcore.sqlite

    best: dict[str, dict[str, float]] = {"durable": {}, "NORMAL": {}}
    sync = jitcore.sqlite.WalSync.__call__
    try:
        for _ in range(rounds):
            for mode in ("NORMAL", "durable"):
                jitcore.sqlite.WalSync.__call__ = sync if mode == "durable" else (lambda self: None)
                with tempfile.TemporaryDirectory(prefix=".bench-", dir=base) as tmp:
                    timings = bench_pay_service(Path(tmp), None)
                    timings["commit"] = bench_commit(Path(tmp))
                for key, value in timings.items():
                    best[mode][key] = min(best[mode].get(key, float("inf")), value)
    finally:
        jitcore.sqlite.WalSync.__call__ = sync
    print_pay_service("SQLite (durable)", best["durable"])
    print_pay_service("SQLite (no sync)", best["NORMAL"])
    ratio = {key: best["durable"][key] / best["NORMAL"][key] for key in best["durable"]}
    print(f"durable / not synced: create x{ratio['create']:.2f} | query x{ratio['query']:.2f} | "
          f"notify x{ratio['notify']:.2f} | replayed notify x{ratio['replay']:.2f} | one-row commit "
          f"{best['durable']['commit'] * 1e3:.2f} ms vs {best['NORMAL']['commit'] * 1e3:.2f} ms "
          f"(x{ratio['commit']:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-postgres", action="store_true", help="only the embedded SQLite database")
    parser.add_argument("--dir", type=Path, default=ROOT,
                        help="where the SQLite files go (default: the repository; not a tmpfs, where fsync is free)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("== declared-function checking ==")
        bench_function_check(Path(tmp))
    print("== PaySvc per operation (300 orders, one thread) ==")
    bench_sqlite_synchronous(args.dir)
    if not args.skip_postgres:
        from tests.support.postgres import start_postgres

        with start_postgres() as server, tempfile.TemporaryDirectory() as tmp:
            print_pay_service("PostgreSQL", bench_pay_service(Path(tmp), server.new_database()))


if __name__ == "__main__":
    main()
