"""Serve :mod:`floor_app` under uvicorn exactly as ``jit serve --workers N`` serves an app
(:func:`jitcore.cli.serve_workers`: on Linux a listening socket per worker), so that the floor and JitPay differ only
in what happens inside a request.

    FLOOR_DATABASE=... FLOOR_PUBLIC_KEY=... python benchmarks/serve_floor.py --host 127.0.0.1 --port 8001 --workers 2
"""

from __future__ import annotations

import argparse

import uvicorn

from jitcore.cli import serve_workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.workers > 1:
        serve_workers("floor_app:app", args.host, args.port, args.workers)
    else:
        uvicorn.run("floor_app:app", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
