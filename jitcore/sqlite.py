"""How jitcore's SQLite engines begin transactions, and how their writers take turns.

SQLite lets one writer at a time in. A writer that finds the database locked waits in SQLite's busy handler, which
*sleeps* (1 ms, 2 ms, 5 ms, ... up to 100 ms) between tries: with several threads or ``jit serve`` worker processes
writing at once, the lock is often free while every waiter still sleeps, and a request may lose the race again and
again (hundreds of milliseconds at the 99th percentile). So every transaction a caller begins (``engine.begin()``,
``conn.begin()``, an ORM session: ``BEGIN IMMEDIATE``) first takes :class:`WriteTurn`, an exclusive ``flock`` on a
file beside the database (``<database>-jitlock``, mode 0600): the kernel queues the writers of every process and
wakes the next one as soon as a transaction ends. SQLite's own lock and busy timeout stay in force behind it (for
programs that do not take turns: the ``sqlite3`` shell, another library).

Reads never take a turn: a transaction SQLAlchemy begins by itself on the first statement of ``engine.connect()``
is a plain ``BEGIN`` (a WAL snapshot), and jitcore.sql's reads run in autocommit.

Durable commits without holding the turn through the disk write (:class:`WalSync`): the connections of a durable
engine run with ``synchronous=NORMAL``, so that a commit writes its pages to the WAL and ends, and the turn goes to
the next writer at once; then, before ``commit()`` returns to its caller, the WAL file is ``fdatasync``-ed. A caller
that got its commit back has it on disk, as with ``synchronous=FULL``; but writers no longer queue behind each other's
disk writes, and a sync may cover several commits. What changes: another connection may see a commit a fraction of
a millisecond before it is on disk. A reader that acts outside the database on what it read (a job runner calling a
provider) first makes its own claim durable (:func:`wait_durable`): the WAL is written in order, so that covers every
commit it could have seen.

This relies on SQLAlchemy's ``Connection`` steps ``_autobegin``, ``_begin_impl``, ``_commit_impl``,
``_rollback_impl`` and ``close``; with a SQLAlchemy that lacks them every transaction is ``BEGIN IMMEDIATE``,
writers wait in the busy handler and commits run with ``synchronous=FULL``: slower, still correct.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from typing import Any

log = logging.getLogger("jitcore")

__all__ = ["WriteTurn", "write_turns", "WalSync", "wait_durable", "connection_class", "begin", "driver_transaction"]


class WriteTurn:
    """Writers of one SQLite database file take turns: an exclusive ``flock`` on ``path``, one open file per thread
    (so threads of one process exclude each other too). A thread that holds its turn and begins another write
    transaction (on a second connection) does not wait for itself: that transaction meets SQLite's lock and busy
    timeout, as it would without turns."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    def take(self) -> "_Turn | None":
        """Wait for this thread's turn; the turn to give back, or None when the lock file cannot be opened (then
        SQLite's busy handler alone orders the writers)."""
        local = self._local
        held = getattr(local, "turn", None)
        if held is not None and held.depth:
            held.depth += 1
            return held
        if held is None:
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                log.debug("no write turns for %s: %s", self.path, exc)
                return None
            held = local.turn = _Turn(descriptor)
        try:
            fcntl.flock(held.descriptor, fcntl.LOCK_EX)
        except OSError as exc:  # a file system without flock: SQLite's busy handler alone orders the writers
            log.debug("no write turn for %s: %s", self.path, exc)
            return None
        held.depth = 1
        return held


