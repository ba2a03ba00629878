"""The App: a loaded app YAML with its plugin layers, element index, loaded elements and database engine."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from jitcore import sqlite
from jitcore.config import AppModel, load_app_model
from jitcore.defines import ElementDefine
from jitcore.element import Element
from jitcore.errors import ConfigError, ElementNotFound
from jitcore.index import ElementIndex
from jitcore.loading import element_class
from jitcore.plugins import Layer, build_plugin_manager
from jitcore.proxy import ElementProxy

if TYPE_CHECKING:
    from jitcore.jobs import JobQueue

log = logging.getLogger("jitcore")


class App:
    """A loaded app. Build one with :func:`jitcore.load_app`."""

    def __init__(self, model: AppModel, path: Path) -> None:
        self.model = model
        self.path = path
        self.root = path.parent
        self.appId = model.appId
        self.title = model.title or model.appId
        self.baseUrl = model.baseUrl
        self.settings: dict[str, Any] = model.settings
        self.database_url = database_url(model, self.root)
        self._lock = threading.RLock()
        self._elements: dict[str, Element] = {}
        self._proxies: dict[str, ElementProxy] = {}
        self._loading: list[str] = []
        self._engine: Any = None
        self._jobs: JobQueue | None = None
        self.pm: pluggy.PluginManager
        self.layers: list[Layer]
        self.pm, self.layers = build_plugin_manager(self)
        self.hook = self.pm.hook
        self.index = ElementIndex(self, self.layers)

    # -- elements ---------------------------------------------------------------------------------------------------
    def getDefine(self, fullName: str) -> ElementDefine:
        """The effective definition of ``fullName`` (through ``jit_resolve_element``)."""
        define = self.hook.jit_resolve_element(app=self, fullName=fullName)
        if define is None:
            raise self.index.not_found(fullName)
        return define

    def getElement(self, fullName: str) -> ElementProxy:
        """The element ``fullName`` as callers see it: its declared functions, each call checked. Cached; loads the
        element once even when threads ask at the same time. An unknown name is :class:`ElementNotFound` with close
        matches; a ``private`` element of another layer is not visible."""
        proxy = self._proxies.get(fullName)
        if proxy is not None:
            return proxy
        with self._lock:
            proxy = self._proxies.get(fullName)
            if proxy is None:
                define = self.getDefine(fullName)
                if define.accessModifier == "private" and define.layer != "app":
                    raise ElementNotFound(f"{fullName} is private to layer {define.layer}",
                                          details={"fullName": fullName})
                proxy = ElementProxy(self.loadElement(fullName), define)
                self._proxies[fullName] = proxy
            return proxy

    def loadElement(self, fullName: str) -> Element:
        """The live object of ``fullName`` (unchecked: for elements talking to each other). Loaded once, by its
        class's loader (``jit_load``)."""
        element = self._elements.get(fullName)
        if element is not None:
            return element
        with self._lock:
            element = self._elements.get(fullName)
            if element is not None:
                return element
            if fullName in self._loading:
                raise ConfigError(f"elements load each other in a cycle: {' -> '.join(self._loading + [fullName])}")
            self._loading.append(fullName)
            try:
                define = self.getDefine(fullName)
                element = self.classOf(define).jit_load(self, define)
            finally:
                self._loading.remove(fullName)
            self._elements[fullName] = element
            return element

    def classOf(self, define: ElementDefine) -> type[Element]:
        """The Python class of an element (its own, its override's, or its type's)."""
        type_class = self.classOf(self.getDefine(define.type)) if define.type else None
        return element_class(define, type_class)

    def elementNames(self) -> list[str]:
        """Every fullName any layer defines."""
        return self.index.names()

    def isA(self, fullName: str, ancestor: str) -> bool:
        """Whether ``ancestor`` is ``fullName`` or on its chain of types."""
        name: str | None = fullName
        while name:
            if name == ancestor:
                return True
            name = self.getDefine(name).type
        return False

    def configures(self, fullName: str) -> bool:
        """Whether the app itself declares or configures ``fullName`` (its YAML's ``elements:`` or its
        ``elementDirs``), as opposed to merely having it from a plugin. A plugin asks this to mount its routes only
        in apps that use its elements. An unknown name is False."""
        return self.index.configured(fullName)

    def check(self) -> None:
        """Resolve every definition, and load every element the app itself declares or configures, so that a
        mistake (a bad class, a missing or malformed setting) stops loading instead of surfacing on first use."""
        for name in self.elementNames():
            define = self.getDefine(name)
            if any(source.layer == "app" for source in define.sources) and define.kind != "Meta":
                self.loadElement(name)

    # -- events -----------------------------------------------------------------------------------------------------
    def fireEvent(self, hook_name: str, **kwargs: Any) -> list[tuple[str, BaseException]]:
        """Call every implementation of hook ``hook_name`` (highest layer first), each on its own: an exception in
        one is logged and returned, and the others still run. Returns ``[(plugin name, exception), ...]``."""
        caller = getattr(self.hook, hook_name)
        failures: list[tuple[str, BaseException]] = []
        arguments = {"app": self, **kwargs}
        for impl in reversed(caller.get_hookimpls()):
            try:
                impl.function(**{name: arguments[name] for name in impl.argnames})
            except Exception as exc:
                log.exception("%s in plugin %s failed", hook_name, impl.plugin_name)
                failures.append((impl.plugin_name, exc))
        return failures

    # -- database ---------------------------------------------------------------------------------------------------
    @property
    def engine(self) -> Any:
        """The SQLAlchemy engine of ``database`` (created on first use; SQLite in WAL mode)."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = create_engine(self.database_url)
        return self._engine

    @property
    def jobs(self) -> "JobQueue":
        """The app's durable job queue (:class:`jitcore.jobs.JobQueue`, created on first use; docs/JOBS.md)."""
        if self._jobs is None:
            with self._lock:
                if self._jobs is None:
                    from jitcore.jobs import JobQueue

                    self._jobs = JobQueue(self)
        return self._jobs

    def close(self) -> None:
        """Stop this process's job runner (a running job may finish), then release what the loaded elements hold
        (``Element.jit_close``) and the database connections."""
        if self._jobs is not None:
            self._jobs.close()
        with self._lock:
            elements, self._elements, self._proxies = list(self._elements.values()), {}, {}
        for element in elements:
            try:
                element.jit_close()
            except Exception:
                log.exception("closing %s failed", element.fullName)
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __repr__(self) -> str:
        return f"<App {self.appId} from {self.path}>"


