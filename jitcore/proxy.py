"""The object ``app.getElement`` returns: only declared functions are callable, each call checked."""

from __future__ import annotations

from typing import Any, Callable

from jitcore.defines import ElementDefine
from jitcore.element import Element
from jitcore.errors import ConfigError, FunctionNotFound
from jitcore.functions import make_checked_call


class ElementProxy:
    """An element as the outside sees it: one checked callable per entry of its ``functionList``.

    The checked callables are plain instance attributes, so a call costs no ``__getattr__``; any other attribute is a
    :class:`FunctionNotFound` listing the declared functions. The live object is ``proxy._element``."""

    def __init__(self, element: Element, define: ElementDefine) -> None:
        self._element = element
        self._define = define
        self._functions: dict[str, Callable[..., Any]] = {}
        for spec in define.functionList:
            target = getattr(element, spec.name, None)
            if not callable(target):
                raise ConfigError(f"{define.fullName}: declares function {spec.name} but "
                                  f"{type(element).__qualname__} has no such method")
            checked = make_checked_call(define.fullName, spec, target)
            self._functions[spec.name] = checked
            self.__dict__[spec.name] = checked

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        declared = ", ".join(self._functions) or "none"
        raise FunctionNotFound(f"{self._define.fullName} declares no function {name} (declared: {declared})",
                               details={"fullName": self._define.fullName, "function": name})

    def __dir__(self) -> list[str]:
        return sorted(self._functions)

    def __repr__(self) -> str:
        return f"<element {self._define.fullName} ({self._define.kind}) functions={list(self._functions)}>"
