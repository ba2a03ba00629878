"""A durable job queue in the app's own database: whatever must happen after a commit.

A job is a row of ``jit_job``, written with :meth:`JobQueue.enqueue` *inside the caller's transaction*: it exists
exactly when the caller's change is committed. Runners (``jit serve`` runs one in each worker, ``jit worker`` runs
one alone, :meth:`JobQueue.run_until_idle` runs due jobs in the calling thread) take due jobs and call the handler
their kind registers through the ``jit_job_handlers`` hook.

A job's states: ``due`` → ``running`` → ``done`` | ``due`` again (a failed attempt, after a backoff) | ``dead``
(``maxAttempts`` used up; kept and visible until retried). Two runs of one job never overlap while their runner is
alive and within the kind's ``timeoutSeconds``:

- *claiming* is one conditional ``UPDATE ... WHERE id = :id AND (due and dueAt <= now, or running with an expired
  lease) AND no earlier unfinished job has its sequenceKey``; the row count says who won. PostgreSQL candidates are
  picked ``FOR UPDATE SKIP LOCKED``; SQLite serialises every write transaction (``BEGIN IMMEDIATE``;
  an idle poll only reads).
- a claim holds a *lease* (``leaseSeconds``), renewed while the handler runs (:mod:`jitcore.leases`); a job whose
  runner died (or froze longer than the lease) is claimed again once it expires. An attempt still running after its
  kind's ``timeoutSeconds`` is given up: recorded failed (``JobTimedOut``; due again after the backoff), and a runner
  thread stuck in it is replaced by a new one. Its handler cannot be stopped; what it does after that may overlap a
  later attempt, and its outcome is not recorded.
- *finishing* is fenced: ``UPDATE ... WHERE id = :id AND runner = :me AND state = 'running' AND attempts = :n``, so
  a runner that lost its lease cannot overwrite the outcome of the attempt that replaced it.
- claims and outcomes are *bookkeeping* (:func:`jitcore.sql.bookkeeping`): their commits do not wait for the disk
  (SQLite ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit = off`` for that transaction). A power failure may
  take the last of them, never a job itself (written at the caller's durability) nor a commit made after them: the
  job is then simply run again, which at-least-once delivery allows. On SQLite a claimed job runs only after the WAL
  is synced (:func:`jitcore.sqlite.wait_durable`): the commit that enqueued it may have been visible before it was on
  disk.

Delivery is therefore at least once: a handler that dies half-way runs again. Make handlers idempotent.

:meth:`JobQueue.publish` is the transactional outbox for hook events: one ``jit.event`` job per hook implementation,
all sharing one event id. docs/JOBS.md describes the whole contract.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import sys
import threading
import time
import traceback
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Iterable

from sqlalchemy import (BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table, Text, UniqueConstraint,
                        and_, bindparam, case, delete, exists, insert, literal, null, or_, select, text, update)
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from jitcore.errors import ConfigError
from jitcore.leases import Held, LeaseKeeper
from jitcore.sql import bookkeeping, bookkeeping_change, database
from jitcore.sqlite import wait_durable

if TYPE_CHECKING:
    from jitcore.app import App

__all__ = ["JobKind", "Job", "RetryLater", "JobTimedOut", "RunSummary", "JobQueue", "encode_value", "decode_value",
           "EVENT_KIND", "STATES", "SCHEMA_VERSION"]

log = logging.getLogger("jitcore.jobs")

#: the built-in kind that delivers :meth:`JobQueue.publish` events, one job per hook implementation
EVENT_KIND = "jit.event"
STATES = ("due", "running", "done", "dead")
SCHEMA_COMPONENT = "jitcore.jobs"
SCHEMA_VERSION = 1
#: ``lastError`` keeps at most this many characters (its start and its end)
ERROR_LIMIT = 4000
#: how many due jobs a runner looks at per claim
CANDIDATES = 10
#: how often a runner makes sure every periodic kind has its job, and purges old done jobs (seconds)
PERIODIC_CHECK_SECONDS = 60.0
PURGE_SECONDS = 3600.0
#: key of PostgreSQL's transaction-level advisory lock that serialises creating the tables
_SCHEMA_LOCK = 0x6A69_746A_6F62  # "jitjob"

metadata = MetaData()

schema_table = Table(
    "jit_schema", metadata,
    Column("component", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
)

job_table = Table(
    "jit_job", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(128), nullable=False),
    Column("payload", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("dueAt", DateTime, nullable=False),
    Column("createdAt", DateTime, nullable=False),
    Column("updatedAt", DateTime, nullable=False),
    Column("finishedAt", DateTime),
    Column("lastError", Text),
    Column("runner", String(128)),
    Column("leaseUntil", DateTime),
    Column("dedupeKey", String(255)),
    Column("sequenceKey", String(255)),
    UniqueConstraint("dedupeKey", name="uq_jit_job_dedupeKey"),
    Index("ix_jit_job_state_dueAt", "state", "dueAt"),
    Index("ix_jit_job_sequenceKey", "sequenceKey"),
)


def utcnow() -> datetime:
    """Now in UTC, naive: the database columns hold naive UTC times on every dialect."""
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a job time must be timezone-aware (e.g. datetime.now(UTC))")
    return value.astimezone(UTC).replace(tzinfo=None)


# -- payload encoding -----------------------------------------------------------------------------------------------
_TAGS = ("$decimal", "$datetime", "$date", "$time", "$dict")


def encode_value(value: Any) -> Any:
    """``value`` as JSON-safe data: ``Decimal``, ``datetime`` (aware or naive), ``date`` and ``time`` become one-key
    tagged dicts (``{"$decimal": "9.90"}``), tuples become lists, everything else JSON knows stays as it is.
    :func:`decode_value` turns the result back into equal values of the same types. Raises ``TypeError`` for anything
    else (and for dict keys that are not strings)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, time_of_day):
        return {"$time": value.isoformat()}
    if isinstance(value, dict):
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"job payload keys must be strings, not {type(key).__name__}")
            encoded[key] = encode_value(item)
        if len(encoded) == 1 and next(iter(encoded)) in _TAGS:
            return {"$dict": encoded}  # a plain dict that looks like a tag
        return encoded
    if isinstance(value, (list, tuple)):
        return [encode_value(item) for item in value]
    raise TypeError(f"{type(value).__name__} cannot go into a job payload (JSON values, Decimal, datetime, date, "
                    f"time)")


