"""Payment events survive the process that committed the payment (issue 9's PaySvc-level acceptance tests), on a
SQLite file and on the real PostgreSQL server the tests start.

The app has two implementations of ``jit_order_paid`` (app plugins ``grant`` and ``mail``,
tests/elements/pays/events_support) that record every delivery, keyed by (implementation, event id, attempt), in the
app's own database. Notifications are correctly signed Alipay notifications (signed with the sandbox gateway's private
key); no sandbox runs, none is needed to receive a notification.

1. ``jit call ... alipayNotify`` handles a notification and dies (``os._exit``) inside ``grant``'s first delivery,
   right after the payment is committed: ``jit worker --until-idle`` then delivers the event to both implementations,
   with the same id, and a second run delivers nothing.
2. ``jit serve`` (``--workers 2`` on PostgreSQL) is SIGKILLed in the middle of a burst of notifications: every order the
   database shows paid gets its event delivered to both implementations by ``jit worker --until-idle``, none twice
   after it succeeded; the orders whose notification was not committed stay pending and complete when the provider's
   retries reach a restarted ``jit serve``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

import httpx
import pytest
import yaml
from sqlalchemy import text

import jitcore
from elements.pays.AliPayType.signing import load_rsa_key, sign_notify
from jitcore.jobs import EVENT_KIND
from tests.elements.pays.events_support import (EXIT_CODE, EXIT_ENV, GRANT, MAIL, create_table, deliveries)
from tests.support.live import ALIPAY_APP_ID, ALIPAY_SELLER_ID, generate_sandbox_keys, sandbox_app_config

REPO = Path(__file__).resolve().parents[3]
JIT = str(Path(sys.executable).parent / "jit")
IMPLS = ("grant", "mail")
#: every subprocess step and every wait is bounded by this many seconds
STEP = 20.0
#: the lease of an event delivery (jobs.events.leaseSeconds): a delivery whose process died is taken again after it
LEASE = 1.0
NOTIFY = "/api/shop/pays/services/PaySvc/alipayNotify"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
#: the burst: this many orders, notified over this many concurrent connections; jit serve is killed once this many
#: notifications have been acknowledged
ORDERS = 60
CONCURRENCY = 8
KILL_AFTER = 15


# -- the app ----------------------------------------------------------------------------------------------------------
@dataclass
class Shop:
    """An app with both providers configured and the two recording plugins, loaded in the test process too."""

    directory: Path
    app: Any
    backend: str
    gateway_key: Any

    @property
    def pay(self) -> Any:
        return self.app.getElement("pays.services.PaySvc")

    def create_order(self, n: int) -> str:
        return self.pay.create(subject=f"VIP {n}", amount=amount_of(n))["orderId"]

    def notification(self, order_id: str, n: int) -> dict[str, str]:
        """A paid notification for order ``order_id`` (of amount ``amount_of(n)``), as Alipay signs it."""
        fields = {
            "notify_time": "2024-05-01 12:00:10", "notify_type": "trade_status_sync", "notify_id": f"n-{order_id}",
            "app_id": ALIPAY_APP_ID, "seller_id": ALIPAY_SELLER_ID, "charset": "utf-8", "version": "1.0",
            "trade_no": "2024050122001" + order_id[-12:], "out_trade_no": order_id, "trade_status": "TRADE_SUCCESS",
            "total_amount": amount_of(n), "receipt_amount": amount_of(n), "buyer_pay_amount": amount_of(n),
            "gmt_create": "2024-05-01 11:59:00", "gmt_payment": "2024-05-01 12:00:05",
            "buyer_id": "2088102177846880", "subject": f"VIP {n}",
        }
        return sign_notify(fields, self.gateway_key)

    def status(self) -> dict[str, str]:
        with self.app.engine.connect() as conn:
            return dict(conn.execute(text('SELECT "orderId", status FROM jitpay_order')).all())


def amount_of(n: int) -> str:
    return f"{10 + n}.{n % 100:02d}"


@pytest.fixture(params=["sqlite", "postgresql"])
def shop(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    monkeypatch.setenv("JIT_PLUGINS", "none")  # the test process and the subprocesses: no sandbox, same plugins
    monkeypatch.delenv(EXIT_ENV, raising=False)
    if request.param == "postgresql":
        database = request.getfixturevalue("postgres_server").new_database()
    else:
        database = f"sqlite:///{tmp_path / 'shop.db'}"
    generate_sandbox_keys(tmp_path / ".sandbox")
    # no sandbox is served: the gateways point at a closed port, and nothing here needs to ask a provider
    config = sandbox_app_config("http://127.0.0.1:9", database=database, plugins=[GRANT, MAIL])
    config["jobs"] = {"pollSeconds": 0.2, "events": {"leaseSeconds": LEASE, "backoffSeconds": 0.2}}
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    app = jitcore.load_app(tmp_path / "app.yaml")
    create_table(app.engine)
    key = load_rsa_key((tmp_path / ".sandbox" / "alipay_gateway_private_key.pem").read_text())
    try:
        yield Shop(tmp_path, app, request.param, key)
    finally:
        app.close()


# -- processes --------------------------------------------------------------------------------------------------------
def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "JIT_PLUGINS": "none", **extra}


def jit(shop: Shop, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JIT, *args], cwd=shop.directory, env=env(**extra_env), capture_output=True, text=True,
                          timeout=STEP)


def worker_until_idle(shop: Shop) -> tuple[int, int, int]:
    """``jit worker app.yaml --until-idle``: exits 0 with its one summary line; the (done, retried, dead) counts."""
    result = jit(shop, "worker", "app.yaml", "--until-idle", "--log-level", "warning")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobs: "), result.stdout
    done, retried, dead = (int(part.split()[0]) for part in lines[0][len("jobs: "):].split(", "))
    return done, retried, dead


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = STEP) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Serve:
    """``jit serve app.yaml`` as a real subprocess (its own process group) on a free loopback port."""

    def __init__(self, shop: Shop, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.log = shop.directory / f"serve-{self.port}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [JIT, "serve", "app.yaml", "--port", str(self.port), "--workers", str(workers)], cwd=shop.directory,
                env=env(), stdout=log, stderr=log, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        def serving() -> bool:
            assert self.process.poll() is None, self.output()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(serving, "jit serve to answer")
        # every worker has started its lifespan (and its job runner)
        wait_for(lambda: self.output().count("Application startup complete") >= self.workers, "every worker")

    def kill(self) -> None:
        """SIGKILL, to the server and its workers alike: no clean-up of any kind."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """SIGTERM: a graceful shutdown (every worker's lifespan ends, closing the app and its runner)."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=STEP)
        # one process re-raises the SIGTERM after its graceful shutdown (uvicorn's way); a supervisor exits 0
        assert code in (0, -signal.SIGTERM), self.output()[-3000:]
        assert self.output().count("Application shutdown complete") == self.workers, self.output()[-3000:]

    def close(self) -> None:
        """Make sure it is gone (killed if it still runs)."""
        if self.process.poll() is None:
            self.kill()
            self.process.wait(timeout=STEP)


# -- what was delivered -----------------------------------------------------------------------------------------------
def paid_event_jobs(shop: Shop) -> dict[str, dict[str, dict[str, Any]]]:
    """The outbox's ``jit_order_paid`` deliveries: ``{orderId: {impl: job}}`` (one job per implementation)."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for job in shop.app.jobs.list(limit=10 * ORDERS):
        payload = job["payload"]
        if job["kind"] != EVENT_KIND or payload["event"] != "jit_order_paid":
            continue
        impl = payload["plugin"].rsplit(".", 1)[-1]
        order_id = payload["kwargs"]["order"]["orderId"]
        assert impl not in found.get(order_id, {}), f"two paid events for order {order_id}"
        found.setdefault(order_id, {})[impl] = job
    return found


def running_leases_over(shop: Shop) -> None:
    """Wait until no event delivery is held by a lease that has not expired yet (its process is dead)."""
    def expired() -> bool:
        now = datetime.now(UTC)
        return all(job["leaseUntil"] is None or job["leaseUntil"] < now
                   for job in shop.app.jobs.list(["running"], limit=10 * ORDERS) if job["kind"] == EVENT_KIND)

    wait_for(expired, "the dead process's delivery leases to expire", timeout=LEASE + STEP)


def assert_delivered(shop: Shop, paid: set[str]) -> list[dict[str, Any]]:
    """Every order in ``paid`` had its one ``jit_order_paid`` event delivered to both implementations, with one
    event id, and none after it succeeded: each implementation's last recorded delivery is the attempt that ended the
    delivery job ``done`` (earlier ones belong to attempts whose process died before recording their success). No
    other order has a paid event. Returns the records."""
    records = deliveries(shop.app.engine)
    jobs = paid_event_jobs(shop)
    assert set(jobs) == paid
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        assert record["event"] == "jit_order_paid"
        by_key.setdefault((record["impl"], record["eventId"]), []).append(record)
    for order_id in paid:
        assert set(jobs[order_id]) == set(IMPLS), order_id
        [event_id] = {job["payload"]["eventId"] for job in jobs[order_id].values()}
        for impl, job in jobs[order_id].items():
            assert job["state"] == "done", (order_id, impl, job)
            got = by_key.pop((impl, event_id), [])
            assert got, f"{impl} never got the paid event of {order_id}"
            assert all(r["orderId"] == order_id and r["status"] == "success" for r in got)
            assert got[-1]["attempt"] == job["attempts"] and got[-1]["outcome"] == "delivered", (got, job)
    assert by_key == {}, "deliveries of events that are not in the outbox"
    return records


# -- 1. a process killed right after committing a payment -------------------------------------------------------------
def test_a_process_that_dies_right_after_committing_a_payment(shop: Shop) -> None:
    order_id = shop.create_order(1)
    form = shop.notification(order_id, 1)

    # the notification is handled in its own process, which dies in grant's first delivery of the paid event
    died = jit(shop, "call", "app.yaml", "pays.services.PaySvc.alipayNotify", "form=" + json.dumps(form),
               **{EXIT_ENV: "grant"})
    assert died.returncode == EXIT_CODE, (died.stdout, died.stderr)
    assert "success" not in died.stdout  # it never answered Alipay
    assert shop.status()[order_id] == "success"  # but the payment was committed
    [exiting] = deliveries(shop.app.engine)
    assert (exiting["impl"], exiting["attempt"], exiting["outcome"]) == ("grant", 1, "exiting")
    jobs = paid_event_jobs(shop)[order_id]
    assert jobs["grant"]["state"] == "running" and jobs["mail"]["state"] == "due"

    # Alipay, without an answer, notifies again: already processed, no second event
    assert bytes(shop.pay.alipayNotify(form).body) == b"success"

    running_leases_over(shop)
    done, retried, dead = worker_until_idle(shop)
    assert (retried, dead) == (0, 0) and done >= 2  # both deliveries (and the order's settling, the sweep)
    records = assert_delivered(shop, {order_id})
    assert [(r["impl"], r["attempt"], r["outcome"], r["eventId"]) for r in records] == [
        ("grant", 1, "exiting", exiting["eventId"]),
        ("grant", 2, "delivered", exiting["eventId"]),
        ("mail", 1, "delivered", exiting["eventId"]),
    ]
    assert all(r["pid"] != exiting["pid"] for r in records[1:])  # delivered by the worker

    # none is delivered again after it succeeded
    assert worker_until_idle(shop) == (0, 0, 0)
    assert deliveries(shop.app.engine) == records
    # nothing left over, nothing dead: only the periodic sweep's next run is due (in a minute)
    assert [j["kind"] for j in shop.app.jobs.list(["due", "running", "dead"])] == ["pays.sweep"]


# -- 2. jit serve killed in the middle of a burst of notifications ----------------------------------------------------
def settled(shop: Shop) -> None:
    """On PostgreSQL, wait until no server backend still works for a client that was killed (a COMMIT sent before
    the kill may still complete): what the database shows afterwards is final."""
    if shop.backend != "postgresql":
        return

    def quiet() -> bool:
        with shop.app.engine.connect() as conn:
            return conn.execute(text("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND pid <> pg_backend_pid() AND state <> 'idle'")).scalar_one() == 0

    wait_for(quiet, "the killed clients' backends to end")


def notify_all(serve: Serve, bodies: dict[str, bytes], *,
               on_reply: Callable[[str, str | None], None] | None = None) -> dict[str, str | None]:
    """POST every notification, CONCURRENCY at a time; ``{orderId: reply text or None (no reply)}``."""
    with httpx.Client(base_url=serve.url, timeout=STEP,
                      limits=httpx.Limits(max_connections=CONCURRENCY)) as client:
        def post(order_id: str) -> tuple[str, str | None]:
            try:
                response = client.post(NOTIFY, content=bodies[order_id], headers={"Content-Type": FORM})
                reply: str | None = response.text if response.status_code == 200 else None
            except httpx.TransportError:
                reply = None
            if on_reply is not None:
                on_reply(order_id, reply)
            return order_id, reply

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            return dict(pool.map(post, list(bodies)))


def test_jit_serve_killed_in_the_middle_of_a_burst_of_notifications(shop: Shop) -> None:
    workers = 2 if shop.backend == "postgresql" else 1
    numbers = {shop.create_order(n): n for n in range(ORDERS)}
    bodies = {order_id: urlencode(shop.notification(order_id, n)).encode() for order_id, n in numbers.items()}

    serve = Serve(shop, workers)
    try:
        serve.wait_ready()
        acknowledged: list[str] = []
        lock = threading.Lock()

        def kill_midway(order_id: str, reply: str | None) -> None:
            with lock:
                if reply == "success":
                    acknowledged.append(order_id)
                    if len(acknowledged) == KILL_AFTER:
                        serve.kill()

        replies = notify_all(serve, bodies, on_reply=kill_midway)
        assert len(acknowledged) >= KILL_AFTER, (replies, serve.output()[-3000:])
        serve.process.wait(timeout=STEP)  # killed
    finally:
        serve.close()
    settled(shop)

    status = shop.status()
    paid = {order_id for order_id, state in status.items() if state == "success"}
    pending = set(status) - paid
    assert all(status[order_id] == "pending" for order_id in pending)
    assert {o for o, reply in replies.items() if reply == "success"} <= paid  # acknowledged means committed
    assert KILL_AFTER <= len(paid) < ORDERS and pending, "the kill did not land in the middle of the burst"

    running_leases_over(shop)
    done, retried, dead = worker_until_idle(shop)
    assert dead == 0
    after_kill = assert_delivered(shop, paid)

    # the provider retries every notification it got no "success" for; a restarted jit serve (with its runner) takes
    # them: the pending orders are paid and announced, the others are already processed
    unanswered = {o: body for o, body in bodies.items() if replies[o] != "success"}
    assert set(unanswered) >= pending
    serve = Serve(shop, workers)
    try:
        serve.wait_ready()
        retried_replies = notify_all(serve, unanswered)
        assert set(retried_replies.values()) == {"success"}, retried_replies
        serve.terminate()
    finally:
        serve.close()
    assert set(shop.status().values()) == {"success"}
    delivered = assert_delivered(shop, set(numbers))
    # the restarted server delivered nothing again of what had already succeeded
    assert [r for r in delivered if r["orderId"] in paid] == after_kill

    # every event was delivered by the server itself: running the due jobs once more (as jit worker --until-idle
    # does, here in the test process) delivers nothing more
    assert shop.app.jobs.run_until_idle(timeout=STEP).dead == 0
    assert deliveries(shop.app.engine) == delivered
    assert not [j for j in shop.app.jobs.list(["due", "running", "dead"], limit=10 * ORDERS)
                if j["kind"] == EVENT_KIND]
