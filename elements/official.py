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
def jit_job_handlers(app: "App") -> dict[str, Any]:
    """The payment library's background jobs (closing trades, refunds, the sweep of pending trades); the periodic
    sweep only in apps that configure a payment element."""
    from elements.pays.services.PaySvc.background import job_kinds

    return job_kinds(app, sweep=configures_payments(app))


def configures_payments(app: "App") -> bool:
    """Whether the app's YAML configures a payment element (a non-Meta element whose type chain has pays.Meta)."""
    for name in app.elementNames():
        define = app.getDefine(name)
        if define.kind != "Meta" and app.configures(name) and app.isA(name, "pays.Meta"):
            return True
    return False


@hookimpl
def jit_routes(app: "App") -> list[Any]:
    """The payment library's routes: provider notification callbacks and the cashier page."""
    from elements.pays.services.PaySvc.routes import pay_routes

    return pay_routes(app)
