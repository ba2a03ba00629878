"""The ``jit`` command: list an app's elements, call a declared function, serve the app over HTTP, run and inspect
its background jobs."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from jitcore import listeners
from jitcore.errors import JitError


def _load(app_yaml: str) -> Any:
    from jitcore.app import load_app

    return load_app(app_yaml)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group()
def main() -> None:
    """jitcore: run and inspect JitAi-style element apps."""


@main.command("elements")
@click.argument("app_yaml", type=click.Path(dir_okay=False))
def elements_command(app_yaml: str) -> None:
    """List every element: kind, type, the layer it came from and what it overrides."""
    try:
        app = _load(app_yaml)
        rows = []
        for name in app.elementNames():
            define = app.getDefine(name)
            overrides = ", ".join(define.overrides) or "-"
            rows.append((name, define.kind, define.type or "-", define.layer, overrides, define.accessModifier))
    except JitError as exc:
        _fail(str(exc))
        return
    header = ("fullName", "kind", "type", "layer", "overrides", "access")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())


def _parse_value(text: str) -> Any:
    """``key=value`` values: JSON objects, arrays and booleans are parsed; anything else stays text (the function's
    declared data types convert it)."""
    stripped = text.strip()
    if stripped[:1] in ("{", "[") or stripped in ("true", "false", "null"):
        try:
            from decimal import Decimal

            return json.loads(stripped, parse_float=Decimal)
        except ValueError:
            return text
    return text


@main.command("call")
@click.argument("app_yaml", type=click.Path(dir_okay=False))
@click.argument("target")
@click.argument("arguments", nargs=-1)
def call_command(app_yaml: str, target: str, arguments: tuple[str, ...]) -> None:
    """Call FULLNAME.FUNCTION with key=value arguments and print the result as JSON."""
    from jitcore.http import to_jsonable

    fullName, _, function = target.rpartition(".")
    if not fullName:
        _fail("the target must be FULLNAME.FUNCTION, e.g. pays.services.PaySvc.query")
    kwargs = {}
    for argument in arguments:
        key, sep, value = argument.partition("=")
        if not sep or not key:
            _fail(f"arguments are key=value, got {argument!r}")
        kwargs[key] = _parse_value(value)
    try:
        app = _load(app_yaml)
        element = app.getElement(fullName)
        result = getattr(element, function)(**kwargs)
    except JitError as exc:
        _fail(str(exc))
        return
    if hasattr(result, "body") and hasattr(result, "media_type"):
        click.echo(bytes(result.body).decode("utf-8", "replace"))
        return
    click.echo(json.dumps(to_jsonable(result), ensure_ascii=False, indent=2))


@main.command("serve")
@click.argument("app_yaml", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int,
              help="worker processes (use PostgreSQL, and one worker with the in-memory sandbox)")
def serve_command(app_yaml: str, host: str, port: int, workers: int) -> None:
    """Serve the app's HTTP face (function API, callbacks, cashier, plugin routes) under uvicorn. Each worker
    process also runs a job runner (unless the YAML says jobs: {runner: false}); SIGTERM shuts down gracefully."""
    import os

    import uvicorn

    from jitcore.http import build_asgi_app

    try:
        app = _load(app_yaml)
        check_serving(app, host)
        asgi = build_asgi_app(app) if workers == 1 else None
    except JitError as exc:
        _fail(str(exc))
        return
    if asgi is None:
        # each worker process loads the app itself from the factory below
        os.environ["JIT_APP_YAML"] = str(app.path)
        serve_workers("jitcore.cli:asgi_from_env", host, port, workers, factory=True)
        return
    uvicorn.run(asgi, host=host, port=port)


def serve_workers(asgi: str, host: str, port: int, workers: int, *, factory: bool = False) -> None:
    """Serve the ASGI app ``asgi`` (an import string; with ``factory``, of a function that makes it) in ``workers``
    processes under uvicorn's supervisor (which restarts a worker that dies, and stops them all on SIGTERM). On Linux
    every worker listens on a socket of its own and the kernel spreads the connections among them
    (:mod:`jitcore.listeners`); elsewhere they share the supervisor's."""
    import inspect
    import logging

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if not listeners.per_worker_sockets():
        listeners.share_tcp_socket()
        uvicorn.run(asgi, factory=factory, host=host, port=port, workers=workers)
        return
    config = uvicorn.Config(asgi, factory=factory, host=host, port=port, workers=workers)
    try:
        reserved = listeners.bind_in_group(host, port)  # the address, not listened on
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        return
    with reserved:
        port = reserved.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        logging.getLogger("uvicorn.error").info(
            "Uvicorn running on http://%s:%d (Press CTRL+C to quit); each of the %d workers listens on its own socket",
            shown, port, workers)
        sockets = [listeners.WorkerListener(host, port)]
        supervisor_takes_target = "target" in inspect.signature(Multiprocess).parameters  # older uvicorn
        try:
            if supervisor_takes_target:
                Multiprocess(config, target=uvicorn.Server(config).run, sockets=sockets).run()  # type: ignore
            else:
                Multiprocess(config, sockets=sockets).run()  # type: ignore[arg-type]
        except KeyboardInterrupt:  # pragma: no cover - the supervisor handles SIGINT itself
            pass


