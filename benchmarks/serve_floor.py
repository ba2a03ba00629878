"""Serve :mod:`floor_app` under uvicorn exactly as ``jit serve --workers N`` serves an app (uvicorn.run with the
listening socket :func:`jitcore.cli.share_tcp_socket` fixes), so that the floor and JitPay differ only in what
happens inside a request.

    FLOOR_DATABASE=... FLOOR_PUBLIC_KEY=... python benchmarks/serve_floor.py --host 127.0.0.1 --port 8001 --workers 2
"""

from __future__ import annotations

import argparse

import uvicorn

from jitcore.cli import share_tcp_socket


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.workers > 1:
        share_tcp_socket()
    uvicorn.run("floor_app:app", host=args.host, port=args.port, workers=args.workers)


if __name__ == "__main__":
    main()
