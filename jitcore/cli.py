"""The ``jit`` command: list an app's elements, call a declared function, serve the app over HTTP."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

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
    """Serve the app's HTTP face (function API, callbacks, cashier, plugin routes) under uvicorn."""
    import os

    import uvicorn

    try:
        app = _load(app_yaml)
    except JitError as exc:
        _fail(str(exc))
        return
    if workers > 1:
        # each worker process loads the app itself from the factory below
        os.environ["JIT_APP_YAML"] = str(app.path)
        uvicorn.run("jitcore.cli:asgi_from_env", factory=True, host=host, port=port, workers=workers)
        return
    from jitcore.http import build_asgi_app

    uvicorn.run(build_asgi_app(app), host=host, port=port)


def asgi_from_env() -> Any:
    """The ASGI app of the YAML named by ``JIT_APP_YAML`` (used by ``jit serve --workers N``)."""
    import os

    from jitcore.http import build_asgi_app

    return build_asgi_app(_load(os.environ["JIT_APP_YAML"]))


if __name__ == "__main__":  # pragma: no cover
    main()
