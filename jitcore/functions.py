"""Declared functions: checking a call against its ``functionList`` entry.

:func:`make_checked_call` is built once per element and function at load time, so a call costs a few dict look-ups
and one converter per argument (see ``benchmarks/run.py``).
"""

from __future__ import annotations

from typing import Any, Callable

from jitcore.config import FunctionModel
from jitcore.datatypes import CONVERTERS
from jitcore.errors import ArgumentError


def make_checked_call(fullName: str, spec: FunctionModel, target: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``target`` so that every call is checked against ``spec``: positional arguments map to the declared
    order, unknown or missing required arguments and values that do not fit their data type raise
    :class:`ArgumentError` naming the element, the function and the argument. Optional arguments left out, or given
    as ``None``, are not passed on (the method's default applies)."""
    names = tuple(a.name for a in spec.args)
    count = len(names)
    converters = {a.name: CONVERTERS[a.dataType] for a in spec.args}
    data_types = {a.name: a.dataType for a in spec.args}
    required = tuple(a.name for a in spec.args if a.required)
    where = f"{fullName}.{spec.name}"

    def checked_call(*args: Any, **kwargs: Any) -> Any:
        if len(args) > count:
            raise ArgumentError(f"{where}: takes {count} arguments ({', '.join(names)}), {len(args)} given")
        values = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in converters:
                raise ArgumentError(f"{where}: unknown argument '{key}' (declared: {', '.join(names) or 'none'})",
                                    details={"argument": key})
            if key in values:
                raise ArgumentError(f"{where}: argument '{key}' given twice", details={"argument": key})
            values[key] = value
        for key in required:
            if values.get(key) is None:
                raise ArgumentError(f"{where}: missing required argument '{key}'", details={"argument": key})
        converted = {}
        for key, value in values.items():
            if value is None:
                continue
            try:
                converted[key] = converters[key](value)
            except ValueError as exc:
                raise ArgumentError(f"{where}: argument '{key}' is not a valid {data_types[key]}: {exc}",
                                    details={"argument": key}) from None
        return target(**converted)

    checked_call.__name__ = spec.name
    checked_call.__qualname__ = where
    checked_call.__doc__ = spec.description or spec.title or getattr(target, "__doc__", None)
    return checked_call
