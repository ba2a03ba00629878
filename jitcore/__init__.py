"""jitcore: a small element runtime in the style of the JitAi platform.

>>> import jitcore
>>> app = jitcore.load_app("app.example.yaml")          # doctest: +SKIP
>>> svc = app.getElement("pays.services.PaySvc")         # doctest: +SKIP

The extension surface is :mod:`jitcore.hookspecs`; plugins mark implementations with :data:`hookimpl`.
"""

from jitcore.app import App, load_app
from jitcore.element import Element
from jitcore.errors import ArgumentError, ConfigError, ElementNotFound, FunctionNotFound, JitError
from jitcore.hookspecs import hookimpl, hookspec

__all__ = ["App", "load_app", "Element", "hookimpl", "hookspec", "JitError", "ConfigError", "ElementNotFound",
           "FunctionNotFound", "ArgumentError", "JobKind", "Job", "JobQueue", "RetryLater", "RunSummary"]

#: exported from jitcore.jobs on first use (it imports SQLAlchemy, which ``import jitcore`` does not need)
_JOB_EXPORTS = ("JobKind", "Job", "JobQueue", "RetryLater", "RunSummary")


def __getattr__(name: str) -> object:
    if name in _JOB_EXPORTS:
        from jitcore import jobs

        return getattr(jobs, name)
    raise AttributeError(f"module 'jitcore' has no attribute {name!r}")
