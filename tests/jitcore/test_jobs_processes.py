"""The job queue across real processes: `jit worker`, `jit jobs`, `jit serve --workers 2`, a process that dies right
after its commit, a runner killed mid-job, a runner frozen past its lease, and several processes draining one queue on SQLite and PostgreSQL without
ever running a job twice."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from sqlalchemy import text

import jitcore
from jitcore.jobs import EVENT_KIND
from tests.jitcore.jobs_support import JIT, env, jit, records, write_app

SUMMARY = re.compile(r"^jobs: (\d+) done, (\d+) retried, (\d+) dead$")


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], Any]:
    """Load an app in the test process too (installed plugins off, like the subprocesses)."""
    monkeypatch.setenv("JIT_PLUGINS", "none")
    apps: list[Any] = []

    def load_app(path: Path) -> Any:
        app = jitcore.load_app(path)
        apps.append(app)
        return app

    yield load_app
    for app in apps:
        app.close()


def enqueue(app: Any, kind: str, payload: dict[str, Any] | None = None, **options: Any) -> int:
    with app.engine.begin() as conn:
        return app.jobs.enqueue(conn, kind, payload or {}, **options)


def summary(result: subprocess.CompletedProcess[str]) -> tuple[int, int, int]:
    """The counts of `jit worker --until-idle`, which must exit 0 with exactly one line on stdout."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and SUMMARY.match(lines[0]), result.stdout
    done, retried, dead = SUMMARY.match(lines[0]).groups()  # type: ignore[union-attr]
    return int(done), int(retried), int(dead)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_jit_worker_until_idle_and_jit_jobs(tmp_path: Path, load: Any) -> None:
    app = load(write_app(tmp_path))
    done = enqueue(app, "test.record", {"n": 1})
    dead = enqueue(app, "test.dies", {"n": 5})
    later = enqueue(app, "test.record", {"n": 2}, delay=3600)

    assert summary(jit("worker", "app.yaml", "--until-idle", cwd=tmp_path)) == (1, 0, 1)
    listing = jit("jobs", "app.yaml", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["id", "kind", "state", "attempts", "dueAt", "lastError"]
    rows = {int(line.split()[0]): line.split(None, 5) for line in lines[1:]}
    assert set(rows) == {dead, later}  # done jobs only with --all
    assert rows[dead][1:4] == ["test.dies", "dead", "1"]
    assert rows[dead][5] == "ValueError: boom 5 on attempt 1"
    assert rows[later][1:4] == ["test.record", "due", "0"] and len(rows[later]) == 5
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows[later][4])
    everything = jit("jobs", "app.yaml", "--all", cwd=tmp_path)
    assert {int(line.split()[0]): line.split()[2] for line in everything.stdout.splitlines()[1:]} == {
        done: "done", dead: "dead", later: "due"}

    retried = jit("jobs", "app.yaml", "--retry", str(dead), cwd=tmp_path)
    assert retried.returncode == 0 and f"job {dead} requeued" in retried.stdout, retried.stderr
    after = {int(line.split()[0]): line.split(None, 5) for line in jit("jobs", "app.yaml", cwd=tmp_path)
             .stdout.splitlines()[1:]}
    assert after[dead][2:] == ["due", "0", after[dead][4], "ValueError: boom 5 on attempt 1"]  # the error stays
    for missing, message in [(str(10**6), f"error: there is no job {10**6}"),
                             (str(done), f"error: job {done} is done; only dead or failed jobs can be retried")]:
        refused = jit("jobs", "app.yaml", "--retry", missing, cwd=tmp_path)
        assert refused.returncode == 1 and refused.stderr.strip() == message and "Traceback" not in refused.stderr
    assert summary(jit("worker", "app.yaml", "--until-idle", cwd=tmp_path)) == (0, 0, 1)
    assert jit("worker", "missing.yaml", "--until-idle", cwd=tmp_path).returncode == 1


PUBLISH = """
import os, sys
from decimal import Decimal
import jitcore
app = jitcore.load_app("app.yaml")
with app.engine.begin() as conn:
    ids = app.jobs.publish(conn, "jit_test_thing_happened", {"thing": {"n": __N__, "amount": Decimal("1.23")}},
                           sequenceKey="thing-__N__")
print(*ids, flush=True)
if sys.argv[-1] == "exit-after-commit":
    os._exit(0)
if sys.argv[-1] == "exit-inside-b":
    os.environ["JOBTEST_EXIT_IN"] = "b"  # implementation b calls os._exit(17) in its first delivery
app.jobs.run_now(ids)
print("the process survived", flush=True)
"""


