"""The job queue in one process, on a real SQLite file and on the real PostgreSQL server: enqueue inside the caller's
transaction, dedupe keys, backoff, retries, dead jobs, RetryLater, periodic kinds, sequence keys, fenced finishing,
the event outbox, the runner thread and the ASGI lifespan."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as time_of_day
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

import jitcore
from jitcore import ConfigError, JobKind
from jitcore.jobs import EVENT_KIND, decode_value, encode_value, job_table, schema_table
from tests.jitcore.jobs_support import PLAIN, PLUGIN, RESERVED, SECOND, make_due, records, write_app
from tests.support.live import wait_for

UTC8 = timezone(timedelta(hours=8))


@pytest.fixture
def make_jobs_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """``make_jobs_app(database=None, **write_app options)`` loads a test app (installed plugins off)."""
    monkeypatch.setenv("JIT_PLUGINS", "none")
    apps: list[Any] = []

    def make(database: str | None = None, **options: Any) -> Any:
        app = jitcore.load_app(write_app(tmp_path, database=database, **options))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def job(app: Any, job_id: int) -> dict[str, Any]:
    found = app.jobs.get(job_id)
    assert found is not None
    return found


def enqueue(app: Any, kind: str, payload: dict[str, Any] | None = None, **options: Any) -> int:
    with app.engine.begin() as conn:
        return app.jobs.enqueue(conn, kind, payload or {}, **options)


def seconds_until(moment: datetime) -> float:
    return (moment - datetime.now(UTC)).total_seconds()


# -- values -----------------------------------------------------------------------------------------------------------
def test_encode_decode_round_trip_keeps_types() -> None:
    value = {
        "amount": Decimal("99.90"), "tiny": Decimal("0.01"), "huge": 10**30, "ratio": 0.1, "flag": True, "none": None,
        "paidAt": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC8), "naive": datetime(2026, 1, 2, 3, 4, 5),
        "day": date(2026, 2, 28), "at": time_of_day(12, 30), "text": "支付宝 ✓",
        "nested": {"list": [Decimal("1.10"), {"$decimal": "not a tag"}, [datetime(2026, 1, 1, tzinfo=UTC)]]},
        "$datetime": "a key that looks like a tag",
    }
    import json

    decoded = decode_value(json.loads(json.dumps(encode_value(value))))
    assert decoded == value
    assert isinstance(decoded["amount"], Decimal) and str(decoded["amount"]) == "99.90"
    assert decoded["paidAt"].utcoffset() == timedelta(hours=8)
    assert decoded["naive"].tzinfo is None
    assert decoded["nested"]["list"][1] == {"$decimal": "not a tag"}
    assert encode_value((1, 2)) == [1, 2]
    with pytest.raises(TypeError):
        encode_value({"x": object()})
    with pytest.raises(TypeError):
        encode_value({1: "non-string key"})


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    kind = JobKind(handler=lambda app, payload, job: None, backoffSeconds=5, maxBackoffSeconds=60)
    for attempt, base in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (40, 60), (10_000, 60)]:
        delays = [kind.backoff(attempt) for _ in range(200)]
        assert all(0.5 * base <= d <= 1.5 * base for d in delays), attempt
        assert max(delays) - min(delays) > 0.2 * base  # jittered
    with pytest.raises(ValueError):
        JobKind(handler=lambda app, payload, job: None, every=0)
    with pytest.raises(ValueError):
        JobKind(handler=lambda app, payload, job: None, maxAttempts=0)
    with pytest.raises(ValueError, match="timeoutSeconds"):
        JobKind(handler=lambda app, payload, job: None, timeoutSeconds=0)
    assert JobKind(handler=lambda app, payload, job: None).timeoutSeconds == 900.0
    assert JobKind(handler=lambda app, payload, job: None, timeoutSeconds=None).timeoutSeconds is None


# -- enqueue ----------------------------------------------------------------------------------------------------------
def test_enqueue_belongs_to_the_callers_transaction(make_jobs_app: Any, database: str | None) -> None:
    app = make_jobs_app(database)
    # the first write of a fresh database, rolled back: the job and (on SQLite) the tables made for it vanish
    with pytest.raises(RuntimeError):
        with app.engine.begin() as conn:
            assert app.jobs.enqueue(conn, "test.record", {"n": 1}) is not None
            raise RuntimeError("the caller's change fails")
    assert app.jobs.list() == []
    with Session(app.engine) as session:
        app.jobs.enqueue(session, "test.record", {"n": 2})
        session.rollback()
    assert app.jobs.list() == []
    with Session(app.engine) as session:
        first = app.jobs.enqueue(session, "test.record", {"n": 3, "amount": Decimal("9.90")}, sequenceKey="s")
        second = app.jobs.enqueue(session, "test.record", {"n": 4}, delay=3600)
        session.commit()
    assert [j["id"] for j in app.jobs.list()] == [second, first]
    assert job(app, first)["payload"] == {"n": 3, "amount": Decimal("9.90")}
    assert job(app, first)["state"] == "due" and job(app, first)["attempts"] == 0
    assert 3590 < seconds_until(job(app, second)["dueAt"]) <= 3600
    assert app.jobs.run_until_idle() == jitcore.RunSummary(done=1, retried=0, dead=0)
    [ran] = records(app.root, kind="test.record")
    assert ran["payload"] == {"n": 3, "amount": Decimal("9.90")} and ran["attempt"] == 1
    assert ran["sequenceKey"] == "s" and ran["createdAt"].tzinfo is not None
    assert job(app, first)["state"] == "done" and job(app, second)["state"] == "due"
    with pytest.raises(ValueError):
        enqueue(app, "test.record", at=datetime(2030, 1, 1))  # naive


def test_a_dedupe_key_admits_one_unfinished_job(make_jobs_app: Any, database: str | None) -> None:
    app = make_jobs_app(database)
    first = enqueue(app, "test.record", {"n": 1}, dedupeKey="close:order-1")
    with app.engine.begin() as conn:
        assert app.jobs.enqueue(conn, "test.record", {"n": 2}, dedupeKey="close:order-1") is None
        # the transaction is still usable (no error aborted it, also on PostgreSQL)
        other = app.jobs.enqueue(conn, "test.record", {"n": 3})
        conn.execute(text("SELECT 1"))
    assert other is not None and len(app.jobs.list()) == 2
    assert job(app, first)["dedupeKey"] == "close:order-1"
    app.jobs.run_until_idle()
    assert job(app, first)["state"] == "done" and job(app, first)["dedupeKey"] is None
    again = enqueue(app, "test.record", {"n": 4}, dedupeKey="close:order-1")
    assert again is not None and again != first
    # a dead job frees its key as well
    dead = enqueue(app, "test.dies", {}, dedupeKey="dies")
    app.jobs.run_until_idle()
    assert job(app, dead)["state"] == "dead" and job(app, dead)["dedupeKey"] is None
    assert enqueue(app, "test.dies", {}, dedupeKey="dies") is not None


def test_failures_back_off_then_end_dead_and_retry_requeues(make_jobs_app: Any, database: str | None,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    app = make_jobs_app(database)
    job_id = enqueue(app, "test.fail", {"n": 7}, dedupeKey="fail-7")  # maxAttempts 3, backoff 10 s, cap 15 s
    assert app.jobs.run_until_idle() == jitcore.RunSummary(done=0, retried=1, dead=0)
    failed = job(app, job_id)
    assert failed["state"] == "due" and failed["attempts"] == 1 and failed["runner"]
    assert failed["lastError"].startswith("ValueError: boom 7 on attempt 1")
    assert 4.5 <= seconds_until(failed["dueAt"]) <= 15  # 10 s * 0.5..1.5
    assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 0, 0)  # not due yet: not waited for
    make_due(app, job_id)
    assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 1, 0)
    assert 7 <= seconds_until(job(app, job_id)["dueAt"]) <= 22.5  # min(15, 20) * 0.5..1.5
    make_due(app, job_id)
    with caplog.at_level(logging.ERROR, logger="jitcore.jobs"):
        assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 0, 1)
    dead = job(app, job_id)
    assert dead["state"] == "dead" and dead["attempts"] == 3 and dead["finishedAt"] is not None
    assert dead["lastError"].startswith("ValueError: boom 7 on attempt 3") and "Traceback" in dead["lastError"]
    assert dead["dedupeKey"] is None
    assert any(r.levelno == logging.ERROR and f"job {job_id} (test.fail) is dead after 3 attempts" in r.getMessage()
               for r in caplog.records)
    assert [r["attempt"] for r in records(app.root, kind="test.fail")] == [1, 2, 3]

    assert app.jobs.retry(job_id) is True
    requeued = job(app, job_id)
    assert requeued["state"] == "due" and requeued["attempts"] == 0 and seconds_until(requeued["dueAt"]) <= 0
    assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 1, 0)
    assert records(app.root, kind="test.fail")[-1]["attempt"] == 1
    assert app.jobs.retry(job_id) is True  # a failed (due, with an error) job can be retried too
    assert app.jobs.retry(10**9) is False
    done = enqueue(app, "test.record")
    app.jobs.run_until_idle(limit=1)
    assert app.jobs.retry(done) is False


def test_retry_later_reschedules_without_a_crash_and_counts_as_an_attempt(
        make_jobs_app: Any, database: str | None, caplog: pytest.LogCaptureFixture) -> None:
    app = make_jobs_app(database)
    at = datetime.now(UTC) + timedelta(minutes=10)
    job_id = enqueue(app, "test.later", {"at": at})
    with caplog.at_level(logging.INFO, logger="jitcore.jobs"):
        assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 1, 0)
        waiting = job(app, job_id)
        assert waiting["lastError"] == "RetryLater: the provider is not ready"
        assert 29 <= seconds_until(waiting["dueAt"]) <= 30  # exactly the delay asked for, no jitter
        make_due(app, job_id)
        assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 1, 0)
        assert job(app, job_id)["dueAt"] == at
        make_due(app, job_id)
        assert app.jobs.run_until_idle() == jitcore.RunSummary(1, 0, 0)
    assert [r["attempt"] for r in records(app.root, kind="test.later")] == [1, 2, 3]
    assert records(app.root, kind="test.later")[2]["lastError"] == "RetryLater: come back at the given time"
    # not logged as a crash (only the job queue's records: another test's sandbox may still be retrying a delivery)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("jitcore")]
    assert not any(r.exc_info for r in caplog.records)

    never = enqueue(app, "test.never")  # RetryLater(delay=0) every time, maxAttempts 2
    assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 1, 1)
    assert job(app, never)["state"] == "dead" and job(app, never)["attempts"] == 2


def test_a_kind_without_handler_is_retried_then_dead(make_jobs_app: Any) -> None:
    app = make_jobs_app()
    job_id = enqueue(app, "nobody.handles", {"x": 1})
    assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 1, 0)
    assert job(app, job_id)["lastError"] == "no handler for kind nobody.handles"
    with app.engine.begin() as conn:  # the default policy: 10 attempts
        conn.execute(update(job_table).where(job_table.c.id == job_id).values(attempts=9))
    make_due(app, job_id)
    assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 0, 1)
    assert job(app, job_id)["state"] == "dead"


def test_periodic_kind_keeps_exactly_one_job(make_jobs_app: Any) -> None:
    app = make_jobs_app(periodic=0.5)
    assert app.jobs.kinds()["test.tick"].every == 0.5
    assert app.jobs.run_until_idle() == jitcore.RunSummary(1, 0, 0)  # the first one is due at once

    def unfinished() -> list[dict[str, Any]]:
        return [j for j in app.jobs.list(["due", "running"]) if j["kind"] == "test.tick"]

    [following] = unfinished()
    [first] = app.jobs.list(["done"])
    assert following["dedupeKey"] == "periodic:test.tick" and first["dedupeKey"] is None
    assert following["dueAt"] - first["finishedAt"] == timedelta(seconds=0.5)
    app.jobs.ensure_periodic()
    assert len(unfinished()) == 1
    assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 0, 0)  # the next one is not due yet
    time.sleep(0.55)
    assert app.jobs.run_until_idle() == jitcore.RunSummary(1, 0, 0)
    assert len(unfinished()) == 1
    # the runner thread keeps it going
    app.jobs.start()
    deadline = time.monotonic() + 10
    while len(records(app.root, kind="test.tick")) < 4:
        assert time.monotonic() < deadline, "the runner did not run the periodic job"
        time.sleep(0.05)
    app.jobs.stop()
    assert len(unfinished()) == 1
    assert len([j for j in app.jobs.list(["done"]) if j["kind"] == "test.tick"]) >= 4


def test_a_sequence_runs_in_id_order_each_job_after_the_earlier_ones_ended(make_jobs_app: Any,
                                                                          database: str | None) -> None:
    app = make_jobs_app(database)
    with app.engine.begin() as conn:
        first = app.jobs.enqueue(conn, "test.flaky", {"n": 1}, sequenceKey="order:1")  # fails once, backoff 30 s
        second = app.jobs.enqueue(conn, "test.record", {"n": 2}, sequenceKey="order:1")
        other = app.jobs.enqueue(conn, "test.record", {"n": 3}, sequenceKey="order:2")
        free = app.jobs.enqueue(conn, "test.record", {"n": 4})
    app.jobs.run_now([second])  # waits for the first: not run
    assert records(app.root, kind="test.record") == []
    assert app.jobs.run_until_idle() == jitcore.RunSummary(2, 1, 0)
    assert sorted(r["payload"]["n"] for r in records(app.root, kind="test.record")) == [3, 4]
    assert job(app, second)["state"] == "due"  # the failed first job holds its sequence back
    make_due(app, first)
    assert app.jobs.run_until_idle() == jitcore.RunSummary(2, 0, 0)
    ran = [(r["kind"], r["id"], r["attempt"]) for r in records(app.root)]
    assert ran.index(("test.flaky", first, 2)) < ran.index(("test.record", second, 1))
    assert {j["state"] for j in app.jobs.list()} == {"done"}
    assert {other, free} < {j["id"] for j in app.jobs.list(["done"])}

    # a later job waits for an earlier one that is not due yet, and goes once that one is dead
    with app.engine.begin() as conn:
        later = app.jobs.enqueue(conn, "test.dies", {}, sequenceKey="order:3", delay=3600)
        after = app.jobs.enqueue(conn, "test.record", {"n": 5}, sequenceKey="order:3")
    assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 0, 0)
    make_due(app, later)
    assert app.jobs.run_until_idle() == jitcore.RunSummary(1, 0, 1)
    assert job(app, later)["state"] == "dead" and job(app, after)["state"] == "done"


def test_a_job_that_outlives_its_lease_keeps_it_while_it_runs(make_jobs_app: Any, database: str | None) -> None:
    app = make_jobs_app(database)
    job_id = enqueue(app, "test.slow_leased", {"sleep": 1.2})  # lease 0.3 s, renewed every 0.1 s while it runs
    first_run = threading.Thread(target=app.jobs.run_now, args=([job_id],))
    first_run.start()
    deadline = time.monotonic() + 10
    while not records(app.root, kind="test.slow_leased"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    leases = []
    while first_run.is_alive():  # another runner keeps looking: the job is never due for it
        assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 0, 0)
        lease = job(app, job_id)["leaseUntil"]
        if lease is not None:  # (None: done, its thread not yet ended)
            leases.append(lease)
        time.sleep(0.05)
    first_run.join()
    finished = job(app, job_id)
    assert finished["state"] == "done" and finished["attempts"] == 1
    assert [entry["outcome"] for entry in records(app.root, kind="test.slow_leased")] == ["started", "finished"]
    assert len(set(leases)) >= 5 and leases == sorted(leases)  # renewed, later each time
    assert app.jobs._leases.holding() == 0


def test_finishing_is_fenced_once_a_lease_was_taken_over(make_jobs_app: Any) -> None:
    """A runner that stopped renewing (its process froze: here its lease keeper is closed) loses its job when the
    lease passes; its late outcome does not overwrite the attempt that took over."""
    app = make_jobs_app()
    frozen = make_jobs_app()  # another runner on the same database
    frozen.jobs._leases.close()
    job_id = enqueue(app, "test.overrun", {"sleep": 1.0})  # lease 0.3 s; attempt 1 sleeps 1 s, then fails
    first_run = threading.Thread(target=frozen.jobs.run_until_idle)
    first_run.start()
    deadline = time.monotonic() + 10
    while not records(app.root, kind="test.overrun", attempt=1):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.4)  # the lease of attempt 1 expires
    assert app.jobs.run_until_idle() == jitcore.RunSummary(1, 0, 0)  # attempt 2 takes it over and succeeds
    taken_over = job(app, job_id)
    assert taken_over["state"] == "done" and taken_over["attempts"] == 2
    first_run.join(timeout=10)
    assert records(app.root, kind="test.overrun", attempt=1, outcome="raising")
    # the late failure of attempt 1 did not overwrite attempt 2's outcome
    assert job(app, job_id)["state"] == "done" and job(app, job_id)["attempts"] == 2
    assert len(records(app.root, kind="test.overrun", attempt=2, outcome="finished")) == 1


# -- time limits ------------------------------------------------------------------------------------------------------
@pytest.fixture
def hang_release() -> Any:
    """The event a hanging ``test.hang`` attempt waits for: cleared for the test, set after it (no thread is left
    hanging)."""
    from tests.jitcore.jobs_support.jobs_plugin import HANG_RELEASE

    HANG_RELEASE.clear()
    yield HANG_RELEASE
    HANG_RELEASE.set()


def test_a_hung_attempt_is_given_up_after_its_timeout_and_a_new_runner_takes_over(
        make_jobs_app: Any, database: str | None, hang_release: threading.Event,
        caplog: pytest.LogCaptureFixture) -> None:
    """A handler that never returns does not hold its job, nor the jobs queued behind it in its process, for ever:
    past timeoutSeconds its attempt is recorded failed (with where it hung), the runner thread stuck in it is
    replaced, the job runs again, and the hung attempt's late outcome is not recorded."""
    app = make_jobs_app(database)
    caplog.set_level(logging.INFO, logger="jitcore.jobs")
    app.jobs.start()
    stuck = app.jobs._thread
    assert stuck is not None
    hung = enqueue(app, "test.hang")  # timeoutSeconds 0.5, no backoff
    app.jobs.wake()
    wait_for(lambda: records(app.root, kind="test.hang", attempt=1, outcome="started"), timeout=20)
    queued = enqueue(app, "test.record", {"n": 1})  # behind the hung attempt, in this process's one runner
    app.jobs.wake()
    wait_for(lambda: job(app, queued)["state"] == "done", timeout=20)
    wait_for(lambda: job(app, hung)["state"] == "done", timeout=20)
    assert stuck.is_alive() and app.jobs._thread is not stuck and app.jobs.running
    second = records(app.root, kind="test.hang", attempt=2, outcome="started")
    assert len(second) == 1
    error = job(app, hung)["lastError"]
    assert second[0]["lastError"] == error
    assert error.startswith("JobTimedOut: still running after 0.5 s (timeoutSeconds): given up;")
    assert "where it was:" in error and "in hang" in error and "HANG_RELEASE.wait(120)" in error
    assert f"job {hung} (test.hang): attempt 1 still runs after 0.5 s (timeoutSeconds) in thread" in caplog.text
    assert "a new runner thread takes over" in caplog.text
    assert not records(app.root, kind="test.hang", attempt=1, outcome="finished")
    hang_release.set()  # the hung handler returns at last: its old runner thread ends, its outcome is not recorded
    stuck.join(timeout=10)
    assert not stuck.is_alive()
    assert records(app.root, kind="test.hang", attempt=1, outcome="finished")
    finished = job(app, hung)
    assert (finished["state"], finished["attempts"]) == ("done", 2)
    assert f"job {hung} (test.hang): attempt 1 finished after it was given up" in caplog.text
    assert app.jobs.running and app.jobs._leases.holding() == 0


