"""The main test plugin: job kinds for every queue behaviour the tests check, the test event's spec, and the
event implementation tagged "a".

Behaviour is steered by ``app.settings["jobtest"]``: ``failFirst`` (tags of event implementations that raise on
their first delivery), ``periodic`` (register the periodic kind ``test.tick`` with ``every`` = that many seconds);
and by the environment variable ``JOBTEST_EXIT_IN``: the tag of the implementation that ends its process with
``os._exit(17)`` on a first delivery.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from jitcore import JobKind, RetryLater, hookimpl
from jitcore.jobs import encode_value
from tests.jitcore.jobs_support import hookspecs

jit_hookspecs = [hookspecs]


def record(app: Any, **entry: Any) -> None:
    """Append one JSON line to the record file (one write of an O_APPEND file: safe across processes)."""
    line = json.dumps(encode_value({**entry, "pid": os.getpid()})) + "\n"
    fd = os.open(app.settings["jobtest"]["record"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def deliver(app: Any, tag: str, thing: dict[str, Any], event: dict[str, Any] | None) -> None:
    """An event implementation: fail or exit on the first delivery when the settings say so, else record it."""
    settings = app.settings["jobtest"]
    attempt = event["attempt"] if event else None
    if attempt == 1 and os.environ.get("JOBTEST_EXIT_IN") == tag:
        record(app, impl=tag, outcome="exiting", attempt=attempt, eventId=event["id"])
        os._exit(17)
    if attempt == 1 and tag in settings.get("failFirst", []):
        record(app, impl=tag, outcome="raised", attempt=attempt, eventId=event["id"])
        raise RuntimeError(f"implementation {tag} fails its first delivery")
    record(app, impl=tag, outcome="delivered", attempt=attempt, eventId=event["id"] if event else None,
           event=event, thing=thing)


@hookimpl
def jit_test_thing_happened(app: Any, thing: dict[str, Any], event: dict[str, Any]) -> None:
    """Implementation "a" (the highest app plugin layer)."""
    deliver(app, "a", thing, event)


def record_job(app: Any, payload: dict, job: Any) -> None:
    record(app, kind=job.kind, id=job.id, attempt=job.attempt, payload=payload, lastError=job.lastError,
           sequenceKey=job.sequenceKey, createdAt=job.createdAt)


def fail(app: Any, payload: dict, job: Any) -> None:
    record(app, kind=job.kind, id=job.id, attempt=job.attempt)
    raise ValueError(f"boom {payload.get('n')} on attempt {job.attempt}")


def flaky(app: Any, payload: dict, job: Any) -> None:
    """Fails its first attempt, then records like test.record."""
    if job.attempt == 1:
        record(app, kind=job.kind, id=job.id, attempt=job.attempt, outcome="raised")
        raise RuntimeError("first attempt fails")
    record_job(app, payload, job)


def later(app: Any, payload: dict, job: Any) -> None:
    """RetryLater with a delay, then at a time, then success."""
    record(app, kind=job.kind, id=job.id, attempt=job.attempt, lastError=job.lastError)
    if job.attempt == 1:
        raise RetryLater("the provider is not ready", delay=30)
    if job.attempt == 2:
        raise RetryLater("come back at the given time", at=payload["at"])


def never(app: Any, payload: dict, job: Any) -> None:
    raise RetryLater("still not ready", delay=0)


def block(app: Any, payload: dict, job: Any) -> None:
    """Blocks its first attempt (until the process is killed); records every start and every finish."""
    record(app, kind=job.kind, id=job.id, attempt=job.attempt, outcome="started", lastError=job.lastError)
    if job.attempt == 1:
        time.sleep(60)
    record(app, kind=job.kind, id=job.id, attempt=job.attempt, outcome="finished")


def overrun(app: Any, payload: dict, job: Any) -> None:
    """Attempt 1 outlives its lease and then fails; attempt 2 succeeds at once."""
    record(app, kind=job.kind, id=job.id, attempt=job.attempt, outcome="started")
    if job.attempt == 1:
        time.sleep(payload["sleep"])
        record(app, kind=job.kind, id=job.id, attempt=job.attempt, outcome="raising")
        raise RuntimeError("the overrunning attempt fails too late")
    record(app, kind=job.kind, id=job.id, attempt=job.attempt, outcome="finished")


#: what a hanging first attempt of ``test.hang`` waits for (set by the test that is done with it)
HANG_RELEASE = threading.Event()


def hang(app: Any, payload: dict, job: Any) -> None:
    """Attempt 1 hangs until :data:`HANG_RELEASE` is set (120 s at most), then returns; later attempts return at
    once. Records every start and every finish."""
    record(app, kind=job.kind, id=job.id, attempt=job.attempt, outcome="started", lastError=job.lastError)
    if job.attempt == 1:
        HANG_RELEASE.wait(120)
    record(app, kind=job.kind, id=job.id, attempt=job.attempt, outcome="finished")


def slow(app: Any, payload: dict, job: Any) -> None:
    record(app, kind=job.kind, id=job.id, attempt=job.attempt, outcome="started")
    time.sleep(payload["sleep"])
    record(app, kind=job.kind, id=job.id, attempt=job.attempt, outcome="finished")


def marker(app: Any, payload: dict, job: Any) -> None:
    """Proves that no job runs twice at once: a row keyed by the job id exists while it runs (its insert is
    committed before the work, so a concurrent second run hits the primary key) and every run is counted."""
    try:
        with app.engine.begin() as conn:
            conn.execute(text("INSERT INTO test_marker (job_id) VALUES (:id)"), {"id": job.id})
    except IntegrityError:
        with app.engine.begin() as conn:
            conn.execute(text("INSERT INTO test_conflict (job_id) VALUES (:id)"), {"id": job.id})
        raise
    time.sleep(payload.get("sleep", 0))
    with app.engine.begin() as conn:
        conn.execute(text("DELETE FROM test_marker WHERE job_id = :id"), {"id": job.id})
        conn.execute(text("INSERT INTO test_run (job_id, pid) VALUES (:id, :pid)"), {"id": job.id, "pid": os.getpid()})


def tick(app: Any, payload: dict, job: Any) -> None:
    record(app, kind=job.kind, id=job.id, attempt=job.attempt)


def layered(app: Any, payload: dict, job: Any) -> None:
    record(app, kind=job.kind, id=job.id, by="jobs_plugin")


@hookimpl
def jit_job_handlers(app: Any) -> dict[str, Any]:
    """The test kinds."""
    kinds: dict[str, Any] = {
        "test.record": record_job,
        "test.fail": JobKind(handler=fail, maxAttempts=3, backoffSeconds=10, maxBackoffSeconds=15),
        "test.dies": JobKind(handler=fail, maxAttempts=1),
        "test.flaky": JobKind(handler=flaky, backoffSeconds=30),
        "test.later": JobKind(handler=later, maxAttempts=5),
        "test.never": JobKind(handler=never, maxAttempts=2),
        "test.block": JobKind(handler=block, maxAttempts=3, leaseSeconds=1),
        "test.block_once": JobKind(handler=block, maxAttempts=1, leaseSeconds=1),
        "test.overrun": JobKind(handler=overrun, leaseSeconds=0.3, backoffSeconds=0),
        "test.hang": JobKind(handler=hang, timeoutSeconds=0.5, backoffSeconds=0, maxAttempts=3),
        "test.hang_once": JobKind(handler=hang, timeoutSeconds=0.3, maxAttempts=1),
        "test.slow": slow,
        "test.slow_leased": JobKind(handler=slow, leaseSeconds=0.3),
        "test.marker": marker,
        "test.layered": layered,
    }
    every = app.settings["jobtest"].get("periodic")
    if every:
        kinds["test.tick"] = JobKind(handler=tick, every=every)
    return kinds