def database_url(model: AppModel, root: Path) -> str:
    """The app's database URL: an embedded SQLite file beside the YAML by default; a relative SQLite path is
    relative to the YAML."""
    from sqlalchemy.engine import make_url

    if not model.database:
        return f"sqlite:///{(root / (model.appId + '.db')).as_posix()}"
    try:
        url = make_url(model.database)
    except Exception:
        raise ConfigError("database: not a valid SQLAlchemy URL (e.g. sqlite:///shop.db or "
                          "postgresql+psycopg://user@host/db)") from None
    if url.drivername.startswith("sqlite") and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not path.is_absolute():
            return url.set(database=(root / path).as_posix()).render_as_string(hide_password=False)
    return model.database


#: connections an engine's pool keeps: as many as a busy ``jit serve`` worker's request threads and job runner use at
#: once. With SQLAlchemy's default (5), connections beyond it were closed when given back and opened anew at the next
#: peak: under 8 concurrent notifications a worker opened a PostgreSQL session (a server process) every 10 to 25.
POOL_SIZE = 10
#: connections a pool opens beyond POOL_SIZE at a peak (closed when given back)
POOL_OVERFLOW = 10
#: the same for the bookkeeping sibling, whose statements are short (job claims and outcomes): a process holds at most
#: POOL_SIZE + POOL_OVERFLOW + 2 * BOOKKEEPING_POOL_SIZE connections to its database
BOOKKEEPING_POOL_SIZE = 5

#: PRAGMA synchronous for a durable engine's SQLite connections when commits cannot be synced after the writer's turn
#: (:class:`jitcore.sqlite.WalSync`: a database in memory, a SQLAlchemy without the steps jitcore.sqlite needs). FULL:
#: in WAL mode NORMAL alone lets a power loss undo the last commits, and a payment commit may already have been
#: acknowledged to the provider ("success"), which then never notifies again.
SQLITE_SYNCHRONOUS = "FULL"


