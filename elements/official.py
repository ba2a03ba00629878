"""The official element library as a jitcore plugin: registered like any plugin, in the lowest layer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from elements.pays import hookspecs as pay_hookspecs
from jitcore.hookspecs import hookimpl

if TYPE_CHECKING:
    from jitcore.app import App

#: hookspecs this plugin adds to every app (the payment events)
jit_hookspecs = [pay_hookspecs]


@hookimpl
def jit_element_dirs(app: "App") -> list[Path]:
    """The official element folder (this package)."""
    return [Path(__file__).parent]


@hookimpl
def jit_routes(app: "App") -> list[Any]:
    """The payment library's routes: provider notification callbacks and the cashier page."""
    from elements.pays.services.PaySvc.routes import pay_routes

    return pay_routes(app)
