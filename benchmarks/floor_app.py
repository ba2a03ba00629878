"""The floor of the HTTP notification bar: a bare Starlette app that does what a notification minimally needs.

``POST /notify``: read the form body, verify its RSA2 signature (the fields but ``sign`` and ``sign_type``, sorted,
with the gateway's public key, through ``cryptography`` like JitPay), then one conditional
``UPDATE floor_order SET status = 'success' ... WHERE "orderId" = ? AND status = 'pending'`` in autocommit, and
answer ``success`` (on SQLite the threads of a worker take turns for the UPDATE, so that they queue on a lock
rather than in SQLite's sleeping busy handler). Served by uvicorn like ``jit serve`` (:mod:`serve_floor`: same workers, same socket, access log on); the database connection comes
from ``jitcore.app.create_engine`` (WAL, busy timeout), and SQLite commits durably the plain way,
``synchronous=FULL``: the WAL synced in each commit, under the write lock (JitPay's commits are as durable, synced
after the writer's turn: :class:`jitcore.sqlite.WalSync`).

Configured by the environment: ``FLOOR_DATABASE`` (SQLAlchemy URL), ``FLOOR_PUBLIC_KEY`` (PEM file).
"""

from __future__ import annotations

import base64
import os
import threading
from datetime import datetime, timezone
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import jitcore.app

ENGINE = jitcore.app.create_engine(os.environ["FLOOR_DATABASE"])
SQLITE = ENGINE.dialect.name == "sqlite"
if SQLITE:
    from sqlalchemy import event

    @event.listens_for(ENGINE, "connect")
    def _synchronous_full(dbapi_connection: object, _record: object) -> None:
        dbapi_connection.execute("PRAGMA synchronous=FULL")  # type: ignore[attr-defined]
with open(os.environ["FLOOR_PUBLIC_KEY"], "rb") as key_file:
    PUBLIC_KEY = serialization.load_pem_public_key(key_file.read())
P = "?" if SQLITE else "%s"
#: SQLite takes one writer at a time: the threads of a process queue here instead of in SQLite's busy handler, which
#: sleeps (1 ms, 2 ms, 5 ms, ...) before it tries again
WRITE_LOCK = threading.Lock() if SQLITE else None
UPDATE = (f'UPDATE floor_order SET status = {P}, provider = {P}, "tradeNo" = {P}, "payTime" = {P}, "updatedAt" = {P} '
          f'WHERE "orderId" = {P} AND status = {P}')


def handle(body: bytes) -> bytes:
    fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
    content = "&".join(f"{k}={v}" for k, v in sorted(fields.items()) if k not in ("sign", "sign_type") and v != "")
    try:
        PUBLIC_KEY.verify(base64.b64decode(fields["sign"]), content.encode("utf-8"), padding.PKCS1v15(),
                          hashes.SHA256())
    except (InvalidSignature, KeyError, ValueError):
        return b"failure"
    now = datetime.now(timezone.utc)
    stamp = now.replace(tzinfo=None).isoformat(" ", "microseconds") if SQLITE else now
    pooled = ENGINE.raw_connection()
    try:
        conn = pooled.driver_connection
        if not SQLITE:
            conn.autocommit = True
        values = ("success", "pays.AliPayType", fields.get("trade_no"), stamp, stamp, fields.get("out_trade_no"),
                  "pending")
        if WRITE_LOCK is not None:
            with WRITE_LOCK:
                conn.execute(UPDATE, values)
        else:
            conn.execute(UPDATE, values)
        if not SQLITE:
            conn.autocommit = False
    finally:
        pooled.close()
    return b"success"  # paid now, or already


async def notify(request: Request) -> Response:
    body = await request.body()
    return Response(await run_in_threadpool(handle, body), media_type="text/plain")


app = Starlette(routes=[Route("/notify", notify, methods=["POST"])])
