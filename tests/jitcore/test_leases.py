"""jitcore.leases.LeaseKeeper on its own: renewals every third of a lease while held, none after release, a lease
found taken over is given up with a warning, a failing renewal is tried again."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from jitcore.leases import LeaseKeeper


class Renewals:
    """A renew function that records its calls and answers as told."""

    def __init__(self, *answers: Any) -> None:
        self.calls: list[tuple[int, float, float]] = []
        self.answers = list(answers)
        self.called = threading.Event()

    def __call__(self, row: Any, seconds: float) -> bool:
        self.calls.append((row.id, seconds, time.monotonic()))
        self.called.set()
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            raise answer
        return answer


def row(job_id: int) -> Any:
    return SimpleNamespace(id=job_id, kind="test.kind", attempts=1)


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_held_lease_is_renewed_every_third_of_it_until_released() -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals, name="test-leases")
    try:
        started = time.monotonic()
        held = keeper.hold(row(1), 0.3)
        wait_for(lambda: len(renewals.calls) >= 4)
        keeper.release(held)
        count = len(renewals.calls)
        times = [at - started for _id, _seconds, at in renewals.calls]
        assert all(seconds == 0.3 for _id, seconds, _at in renewals.calls)
        assert times[0] >= 0.09 and all(b - a >= 0.09 for a, b in zip(times, times[1:]))
        time.sleep(0.35)
        assert len(renewals.calls) <= count + 1  # (one may have been under way) and none after that
        assert keeper.holding() == 0
    finally:
        keeper.close()


def test_a_short_lease_held_later_wakes_the_keeper() -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals, name="test-leases")
    try:
        keeper.hold(row(1), 300.0)  # the keeper sleeps until its first renewal in 100 s
        time.sleep(0.05)
        keeper.hold(row(2), 0.3)
        wait_for(lambda: any(job_id == 2 for job_id, _s, _at in renewals.calls), timeout=2.0)
        assert all(job_id == 2 for job_id, _s, _at in renewals.calls)
    finally:
        keeper.close()


def test_a_lease_taken_over_is_given_up_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    renewals = Renewals(True, False)
    keeper = LeaseKeeper(renewals, name="test-leases")
    try:
        with caplog.at_level(logging.WARNING, logger="jitcore.jobs"):
            keeper.hold(row(7), 0.15)
            wait_for(lambda: len(renewals.calls) == 2)
            time.sleep(0.2)
        assert len(renewals.calls) == 2  # no more tries once taken over
        assert "job 7 (test.kind): attempt 1 still runs but its lease was taken over" in caplog.text
    finally:
        keeper.close()


def test_a_failing_renewal_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    renewals = Renewals(OSError("database unreachable"), True)
    keeper = LeaseKeeper(renewals, name="test-leases")
    try:
        with caplog.at_level(logging.WARNING, logger="jitcore.jobs"):
            keeper.hold(row(3), 0.15)
            wait_for(lambda: len(renewals.calls) >= 3)
        assert "renewing the lease of attempt 1 failed; trying again" in caplog.text
    finally:
        keeper.close()


def test_close_ends_the_thread_and_nothing_is_renewed_after_it() -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals, name="test-leases-closing")
    keeper.hold(row(1), 0.15)
    wait_for(lambda: renewals.calls)
    keeper.close()
    assert not [t for t in threading.enumerate() if t.name == "test-leases-closing"]
    count = len(renewals.calls)
    keeper.hold(row(2), 0.15)  # a closed keeper starts no thread
    time.sleep(0.2)
    assert len(renewals.calls) == count


def test_an_attempt_past_its_time_limit_is_handed_over_once_and_no_longer_renewed() -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals, name="test-leases")
    timed_out: list[Any] = []
    try:
        quick = keeper.hold(row(2), 0.3, timeout=0.2, on_timeout=timed_out.append)
        keeper.release(quick)  # released in time: never handed over
        held = keeper.hold(row(1), 0.3, timeout=0.25, on_timeout=timed_out.append)
        wait_for(lambda: timed_out)
        assert timed_out == [held] and held.thread is threading.current_thread()
        assert keeper.holding() == 0
        count = len(renewals.calls)
        time.sleep(0.35)
        assert len(renewals.calls) == count and timed_out == [held]
        keeper.release(held)  # the handler returns late: nothing to release
        assert all(job_id == 1 for job_id, _s, _at in renewals.calls)
    finally:
        keeper.close()


def test_a_failing_time_out_call_is_logged_and_the_keeper_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals, name="test-leases")

    def broken(held: Any) -> None:
        raise OSError("database unreachable")

    try:
        with caplog.at_level(logging.ERROR, logger="jitcore.jobs"):
            keeper.hold(row(4), 0.3, timeout=0.05, on_timeout=broken)
            wait_for(lambda: "giving up attempt 1 after its time limit failed" in caplog.text)
        keeper.hold(row(5), 0.15)
        wait_for(lambda: any(job_id == 5 for job_id, _s, _at in renewals.calls))
    finally:
        keeper.close()