def test_a_runner_starting_while_the_first_enqueue_holds_sqlites_write_turn_does_not_deadlock(
        make_jobs_app: Any) -> None:
    """The runner's first step creates the tables (in a transaction: it waits for SQLite's write turn) while a
    transaction holding the turn enqueues the process's first job (which collects the kinds): the two must not wait
    on each other's lock."""
    app = make_jobs_app()
    done = threading.Event()

    def first_enqueue() -> None:
        with app.engine.begin() as conn:  # holds the write turn
            app.jobs.start()
            time.sleep(0.3)  # the runner is creating the tables: it waits for the turn
            app.jobs.enqueue(conn, "test.record", {"n": 1})
        done.set()

    caller = threading.Thread(target=first_enqueue, daemon=True)
    caller.start()
    assert done.wait(20), "the first enqueue and the starting runner wait on each other"
    wait_for(lambda: [j["state"] for j in app.jobs.list()] == ["done"], timeout=20)


def test_a_hung_attempt_run_right_after_its_commit_frees_its_job(make_jobs_app: Any,
                                                                 hang_release: threading.Event) -> None:
    """run_now runs a job's first attempt in the caller's thread (a request's): if it hangs, the thread stays stuck
    (Python cannot stop it) but the job is given up after timeoutSeconds and any runner takes it."""
    app = make_jobs_app()
    hung = enqueue(app, "test.hang")
    caller = threading.Thread(target=app.jobs.run_now, args=([hung],), daemon=True)
    caller.start()
    wait_for(lambda: records(app.root, kind="test.hang", attempt=1, outcome="started"), timeout=20)
    wait_for(lambda: job(app, hung)["state"] == "due", timeout=20)
    assert "JobTimedOut" in job(app, hung)["lastError"] and job(app, hung)["attempts"] == 1
    assert caller.is_alive()
    assert app.jobs.run_until_idle() == jitcore.RunSummary(1, 0, 0)
    hang_release.set()
    caller.join(timeout=10)
    assert not caller.is_alive()
    assert (job(app, hung)["state"], job(app, hung)["attempts"]) == ("done", 2)
    assert [r["attempt"] for r in records(app.root, kind="test.hang", outcome="finished")] == [2, 1]


