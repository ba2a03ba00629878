"""The extension surface of jitcore: every hook a plugin can implement.

A plugin is any module or object with functions marked ``@jitcore.hookimpl``. Plugins come from four layers, highest
precedence first: the app itself, the app's plugins (the YAML's ``plugins:``), installed plugins (entry point group
``jitcore``), and the official element library. They are registered lowest first, so pluggy (which calls the most
recently registered implementation first) asks higher layers before lower ones.

A plugin module may also carry ``jit_hookspecs``: a list of modules or classes with further ``@hookspec`` functions
(the payment library adds its order events this way). A hook implementation that matches no spec is a load error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from jitcore.app import App
    from jitcore.defines import ElementDefine
    from jitcore.jobs import JobKind

PROJECT = "jitcore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def jit_element_dirs(app: "App") -> list[Path]:
    """Folders of element definitions this plugin contributes.

    Each folder holds one sub-folder per element, whose path below the folder is the element's fullName
    (``<dir>/acme/services/HelloSvc/e.yaml`` defines ``acme.services.HelloSvc``). Called once per plugin when the app
    builds its element index; the folders belong to the calling plugin's layer. Return a list (possibly empty).
    """


@hookspec(firstresult=True)
def jit_resolve_element(app: "App", fullName: str) -> "ElementDefine | None":
    """The effective definition of element ``fullName``, or None to let the next implementation answer.

    Stops at the first non-None result. Implementations are asked highest layer first; the built-in implementation
    (registered ``trylast``) walks the layers' element folders and the app YAML, applying overrides and type
    inheritance. A plugin implements this to serve definitions from elsewhere (a database, a remote registry).
    """


@hookspec
def jit_routes(app: "App") -> list[Any]:
    """Starlette routes this plugin adds to the app's HTTP face.

    Called once when the ASGI app is built. Results are mounted in the order pluggy returns them (highest layer
    first), before the built-in routes, so a plugin can replace a built-in path. An installed plugin is asked by
    every app: return routes only where they belong (``app.configures(fullName)`` tells whether the app configures
    one of its elements), so that elsewhere the path is a plain 404, never a 500 from an unconfigured element.
    """


@hookspec
def jit_app_loaded(app: "App") -> None:
    """Called once after the app is loaded and every plugin is registered (all layers). Use it for set-up that needs
    the app; an exception stops loading."""


@hookspec
def jit_job_handlers(app: "App") -> "dict[str, JobKind | Callable[..., None]]":
    """The job kinds this plugin runs, by kind name: ``{"shop.sendReceipt": JobKind(handler=send_receipt,
    maxAttempts=5)}``. A bare callable stands for ``JobKind(handler=it)``; a handler is called as
    ``handler(app, payload, job)`` and a raised exception is a failed attempt (``jitcore.jobs.RetryLater`` asks for a
    later attempt without being logged as a crash).

    Called once per app, the first time its job queue (``app.jobs``) needs the kinds. Every implementation is called;
    when two layers register the same kind name, the higher layer's wins (an app plugin can replace an official
    kind's handler or its retry policy). Names starting with ``jit.`` are reserved (``jit.event`` delivers published
    events). A job whose kind no plugin of the running process handles fails with "no handler for kind X" and is
    retried like any failure until it ends dead. Return a dict (possibly empty). See docs/JOBS.md.
    """