def test_events_committed_by_a_dying_process_are_delivered_to_every_implementation_once(
        tmp_path: Path, load: Any) -> None:
    write_app(tmp_path, jobs={"events": {"leaseSeconds": 1}})

    def published(n: int, how: str) -> list[int]:
        result = subprocess.run([sys.executable, "-c", PUBLISH.replace("__N__", str(n)), how], cwd=tmp_path, env=env(),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == (0 if how == "exit-after-commit" else 17), result.stderr
        assert "survived" not in result.stdout
        return [int(i) for i in result.stdout.split()]

    def deliveries(n: int) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for entry in records(tmp_path, outcome="delivered"):
            if entry["thing"]["n"] == n:
                found.setdefault(entry["impl"], []).append(entry["attempt"])
        return found

    # 1. the process dies between its commit and the first delivery: no lease to wait for
    first = published(1, "exit-after-commit")
    assert len(first) == 2 and records(tmp_path) == []
    # 2. the process dies inside implementation b's first delivery, after a's succeeded
    second = published(2, "exit-inside-b")
    assert deliveries(2) == {"a": [1]}
    [exiting] = records(tmp_path, outcome="exiting")
    assert exiting["impl"] == "b"
    time.sleep(1.2)  # b's delivery lease (jobs.events.leaseSeconds) expires

    assert summary(jit("worker", "app.yaml", "--until-idle", cwd=tmp_path)) == (3, 0, 0)
    assert deliveries(1) == {"a": [1], "b": [1]}
    assert deliveries(2) == {"a": [1], "b": [2]}
    [redelivered] = [e for e in records(tmp_path, impl="b", outcome="delivered") if e["thing"]["n"] == 2]
    assert redelivered["eventId"] == exiting["eventId"] and redelivered["thing"]["amount"] == Decimal("1.23")
    # none is delivered again after it succeeded
    assert summary(jit("worker", "app.yaml", "--until-idle", cwd=tmp_path)) == (0, 0, 0)
    assert deliveries(1) == {"a": [1], "b": [1]} and deliveries(2) == {"a": [1], "b": [2]}
    app = load(tmp_path / "app.yaml")
    jobs = {j["id"]: j for j in app.jobs.list()}
    assert set(jobs) == set(first + second)
    assert all(j["state"] == "done" and j["kind"] == EVENT_KIND for j in jobs.values())
    assert "lease expired" in jobs[second[1]]["lastError"]


BLOCK = """
import threading
import jitcore
app = jitcore.load_app("app.yaml")
with app.engine.begin() as conn:
    ids = [app.jobs.enqueue(conn, "test.block", {}), app.jobs.enqueue(conn, "test.block_once", {})]
print(*ids, flush=True)
threads = [threading.Thread(target=app.jobs.run_now, args=([job_id],)) for job_id in ids]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


def test_a_job_whose_runner_was_killed_runs_again_after_its_lease(tmp_path: Path, load: Any) -> None:
    write_app(tmp_path)
    process = subprocess.Popen([sys.executable, "-c", BLOCK], cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        blocked, blocked_once = (int(i) for i in process.stdout.readline().split())
        wait_for(lambda: len(records(tmp_path, outcome="started")) == 2, 30, "both jobs to start")
    finally:
        process.kill()  # SIGKILL: no clean-up of any kind
        process.communicate(timeout=30)
    app = load(tmp_path / "app.yaml")
    running = app.jobs.get(blocked)
    assert running["state"] == "running" and running["attempts"] == 1
    if datetime.now(UTC) < running["leaseUntil"] - timedelta(seconds=0.3):
        assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 0, 0)  # still leased: nobody takes it
    wait_for(lambda: datetime.now(UTC) > max(app.jobs.get(i)["leaseUntil"] for i in (blocked, blocked_once)), 10,
             "the leases to expire")
    assert app.jobs.run_until_idle() == jitcore.RunSummary(done=1, retried=0, dead=1)
    again = app.jobs.get(blocked)
    assert again["state"] == "done" and again["attempts"] == 2
    [second] = records(tmp_path, id=blocked, attempt=2, outcome="started")
    assert "attempt 1 did not finish: its lease expired" in second["lastError"]
    assert records(tmp_path, id=blocked, attempt=2, outcome="finished")
    dead = app.jobs.get(blocked_once)  # maxAttempts 1: its lease expired on its last attempt
    assert dead["state"] == "dead" and dead["attempts"] == 1
    assert dead["lastError"].startswith("attempt 1 did not finish: its lease expired")
    assert not records(tmp_path, id=blocked_once, outcome="finished")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_several_processes_drain_one_queue_without_running_a_job_twice(
        tmp_path: Path, load: Any, backend: str, request: pytest.FixtureRequest) -> None:
    database = request.getfixturevalue("postgres_server").new_database() if backend == "postgresql" else None
    count = 500 if backend == "postgresql" else 150
    write_app(tmp_path, database=database, jobs={"pollSeconds": 0.1})
    # the runners start on a fresh database and create the job tables concurrently
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []
    for n in range(2):
        log_file = tmp_path / f"worker{n}.log"
        with log_file.open("wb") as log:
            processes.append((subprocess.Popen([JIT, "worker", "app.yaml"], cwd=tmp_path, env=env(), stdout=log,
                                               stderr=log, start_new_session=True), log_file))
    port = _free_port()
    if backend == "postgresql":
        log_file = tmp_path / "serve.log"
        with log_file.open("wb") as log:
            processes.append((subprocess.Popen([JIT, "serve", "app.yaml", "--port", str(port), "--workers", "2"],
                                               cwd=tmp_path, env=env(), stdout=log, stderr=log,
                                               start_new_session=True), log_file))
    try:
        for process, log_file in processes[:2]:
            wait_for(lambda: b"jit worker: running" in log_file.read_bytes() or process.poll() is not None, 60,
                     "jit worker to start")
            assert process.poll() is None, log_file.read_text()
        if backend == "postgresql":
            def serving() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
                except httpx.TransportError:
                    assert processes[2][0].poll() is None, processes[2][1].read_text()
                    return False

            wait_for(serving, 60, "jit serve to start")
            wait_for(lambda: processes[2][1].read_text().count("Application startup complete") == 2, 30,
                     "both serve workers")

        app = load(tmp_path / "app.yaml")
        with app.engine.begin() as conn:
            conn.execute(text("CREATE TABLE test_marker (job_id BIGINT PRIMARY KEY)"))
            conn.execute(text("CREATE TABLE test_conflict (job_id BIGINT)"))
            conn.execute(text("CREATE TABLE test_run (job_id BIGINT, pid INTEGER)"))
        with app.engine.begin() as conn:
            # long enough that both runners surely take jobs (with 2 ms jobs on SQLite one runner might drain them all)
            sleep = 0.002 if backend == "postgresql" else 0.01
            ids = {app.jobs.enqueue(conn, "test.marker", {"sleep": sleep}) for _ in range(count)}
        started = time.monotonic()

        def drained() -> bool:
            with app.engine.connect() as conn:
                return conn.execute(text("SELECT COUNT(*) FROM jit_job WHERE state = 'done'")).scalar_one() == count

        wait_for(drained, 120, "every job to be done")
        elapsed = time.monotonic() - started
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        exits = []
        for process, log_file in processes:
            try:
                exits.append(process.wait(timeout=30))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
                exits.append(f"killed: {log_file.read_text()[-2000:]}")
    assert exits == [0] * len(processes), exits  # SIGTERM stops every runner cleanly

    with app.engine.connect() as conn:
        conflicts = conn.execute(text("SELECT COUNT(*) FROM test_conflict")).scalar_one()
        runs = conn.execute(text("SELECT job_id, pid FROM test_run")).all()
        markers = conn.execute(text("SELECT COUNT(*) FROM test_marker")).scalar_one()
    assert conflicts == 0 and markers == 0  # no job ran concurrently with itself
    assert sorted(job_id for job_id, _ in runs) == sorted(ids)  # every job ran, and exactly once
    jobs = app.jobs.list(limit=count + 10)
    assert len(jobs) == count and all(j["state"] == "done" and j["attempts"] == 1 for j in jobs)
    pids = {pid for _, pid in runs}
    workers = {process.pid for process, _ in processes[:2]}
    print(f"{backend}: {count} jobs in {elapsed:.1f}s by {len(pids)} processes "
          f"({', '.join(str(sum(1 for _, p in runs if p == pid)) for pid in sorted(pids))})")
    assert len(pids) >= 2  # shared
    if backend == "postgresql":
        assert pids - workers, "the jit serve workers ran no job"


def test_a_frozen_runner_loses_its_job_after_its_lease_and_its_late_outcome_is_not_recorded(
        tmp_path: Path, load: Any) -> None:
    """A `jit worker` whose job runs past its lease keeps it while the process renews; stopped (SIGSTOP, as a paused
    machine) it stops renewing, another runner takes the job over, and once resumed it gives the lease up and its
    outcome is fenced out."""
    write_app(tmp_path)
    app = load(tmp_path / "app.yaml")
    job_id = enqueue(app, "test.overrun", {"sleep": 2.0})  # lease 0.3 s: attempt 1 sleeps 2 s, then fails
    worker = subprocess.Popen([JIT, "worker", "app.yaml", "--until-idle"], cwd=tmp_path, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: records(tmp_path, kind="test.overrun", attempt=1), 30, "attempt 1 to start")
        time.sleep(0.5)  # past its first lease: renewed, so nobody takes it
        assert app.jobs.run_until_idle() == jitcore.RunSummary(0, 0, 0)
        worker.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: datetime.now(UTC) > app.jobs.get(job_id)["leaseUntil"], 10, "the lease to pass")
            assert app.jobs.run_until_idle() == jitcore.RunSummary(1, 0, 0)  # attempt 2 takes over
        finally:
            worker.send_signal(signal.SIGCONT)
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert records(tmp_path, kind="test.overrun", attempt=1, outcome="raising")
    finished = app.jobs.get(job_id)
    assert finished["state"] == "done" and finished["attempts"] == 2
    assert f"job {job_id} (test.overrun): attempt 1 still runs but its lease was taken over" in err
    assert "attempt 1 failed after it was given up (its lease was taken over" in err