def decode_value(value: Any) -> Any:
    """The inverse of :func:`encode_value`."""
    if isinstance(value, list):
        return [decode_value(item) for item in value]
    if isinstance(value, dict):
        if len(value) == 1:
            tag, inner = next(iter(value.items()))
            if tag == "$decimal":
                return Decimal(inner)
            if tag == "$datetime":
                return datetime.fromisoformat(inner)
            if tag == "$date":
                return date.fromisoformat(inner)
            if tag == "$time":
                return time_of_day.fromisoformat(inner)
            if tag == "$dict":
                return {key: decode_value(item) for key, item in inner.items()}
        return {key: decode_value(item) for key, item in value.items()}
    return value


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(encode_value(payload), ensure_ascii=False, separators=(",", ":"))


def _loads(text_: str) -> Any:
    return decode_value(json.loads(text_))


# -- the public value types -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobKind:
    """What a job kind does and how it is retried (registered through ``jit_job_handlers``)."""

    #: ``handler(app, payload, job)``; returning is success, raising is a failed attempt
    handler: Callable[["App", dict, "Job"], None]
    maxAttempts: int = 10
    #: delay after failure n: min(maxBackoffSeconds, backoffSeconds * 2**(n-1)), times a jitter of 0.5..1.5
    backoffSeconds: float = 5.0
    maxBackoffSeconds: float = 3600.0
    #: a claim's lease: renewed every third of it while the handler runs (:mod:`jitcore.leases`), so a running job
    #: is taken again this long after its runner stopped renewing (its process died or froze), never for being slow
    leaseSeconds: float = 300.0
    #: an attempt still running after this many seconds is given up (None: never): recorded as a failed attempt
    #: (``JobTimedOut``, with where its handler was), its job due again after the backoff, and a runner thread stuck
    #: in it replaced. Python cannot stop the handler; should it ever return, its outcome is not recorded
    timeoutSeconds: float | None = 900.0
    #: periodic: runners keep exactly one job of this kind, due every ``every`` seconds after the last one ended
    every: float | None = None

    def __post_init__(self) -> None:
        if not callable(self.handler):
            raise TypeError("JobKind.handler must be callable as handler(app, payload, job)")
        if self.maxAttempts < 1:
            raise ValueError("JobKind.maxAttempts must be at least 1")
        if self.backoffSeconds < 0 or self.maxBackoffSeconds < 0:
            raise ValueError("JobKind backoff seconds must not be negative")
        if self.leaseSeconds <= 0:
            raise ValueError("JobKind.leaseSeconds must be positive")
        if self.every is not None and self.every <= 0:
            raise ValueError("JobKind.every must be positive (or None)")
        if self.timeoutSeconds is not None and self.timeoutSeconds <= 0:
            raise ValueError("JobKind.timeoutSeconds must be positive (or None)")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based), jitter included."""
        base = min(self.maxBackoffSeconds, self.backoffSeconds * 2 ** min(max(attempt, 1) - 1, 60))
        return base * random.uniform(0.5, 1.5)


@dataclass(frozen=True)
class Job:
    """What a handler receives besides the payload."""

    id: int
    kind: str
    payload: dict
    #: 1-based number of this attempt
    attempt: int
    createdAt: datetime
    sequenceKey: str | None
    #: the error of the previous attempt, if any
    lastError: str | None


class RetryLater(Exception):
    """A handler raises this to be run again later without being logged as a crash: ``RetryLater(message,
    delay=seconds)`` or ``RetryLater(message, at=aware_datetime)`` (neither: the kind's backoff). It counts as an
    attempt: after ``maxAttempts`` the job ends dead."""

    def __init__(self, message: str = "", *, delay: float | None = None, at: datetime | None = None) -> None:
        super().__init__(message)
        if delay is not None and at is not None:
            raise ValueError("RetryLater takes delay or at, not both")
        if at is not None and at.tzinfo is None:
            raise ValueError("RetryLater(at=...) needs a timezone-aware datetime")
        if delay is not None and delay < 0:
            raise ValueError("RetryLater(delay=...) must not be negative")
        self.message = message
        self.delay = delay
        self.at = at


@dataclass(frozen=True)
class RunSummary:
    """What :meth:`JobQueue.run_until_idle` did: attempts that ended done, failed and were rescheduled, ended dead."""

    done: int
    retried: int
    dead: int

    def __str__(self) -> str:
        return f"jobs: {self.done} done, {self.retried} retried, {self.dead} dead"


class _NoHandler(LookupError):
    """A job's kind has no handler in this process."""


class JobTimedOut(Exception):
    """The failure recorded for an attempt that ran past its kind's ``timeoutSeconds`` (never raised in the handler's
    thread: Python cannot interrupt it). Its message says where the handler was at that moment."""


def _no_handler(app: "App", payload: dict, job: Job) -> None:
    raise _NoHandler(f"no handler for kind {job.kind}")


#: how a job of an unknown kind is treated: failed attempts with the default policy
_UNKNOWN_KIND = JobKind(handler=_no_handler)


def _describe(exc: BaseException) -> str:
    """``lastError`` of a failed attempt: the exception's type and message first, then its traceback (code lines, no
    local values), cut to :data:`ERROR_LIMIT` characters."""
    if isinstance(exc, _NoHandler):
        return str(exc)[:ERROR_LIMIT]
    head = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, RetryLater):
        return head[:ERROR_LIMIT]
    # a time-out's message holds the hung thread's stack; it has no traceback of its own
    text_ = head if isinstance(exc, JobTimedOut) else (
        head + "\n\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    if len(text_) > ERROR_LIMIT:
        half = ERROR_LIMIT // 2 - 10
        text_ = text_[:half] + "\n[...]\n" + text_[-half:]
    return text_


def _stack_of(thread: threading.Thread) -> str:
    """Where ``thread`` is now (its innermost frames), or "" if it has ended."""
    frame = sys._current_frames().get(thread.ident) if thread.ident is not None else None
    if frame is None:
        return ""
    return "".join(traceback.format_stack(frame, limit=12)).rstrip()


def _first_line(error: str | None) -> str:
    return (error or "").split("\n", 1)[0]


def _due_condition(now: datetime) -> Any:
    """Claimable now: due and its time has come, or running with an expired lease (its runner stopped)."""
    j = job_table.c
    return or_(and_(j.state == "due", j.dueAt <= now), and_(j.state == "running", j.leaseUntil < now))


def _not_blocked() -> Any:
    """No earlier job with the same sequenceKey is unfinished (jobs without one are never blocked)."""
    earlier = job_table.alias("earlier")
    return ~exists().where(earlier.c.sequenceKey == job_table.c.sequenceKey, earlier.c.id < job_table.c.id,
                           earlier.c.state.in_(("due", "running")))


# The statements of the hot path (enqueue, a job claimed and finished right after its commit), built once and compiled
# once per database (jitcore.sql). Bind names differ from the columns a statement sets.
_j = job_table.c
_INSERT_VALUES = {name: bindparam(name) for name in ("kind", "payload", "state", "attempts", "dueAt", "createdAt",
                                                      "updatedAt", "dedupeKey", "sequenceKey", "runner", "leaseUntil")}
#: a new job's id
INSERT_JOB = insert(job_table).values(_INSERT_VALUES).returning(_j.id)
#: a new job's id, or none when an unfinished job has its dedupeKey
INSERT_JOB_DEDUPED = {
    "sqlite": sqlite_insert(job_table).values(_INSERT_VALUES)
    .on_conflict_do_nothing(index_elements=["dedupeKey"]).returning(_j.id),
    "postgresql": postgresql_insert(job_table).values(_INSERT_VALUES)
    .on_conflict_do_nothing(index_elements=["dedupeKey"]).returning(_j.id),
}
JOB_BY_ID = select(job_table).where(_j.id == bindparam("jobId"))
#: is any job claimable now (a runner's poll)
ANY_CLAIMABLE = select(_j.id).where(_due_condition(bindparam("now")), _not_blocked()).limit(1)
#: the next claimable jobs, due first (PostgreSQL: skipping those another runner is claiming)
CLAIMABLE = (select(_j.id, _j.kind, _j.state, _j.attempts, _j.runner, _j.dedupeKey)
             .where(_due_condition(bindparam("now")), _not_blocked()).order_by(_j.dueAt, _j.id).limit(CANDIDATES))
CLAIMABLE_LOCKED = CLAIMABLE.with_for_update(skip_locked=True, of=job_table)
#: an unfinished job of the sequence (earlier than any job about to be inserted)
SEQUENCE_BUSY = (select(_j.id).where(_j.sequenceKey == bindparam("sequenceKey"), _j.state.in_(("due", "running")))
                 .limit(1))
_SEQUENCE = select(exists().where(_j.sequenceKey == bindparam("sequenceKey"), _j.state.in_(("due", "running")))
                   .label("busy")).subquery("sequence_busy")
#: what the columns of a job inserted claimed hold instead when its sequence is busy
_UNCLAIMED = {"state": "due", "attempts": 0, "runner": None, "leaseUntil": None}


def _unless_busy(name: str) -> Any:
    """The value of column ``name`` for CLAIMED_UNLESS_BUSY: the claim's (a bind), or the unclaimed one."""
    value = bindparam(name, type_=_j[name].type)
    if name not in _UNCLAIMED:
        return value
    unclaimed = _UNCLAIMED[name]
    return case((_SEQUENCE.c.busy, null() if unclaimed is None else literal(unclaimed, _j[name].type)), else_=value)


_CLAIMED_UNLESS_BUSY_COLUMNS = ["kind", "payload", "state", "attempts", "dueAt", "createdAt", "updatedAt",
                                "sequenceKey", "runner", "leaseUntil"]
#: a new job of a sequence, claimed (the claim's values) unless an unfinished job of its sequence is there (then due,
#: unclaimed): SEQUENCE_BUSY and INSERT_JOB in one statement. Its id and state
CLAIMED_UNLESS_BUSY = (insert(job_table).from_select(
    _CLAIMED_UNLESS_BUSY_COLUMNS, select(*[_unless_busy(name) for name in _CLAIMED_UNLESS_BUSY_COLUMNS])
    .select_from(_SEQUENCE)).returning(_j.id, _j.state))
CLAIMABLE_BY_ID = (select(_j.id, _j.kind, _j.state, _j.attempts, _j.runner, _j.dedupeKey)
                   .where(_j.id == bindparam("jobId"), _due_condition(bindparam("now")), _not_blocked()))
_TAKE_WHERE = (_j.id == bindparam("jobId"), _j.state == bindparam("wasState"), _j.attempts == bindparam("wasAttempts"),
               _due_condition(bindparam("now")), _not_blocked())
_TAKE_VALUES = {"state": "running", "runner": bindparam("runnerId"), "leaseUntil": bindparam("lease"),
                "attempts": _j.attempts + 1, "updatedAt": bindparam("now")}
#: a claim: the candidate as it was read (unchanged), still due, not blocked by its sequence
TAKE = update(job_table).where(*_TAKE_WHERE).values(_TAKE_VALUES)
TAKE_LOST_LEASE = update(job_table).where(*_TAKE_WHERE).values({**_TAKE_VALUES, "lastError": bindparam("error")})
#: the attempt that claimed it extends its lease (jitcore.leases)
RENEW_LEASE = (update(job_table).where(_j.id == bindparam("jobId"), _j.runner == bindparam("runnerId"),
                                       _j.state == "running", _j.attempts == bindparam("wasAttempts"))
               .values(leaseUntil=bindparam("until"), updatedAt=bindparam("now")))
#: the fenced success of the attempt that claimed it
FINISH_DONE = (update(job_table).where(_j.id == bindparam("jobId"), _j.runner == bindparam("runnerId"),
                                       _j.state == "running", _j.attempts == bindparam("wasAttempts"))
               .values(state="done", finishedAt=bindparam("now"), updatedAt=bindparam("now"), leaseUntil=None,
                       dedupeKey=None))


def _as_connection(conn: Any) -> Connection:
    """The Connection of a SQLAlchemy Connection or Session (the session's transaction begins if need be)."""
    return conn if isinstance(conn, Connection) else conn.connection()


def _insert_ignoring(conn: Connection, table: Table, values: dict[str, Any], conflict: list[str]) -> Any:
    """Insert ``values``, or nothing when a row with the same ``conflict`` columns exists, without aborting the
    transaction (``INSERT ... ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite, a savepoint elsewhere). Returns the
    new row's primary key, or None."""
    name = conn.dialect.name
    if name in ("postgresql", "sqlite"):
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        stmt = dialect_insert(table).values(**values).on_conflict_do_nothing(index_elements=conflict)
        key = list(table.primary_key.columns)[0]
        return conn.execute(stmt.returning(key)).scalar()
    try:
        with conn.begin_nested():
            return conn.execute(insert(table).values(**values)).inserted_primary_key[0]
    except IntegrityError:
        return None


def _insert_job(conn: Connection, values: dict[str, Any]) -> int | None:
    values = {"runner": None, "leaseUntil": None, **values}
    deduped = values.get("dedupeKey") is not None
    statement = INSERT_JOB_DEDUPED.get(conn.dialect.name) if deduped else INSERT_JOB
    if statement is not None and conn.dialect.insert_returning:
        return database(conn.engine).on(conn).scalar(statement, values)
    if deduped:
        return _insert_ignoring(conn, job_table, values, ["dedupeKey"])
    return conn.execute(insert(job_table).values(**values)).inserted_primary_key[0]


def periodic_key(kind: str) -> str:
    """The dedupeKey of the one unfinished job a periodic kind keeps."""
    return f"periodic:{kind}"


def _check_key(name: str, value: str | None, limit: int) -> None:
    if value is not None and (not isinstance(value, str) or not value or len(value) > limit):
        raise ValueError(f"{name} must be a non-empty string of at most {limit} characters")


# -- the queue --------------------------------------------------------------------------------------------------------
class JobQueue:
    """The app's job queue: one per App, as ``app.jobs``. Thread-safe."""

    def __init__(self, app: "App") -> None:
        self.app = app
        self.settings = app.model.jobs
        #: the runner thread, the kind map, the engines watched; never held while waiting for the database
        self._lock = threading.RLock()
        #: creating the tables: held across a transaction (on SQLite, while waiting for the write turn), so never
        #: taken by a thread inside a transaction of its own (enqueue creates the tables in the caller's instead)
        self._schema_lock = threading.Lock()
        self._ready = False
        self._kinds: dict[str, JobKind] | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: threading.Event | None = None
        self._wakeup = threading.Event()
        self._token = uuid.uuid4().hex[:6]
        self._last_periodic = float("-inf")
        self._last_purge = float("-inf")
        #: per thread: the jobs it inserted claimed, as written (``{id: row}``), for :meth:`run_now`
        self._local = threading.local()
        self._watched: "weakref.WeakSet[Any]" = weakref.WeakSet()
        #: renews the leases of the attempts this process runs while their handlers run
        self._leases = LeaseKeeper(self._renew_lease, name=f"jit-leases-{app.appId}")

    # -- schema -----------------------------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create ``jit_job`` and ``jit_schema`` if they are missing (safely when several processes start at once)
        and refuse a database whose job schema is newer than this jitcore (:class:`ConfigError`)."""
        if self._ready:
            return
        with self._schema_lock:
            if self._ready:
                return
            with self.app.engine.begin() as conn:
                self._create_schema(conn)
            self._ready = True

    def _create_schema(self, conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            # concurrent CREATE TABLEs of a fresh database would collide in the catalog: one process at a time
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        schema_table.create(conn, checkfirst=True)
        version = conn.execute(select(schema_table.c.version)
                               .where(schema_table.c.component == SCHEMA_COMPONENT)).scalar()
        if version is not None and version > SCHEMA_VERSION:
            raise ConfigError(f"the database's job queue schema (jit_schema {SCHEMA_COMPONENT}) is version {version}, "
                              f"newer than this jitcore's ({SCHEMA_VERSION}); upgrade jitcore")
        job_table.create(conn, checkfirst=True)
        if version is None:
            _insert_ignoring(conn, schema_table, {"component": SCHEMA_COMPONENT, "version": SCHEMA_VERSION},
                             ["component"])

    def _prepare(self, conn: Connection) -> None:
        """Tables for a write inside the caller's transaction."""
        if self._ready:
            return
        if conn.dialect.name == "sqlite":
            # the caller's transaction holds SQLite's write lock (BEGIN IMMEDIATE): a second connection would wait
            # for it, so create the tables in the caller's transaction (they vanish with a rollback, hence no
            # _ready here; the next write after the commit, or any runner, checks again)
            self._create_schema(conn)
        else:
            self.ensure_schema()

    # -- kinds ------------------------------------------------------------------------------------------------------
    def kinds(self) -> dict[str, JobKind]:
        """Registered kinds: those of ``jit_job_handlers`` (a higher layer wins a name) plus ``jit.event``."""
        return dict(self._kind_map())

    def _kind_map(self) -> dict[str, JobKind]:
        if self._kinds is None:
            with self._lock:
                if self._kinds is None:
                    self._kinds = self._collect_kinds()
        return self._kinds

    def _collect_kinds(self) -> dict[str, JobKind]:
        kinds: dict[str, JobKind] = {}
        # get_hookimpls() lists the lowest layer first: a higher layer overwrites a name
        for impl in self.app.hook.jit_job_handlers.get_hookimpls():
            contributed = impl.function(**{name: self.app for name in impl.argnames if name == "app"})
            if contributed is None:
                continue
            if not isinstance(contributed, dict):
                raise ConfigError(f"plugin {impl.plugin_name}: jit_job_handlers must return a dict of kind name -> "
                                  f"JobKind or handler, not {type(contributed).__name__}")
            for name, value in contributed.items():
                if not isinstance(name, str) or not name or len(name) > 128:
                    raise ConfigError(f"plugin {impl.plugin_name}: a job kind name must be a string of 1 to 128 "
                                      f"characters, got {name!r}")
                if name.startswith("jit."):
                    raise ConfigError(f"plugin {impl.plugin_name}: job kind {name}: names starting with 'jit.' are "
                                      f"reserved for jitcore")
                if isinstance(value, JobKind):
                    kinds[name] = value
                elif callable(value):
                    kinds[name] = JobKind(handler=value)
                else:
                    raise ConfigError(f"plugin {impl.plugin_name}: job kind {name} must be a JobKind or a callable "
                                      f"handler(app, payload, job)")
        events = self.settings.events
        kinds[EVENT_KIND] = JobKind(handler=_deliver_event, maxAttempts=events.maxAttempts,
                                    backoffSeconds=events.backoffSeconds,
                                    maxBackoffSeconds=events.maxBackoffSeconds, leaseSeconds=events.leaseSeconds,
                                    timeoutSeconds=events.timeoutSeconds)
        return kinds

    def _kind(self, name: str) -> JobKind:
        return self._kind_map().get(name, _UNKNOWN_KIND)

    # -- writing jobs -----------------------------------------------------------------------------------------------
    def enqueue(self, conn: Any, kind: str, payload: dict, *, delay: float = 0, at: datetime | None = None,
                dedupeKey: str | None = None, sequenceKey: str | None = None, claim: bool = False) -> int | None:
        """Add a job inside the caller's transaction: ``conn`` is a SQLAlchemy Session or Connection on
        ``app.engine``; this executes one INSERT on it and never commits or rolls back. Returns the new job's id, or
        None when ``dedupeKey`` names a job that is not finished yet (the caller's transaction stays usable).

        ``payload`` is a dict of JSON values, ``Decimal``, ``datetime``, ``date`` and ``time`` (see
        :func:`encode_value`); the handler receives it with the same types. The job is due after ``delay`` seconds
        or at the aware datetime ``at``. Jobs sharing a ``sequenceKey`` run one after the other in id order.

        ``claim``: a job due now whose sequence has no unfinished job is inserted already claimed by this thread
        (its first attempt, with the kind's lease), so that :meth:`run_now` right after the commit runs it without a
        claiming transaction of its own. Only for a caller that does call :meth:`run_now` with the id after its
        commit: should it die first, the job is taken again when the lease expires."""
        _check_key("kind", kind, 128)
        _check_key("dedupeKey", dedupeKey, 255)
        _check_key("sequenceKey", sequenceKey, 255)
        if not isinstance(payload, dict):
            raise TypeError("a job payload is a dict")
        if at is not None and delay:
            raise ValueError("enqueue takes delay or at, not both")
        encoded = _dumps(payload)
        if kind not in self._kind_map():
            log.warning("enqueue: no handler for job kind %s in this process (a runner with one must take it)", kind)
        now = utcnow()
        due = _naive_utc(at) if at is not None else now + timedelta(seconds=max(0.0, float(delay)))
        connection = _as_connection(conn)
        self._prepare(connection)
        values = {"kind": kind, "payload": encoded, "state": "due", "attempts": 0, "dueAt": due, "createdAt": now,
                  "updatedAt": now, "dedupeKey": dedupeKey, "sequenceKey": sequenceKey}
        job_id: int | None = None
        if claim and due <= now:
            unclaimed = dict(values)
            values.update(state="running", attempts=1, runner=self._runner_id(),
                          leaseUntil=now + timedelta(seconds=self._kind(kind).leaseSeconds))
            if sequenceKey is not None:  # claimed only if no earlier job of its sequence is unfinished
                fast = database(connection.engine).on(connection)
                if dedupeKey is None and connection.dialect.insert_returning:
                    inserted = fast.first(CLAIMED_UNLESS_BUSY, values)
                    job_id = inserted.id
                    if inserted.state != "running":
                        values = unclaimed
                elif fast.first(SEQUENCE_BUSY, {"sequenceKey": sequenceKey}) is not None:
                    values = unclaimed
        if job_id is None:
            job_id = _insert_job(connection, values)
        if job_id is not None:
            self._note_inserted(connection, job_id, values)
        return job_id

    def _note_inserted(self, connection: Connection, job_id: int, values: dict[str, Any]) -> None:
        """Remember a job this thread inserted claimed (its row as written), so that :meth:`run_now` after the commit
        need not read it back; forget an earlier entry of the id otherwise (an id of a rolled-back insert may be
        given again)."""
        claims = self._local.__dict__.setdefault("claims", {})
        if values["state"] != "running":
            claims.pop(job_id, None)
            return
        engine = connection.engine
        if engine not in self._watched:
            with self._lock:
                if engine not in self._watched:
                    # a transaction that rolls back takes its claims with it: forget them (run_now then reads)
                    sa_event.listen(engine, "rollback", self._forget_claims)
                    self._watched.add(engine)
        if len(claims) >= 256:  # entries of transactions that rolled back are never run: keep the map small
            claims.clear()
        claims[job_id] = database(connection.engine).compiled(JOB_BY_ID).row_of(
            {"runner": None, "leaseUntil": None, **values, "id": job_id})

    def publish(self, conn: Any, event: str, kwargs: dict, *, sequenceKey: str | None = None,
                claim: bool = False) -> list[int]:
        """Transactional outbox: write hook event ``event`` (e.g. ``"jit_order_paid"``) in the caller's transaction
        as one ``jit.event`` job per implementation registered on ``app.pm``, all sharing one event id (uuid4 hex).

        Delivery calls each implementation with the arguments it declares, taken from ``kwargs``, plus ``app`` and,
        if it declares ``event`` (its hookspec must too), ``event={"id", "name", "attempt", "createdAt"}``. kwargs
        come back with their types (``Decimal``, aware ``datetime``, nested dicts and lists). Deliveries of one
        plugin with the same ``sequenceKey`` happen in id order. Returns the job ids (none without
        implementations); pass them to :meth:`run_now` after the commit. ``claim``: the first implementation's
        delivery is enqueued claimed (see :meth:`enqueue`); the others are claimed by :meth:`run_now` when their turn
        comes, so that a process dying in one delivery leaves the next ones due for any runner."""
        impls = self._subscribers(event)
        if not isinstance(kwargs, dict):
            raise TypeError("publish kwargs are a dict of the hook's arguments")
        reserved = {"app", "event"} & set(kwargs)
        if reserved:
            raise ValueError(f"publish kwargs must not contain {', '.join(sorted(reserved))}: delivery adds them")
        event_id = uuid.uuid4().hex
        created = datetime.now(UTC)
        ids: list[int] = []
        for impl in impls:
            payload = {"event": event, "eventId": event_id, "plugin": impl.plugin_name, "createdAt": created,
                       "kwargs": kwargs}
            # one sequence per subscribing plugin: a failing plugin delays only its own later events
            sequence = f"{sequenceKey}|{impl.plugin_name}" if sequenceKey is not None else None
            job_id = self.enqueue(conn, EVENT_KIND, payload, sequenceKey=sequence, claim=claim and not ids)
            assert job_id is not None
            ids.append(job_id)
        return ids

    def subscribed(self, event: str) -> bool:
        """Does any plugin implement hook event ``event``, so that :meth:`publish` writes a job for it?"""
        return bool(self._subscribers(event))

    def _subscribers(self, event: str) -> list[Any]:
        """The implementations :meth:`publish` writes a delivery of ``event`` for (highest layer first)."""
        caller = getattr(self.app.hook, event, None)
        if caller is None or caller.spec is None:
            raise ValueError(f"{event} is not a hook specified by jitcore or a plugin (jit_hookspecs)")
        return [impl for impl in reversed(caller.get_hookimpls()) if not (impl.hookwrapper or impl.wrapper)]

    # -- running jobs -----------------------------------------------------------------------------------------------
    def _runner_id(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{self._token}:{threading.get_native_id()}"[-128:]

    def _take(self, conn: Connection, row: Any, now: datetime) -> str | None:
        """Claim candidate ``row`` (read in this transaction) for this thread: ``"claimed"``, ``"dead"`` (its lease
        expired on its last attempt) or None (someone else was faster, or an earlier job of its sequence is not
        finished)."""
        j = job_table.c
        kind = self._kind(row.kind)
        values: dict[str, Any] = {}
        if row.state == "running":
            unchanged = [j.id == row.id, j.state == row.state, j.attempts == row.attempts, _due_condition(now)]
            lost = (f"attempt {row.attempts} did not finish: its lease expired (runner {row.runner} stopped or "
                    f"hung)")
            if row.attempts >= kind.maxAttempts:
                result = conn.execute(update(job_table).where(*unchanged).values(
                    state="dead", finishedAt=now, updatedAt=now, leaseUntil=None, dedupeKey=None, lastError=lost))
                if result.rowcount != 1:
                    return None
                log.error("job %s (%s) is dead after %d attempts: %s", row.id, row.kind, row.attempts, lost)
                self._schedule_next(conn, row.kind, kind, row.dedupeKey, now)
                return "dead"
            values["error"] = lost
        claimed = database(conn.engine).on(conn).rowcount(TAKE_LOST_LEASE if values else TAKE, {
            "jobId": row.id, "wasState": row.state, "wasAttempts": row.attempts, "now": now,
            "runnerId": self._runner_id(), "lease": now + timedelta(seconds=kind.leaseSeconds), **values})
        return "claimed" if claimed == 1 else None

    def _claim_next(self) -> tuple[str | None, Any]:
        """Claim the next due job: ``("claimed", row)``, ``("dead", None)`` or ``(None, None)`` when none is due."""
        now = utcnow()
        db = database(self.app.engine)
        if db.name == "sqlite":
            # an idle poll is a read: it must not take SQLite's write lock (engine.begin() is BEGIN IMMEDIATE)
            with db.read() as reader:
                if reader.first(ANY_CLAIMABLE, {"now": now}) is None:
                    return None, None
        claimed = None
        with bookkeeping(self.app.engine) as conn:
            fast = db.on(conn)
            for row in fast.all(CLAIMABLE_LOCKED if db.name == "postgresql" else CLAIMABLE, {"now": now}):
                outcome = self._take(conn, row, now)
                if outcome == "claimed":
                    claimed = fast.first(JOB_BY_ID, {"jobId": row.id})
                    break
                if outcome == "dead":
                    return outcome, None
        if claimed is None:
            return None, None
        wait_durable(self.app.engine)  # what the job acts on is on disk before it acts outside the database
        return "claimed", claimed

    def _forget_claims(self, _connection: Any) -> None:
        self._local.__dict__.pop("claims", None)

    def _claimed(self, job_id: int) -> Any:
        """The job if its first attempt is this thread's (claimed when it was enqueued, committed), else None."""
        remembered = self._local.__dict__.get("claims", {}).pop(job_id, None)
        if remembered is not None:  # committed as written: no one else takes it before its lease ends
            return remembered
        with database(self.app.engine).read() as conn:
            row = conn.first(JOB_BY_ID, {"jobId": job_id})
        if row is not None and row.state == "running" and row.attempts == 1 and row.runner == self._runner_id():
            return row
        return None

    def _claim_id(self, job_id: int) -> Any:
        now = utcnow()
        claimed = None
        with bookkeeping(self.app.engine) as conn:
            fast = database(conn.engine).on(conn)
            row = fast.first(CLAIMABLE_BY_ID, {"jobId": job_id, "now": now})
            if row is not None and self._take(conn, row, now) == "claimed":
                claimed = fast.first(JOB_BY_ID, {"jobId": job_id})
        if claimed is not None:
            wait_durable(self.app.engine)  # as in _claim_next
        return claimed

    def _execute(self, row: Any) -> str:
        """Run claimed job ``row`` and record its outcome: ``"done"``, ``"retried"`` or ``"dead"``."""
        kind = self._kind(row.kind)
        # renewed while the handler runs, for timeoutSeconds at most (then _timed_out)
        held = self._leases.hold(row, kind.leaseSeconds, timeout=kind.timeoutSeconds, on_timeout=self._timed_out)
        try:
            try:
                payload = _loads(row.payload)
                job = Job(id=row.id, kind=row.kind, payload=payload, attempt=row.attempts,
                          createdAt=_aware(row.createdAt), sequenceKey=row.sequenceKey, lastError=row.lastError)
                kind.handler(self.app, payload, job)
            finally:
                self._leases.release(held)
        except Exception as exc:
            return self._failed(row, kind, exc)
        self._succeeded(row, kind)
        return "done"

    def _renew_lease(self, row: Any, seconds: float) -> bool:
        """Extend the lease of the attempt that claimed ``row`` to ``seconds`` from now (bookkeeping); False if that
        attempt no longer holds it."""
        now = utcnow()
        return bookkeeping_change(self.app.engine, RENEW_LEASE, {
            "jobId": row.id, "runnerId": row.runner, "wasAttempts": row.attempts, "now": now,
            "until": now + timedelta(seconds=seconds)}) == 1

    def _fence(self, row: Any) -> list[Any]:
        """Only the attempt that ``row`` claimed may record its outcome."""
        j = job_table.c
        return [j.id == row.id, j.runner == row.runner, j.state == "running", j.attempts == row.attempts]

    def _succeeded(self, row: Any, kind: JobKind) -> None:
        now = utcnow()
        fenced = {"jobId": row.id, "runnerId": row.runner, "wasAttempts": row.attempts, "now": now}
        if self._periodic(row.kind, kind, row.dedupeKey):
            with bookkeeping(self.app.engine) as conn:  # done, and its successor, in one transaction
                finished = database(conn.engine).on(conn).rowcount(FINISH_DONE, fenced)
                if finished == 1:
                    self._schedule_next(conn, row.kind, kind, row.dedupeKey, now)
        else:
            finished = bookkeeping_change(self.app.engine, FINISH_DONE, fenced)
        if finished == 1:
            log.debug("job %s (%s) done on attempt %d", row.id, row.kind, row.attempts)
        else:
            log.warning("job %s (%s): attempt %d finished after it was given up (its lease was taken over, or it ran "
                        "past its timeoutSeconds); its outcome is not recorded", row.id, row.kind, row.attempts)

    def _failed(self, row: Any, kind: JobKind, exc: Exception) -> str:
        now = utcnow()
        error = _describe(exc)
        retry_later = isinstance(exc, RetryLater)
        values: dict[str, Any] = {"updatedAt": now, "leaseUntil": None, "lastError": error}
        if row.attempts >= kind.maxAttempts:
            outcome = "dead"
            values.update(state="dead", finishedAt=now, dedupeKey=None)
        else:
            outcome = "retried"
            if retry_later and exc.at is not None:
                due = _naive_utc(exc.at)
            elif retry_later and exc.delay is not None:
                due = now + timedelta(seconds=exc.delay)
            else:
                due = now + timedelta(seconds=kind.backoff(row.attempts))
            values.update(state="due", dueAt=due)
        with bookkeeping(self.app.engine) as conn:
            result = conn.execute(update(job_table).where(*self._fence(row)).values(**values))
            if result.rowcount != 1:
                log.warning("job %s (%s): attempt %d failed after it was given up (its lease was taken over, or it "
                            "ran past its timeoutSeconds); its outcome is not recorded: %s", row.id, row.kind,
                            row.attempts, _first_line(error))
                return outcome
            if outcome == "dead":
                self._schedule_next(conn, row.kind, kind, row.dedupeKey, now)
        crash = None if retry_later or isinstance(exc, (_NoHandler, JobTimedOut)) else exc
        if outcome == "dead":
            log.error("job %s (%s) is dead after %d attempts: %s", row.id, row.kind, row.attempts,
                      _first_line(error), exc_info=crash)
        elif crash is None:
            log.info("job %s (%s) attempt %d: %s; trying again at %s", row.id, row.kind, row.attempts,
                     _first_line(error), values["dueAt"].isoformat(timespec="seconds"))
        else:
            log.warning("job %s (%s) attempt %d/%d failed; trying again at %s", row.id, row.kind, row.attempts,
                        kind.maxAttempts, values["dueAt"].isoformat(timespec="seconds"), exc_info=crash)
        return outcome

    def _timed_out(self, held: Held) -> None:
        """The lease keeper's call for an attempt that ran past its kind's ``timeoutSeconds`` (see
        :attr:`JobKind.timeoutSeconds`): a runner thread stuck in it is replaced first (so this process goes on with
        its other jobs even if the database cannot be written now), then the attempt is recorded failed (fenced: a
        handler that returned meanwhile keeps its outcome)."""
        row, kind = held.row, self._kind(held.row.kind)
        replaced = self._replace_runner(held.thread)
        where = _stack_of(held.thread)
        log.error("job %s (%s): attempt %d still runs after %g s (timeoutSeconds) in thread %s; it is given up%s%s",
                  row.id, row.kind, row.attempts, kind.timeoutSeconds, held.thread.name,
                  " and a new runner thread takes over" if replaced else "", f"\n{where}" if where else "")
        message = (f"still running after {kind.timeoutSeconds:g} s (timeoutSeconds): given up; should its handler "
                   f"ever return, its outcome is not recorded")
        self._failed(row, kind, JobTimedOut(message + (f"\n\nwhere it was:\n{where}" if where else "")))

    def _replace_runner(self, stuck: threading.Thread) -> bool:
        """If ``stuck`` is this process's runner thread, let it end once its job returns and start another now.
        True if it was."""
        with self._lock:
            if stuck is not self._thread or self._stop_event is None:
                return False
            self._stop_event.set()
            self._thread = self._stop_event = None
        self.start()
        return True

    def _release(self, row: Any) -> None:
        """Give back a claimed job this thread will not start (the attempt is not counted)."""
        j = job_table.c
        with bookkeeping(self.app.engine) as conn:
            conn.execute(update(job_table).where(*self._fence(row)).values(
                state="due", attempts=j.attempts - 1, runner=None, leaseUntil=None, updatedAt=utcnow()))

    @staticmethod
    def _periodic(name: str, kind: JobKind, dedupeKey: str | None) -> bool:
        """Is this job the one unfinished job of a periodic kind (which schedules its successor when it ends)?"""
        return bool(kind.every) and dedupeKey == periodic_key(name)

    def _schedule_next(self, conn: Connection, name: str, kind: JobKind, dedupeKey: str | None,
                       now: datetime) -> None:
        """After a periodic kind's job ended: its successor, due ``every`` seconds from now."""
        if self._periodic(name, kind, dedupeKey):
            _insert_job(conn, {"kind": name, "payload": "{}", "state": "due", "attempts": 0,
                               "dueAt": now + timedelta(seconds=kind.every), "createdAt": now, "updatedAt": now,
                               "dedupeKey": periodic_key(name), "sequenceKey": None})

    def ensure_periodic(self) -> None:
        """Make sure every periodic kind (``every=N``) has its one unfinished job (a missing one is due now)."""
        periodic = [name for name, kind in self._kind_map().items() if kind.every]
        if not periodic:
            return
        self.ensure_schema()
        now = utcnow()
        with self.app.engine.begin() as conn:
            for name in periodic:
                _insert_job(conn, {"kind": name, "payload": "{}", "state": "due", "attempts": 0, "dueAt": now,
                                   "createdAt": now, "updatedAt": now, "dedupeKey": periodic_key(name),
                                   "sequenceKey": None})

    def purge(self, olderThan: timedelta | None = None) -> int:
        """Delete done jobs that finished longer ago than ``olderThan`` (default: ``jobs.keepDoneDays``), in
        batches. Dead jobs stay. Returns how many were deleted."""
        self.ensure_schema()
        j = job_table.c
        cutoff = utcnow() - (olderThan if olderThan is not None else timedelta(days=self.settings.keepDoneDays))
        deleted = 0
        while True:
            with bookkeeping(self.app.engine) as conn:
                ids = conn.execute(select(j.id).where(j.state == "done", j.finishedAt < cutoff).limit(500)).scalars()
                ids = list(ids)
                if ids:
                    conn.execute(delete(job_table).where(j.id.in_(ids)))
            deleted += len(ids)
            if len(ids) < 500:
                return deleted

    def _housekeeping(self) -> None:
        """Now and then: periodic jobs ensured, old done jobs purged."""
        clock = time.monotonic()
        if clock - self._last_periodic >= PERIODIC_CHECK_SECONDS:
            self._last_periodic = clock
            self.ensure_periodic()
        if clock - self._last_purge >= PURGE_SECONDS:
            self._last_purge = clock
            purged = self.purge()
            if purged:
                log.info("purged %d done jobs older than %s days", purged, self.settings.keepDoneDays)

    def run_now(self, ids: Iterable[int | None]) -> None:
        """Right after the caller's commit: claim and run these jobs in the calling thread if they are still due
        and not taken (their first attempt without waiting for a runner); a job this thread claimed when it enqueued
        it (``claim=True``) runs without claiming again. Never raises: a failure is recorded and retried later, and a
        database error leaves the jobs to the runners."""
        for job_id in ids:
            if job_id is None:
                continue
            try:
                self.ensure_schema()
                row = self._claimed(job_id) or self._claim_id(job_id)
                if row is not None:
                    self._execute(row)
            except Exception:
                log.exception("job %s could not run right after its commit; a runner will take it", job_id)

    def run_until_idle(self, *, limit: int | None = None, timeout: float | None = None) -> RunSummary:
        """Run due jobs in this thread, one after another, until none is due now (jobs due later are not waited
        for), ``limit`` attempts were made or ``timeout`` seconds passed. Periodic kinds get their job first."""
        self.ensure_schema()
        self.ensure_periodic()
        counts = {"done": 0, "retried": 0, "dead": 0}
        deadline = None if timeout is None else time.monotonic() + timeout
        runs = 0
        while (limit is None or runs < limit) and (deadline is None or time.monotonic() < deadline):
            outcome, row = self._claim_next()
            if outcome is None:
                break
            runs += 1
            counts["dead" if outcome == "dead" else self._execute(row)] += 1
        if time.monotonic() - self._last_purge >= PURGE_SECONDS:
            self._last_purge = time.monotonic()
            self.purge()
        return RunSummary(**counts)

    # -- the runner thread ------------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Make this process's runner thread (if started) look for due jobs now."""
        self._wakeup.set()

    @property
    def running(self) -> bool:
        """Whether this process's runner thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start this process's background runner thread (idempotent). It polls every ``jobs.pollSeconds`` and
        runs one job at a time."""
        with self._lock:
            if self.running:
                return
            stop = threading.Event()
            thread = threading.Thread(target=self._loop, args=(stop,), name=f"jit-jobs-{self.app.appId}",
                                      daemon=True)
            self._thread, self._stop_event = thread, stop
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the runner thread: a job it is running may finish within ``timeout`` seconds (otherwise its lease
        expires and another runner takes it); a job it claimed but has not started is given back."""
        with self._lock:
            thread, stop = self._thread, self._stop_event
            self._thread = self._stop_event = None
        if thread is None or stop is None:
            return
        stop.set()
        self._wakeup.set()
        if thread is threading.current_thread():
            return  # stopped from inside a job (e.g. a handler closed the app): the loop ends after it
        thread.join(timeout)
        if thread.is_alive():
            log.warning("the job runner did not stop within %.0f s; the lease of its job will expire", timeout)

    def close(self) -> None:
        """:meth:`stop`, then stop renewing leases: an attempt still running in another thread of this process
        keeps its job only until its lease passes (the app is closing)."""
        self.stop()
        self._leases.close()

    def _loop(self, stop: threading.Event) -> None:
        failures = 0
        log.info("job runner %s started", self._runner_id())
        while not stop.is_set():
            try:
                self.ensure_schema()
                self._housekeeping()
                self._wakeup.clear()
                outcome, row = self._claim_next()
                failures = 0
            except ConfigError as exc:
                log.error("the job runner stops: %s", exc)
                return
            except Exception:
                failures += 1
                log.exception("the job runner cannot use the database (failure %d); trying again", failures)
                stop.wait(min(30.0, self.settings.pollSeconds * 2 ** min(failures, 5)))
                continue
            if outcome == "claimed":
                if stop.is_set():
                    self._release(row)
                    break
                try:
                    self._execute(row)
                except Exception:
                    log.exception("job %s: recording its outcome failed; its lease will expire", row.id)
                continue
            if outcome == "dead":
                continue
            self._wakeup.wait(self.settings.pollSeconds)
        log.info("job runner %s stopped", self._runner_id())

    # -- operating --------------------------------------------------------------------------------------------------
    def retry(self, job_id: int) -> bool:
        """Requeue a dead job, or a due job that failed, to run now with its attempts reset. False if there is no
        such job in one of those states."""
        self.ensure_schema()
        j = job_table.c
        now = utcnow()
        with self.app.engine.begin() as conn:
            result = conn.execute(update(job_table).where(
                j.id == job_id, or_(j.state == "dead", and_(j.state == "due", j.lastError.is_not(None)))).values(
                state="due", attempts=0, dueAt=now, runner=None, leaseUntil=None, finishedAt=None, updatedAt=now))
        self.wake()
        return result.rowcount == 1

    def get(self, job_id: int) -> dict[str, Any] | None:
        """One job as :meth:`list` shows it, or None."""
        self.ensure_schema()
        with self.app.engine.connect() as conn:
            row = conn.execute(select(job_table).where(job_table.c.id == job_id)).first()
        return _row_dict(row) if row is not None else None

    def list(self, states: Iterable[str] | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs (id descending) in ``states`` (default: every state), as dicts of their
        columns (times aware, in UTC; ``payload`` decoded)."""
        self.ensure_schema()
        stmt = select(job_table).order_by(job_table.c.id.desc()).limit(limit)
        if states is not None:
            wanted = sorted(set(states))
            unknown = [state for state in wanted if state not in STATES]
            if unknown:
                raise ValueError(f"unknown job state(s) {', '.join(unknown)} (states: {', '.join(STATES)})")
            stmt = stmt.where(job_table.c.state.in_(wanted))
        with self.app.engine.connect() as conn:
            return [_row_dict(row) for row in conn.execute(stmt)]


def _row_dict(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    for key in ("dueAt", "createdAt", "updatedAt", "finishedAt", "leaseUntil"):
        data[key] = _aware(data[key])
    try:
        data["payload"] = _loads(data["payload"])
    except Exception:
        pass  # not readable: shown as stored
    return data


# -- event delivery -------------------------------------------------------------------------------------------------
def _deliver_event(app: "App", payload: dict, job: Job) -> None:
    """The ``jit.event`` handler: call the one implementation this job is for."""
    name, plugin = payload["event"], payload["plugin"]
    caller = getattr(app.hook, name, None)
    impl = None
    if caller is not None:
        impl = next((i for i in caller.get_hookimpls()
                     if i.plugin_name == plugin and not (i.hookwrapper or i.wrapper)), None)
    if impl is None:
        raise LookupError(f"plugin {plugin} has no implementation of {name} in this process")
    arguments = {**payload["kwargs"], "app": app,
                 "event": {"id": payload["eventId"], "name": name, "attempt": job.attempt,
                           "createdAt": payload["createdAt"]}}
    missing = [arg for arg in impl.argnames if arg not in arguments]
    if missing:
        raise TypeError(f"{name} was published without {', '.join(missing)}, which {plugin}'s implementation "
                        f"declares")
    impl.function(**{arg: arguments[arg] for arg in impl.argnames})
