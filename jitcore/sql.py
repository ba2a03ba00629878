"""Core statements compiled once, run on the driver's cursor: the hot paths of the job queue and the payment ledger.

Executing a Core construct through SQLAlchemy costs, on every call, building it, computing its cache key, an execution
context and a result object; ``engine.connect()`` adds a Connection, an autobegin and a reset. For the few statements a
payment runs that is most of its cost. Here a statement is built once (a module constant with ``bindparam``\\ s),
compiled once per dialect into its SQL text and the bind and result conversions SQLAlchemy would apply to its columns
(values are stored and read back exactly as through SQLAlchemy: SQLite's DATETIME text, booleans), and run on the
DBAPI connection:

- :meth:`Database.read`: a pooled connection in autocommit, for reads (each statement sees the latest commit; no
  BEGIN or ROLLBACK round trips);
- :meth:`Database.snapshot`: a pooled connection in one read-only transaction, for a view made of several reads
  that must agree (an order, its payments and its refunds);
- :meth:`Database.on`: the connection of a SQLAlchemy Connection or Session whose transaction is open
  (``engine.begin()``), so that compiled statements and ordinary Core statements share one transaction;
- :func:`bookkeeping` and :func:`bookkeeping_change`: a transaction (a single statement) whose commit need not wait
  for the disk (SQLite ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit = off``), for writes that are redone if
  a power failure takes them (job claims and outcomes). Both databases write their log in order, so such a commit can
  only be lost together with every commit after it, never one that a durable commit after it depends on. They run
  on the engine's bookkeeping sibling (:func:`jitcore.app.create_engine`), whose connections are set up so once.

Rows come back as named tuples (attribute access like SQLAlchemy's ``Row``); a driver error is raised as SQLAlchemy's
exception for it (``sqlalchemy.exc.IntegrityError``, ...), and a connection it reports lost is invalidated.
"""

from __future__ import annotations

import collections
import contextlib
import operator
import threading
import weakref
from datetime import datetime
from typing import Any, Iterator, Mapping

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from jitcore import sqlite

__all__ = ["Statement", "Database", "Conn", "database", "bookkeeping", "bookkeeping_change"]

_ROW_TYPES: dict[tuple[str, ...], type] = {}
_ROW_TYPES_LOCK = threading.Lock()


def _bind_processor(bind_type: Any, dialect: Any) -> Any:
    """SQLAlchemy's bind conversion of ``bind_type`` on ``dialect``; for SQLite's DATETIME in its default storage
    format the same text made by ``datetime.isoformat`` for a naive datetime (a few times faster than SQLAlchemy's
    formatting with a dict, and every timestamp of a payment goes through it), SQLAlchemy's own for anything else."""
    impl = bind_type.dialect_impl(dialect)
    process = impl.bind_processor(dialect)
    if process is None or dialect.name != "sqlite":
        return process
    from sqlalchemy.dialects.sqlite import DATETIME

    if not isinstance(impl, DATETIME) or impl._storage_format != DATETIME._storage_format:
        return process

    def naive_datetime_as_text(value: Any, _datetime: type = datetime, _general: Any = process) -> Any:
        if value.__class__ is _datetime and value.tzinfo is None:
            return value.isoformat(" ", "microseconds")  # YYYY-MM-DD HH:MM:SS.ffffff, as SQLAlchemy writes it
        return _general(value)

    return naive_datetime_as_text


def _row_type(names: tuple[str, ...]) -> type:
    """One named-tuple class per column list."""
    found = _ROW_TYPES.get(names)
    if found is None:
        with _ROW_TYPES_LOCK:
            found = _ROW_TYPES.get(names)
            if found is None:
                found = _ROW_TYPES[names] = collections.namedtuple("Row", names)  # type: ignore[misc]
    return found