class WalSync:
    """Puts what a durable engine's connections committed on disk: ``fdatasync`` of the database's WAL file, called
    by the committing thread after it gave its turn back (see the module docstring). The connections run with
    ``synchronous=NORMAL``: SQLite then syncs the WAL itself only before a checkpoint copies it into the database
    (and the database after), so a WAL that is gone, or started over, was on disk before; a sync finding no WAL
    syncs the database file instead. The first sync of a new WAL file also syncs its directory (SQLite's own
    ``FULL`` does that at its first sync of a new file). A failed sync raises SQLAlchemy's ``OperationalError`` (its
    ``orig`` the ``OSError``), as a failed commit does: the commit is written and visible, but it may not survive a
    power loss, and the caller must not report it done (a provider is then answered with an error and notifies
    again). The files are the ones SQLite itself opened (:meth:`locate`, at each new connection: SQLite resolves
    symbolic links and the working directory of the time)."""

    __slots__ = ("database", "wal", "_synced_file", "_lock")

    def __init__(self, database_file: str) -> None:
        self.database = os.path.realpath(database_file)
        self.wal = f"{self.database}-wal"
        self._synced_file: tuple[int, int] | None = None  # the (device, inode) whose directory entry is on disk
        self._lock = threading.Lock()

    def locate(self, dbapi_connection: sqlite3.Connection) -> None:
        """Take the database file's name from a connection (``PRAGMA database_list``); its WAL is that name with
        ``-wal``, SQLite's rule."""
        for _seq, name, path in dbapi_connection.execute("PRAGMA database_list").fetchall():
            if name == "main" and path:
                self.database, self.wal = path, f"{path}-wal"

    def __call__(self) -> None:
        try:
            try:
                descriptor, wal = os.open(self.wal, os.O_RDONLY | os.O_CLOEXEC), True
            except FileNotFoundError:  # checkpointed into the database file and removed
                descriptor, wal = os.open(self.database, os.O_RDONLY | os.O_CLOEXEC), False
            try:
                getattr(os, "fdatasync", os.fsync)(descriptor)  # (macOS has no fdatasync)
                found = os.fstat(descriptor)
            finally:
                os.close(descriptor)
            if wal and (found.st_dev, found.st_ino) != self._synced_file:
                self._sync_directory((found.st_dev, found.st_ino))
        except OSError as exc:
            from sqlalchemy.exc import OperationalError

            failure = OSError(exc.errno, f"a commit to {self.database} is written but could not be put on disk: "
                                         f"{exc.strerror}")
            raise OperationalError("COMMIT", None, failure) from exc

    def _sync_directory(self, file: tuple[int, int]) -> None:
        with self._lock:
            if file == self._synced_file:
                return
            directory = os.open(os.path.dirname(os.path.abspath(self.database)), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            self._synced_file = file


def wait_durable(engine: Any) -> None:
    """Return once every commit this process can see in ``engine``'s database is on disk: a WAL sync for a durable
    jitcore SQLite engine (its commits are visible to other connections a moment before they are on disk), nothing
    for any other engine (PostgreSQL shows a durable commit to other sessions only once it is flushed). For a reader
    about to act outside the database on what it read: a job runner before it runs a job it claimed."""
    sync = getattr(engine, "jit_wal_sync", None)
    if sync is not None:
        sync()


_TURNS: dict[str, WriteTurn] = {}
_TURNS_LOCK = threading.Lock()


def write_turns(path: str) -> WriteTurn:
    """The :class:`WriteTurn` of the lock file ``path``: one per file in this process, shared by every engine of the
    database, so that a thread holding its turn through one engine does not wait for itself through another."""
    key = os.path.realpath(path)
    with _TURNS_LOCK:
        found = _TURNS.get(key)
        if found is None:
            found = _TURNS[key] = WriteTurn(key)
        return found


class _Turn:
    """One thread's open lock file and how many of its transactions hold the turn."""

    __slots__ = ("descriptor", "depth", "__weakref__")

    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor
        self.depth = 0

    def give_back(self) -> None:
        """One transaction of the thread ended; the last one ends the turn."""
        self.depth -= 1
        if self.depth == 0:
            try:
                fcntl.flock(self.descriptor, fcntl.LOCK_UN)
            except OSError:  # pragma: no cover - closing the file (a thread's end) ends the lock too
                log.warning("could not give back the write turn of %s", self.descriptor, exc_info=True)

    def __del__(self) -> None:  # the thread ended: its lock file closes (which also ends a turn left held)
        try:
            os.close(self.descriptor)
        except OSError:
            pass


def begin(conn: Any) -> None:
    """The ``begin`` event of jitcore's SQLite engines: ``BEGIN`` for a transaction SQLAlchemy begins by itself (a
    read), ``BEGIN IMMEDIATE`` for one the caller begins, and for any connection without the marker of
    :func:`connection_class` (another SQLAlchemy, an ``engine.execution_options()`` copy): safe. Sent on the driver's
    connection (through SQLAlchemy a statement costs several times as much); a driver error (the busy timeout ran
    out) comes out as SQLAlchemy's exception for it."""
    from sqlalchemy.exc import DBAPIError

    sql = "BEGIN" if getattr(conn, "_jit_implicit_begin", False) else "BEGIN IMMEDIATE"
    try:
        conn.connection.dbapi_connection.execute(sql)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, (), exc, sqlite3.Error) from exc


