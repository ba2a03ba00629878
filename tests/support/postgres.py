"""A real, throw-away PostgreSQL server for tests and benchmarks.

Tests use the session fixture ``postgres_server`` (registered in ``tests/conftest.py``)::

    def test_orders_on_postgres(postgres_server):
        url = postgres_server.new_database()   # postgresql+psycopg://jitpay@127.0.0.1:PORT/jitpay_1_ab12cd
        ...

or the function fixture ``postgres_url``, which is one fresh database per test. Scripts use
``start_postgres()`` directly, best as a context manager::

    with start_postgres() as pg:
        url = pg.new_database()

One server per session; every ``new_database()`` is a new, empty database on it. The server runs
from Debian's binaries (``/usr/lib/postgresql/<highest version>/bin``) in a temporary directory,
listens on 127.0.0.1 at a free port with trust authentication for the superuser ``jitpay``, and has
durability switched off for speed. PostgreSQL refuses to run as root, so as root (as in CI) it runs
as the ``postgres`` system user (or a dedicated ``jitpay-pg`` system user, created if need be).
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "PostgresUnavailable", "start_postgres", "postgres_server", "postgres_url"]

SUPERUSER = "jitpay"
FALLBACK_SYSTEM_USER = "jitpay-pg"
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found under /usr/lib/postgresql/*/bin. "
    "Install them with `make sysdeps`, or `apt-get install -y postgresql` on Debian/Ubuntu "
    "(set JITPAY_PG_BINDIR to use binaries elsewhere)."
)


class PostgresUnavailable(RuntimeError):
    """The server could not be found or started; the message says why and what to do."""


def find_pg_bindir() -> Path:
    """The bin folder of the highest installed PostgreSQL version (or ``$JITPAY_PG_BINDIR``)."""
    override = os.environ.get("JITPAY_PG_BINDIR")
    candidates = [Path(override)] if override else [
        Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
    ]

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name)) or (0,)

    for bindir in sorted(candidates, key=version, reverse=True):
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresUnavailable(INSTALL_HINT)


def _run_as_user() -> str | None:
    """The unprivileged user to run the server as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_SYSTEM_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_SYSTEM_USER],
            check=True, capture_output=True, text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise PostgresUnavailable(
            f"running as root, and there is no `postgres` user to run PostgreSQL as; "
            f"creating the system user {FALLBACK_SYSTEM_USER!r} failed: {detail}"
        ) from exc
    return FALLBACK_SYSTEM_USER


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A running server. ``new_database()`` gives a fresh database's SQLAlchemy URL."""

    def __init__(self, bindir: Path, base: Path, run_as: str | None):
        self.bindir = bindir
        self.base = base  # temp dir: data/, sock/, server.log
        self.datadir = base / "data"
        self.sockdir = base / "sock"
        self.logfile = base / "server.log"
        self.run_as = run_as
        self.host = "127.0.0.1"
        self.port = 0
        self.user = SUPERUSER
        self.version = ""
        self._counter = itertools.count(1)
        self._running = False

    # -- URLs -----------------------------------------------------------------------------------
    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) of a database on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq URL of a database on this server, for psycopg.connect()."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def new_database(self, prefix: str = "jitpay") -> str:
        """Create a new, empty database and return its SQLAlchemy URL."""
        name = f"{prefix}_{next(self._counter)}_{secrets.token_hex(3)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url_or_name: str) -> None:
        """Drop a database made by new_database() (disconnecting whoever is still on it)."""
        name = url_or_name.rsplit("/", 1)[-1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @property
    def pid(self) -> int:
        """PID of the postmaster (first line of postmaster.pid)."""
        return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])

    # -- life cycle -----------------------------------------------------------------------------
    def _cmd(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        return [*prefix, *args]

    def _exec(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        # cwd: the server user may not be allowed into the caller's working directory.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        return subprocess.run(
            self._cmd(*args), cwd=self.base, env=env, capture_output=True, text=True, timeout=timeout
        )

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)

    def _initdb(self) -> None:
        self.datadir.mkdir()
        self.sockdir.mkdir()
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            for path in (self.base, self.datadir, self.sockdir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(self.datadir, 0o700)
        res = self._exec(
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-A", "trust", "-U", SUPERUSER,
            "-E", "UTF8", "--locale=C", "--no-sync",
        )
        if res.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")

    def _configure(self, port: int) -> None:
        # postgresql.auto.conf is read last, so these win; rewritten on each start attempt.
        conf = self.datadir / "postgresql.auto.conf"
        conf.write_text(
            "# written by tests/support/postgres.py\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {port}\n"
            f"unix_socket_directories = '{self.sockdir}'\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "max_connections = 200\n"
            "log_min_messages = warning\n"
        )
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(conf, entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float = 60) -> "PostgresServer":
        self._initdb()
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between probing and binding
            self.port = _free_port()
            self._configure(self.port)
            res = self._exec(
                str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                "-w", "-t", str(int(timeout)), "start", timeout=timeout + 30,
            )
            if res.returncode == 0:
                self._running = True
                self._wait_ready(timeout)
                atexit.register(self.stop)
                return self
            last_error = f"{res.stdout}\n{res.stderr}\n{self._log_tail()}"
            if "could not bind" not in last_error and "already in use" not in last_error:
                break
        raise PostgresUnavailable(f"PostgreSQL did not start:\n{last_error}")

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=5) as conn:
                    self.version = conn.execute("SHOW server_version").fetchone()[0]
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PostgresUnavailable(
                        f"PostgreSQL started but accepted no connection within {timeout:.0f}s: {exc}\n"
                        f"{self._log_tail()}"
                    ) from exc
                time.sleep(0.2)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory. Safe to call twice."""
        if self._running:
            self._running = False
            try:
                res = self._exec(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast",
                                 "-w", "-t", "30", "stop", timeout=60)
                stopped = res.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                stopped = False
            if not stopped:
                try:
                    os.kill(self.pid, signal.SIGQUIT)  # immediate shutdown
                    time.sleep(1)
                except (OSError, ValueError):
                    pass
        atexit.unregister(self.stop)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PostgresServer {self.version or '?'} at {self.host}:{self.port} run as {self.run_as or 'self'}>"


def start_postgres(timeout: float = 60) -> PostgresServer:
    """Start a fresh server and return it once it accepts connections. Raises PostgresUnavailable.

    Call ``.stop()`` when done (or use it as a context manager); it is also stopped at interpreter
    exit as a safety net.
    """
    bindir = find_pg_bindir()
    run_as = _run_as_user()
    # As root the server user must be able to reach the directory: /tmp always allows that.
    base = Path(tempfile.mkdtemp(prefix="jitpay-pg-", dir="/tmp" if run_as else None))
    server = PostgresServer(bindir, base, run_as)
    try:
        return server.start(timeout)
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the whole session; ``.new_database()`` gives a fresh DB URL."""
    error = None
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        error = str(exc)
    if error is not None:  # outside the except block: one clean message, no chained traceback
        pytest.fail(error, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """SQLAlchemy URL of a fresh, empty PostgreSQL database for one test."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str | None:
    """The app's database, once each: None (the embedded SQLite file beside the app's YAML), then a fresh database
    on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_server").new_database()