def test_a_last_attempt_that_times_out_ends_the_job_dead_and_frees_its_dedupe_key(
        make_jobs_app: Any, database: str | None, hang_release: threading.Event) -> None:
    app = make_jobs_app(database)
    hung = enqueue(app, "test.hang_once", dedupeKey="once")  # one attempt, timeoutSeconds 0.3
    caller = threading.Thread(target=app.jobs.run_now, args=([hung],), daemon=True)
    caller.start()
    wait_for(lambda: job(app, hung)["state"] == "dead", timeout=20)
    dead = job(app, hung)
    assert dead["lastError"].startswith("JobTimedOut: still running after 0.3 s") and dead["dedupeKey"] is None
    assert enqueue(app, "test.record", dedupeKey="once") is not None
    hang_release.set()
    caller.join(timeout=10)
    assert job(app, hung)["state"] == "dead"  # the late return changes nothing


# -- kinds ------------------------------------------------------------------------------------------------------------
def test_the_higher_layer_wins_a_kind_and_jit_names_are_reserved(make_jobs_app: Any) -> None:
    app = make_jobs_app(plugins=[SECOND, PLUGIN])
    kinds = app.jobs.kinds()
    assert kinds["test.layered"].handler.__module__.endswith("second_plugin")
    assert isinstance(kinds["test.record"], JobKind) and kinds["test.record"].maxAttempts == 10  # bare callable
    assert EVENT_KIND in kinds
    app = make_jobs_app(plugins=[PLUGIN, SECOND])
    assert app.jobs.kinds()["test.layered"].handler.__module__.endswith("jobs_plugin")
    app = make_jobs_app(plugins=[PLUGIN, RESERVED])
    with pytest.raises(ConfigError, match="jit.mine.*reserved"):
        app.jobs.kinds()


