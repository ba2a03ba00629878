"""The audit log cannot be filled by strangers (issue 11, item 6): over real HTTP, a rejected notification stores an
excerpt and a hash of its body, not the body, and a burst of them from one source stores a bounded number of rows;
the rest are counted, logged and summarised."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from elements.pays.services.PaySvc.rejections import (EXCERPT_BYTES, MAX_SOURCES, OTHER_SOURCES, PAYLOAD_MAX_BYTES,
                                                      RejectionLimiter, bounded_payload)
from elements.pays.WechatPayType.wirexml import build_xml
from jitcore.errors import ConfigError
from tests.support.live import ALIPAY_APP_ID, start_live_app

SVC = "/api/shop/pays/services/PaySvc"
FORM = "application/x-www-form-urlencoded; charset=utf-8"


def unsigned_alipay(order_id: str, n: int, size: int = 40_000) -> bytes:
    """An unsigned Alipay "payment" of about ``size`` bytes, each one different."""
    return urlencode({"app_id": ALIPAY_APP_ID, "out_trade_no": order_id, "trade_status": "TRADE_SUCCESS",
                      "total_amount": "9.99", "notify_id": f"forged-{n}", "body": "x" * size}).encode()


def audit_rows(ledger: Any, after: int = 0) -> list[Any]:
    return [row for row in ledger.audit_log() if row.id > after]


def test_a_burst_of_unsigned_notifications_stores_a_bounded_amount(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="jitpay")
    with start_live_app(tmp_path) as live:
        svc = live.app.loadElement("pays.services.PaySvc")
        ledger = svc.ledger
        order = live.pay_service.create(subject="Not yours", amount="9.99")
        before = audit_rows(ledger)
        last = before[-1].id if before else 0
        bodies = [unsigned_alipay(order["orderId"], n) for n in range(100)]
        with httpx.Client(base_url=live.url, timeout=10) as stranger:
            for body in bodies:
                response = stranger.post(f"{SVC}/alipayNotify", content=body, headers={"content-type": FORM})
                assert response.status_code == 200 and response.text == "failure"
            sent = sum(len(b) for b in bodies)
            assert sent > 4_000_000

            rows = audit_rows(ledger, last)
            # 20 stored (the limit per provider and source address), 80 counted
            assert len(rows) == 20 and ledger.rejections.pending() == 80
            assert {(r.kind, r.outcome, r.errorCode, r.verified) for r in rows} == {
                ("notify", "rejected", "SIGNATURE_INVALID", False)}
            stored = sum(len((r.payload or "").encode()) + len((r.message or "").encode()) for r in rows)
            assert stored < 20 * PAYLOAD_MAX_BYTES < sent / 20
            for row, body in zip(rows, bodies):
                payload = json.loads(row.payload)
                assert payload["sha256"] == hashlib.sha256(body).hexdigest() and payload["bytes"] == len(body)
                assert payload["excerpt"] == body[:EXCERPT_BYTES].decode() and payload["source"] == "127.0.0.1"
            assert [m for m in caplog.messages if "over the audit log's limit" in m] == [
                "rejected pays.AliPayType notifications from 127.0.0.1: over the audit log's limit (20 per source, "
                "100 in all, per 60 s); further ones are counted, not stored, until the window ends"]

            # the limit is per provider: WeChat Pay's first rejection from the same address is stored
            response = stranger.post(f"{SVC}/wechatNotify", content=build_xml({"return_code": "SUCCESS",
                                                                               "out_trade_no": order["orderId"]}))
            assert response.status_code == 200 and "FAIL" in response.text
            [wechat] = audit_rows(ledger, rows[-1].id)
            assert (wechat.provider, wechat.outcome) == ("pays.WechatPayType", "rejected")

            # the window ends (a minute later): the next rejection is stored, after a summary of what was counted
            ledger.rejections.clock = lambda: time.monotonic() + 61
            response = stranger.post(f"{SVC}/alipayNotify", content=bodies[0], headers={"content-type": FORM})
            assert response.text == "failure"
            summary, again = audit_rows(ledger, wechat.id)
            assert (summary.kind, summary.outcome, summary.errorCode) == ("notify", "rejected-summary", "AUDIT_LIMIT")
            assert summary.provider == "pays.AliPayType" and summary.message.startswith(
                "80 more rejected notifications from 127.0.0.1 between ")
            assert json.loads(summary.payload)["count"] == 80
            assert json.loads(summary.payload)["errorCodes"] == {"SIGNATURE_INVALID": 80}
            assert again.outcome == "rejected"
            assert json.loads(again.payload)["sha256"] == hashlib.sha256(bodies[0]).hexdigest()
            assert any(m.startswith("80 rejected pays.AliPayType notifications from 127.0.0.1") for m in caplog.messages)

            # another burst, then the app stops: what was counted is summarised at close
            for body in bodies[:30]:
                stranger.post(f"{SVC}/alipayNotify", content=body, headers={"content-type": FORM})
        mark = audit_rows(ledger)[-1].id
        assert ledger.rejections.pending() == 11  # 19 more stored in this window, 11 counted
    # closed: the summary row is in the database
    summary_rows = [r for r in audit_rows(ledger, mark) if r.outcome == "rejected-summary"]
    assert [json.loads(r.payload)["count"] for r in summary_rows] == [11]
    # nothing of it touched the order
    assert all(r.orderId in (None, order["orderId"]) for r in audit_rows(ledger, last))


def test_an_unparseable_body_keeps_an_excerpt_and_a_hash(live_app: Any) -> None:
    ledger = live_app.app.loadElement("pays.services.PaySvc").ledger
    body = b"<xml><out_trade_no>" + "订单".encode() * 9000  # unclosed, 54 KB, under the 64 KiB limit
    with httpx.Client(base_url=live_app.url, timeout=10) as stranger:
        response = stranger.post(f"{SVC}/wechatNotify", content=body, headers={"content-type": "text/xml"})
    assert response.status_code == 200 and "FAIL" in response.text
    row = ledger.audit_log()[-1]
    assert (row.outcome, row.errorCode, row.verified) == ("rejected", "NOTIFY_INVALID", False)
    payload = json.loads(row.payload)
    assert payload["bytes"] == len(body) and payload["sha256"] == hashlib.sha256(body).hexdigest()
    assert payload["excerpt"] == body[:EXCERPT_BYTES].decode("utf-8", "replace")  # cut inside a character
    assert len(row.payload.encode()) <= PAYLOAD_MAX_BYTES


def test_the_limits_are_settings(tmp_path: Path) -> None:
    settings = {"pays": {"rejectedNotifications": {"perSource": 3, "windowSeconds": 5}}}
    with start_live_app(tmp_path, settings=settings) as live:
        limiter = live.app.loadElement("pays.services.PaySvc").ledger.rejections
        assert (limiter.perSource, limiter.total, limiter.windowSeconds) == (3, 100, 5)
    for n, wrong in enumerate(({"perSource": 0}, {"total": "many"}, {"windowSeconds": True}, {"perMinute": 5}, 5)):
        with start_live_app(tmp_path / str(n), settings={"pays": {"rejectedNotifications": wrong}}) as live:
            with pytest.raises(ConfigError) as info:
                live.app.loadElement("pays.services.PaySvc")
        assert "rejectedNotifications" in str(info.value)


# -- the limiter itself, with a clock the test moves ------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_per_source_in_all_and_per_window() -> None:
    clock = Clock()
    limiter = RejectionLimiter(perSource=2, total=5, windowSeconds=60, clock=clock)
    sources = ["a", "a", "a", "b", "b", "c", "c", None]
    admitted = [limiter.admit("p", source, "SIGNATURE_INVALID")[0] for source in sources]
    # a's third is over its 2 per source; c's second and the unknown source are over the 5 in all
    assert admitted == [True, True, False, True, True, True, False, False]
    assert limiter.admit("q", "a", "NOTIFY_INVALID")[0] is False  # another provider: the 5 in all are used up
    assert limiter.pending() == 4 and limiter.flush() == []  # the window has not ended
    clock.now += 59.9
    assert limiter.flush() == []
    clock.now += 0.1
    ok, ended = limiter.admit("p", "a", "NOTIFY_INVALID")
    assert ok and sorted((e.provider, e.source, e.count, e.codes) for e in ended) == [
        ("p", "a", 1, {"SIGNATURE_INVALID": 1}), ("p", "c", 1, {"SIGNATURE_INVALID": 1}),
        ("p", "unknown", 1, {"SIGNATURE_INVALID": 1}), ("q", "a", 1, {"NOTIFY_INVALID": 1})]
    assert all(e.start <= e.end for e in ended)
    assert limiter.pending() == 0
    assert limiter.flush(force=True) == []  # nothing counted in the new window


def test_limiter_tells_apart_a_bounded_number_of_sources() -> None:
    limiter = RejectionLimiter(perSource=1, total=10_000_000, clock=Clock())
    for n in range(MAX_SOURCES + 500):
        limiter.admit("p", f"2001:db8::{n:x}", "SIGNATURE_INVALID")
        limiter.admit("p", f"2001:db8::{n:x}", "SIGNATURE_INVALID")
    ended = limiter.flush(force=True)
    assert len(ended) == MAX_SOURCES + 1
    other = [e for e in ended if e.source == OTHER_SOURCES]
    assert other and other[0].count == 500 * 2 - 1  # the first from the other sources was stored


@pytest.mark.parametrize("payload", [b"\xff" * 5000, "\x01" * 5000, {"k": "\x02" * 9000}, "a" * 100, b""])
def test_a_bounded_payload_stays_bounded(payload: Any) -> None:
    bounded = bounded_payload(payload, "198.51.100.7")
    assert len(json.dumps(bounded, ensure_ascii=False).encode()) <= PAYLOAD_MAX_BYTES
    assert len(bounded["sha256"]) == 64 and bounded["source"] == "198.51.100.7"
