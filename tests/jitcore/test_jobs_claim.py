"""publish/enqueue(claim=True): the first attempt of a job due now is claimed by the enqueuing thread in the caller's
transaction, so that run_now right after the commit runs it without a claiming transaction of its own (publish: the
first implementation's delivery); a job its sequence blocks is enqueued due as usual; a caller that dies before
run_now leaves a lease that expires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

import jitcore
from jitcore.jobs import job_table
from tests.jitcore.jobs_support import PLUGIN, SECOND, make_due, records
from tests.jitcore.test_jobs import make_jobs_app  # noqa: F401 - a fixture (database comes from tests.support.postgres)


def test_a_claimed_event_is_delivered_by_run_now_once(make_jobs_app: Any, database: str | None) -> None:  # noqa: F811
    app = make_jobs_app(database, plugins=[PLUGIN, SECOND])
    with app.engine.begin() as conn:
        ids = app.jobs.publish(conn, "jit_test_thing_happened", {"thing": {"n": 1}}, sequenceKey="O-1", claim=True)
    first, second = [app.jobs.get(i) for i in ids]
    # the first delivery is claimed (no runner takes it meanwhile); the next one is due, for run_now to claim
    assert first["state"] == "running" and first["attempts"] == 1 and first["leaseUntil"] is not None
    assert second["state"] == "due" and second["attempts"] == 0
    app.jobs.run_now(ids)
    assert {r["impl"] for r in records(app.root, outcome="delivered")} == {"a", "b"}
    assert all(r["attempt"] == 1 for r in records(app.root))
    assert [app.jobs.get(i)["state"] for i in ids] == ["done", "done"]
    app.jobs.run_now(ids)  # done: nothing again
    assert len(records(app.root)) == 2


def test_a_claim_waits_for_its_sequence(make_jobs_app: Any, database: str | None) -> None:  # noqa: F811
    app = make_jobs_app(database, plugins=[PLUGIN], failFirst=["a"])
    with app.engine.begin() as conn:
        first = app.jobs.publish(conn, "jit_test_thing_happened", {"thing": {"n": 1}}, sequenceKey="O-2", claim=True)
    app.jobs.run_now(first)  # its first delivery fails: due again later
    with app.engine.begin() as conn:
        second = app.jobs.publish(conn, "jit_test_thing_happened", {"thing": {"n": 2}}, sequenceKey="O-2",
                                  claim=True)
    waiting = app.jobs.get(second[0])  # the earlier event of its sequence is not finished: due, unclaimed
    assert (waiting["state"], waiting["attempts"], waiting["runner"], waiting["leaseUntil"]) == ("due", 0, None, None)
    app.jobs.run_now(second)
    assert app.jobs.get(second[0])["state"] == "due"
    make_due(app, first[0])
    # the first is delivered on its second attempt; then the second's first delivery (which "a" fails too)
    assert app.jobs.run_until_idle() == jitcore.RunSummary(1, 1, 0)
    make_due(app, second[0])
    assert app.jobs.run_until_idle() == jitcore.RunSummary(1, 0, 0)
    assert [r["thing"]["n"] for r in records(app.root, outcome="delivered")] == [1, 2]


def test_a_deduplicated_claim_waits_for_its_sequence_too(make_jobs_app: Any,  # noqa: F811
                                                         database: str | None) -> None:
    app = make_jobs_app(database, plugins=[PLUGIN])
    with app.engine.begin() as conn:
        first = app.jobs.enqueue(conn, "test.record", {}, sequenceKey="S-1", dedupeKey="d-1", claim=True)
        second = app.jobs.enqueue(conn, "test.record", {}, sequenceKey="S-1", dedupeKey="d-2", claim=True)
        again = app.jobs.enqueue(conn, "test.record", {}, sequenceKey="S-1", dedupeKey="d-1", claim=True)
    assert again is None  # d-1 is unfinished
    claimed, waiting = app.jobs.get(first), app.jobs.get(second)
    assert (claimed["state"], claimed["attempts"]) == ("running", 1) and claimed["runner"] is not None
    assert (waiting["state"], waiting["attempts"], waiting["runner"], waiting["leaseUntil"]) == ("due", 0, None, None)


def test_a_claim_whose_caller_died_is_taken_when_its_lease_expires(make_jobs_app: Any,
                                                                    database: str | None) -> None:  # noqa: F811
    app = make_jobs_app(database, plugins=[PLUGIN])
    with app.engine.begin() as conn:
        ids = app.jobs.publish(conn, "jit_test_thing_happened", {"thing": {"n": 3}}, claim=True)
    # no run_now: the caller died after its commit
    assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 0, 0)
    with app.engine.begin() as conn:
        conn.execute(update(job_table).where(job_table.c.id == ids[0])
                     .values(leaseUntil=datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)))
    assert app.jobs.run_until_idle() == jitcore.RunSummary(1, 0, 0)
    [delivered] = records(app.root, outcome="delivered")
    assert delivered["attempt"] == 2 and app.jobs.get(ids[0])["state"] == "done"


def test_a_rolled_back_claim_leaves_nothing(make_jobs_app: Any) -> None:  # noqa: F811
    app = make_jobs_app()
    with pytest.raises(RuntimeError):
        with app.engine.begin() as conn:
            ids = app.jobs.publish(conn, "jit_test_thing_happened", {"thing": {}}, claim=True)
            raise RuntimeError("rolled back")
    app.jobs.run_now(ids)
    assert app.jobs.list() == [] and records(app.root) == []


def test_an_id_given_again_after_a_rolled_back_claim_is_claimed_properly(make_jobs_app: Any) -> None:  # noqa: F811
    # run_now runs a job this thread claimed as it was written (no read back); a rolled-back claim must not be taken
    # for the job that gets its id next (SQLite gives a rolled-back rowid again)
    app = make_jobs_app()
    with pytest.raises(RuntimeError):
        with app.engine.begin() as conn:
            rolled_back = app.jobs.publish(conn, "jit_test_thing_happened", {"thing": {"n": 1}}, claim=True)
            raise RuntimeError("rolled back")
    with app.engine.begin() as conn:
        again = app.jobs.publish(conn, "jit_test_thing_happened", {"thing": {"n": 2}})  # not claimed
    assert again == rolled_back and {app.jobs.get(i)["state"] for i in again} == {"due"}
    with app.engine.begin() as conn:  # another runner takes them first
        conn.execute(update(job_table).where(job_table.c.id.in_(again))
                     .values(state="running", attempts=1, runner="elsewhere",
                             leaseUntil=datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=5)))
    app.jobs.run_now(again)  # not this thread's: nothing runs
    assert records(app.root) == [] and {app.jobs.get(i)["runner"] for i in again} == {"elsewhere"}