# -- events -----------------------------------------------------------------------------------------------------------
def test_an_event_is_redelivered_to_the_failing_implementation_only(make_jobs_app: Any,
                                                                   database: str | None) -> None:
    app = make_jobs_app(database, plugins=[PLUGIN, SECOND, PLAIN], failFirst=["a"])
    thing = {"orderId": "O-1", "amount": Decimal("99.90"), "paidAt": datetime(2026, 3, 4, 5, 6, 7, 8, tzinfo=UTC8),
             "items": [{"sku": "vip", "price": Decimal("0.01")}], "day": date(2026, 3, 4)}
    with app.engine.begin() as conn:
        ids = app.jobs.publish(conn, "jit_test_thing_happened", {"thing": thing}, sequenceKey="O-1")
    assert len(ids) == 3  # a, b and c, highest layer first
    app.jobs.run_now(ids)  # the first delivery, right after the commit

    [failed] = records(app.root, impl="a")
    assert failed["outcome"] == "raised" and failed["attempt"] == 1
    [b] = records(app.root, impl="b")
    [c] = records(app.root, impl="c")
    assert b["outcome"] == "delivered" and b["event"]["id"] == failed["eventId"] and b["attempt"] == 1
    assert b["event"]["name"] == "jit_test_thing_happened" and b["event"]["createdAt"].tzinfo is not None
    assert c["event"] is None  # it did not declare `event`
    for delivered in (b, c):
        assert delivered["thing"] == thing
        assert type(delivered["thing"]["amount"]) is Decimal and str(delivered["thing"]["amount"]) == "99.90"
        assert delivered["thing"]["paidAt"].utcoffset() == timedelta(hours=8)
    states = {j["id"]: j for j in app.jobs.list()}
    assert states[ids[0]]["state"] == "due" and states[ids[0]]["kind"] == EVENT_KIND
    assert "implementation a fails its first delivery" in states[ids[0]]["lastError"]
    assert states[ids[1]]["state"] == states[ids[2]]["state"] == "done"

    make_due(app, ids[0])
    assert app.jobs.run_until_idle() == jitcore.RunSummary(1, 0, 0)
    [_, again] = records(app.root, impl="a")
    assert again["outcome"] == "delivered" and again["attempt"] == 2 and again["event"]["attempt"] == 2
    assert again["event"]["id"] == failed["eventId"] and again["thing"] == thing
    assert len(records(app.root, impl="b")) == 1 and len(records(app.root, impl="c")) == 1
    assert {j["state"] for j in app.jobs.list()} == {"done"}
    assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 0, 0)