def create_engine(url: str, *, durable: bool = True) -> Any:
    """An engine for ``url``.

    The pool keeps :data:`POOL_SIZE` connections (and opens up to :data:`POOL_OVERFLOW` more for a peak; a
    bookkeeping engine :data:`BOOKKEEPING_POOL_SIZE`, and as many more). SQLite files get, on every
    connection: WAL, foreign keys and a 30 s busy timeout; ``synchronous=NORMAL`` with each commit's WAL synced
    after the writer's turn is given back and before ``commit()`` returns (:class:`jitcore.sqlite.WalSync`,
    ``engine.jit_wal_sync``): a commit is on disk when its caller gets it back, and the next writer does not wait
    for that disk write (else ``synchronous=FULL``, :data:`SQLITE_SYNCHRONOUS`). A database file that does not exist
    yet is created ``0600`` (its ``-wal`` and ``-shm`` companions take the same mode). Transactions:

    - one the caller opens (``engine.begin()``, ``conn.begin()``, an ORM session) is ``BEGIN IMMEDIATE``: it takes
      the write lock first, so that a read-then-write transaction (a ledger change, a job claim) never fails half-way
      with SQLITE_BUSY when another process wrote meanwhile; before that it waits for its turn among the database's
      writers in every process (:mod:`jitcore.sqlite`: a lock file ``<database>-jitlock``), not in SQLite's
      sleeping busy handler;
    - one SQLAlchemy opens by itself on the first statement of ``engine.connect()`` is a plain (deferred) ``BEGIN``:
      a read snapshot that never takes the write lock and never waits for a writer (WAL). Write through
      ``engine.begin()``; a write inside such a read may fail with "database is locked" if another connection
      wrote since it began.

    ``durable=False`` makes an engine whose commits do not wait for the disk (SQLite ``synchronous=NORMAL``, a
    PostgreSQL session with ``synchronous_commit = off``), for bookkeeping (:func:`jitcore.sql.bookkeeping`). A durable
    engine makes its bookkeeping sibling on first use (``engine.jit_bookkeeping_engine()``) and disposes it with
    itself.
    """
    from sqlalchemy import create_engine as sa_create_engine
    from sqlalchemy import event

    if url.startswith("sqlite"):
        _create_private_database_file(url)
        engine = sa_create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                  **(_pool(durable) if _database_file(url) is not None else {}))
        connection_class = sqlite.connection_class()
        if connection_class is not None:
            engine._connection_cls = connection_class
            database_file = _database_file(url)
            if database_file is not None:  # writers take turns (jitcore.sqlite)
                engine.jit_write_turns = sqlite.write_turns(f"{database_file}-jitlock")
                if durable:  # commits synced after the turn (jitcore.sqlite.WalSync)
                    engine.jit_wal_sync = sqlite.WalSync(database_file)
        synchronous = "NORMAL" if not durable or getattr(engine, "jit_wal_sync", None) else SQLITE_SYNCHRONOUS

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # let SQLAlchemy's BEGIN open the transaction explicitly (pysqlite's own handling defers it)
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
            wal_sync = getattr(engine, "jit_wal_sync", None)
            if wal_sync is not None:  # the files SQLite opened (it resolves symbolic links)
                wal_sync.locate(dbapi_connection)

        event.listen(engine, "begin", sqlite.begin)
    else:
        try:
            engine = sa_create_engine(url, **_pool(durable), **({} if durable else _asynchronous_commits(url)))
        except ModuleNotFoundError as exc:
            extra = " (pip install 'jitpay[postgres]')" if exc.name and exc.name.startswith("psycopg") else ""
            raise ConfigError(f"database: the driver of this URL is not installed: module {exc.name}{extra}") from None
        _ping_rested_connections(engine)
    if durable and (not url.startswith("sqlite") or _database_file(url) is not None):  # (not in memory)
        _add_bookkeeping_engine(engine, url)
    return engine


