"""A tiny shop: the app plugin of ``app.example.yaml`` (listed there under ``plugins: [demo.shop]``).

It shows the three ways an app hooks into JitPay:

- ``jit_routes``: its own pages, here ``GET /`` (products and recent orders) and ``POST /buy``;
- ``app.getElement("pays.services.PaySvc")``: create an order and send the buyer to its cashier page;
- ``jit_order_paid``: called once when an order is paid; here it marks the purchase delivered.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import jinja2
from sqlalchemy import Column, DateTime, MetaData, String, Table, insert, select, update
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from jitcore import hookimpl
from jitcore.http import BodyTooLarge, read_body

log = logging.getLogger("demo.shop")

#: what the shop sells: id -> (name, price in yuan as an exact string)
PRODUCTS = {
    "vip": ("VIP membership, one month · VIP会员一个月", "99.99"),
    "ebook": ("E-book: Payments in Practice · 电子书《支付实战》", "19.90"),
    "sticker": ("Sticker pack · 贴纸包", "0.01"),
}
#: the largest body ``POST /buy`` reads: a form with one short field
BUY_BODY_LIMIT = 1024

# One small table of the shop's own: which order bought what, and when it was delivered.
metadata = MetaData()
deliveries = Table(
    "demo_delivery", metadata,
    Column("orderId", String(64), primary_key=True),
    Column("product", String(32), nullable=False),
    Column("createdAt", DateTime, nullable=False),
    Column("deliveredAt", DateTime),
)

templates = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True)


@hookimpl
def jit_app_loaded(app):
    """Create the shop's table when the app loads."""
    metadata.create_all(app.engine)


@hookimpl
def jit_order_paid(app, order):
    """The payment event: grant what was bought. Fires exactly once per order, after the payment is recorded."""
    with app.engine.begin() as connection:
        connection.execute(update(deliveries)
                           .where(deliveries.c.orderId == order["orderId"], deliveries.c.deliveredAt.is_(None))
                           .values(deliveredAt=datetime.now(timezone.utc).replace(tzinfo=None)))


@hookimpl
def jit_routes(app):
    """The shop's pages."""

    def recent_orders():
        with app.engine.connect() as connection:
            rows = connection.execute(select(deliveries).order_by(deliveries.c.createdAt.desc()).limit(10)).all()
        return [{"orderId": row.orderId, "name": PRODUCTS.get(row.product, (row.product, ""))[0],
                 "price": PRODUCTS.get(row.product, ("", ""))[1], "delivered": row.deliveredAt is not None}
                for row in rows]

    async def shop(request: Request) -> Response:
        orders = await run_in_threadpool(recent_orders)
        html = templates.get_template("shop.html").render(title=app.title, products=PRODUCTS, orders=orders)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    def create_order(product: str) -> dict:
        name, price = PRODUCTS[product]
        pay_service = app.getElement("pays.services.PaySvc")
        order = pay_service.create(subject=name, amount=Decimal(price))
        with app.engine.begin() as connection:
            connection.execute(insert(deliveries).values(
                orderId=order["orderId"], product=product,
                createdAt=datetime.now(timezone.utc).replace(tzinfo=None)))
        return order

    async def buy(request: Request) -> Response:
        # a plain HTML form (application/x-www-form-urlencoded) with one short field: read at most
        # BUY_BODY_LIMIT bytes (checked while streaming too, so a chunked body without Content-Length is cut off)
        try:
            body = await read_body(request, BUY_BODY_LIMIT)
        except BodyTooLarge:
            return HTMLResponse("request too large", status_code=413)
        except ClientDisconnect:
            return HTMLResponse("incomplete request", status_code=400)
        try:
            form = dict(parse_qsl(body.decode("utf-8"), max_num_fields=16))
        except ValueError:  # not UTF-8 (UnicodeDecodeError is a ValueError), or too many fields
            return HTMLResponse("not a form", status_code=400)
        product = form.get("product")
        if product not in PRODUCTS:
            return HTMLResponse("unknown product", status_code=400)
        try:
            order = await run_in_threadpool(create_order, product)
        except Exception:  # the database or the payment service is away: say so, not a bare 500
            log.exception("creating an order for %s failed", product)
            return HTMLResponse("the shop cannot take orders right now, please try again later", status_code=503)
        # the cashier link carries the order's secret token; send the buyer there on this same host
        link = urlsplit(order["cashierUrl"])
        return RedirectResponse(f"{link.path}?{link.query}", status_code=303)

    return [Route("/", shop, methods=["GET"]), Route("/buy", buy, methods=["POST"])]