class driver_transaction:
    """A write transaction on a driver connection of ``engine``'s pool, as ``engine.begin()`` makes it (the writers'
    turn, ``BEGIN IMMEDIATE``; ``COMMIT``, or ``ROLLBACK`` when the block raises; the turn given back; a durable
    engine's :class:`WalSync`) without
    SQLAlchemy's ``Connection``: for a single bookkeeping statement, where that machinery cost more than the
    transaction. ``with driver_transaction(engine, dbapi):``; a driver error comes out as SQLAlchemy's exception for
    it. (A class: cheaper than a generator on a path run for every job.)"""

    __slots__ = ("engine", "dbapi", "turn")

    def __init__(self, engine: Any, dbapi: sqlite3.Connection) -> None:
        self.engine = engine
        self.dbapi = dbapi
        self.turn: "_Turn | None" = None

    def __enter__(self) -> sqlite3.Connection:
        turns = getattr(self.engine, "jit_write_turns", None)
        self.turn = turns.take() if turns is not None else None
        try:
            self._send("BEGIN IMMEDIATE")
        except BaseException:
            self._give_back()
            raise
        return self.dbapi

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            if kind is None:
                self._send("COMMIT")
            else:
                try:
                    self._send("ROLLBACK")
                except Exception:  # the block's own error is the one to see; the pool rolls back on return anyway
                    log.warning("could not roll back a bookkeeping transaction", exc_info=True)
                return
        finally:
            self._give_back()
        wait_durable(self.engine)  # a durable engine's commit: on disk before the block is left

    def _send(self, sql: str) -> None:
        from sqlalchemy.exc import DBAPIError

        try:
            self.dbapi.execute(sql)
        except sqlite3.Error as exc:
            if sql == "ROLLBACK" and not self.dbapi.in_transaction:
                return  # SQLite rolled back already (an error that ends the transaction)
            raise DBAPIError.instance(sql, (), exc, sqlite3.Error) from exc

    def _give_back(self) -> None:
        turn, self.turn = self.turn, None
        if turn is not None:
            turn.give_back()


_CLASS: list[Any] = []
_STEPS = ("_autobegin", "_begin_impl", "_commit_impl", "_rollback_impl", "close")


def connection_class() -> Any:
    """The SQLAlchemy ``Connection`` class of jitcore's SQLite engines: it marks the transactions SQLAlchemy begins
    by itself (autobegin: a read) apart from those the caller begins (``BEGIN IMMEDIATE``, after taking the engine's
    :class:`WriteTurn`, given back when the transaction or the connection ends), and after a commit that wrote runs
    the engine's :class:`WalSync` (``engine.jit_wal_sync``, if it has one). None if this SQLAlchemy lacks one of the
    steps used (see the module docstring)."""
    if not _CLASS:
        from sqlalchemy.engine import Connection

        found = None
        if all(callable(getattr(Connection, step, None)) for step in _STEPS):
            class SQLiteConnection(Connection):
                """SQLAlchemy's ``Connection`` with jitcore's SQLite transactions (see :func:`connection_class`)."""

                _jit_implicit_begin = False
                _jit_turn: "_Turn | None" = None
                #: the transaction is one the caller began (a write), or the total_changes of the connection when
                #: SQLAlchemy began one by itself (it wrote if that moved)
                _jit_writes = False
                _jit_changes_at_begin: int | None = None

                def _autobegin(self) -> None:
                    self._jit_implicit_begin = True
                    try:
                        super()._autobegin()
                    finally:
                        self._jit_implicit_begin = False

                def _begin_impl(self, transaction: Any) -> None:
                    implicit = self._jit_implicit_begin
                    self._jit_writes = not implicit
                    self._jit_changes_at_begin = self.connection.dbapi_connection.total_changes if implicit else None
                    turns = None if implicit else getattr(self.engine, "jit_write_turns", None)
                    if turns is not None and self._jit_turn is None:
                        self._jit_turn = turns.take()
                    try:
                        super()._begin_impl(transaction)
                    except BaseException:
                        self._jit_give_back()
                        raise

                def _commit_impl(self) -> None:
                    sync = getattr(self.engine, "jit_wal_sync", None)
                    wrote, changes_at_begin = self._jit_writes, self._jit_changes_at_begin
                    self._jit_writes, self._jit_changes_at_begin = False, None
                    try:
                        if not wrote and sync is not None and changes_at_begin is not None:
                            wrote = self.connection.dbapi_connection.total_changes != changes_at_begin
                        super()._commit_impl()
                    finally:
                        self._jit_give_back()
                    if wrote and sync is not None:  # on disk before commit() returns, the turn already passed on
                        sync()

                def _rollback_impl(self) -> None:
                    self._jit_writes, self._jit_changes_at_begin = False, None
                    try:
                        super()._rollback_impl()
                    finally:
                        self._jit_give_back()

                def close(self) -> None:
                    try:
                        super().close()
                    finally:
                        self._jit_give_back()

                def _jit_give_back(self) -> None:
                    turn, self._jit_turn = self._jit_turn, None
                    if turn is not None:
                        turn.give_back()

            found = SQLiteConnection
        _CLASS.append(found)
    return _CLASS[0]