class Statement:
    """A Core statement compiled for one dialect: its SQL, how to bind a dict of parameters (defaults of its literal
    values, bind conversions, positional or named) and how to turn a result row into a named tuple."""

    __slots__ = ("sql", "_positional", "_names", "_defaults", "_binders", "_plain", "_row", "_results")

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        if compiled.escaped_bind_names:  # pragma: no cover - the statements here use plain names
            raise ValueError("compiled statements need bind names that the driver takes as they are")
        required = [name for name, bind in compiled.binds.items() if bind.required]
        # the SQL as it is run: an IN (<constants>) becomes one bound parameter per constant (the parameters the
        # caller gives get a stand-in value for this only)
        state = compiled.construct_expanded_state({name: None for name in required})
        self.sql: str = state.statement
        self._positional = bool(compiled.positional)
        self._names: tuple[str, ...] = tuple(state.positiontup) if self._positional else tuple(state.parameters)
        processors = {}
        for name in self._names:
            bind = compiled.binds.get(name)  # not there: a constant of an expanded IN
            process = (_bind_processor(bind.type, dialect) if bind is not None else state.processors.get(name))
            if process is not None:
                processors[name] = process
        self._defaults = {name: (processors[name](value) if name in processors else value)
                          for name, value in state.parameters.items() if name not in required}
        self._binders = tuple((name, processors[name]) for name in required if name in processors)
        #: positional, every value from the caller, none converted: the parameters are just the values in order
        self._plain = self._positional and not self._defaults and not self._binders
        columns = list(statement.exported_columns) if getattr(statement, "exported_columns", None) is not None else []
        if columns:
            names = tuple(column.key if column.key else column.name for column in columns)
            self._row: type | None = _row_type(names)
            processors = (column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns)
            self._results = tuple((index, process) for index, process in enumerate(processors) if process) or None
        else:
            self._row = None
            self._results = None

    def parameters(self, params: Mapping[str, Any] | None) -> Any:
        """The driver's parameters for ``params`` (the statement's bind names; literal values filled in)."""
        if self._plain:
            return tuple(map(params.__getitem__, self._names)) if params else ()
        values = {**self._defaults, **params} if params else dict(self._defaults)
        for name, process in self._binders:
            if name in values:
                values[name] = process(values[name])
        if self._positional:
            return tuple(values[name] for name in self._names)
        return values

    def row_of(self, values: Mapping[str, Any]) -> Any:
        """A row of this statement's columns made from ``values`` (by column name; a missing one is None): what was
        just written, without reading it back."""
        return self._row._make([values.get(name) for name in self._row._fields])  # type: ignore[union-attr]

    def row_from(self, values: Any) -> Any:
        """A row of this statement's columns from ``values`` in column order, already converted (a slice of a
        wider row of another statement)."""
        return self._row._make(values)  # type: ignore[union-attr]

    def row(self, raw: Any) -> Any:
        """A driver row as a named tuple, with SQLAlchemy's result conversions."""
        results = self._results
        if results is None:
            return self._row._make(raw)  # type: ignore[union-attr]
        values = list(raw)
        for index, process in results:
            value = values[index]
            if value is not None:
                values[index] = process(value)
        return self._row._make(values)  # type: ignore[union-attr]


_FETCH_ONE = operator.methodcaller("fetchone")
_FETCH_ALL = operator.methodcaller("fetchall")