#: API keys published with JitPay (the demo key `make run` sets): accepted on a loopback host only
PUBLISHED_API_KEYS = frozenset({"jitpay-demo-key-local-only"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a ``--host`` value) is reachable from this machine only."""
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def check_serving(app: Any, host: str) -> None:
    """What serving needs beyond loading: every API key resolved, and no published key on a host that other
    machines reach (:class:`ConfigError` otherwise)."""
    from jitcore.errors import ConfigError

    app.model.require_api_keys()
    if not is_loopback(host) and PUBLISHED_API_KEYS.intersection(app.model.apiKeys):
        raise ConfigError(f"refusing to serve on {host}: one of the app's apiKeys is the demo's published key, which "
                          "anyone can read in JitPay's Makefile. Set your own secret (e.g. export JITPAY_API_KEY="
                          "\"$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')\"), or serve on "
                          "127.0.0.1")


def _database_failure(exc: Exception) -> str:
    """A database error in one line, without the SQL or its parameters."""
    original = getattr(exc, "orig", None) or exc
    detail = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return f"the database failed: {type(original).__name__}{': ' + detail if detail else ''}"


def _load_with_jobs(app_yaml: str) -> Any:
    """The app, with its job tables ready (created if need be; a newer schema is refused)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        app = _load(app_yaml)
        app.jobs.ensure_schema()
        return app
    except JitError as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        _fail(_database_failure(exc))


@main.command("worker")
@click.argument("app_yaml", type=click.Path(dir_okay=False))
@click.option("--until-idle", is_flag=True,
              help="run every due job, print one summary line and exit (e.g. from cron), instead of running until "
                   "SIGTERM/SIGINT")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="what the job log (stderr) shows")
def worker_command(app_yaml: str, until_idle: bool, log_level: str) -> None:
    """Run the app's background jobs in this process, apart from `jit serve` (any number of workers may share a
    PostgreSQL database)."""
    import logging
    import os
    import signal
    import threading

    logging.basicConfig(level=getattr(logging, log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = _load_with_jobs(app_yaml)
    if until_idle:
        try:
            summary = app.jobs.run_until_idle()
        finally:
            app.close()
        click.echo(str(summary))
        return
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.jobs.start()
    click.echo(f"jit worker: running the jobs of {app.appId} (pid {os.getpid()}); SIGTERM or Ctrl-C stops it",
               err=True)
    while not stop.wait(0.5):
        if not app.jobs.running:
            app.close()
            _fail("the job runner stopped (see the log above)")
    app.close()  # stops the runner: the job it is running may finish
    click.echo("jit worker: stopped", err=True)


def _job_state(job: dict[str, Any]) -> str:
    """A job's state as `jit jobs` shows it: a due job that has failed is "failed"."""
    if job["state"] == "due" and job["lastError"] and job["attempts"] > 0:
        return "failed"
    return str(job["state"])


@main.command("jobs")
@click.argument("app_yaml", type=click.Path(dir_okay=False))
@click.option("--all", "show_all", is_flag=True, help="include done jobs")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1), help="newest jobs shown")
@click.option("--retry", "retry_id", type=int, metavar="ID",
              help="requeue dead (or failed) job ID to run now, its attempts reset")
def jobs_command(app_yaml: str, show_all: bool, limit: int, retry_id: int | None) -> None:
    """List the app's due, running, failed and dead jobs (newest first), or requeue one."""
    from sqlalchemy.exc import SQLAlchemyError

    app = _load_with_jobs(app_yaml)
    try:
        if retry_id is not None:
            if app.jobs.retry(retry_id):
                click.echo(f"job {retry_id} requeued: due now")
                return
            job = app.jobs.get(retry_id)
            if job is None:
                _fail(f"there is no job {retry_id}")
            _fail(f"job {retry_id} is {_job_state(job)}; only dead or failed jobs can be retried")
        states = None if show_all else ["due", "running", "dead"]
        jobs = app.jobs.list(states, limit=limit)
    except SQLAlchemyError as exc:
        _fail(_database_failure(exc))
        return
    finally:
        app.close()
    if not jobs:
        click.echo("no jobs" if show_all else "no due, running, failed or dead jobs")
        return
    header = ("id", "kind", "state", "attempts", "dueAt", "lastError")
    rows = [(str(job["id"]), job["kind"], _job_state(job), str(job["attempts"]),
             job["dueAt"].strftime("%Y-%m-%dT%H:%M:%SZ"), (job["lastError"] or "").split("\n", 1)[0][:200])
            for job in jobs]
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [value.ljust(width) for value, width in zip(row, widths)] + [row[-1]]
        click.echo("  ".join(cells).rstrip())


def asgi_from_env() -> Any:
    """The ASGI app of the YAML named by ``JIT_APP_YAML`` (used by ``jit serve --workers N``)."""
    import os

    from jitcore.http import build_asgi_app

    return build_asgi_app(_load(os.environ["JIT_APP_YAML"]))


if __name__ == "__main__":  # pragma: no cover
    main()