def test_publish_is_transactional_and_checks_its_event(make_jobs_app: Any) -> None:
    app = make_jobs_app()
    with pytest.raises(RuntimeError):
        with app.engine.begin() as conn:
            assert len(app.jobs.publish(conn, "jit_test_thing_happened", {"thing": {}})) == 2
            raise RuntimeError("rolled back")
    assert app.jobs.list() == []
    with app.engine.begin() as conn:
        with pytest.raises(ValueError, match="not a hook"):
            app.jobs.publish(conn, "jit_no_such_event", {})
        with pytest.raises(ValueError, match="app"):
            app.jobs.publish(conn, "jit_test_thing_happened", {"thing": {}, "app": 1})
        assert app.jobs.publish(conn, "jit_app_loaded", {}) == []  # nobody implements it here
    # an event published without an argument an implementation declares fails visibly (and is retried)
    with app.engine.begin() as conn:
        ids = app.jobs.publish(conn, "jit_test_thing_happened", {})
    app.jobs.run_now(ids)
    assert all("published without thing" in job(app, i)["lastError"] for i in ids)


# -- runner, lifespan, schema, configuration ----------------------------------------------------------------------------
def test_the_runner_thread_wakes_on_demand_and_stops_after_its_job(make_jobs_app: Any) -> None:
    app = make_jobs_app(jobs={"pollSeconds": 30})
    app.jobs.start()
    app.jobs.start()  # idempotent
    assert app.jobs.running
    time.sleep(0.2)  # the runner has polled once and sleeps 30 s now
    job_id = enqueue(app, "test.record", {"n": 1})
    app.jobs.wake()
    deadline = time.monotonic() + 10
    while job(app, job_id)["state"] != "done":
        assert time.monotonic() < deadline, "wake() did not wake the runner"
        time.sleep(0.02)
    slow = enqueue(app, "test.slow", {"sleep": 0.5})
    app.jobs.wake()
    while not records(app.root, kind="test.slow", outcome="started"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    app.jobs.stop(timeout=10)  # the running job finishes
    assert not app.jobs.running
    assert job(app, slow)["state"] == "done" and records(app.root, kind="test.slow", outcome="finished")
    later = enqueue(app, "test.record", {"n": 2})
    time.sleep(0.2)
    assert job(app, later)["state"] == "due"  # stopped: nothing runs it
    app.jobs.start()
    app.jobs.wake()
    while job(app, later)["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    app.close()  # stops the runner
    assert not app.jobs.running


@pytest.mark.parametrize("runner", [True, False])
def test_the_asgi_lifespan_runs_the_runner_and_closes_the_app(make_jobs_app: Any, runner: bool) -> None:
    import asyncio

    import httpx
    import uvicorn

    from jitcore.http import build_asgi_app
    from tests.support.live import bind_loopback

    app = make_jobs_app(jobs={"runner": runner})
    job_id = enqueue(app, "test.record")
    sock = bind_loopback()
    server = uvicorn.Server(uvicorn.Config(build_asgi_app(app), lifespan="on", log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        assert httpx.get(f"http://127.0.0.1:{sock.getsockname()[1]}/healthz", timeout=5).status_code == 200
        assert app.jobs.running is runner
        deadline = time.monotonic() + (10 if runner else 0.3)
        while job(app, job_id)["state"] != "done" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
    assert not thread.is_alive()
    assert not app.jobs.running and app._engine is None  # closed at shutdown
    assert job(app, job_id)["state"] == ("done" if runner else "due")


def test_a_newer_job_schema_is_refused(make_jobs_app: Any, database: str | None) -> None:
    app = make_jobs_app(database)
    app.jobs.ensure_schema()
    with app.engine.begin() as conn:
        assert conn.execute(select(schema_table.c.version)
                            .where(schema_table.c.component == "jitcore.jobs")).scalar_one() == 1
        conn.execute(update(schema_table).values(version=2))
    newer = make_jobs_app(database)
    with pytest.raises(ConfigError, match="version 2, newer than this jitcore's"):
        newer.jobs.ensure_schema()
    with pytest.raises(ConfigError, match="newer"):
        with newer.engine.begin() as conn:
            newer.jobs.enqueue(conn, "test.record", {})


def test_old_done_jobs_are_purged(make_jobs_app: Any) -> None:
    app = make_jobs_app()
    old, recent, dead = (enqueue(app, "test.record"), enqueue(app, "test.record"), enqueue(app, "test.dies"))
    app.jobs.run_until_idle()
    with app.engine.begin() as conn:
        long_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=8)
        conn.execute(update(job_table).where(job_table.c.id.in_([old, dead])).values(finishedAt=long_ago))
    assert app.jobs.purge() == 1
    assert {j["id"] for j in app.jobs.list()} == {recent, dead}  # dead jobs stay visible


def test_the_jobs_block_of_the_app_yaml_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text("appId: t\njobs:\n  pollSecond: 2\n")
    with pytest.raises(ConfigError, match=r"jobs.pollSecond: unknown key \(did you mean 'pollSeconds'\?\)"):
        jitcore.load_app(path)
    path.write_text("appId: t\njobs:\n  pollSeconds: 0\n")
    with pytest.raises(ConfigError, match="jobs.pollSeconds"):
        jitcore.load_app(path)
    path.write_text("appId: t\njobs:\n  runner: false\n  events: {maxAttempts: 3, leaseSeconds: 20}\n")
    app = jitcore.load_app(path)
    assert app.model.jobs.runner is False and app.model.jobs.pollSeconds == 1.0
    event_kind = app.jobs.kinds()[EVENT_KIND]
    assert (event_kind.maxAttempts, event_kind.leaseSeconds, event_kind.backoffSeconds) == (3, 20, 5.0)
    assert event_kind.timeoutSeconds == 900.0
    app.close()
    for given, expected in (("60", 60.0), ("null", None)):
        path.write_text(f"appId: t\njobs:\n  events: {{timeoutSeconds: {given}}}\n")
        app = jitcore.load_app(path)
        assert app.jobs.kinds()[EVENT_KIND].timeoutSeconds == expected
        app.close()
    path.write_text("appId: t\njobs:\n  events: {timeoutSeconds: 0}\n")
    with pytest.raises(ConfigError, match="jobs.events.timeoutSeconds"):
        jitcore.load_app(path)