class Conn:
    """A DBAPI connection with the compiled statements of its database. ``invalidate`` is called when the driver
    reports the connection lost."""

    __slots__ = ("db", "dbapi", "_invalidate")

    def __init__(self, db: "Database", dbapi: Any, invalidate: Any = None) -> None:
        self.db = db
        self.dbapi = dbapi
        self._invalidate = invalidate

    def _run(self, statement: Any, params: Mapping[str, Any] | None, fetch: Any = None) -> tuple[Statement, Any, Any]:
        """Run ``statement`` with ``params`` and ``fetch(cursor)`` if given: the compiled statement, the cursor and
        what was fetched. A driver error comes out as SQLAlchemy's exception for it."""
        compiled = self.db.compiled(statement)
        arguments = compiled.parameters(params)
        try:
            cursor = self.dbapi.execute(compiled.sql, arguments)
            fetched = fetch(cursor) if fetch is not None else None
        except self.db.dbapi_error as error:
            raise self.db.translate(error, compiled.sql, arguments, self._invalidate, self.dbapi) from error
        return compiled, cursor, fetched

    def execute(self, statement: Any, params: Mapping[str, Any] | None = None) -> tuple[Statement, Any]:
        """Run ``statement`` (a Core statement, compiled on first use) with ``params``; the compiled statement and
        the driver's cursor."""
        compiled, cursor, _ = self._run(statement, params)
        return compiled, cursor

    def first(self, statement: Any, params: Mapping[str, Any] | None = None) -> Any:
        """The first row (a named tuple) or None."""
        compiled, cursor, raw = self._run(statement, params, _FETCH_ONE)
        cursor.close()
        return None if raw is None else compiled.row(raw)

    def all(self, statement: Any, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Every row."""
        compiled, cursor, raws = self._run(statement, params, _FETCH_ALL)
        cursor.close()
        row = compiled.row
        return [row(raw) for raw in raws]

    def scalar(self, statement: Any, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row (converted), or None."""
        row = self.first(statement, params)
        return None if row is None else row[0]

    def rowcount(self, statement: Any, params: Mapping[str, Any] | None = None) -> int:
        """Run a DML statement; the number of rows it matched."""
        _, cursor = self.execute(statement, params)
        count = cursor.rowcount
        cursor.close()
        return int(count)


class Database:
    """The compiled statements and connections of one engine (:func:`database` gives the one of an engine)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.name = engine.dialect.name
        self.dbapi_error = engine.dialect.loaded_dbapi.Error
        # keyed by the statement object's id; the statement is kept with it, so that the id stays its own
        self._compiled: dict[int, tuple[Any, Statement]] = {}

    def compiled(self, statement: Any) -> Statement:
        """``statement`` compiled for this database (once)."""
        found = self._compiled.get(id(statement))
        if found is None or found[0] is not statement:
            found = self._compiled[id(statement)] = (statement, Statement(statement, self.dialect))
        return found[1]

    def translate(self, error: Exception, sql: str, params: Any, invalidate: Any, dbapi: Any = None) -> Exception:
        """The SQLAlchemy exception for a driver error (the connection ``dbapi`` invalidated if it is lost: some
        dialects, psycopg's, tell that only from the connection)."""
        disconnect = False
        try:
            disconnect = bool(self.dialect.is_disconnect(error, dbapi, None))
        except Exception:  # pragma: no cover - a dialect that cannot tell
            pass
        if disconnect and invalidate is not None:
            invalidate(error)
        return sa_exc.DBAPIError.instance(sql, params, error, self.dialect.loaded_dbapi.Error,
                                          connection_invalidated=disconnect, dialect=self.dialect)

    def on(self, connection: Any) -> Conn:
        """The compiled statements on the connection of a SQLAlchemy Connection or Session (its transaction, begun
        if need be)."""
        if not isinstance(connection, Connection):
            connection = connection.connection()  # a Session: its transaction's connection
        return Conn(self, connection.connection.driver_connection, connection.invalidate)

    def read(self) -> "_Autocommit":
        """A pooled connection in autocommit for reads (``with db.read() as conn``): every statement sees the latest
        commit. (SQLite runs autocommit already; PostgreSQL's connection is switched for the time and back.)"""
        return _Autocommit(self)

    def snapshot(self) -> "_Snapshot":
        """A pooled connection in one read-only transaction (``with db.snapshot() as conn``): its statements all see
        the same commits, where :meth:`read`'s each see the latest (SQLite: a deferred ``BEGIN``, one WAL snapshot,
        never the write lock; PostgreSQL: ``REPEATABLE READ, READ ONLY``). For a view made of several reads."""
        return _Snapshot(self)

    def autocommit(self) -> "_Autocommit":
        """The same connection as :meth:`read`, for a write that is one statement (it commits by itself). Not on
        SQLite, where such a write would not take its turn among the writers (:mod:`jitcore.sqlite`): write in a
        transaction there."""
        return _Autocommit(self)


class _Autocommit:
    """:meth:`Database.read`'s and :meth:`Database.autocommit`'s context (a class: cheaper than a generator on a path
    run for every read)."""

    __slots__ = ("db", "pooled", "switch")

    def __init__(self, db: Database) -> None:
        self.db = db

    def __enter__(self) -> Conn:
        pooled = self.pooled = self.db.engine.raw_connection()
        dbapi = pooled.driver_connection
        self.switch = self.db.name == "postgresql"
        if self.switch:
            try:
                dbapi.autocommit = True
            except BaseException:
                pooled.close()
                raise
        return Conn(self.db, dbapi, pooled.invalidate)

    def __exit__(self, *exc: Any) -> None:
        pooled = self.pooled
        if self.switch and pooled.is_valid:  # (a lost connection is invalidated already)
            try:
                pooled.driver_connection.autocommit = False
            except Exception:  # a lost connection: never back into the pool
                pooled.invalidate()
        pooled.close()


_BEGIN = text("BEGIN")
_BEGIN_SNAPSHOT = text("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
_ROLLBACK = text("ROLLBACK")


class _Snapshot(_Autocommit):
    """:meth:`Database.snapshot`'s context: :meth:`Database.read`'s connection, in a transaction begun here and rolled
    back at the end (nothing to keep)."""

    __slots__ = ("conn",)

    def __enter__(self) -> Conn:
        conn = self.conn = super().__enter__()
        try:
            conn.execute(_BEGIN_SNAPSHOT if self.db.name == "postgresql" else _BEGIN)
        except BaseException:
            super().__exit__()
            raise
        return conn

    def __exit__(self, *exc: Any) -> None:
        if self.pooled.is_valid:
            try:
                self.conn.execute(_ROLLBACK)
            except Exception:  # a lost connection: never back into the pool
                self.pooled.invalidate()
        super().__exit__()


_DATABASES: "weakref.WeakKeyDictionary[Engine, Database]" = weakref.WeakKeyDictionary()
_DATABASES_LOCK = threading.Lock()


def database(engine: Engine) -> Database:
    """The :class:`Database` of ``engine`` (one per engine)."""
    found = _DATABASES.get(engine)
    if found is None:
        with _DATABASES_LOCK:
            found = _DATABASES.get(engine)
            if found is None:
                found = _DATABASES[engine] = Database(engine)
    return found


def _bookkeeping_engine(engine: Engine) -> Engine | None:
    """The bookkeeping sibling of an engine made by :func:`jitcore.app.create_engine`, else None."""
    sibling = getattr(engine, "jit_bookkeeping_engine", None)
    return sibling() if sibling is not None else None


@contextlib.contextmanager
def bookkeeping(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()`` for a transaction whose commit need not wait for the disk (see the module docstring): on
    the engine's bookkeeping sibling if it has one; else SQLite runs it with ``synchronous=NORMAL`` (the
    connection's own setting is put back afterwards, or the connection is discarded), PostgreSQL with ``SET LOCAL
    synchronous_commit = off``. Other databases: a plain transaction."""
    sibling = _bookkeeping_engine(engine)
    if sibling is not None:
        with sibling.begin() as connection:
            yield connection
        return
    name = engine.dialect.name
    with engine.connect() as connection:
        restore = None
        if name == "sqlite":
            dbapi = connection.connection.driver_connection
            level = dbapi.execute("PRAGMA synchronous").fetchone()[0]
            if level > 1:  # FULL or EXTRA
                dbapi.execute("PRAGMA synchronous=NORMAL")
                restore = level
        try:
            with connection.begin():
                if name == "postgresql":
                    connection.connection.driver_connection.execute("SET LOCAL synchronous_commit = off")
                yield connection
        finally:
            if restore is not None:
                try:
                    connection.connection.driver_connection.execute(f"PRAGMA synchronous={int(restore)}")
                except Exception:  # never hand a connection with weaker durability back to the pool
                    connection.invalidate()


def bookkeeping_change(engine: Engine, statement: Any, params: Mapping[str, Any] | None = None) -> int:
    """Run one DML ``statement`` as bookkeeping (see :func:`bookkeeping`); the number of rows it matched. On
    PostgreSQL with a bookkeeping sibling it is a single statement in autocommit (no BEGIN and COMMIT round trips);
    on SQLite a transaction, so that it takes its turn among the writers (:mod:`jitcore.sqlite`), on the driver's
    connection (:class:`jitcore.sqlite.driver_transaction`)."""
    sibling = _bookkeeping_engine(engine)
    if sibling is not None and sibling.dialect.name == "postgresql":
        with database(sibling).autocommit() as conn:
            return conn.rowcount(statement, params)
    if sibling is not None and sibling.dialect.name == "sqlite":  # its connections are synchronous=NORMAL already
        db = database(sibling)
        pooled = sibling.raw_connection()
        try:
            with sqlite.driver_transaction(sibling, pooled.driver_connection) as dbapi:
                return Conn(db, dbapi, pooled.invalidate).rowcount(statement, params)
        finally:
            pooled.close()
    with bookkeeping(engine) as connection:
        return database(connection.engine).on(connection).rowcount(statement, params)
