"""Issue 14's bars in one table: every measurement of :mod:`ratios` (in-process), :mod:`http_load` (``jit serve
--workers 2`` under a bounded load) and :mod:`scale` (1,000 against 1,000,000 orders), on SQLite and PostgreSQL,
each against a floor measured in the same run, with whether the bar is met. ``make bench`` runs it.

    .venv/bin/python benchmarks/bars.py [--skip-postgres] [--skip-http] [--skip-scale] [--scale-orders 1000000]
"""

from __future__ import annotations

import argparse
import time

from _support import Bar, machine, print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--skip-http", action="store_true", help="no HTTP load")
    parser.add_argument("--skip-scale", action="store_true", help="no 1,000,000-order databases")
    parser.add_argument("--scale-orders", type=int, default=1_000_000, help="orders in the large database")
    parser.add_argument("--requests", type=int, default=2000, help="timed notifications per HTTP run")
    parser.add_argument("--concurrency", type=int, default=8, help="connections of the HTTP load")
    args = parser.parse_args()
    started = time.time()
    bars: list[Bar] = []
    lines: list[str] = []

    import ratios

    bars += ratios.run_all(skip_postgres=args.skip_postgres)
    if not args.skip_http:
        import http_load

        found, described = http_load.run_all(skip_postgres=args.skip_postgres, requests=args.requests,
                                              concurrency=args.concurrency, warmup=200, rounds=2)
        bars += found
        lines += described
    if not args.skip_scale:
        import scale

        found, described = scale.run_all(skip_postgres=args.skip_postgres, orders=args.scale_orders)
        bars += found
        lines += described
    print()
    print(f"== issue 14: JitPay against floors measured in this run ({machine()}; "
          f"{time.time() - started:.0f} s) ==")
    for line in lines:
        print(line)
    print_table(bars)
    met = sum(bar.met for bar in bars if bar.kind != "info")
    print(f"{met} of {sum(bar.kind != 'info' for bar in bars)} bars met")


if __name__ == "__main__":
    main()