def _pool(durable: bool) -> dict[str, int]:
    """The pool's size: the app's own engine, or a bookkeeping sibling."""
    size = POOL_SIZE if durable else BOOKKEEPING_POOL_SIZE
    return {"pool_size": size, "max_overflow": POOL_OVERFLOW if durable else size}


def _asynchronous_commits(url: str) -> dict[str, Any]:
    """``create_engine`` arguments for sessions whose commits do not wait for the disk: PostgreSQL's
    ``synchronous_commit = off``, set when a connection starts (libpq ``options``, after any the URL gives)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return {}
    given = parsed.query.get("options")
    given = " ".join(given) if isinstance(given, tuple) else given
    return {"connect_args": {"options": f"{given} -c synchronous_commit=off" if given else
                             "-c synchronous_commit=off"}}


def _add_bookkeeping_engine(engine: Any, url: str) -> None:
    """Give ``engine`` its bookkeeping sibling (``create_engine(url, durable=False)``), made on first use of
    ``engine.jit_bookkeeping_engine()`` and disposed when ``engine`` is."""
    from sqlalchemy import event

    made: list[Any] = []
    lock = threading.Lock()

    def bookkeeping_engine() -> Any:
        if not made:
            with lock:
                if not made:
                    made.append(create_engine(url, durable=False))
        return made[0]

    @event.listens_for(engine, "engine_disposed")
    def _dispose_sibling(_engine: Any) -> None:
        with lock:
            siblings = made[:]
            made.clear()
        for sibling in siblings:
            sibling.dispose()

    engine.jit_bookkeeping_engine = bookkeeping_engine


#: a pooled server connection that rested in the pool longer than this is pinged before it is handed out
PING_AFTER_REST_SECONDS = 2.0


def _ping_rested_connections(engine: Any) -> None:
    """SQLAlchemy's ``pool_pre_ping``, for connections that rested: a server restart, a proxy's or the server's idle
    timeout end connections while they wait in the pool, and such a connection is replaced at checkout instead of
    failing the operation that gets it. A connection used again within :data:`PING_AFTER_REST_SECONDS` (every one,
    under load) costs no round trip. One that the server dropped within that time fails one operation, is
    invalidated with every older connection of the pool, and the next operation connects anew."""
    import time

    from sqlalchemy import event
    from sqlalchemy.exc import InvalidatePoolError

    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _rested_from(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["jit_rested_from"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_rested(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        rested_from = record.info.get("jit_rested_from")
        if rested_from is None or time.monotonic() - rested_from < PING_AFTER_REST_SECONDS:
            return  # new, or used a moment ago
        try:
            dialect.do_ping(dbapi_connection)
            if not getattr(dbapi_connection, "autocommit", False):
                dbapi_connection.rollback()  # the ping's transaction: hand the connection out idle
        except dialect.loaded_dbapi.Error as exc:
            if not dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            # the pool replaces this connection and every older one, and checks out a new one
            raise InvalidatePoolError(f"a pooled connection was found closed: {exc}") from exc


def _database_file(url: str) -> str | None:
    """The file of a SQLite URL; None for in-memory and ``file:`` URI databases (left to SQLite)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:") or parsed.query.get("uri"):
        return None
    return database


def _create_private_database_file(url: str) -> None:
    """Create the SQLite database file of ``url`` readable and writable by its owner only (0600) if it does not
    exist yet; SQLite creates its ``-wal`` and ``-shm`` files with the database file's mode. An existing file keeps
    its mode; in-memory and ``file:`` URI databases are left to SQLite."""
    database = _database_file(url)
    if database is None:
        return
    try:
        descriptor = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return  # it exists (or cannot be created: SQLite reports that with its own message)
    os.close(descriptor)


def load_app(path: str | Path) -> App:
    """Load an app YAML: validate it, resolve ``$env``/``$file``, register the plugin layers and check every element
    definition. Raises :class:`jitcore.errors.ConfigError` with the key's path and a hint."""
    path = Path(path).resolve()
    model = load_app_model(path)
    root = str(path.parent)
    if root not in sys.path:
        # the app's own plugins and classes are modules beside its YAML
        sys.path.insert(0, root)
    app = App(model, path)
    app.check()
    app.hook.jit_app_loaded(app=app)
    return app
