"""The base class of every live element object, and the default loader."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jitcore.app import App
    from jitcore.defines import ElementDefine


class Element:
    """A loaded element: an instance (or a configured Type) bound to its app, its definition and its merged config.

    Subclasses read ``self.config`` (already deep-merged over the parents' config, with ``$env``/``$file`` resolved)
    and may override :meth:`jit_load` (the Type's *loader*) or :meth:`jit_setup` (validation at load time).
    """

    def __init__(self, app: "App", define: "ElementDefine") -> None:
        self.app = app
        self.define = define
        self.config: dict[str, Any] = define.config

    @property
    def fullName(self) -> str:
        """The element's dotted fullName, e.g. ``pays.services.PaySvc``."""
        return self.define.fullName

    @classmethod
    def jit_load(cls, app: "App", define: "ElementDefine") -> "Element":
        """The loader: build the live object of ``define``. The default constructs the class and calls
        :meth:`jit_setup`, where subclasses validate their config (raising ``ConfigError``)."""
        obj = cls(app, define)
        obj.jit_setup()
        return obj

    def jit_setup(self) -> None:
        """Check the config and prepare whatever the element needs; called once, at load. Default: nothing."""

    def jit_close(self) -> None:
        """Release what the element holds (connection pools, threads); called once by :meth:`App.close`. Default:
        nothing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.fullName}>"
