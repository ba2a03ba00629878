"""From a definition to a class: importing element code and checking that overrides subclass their parents."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from jitcore.defines import ElementDefine, ElementSource
from jitcore.element import Element
from jitcore.errors import ConfigError


def import_class(reference: str, where: str) -> type:
    """Import ``module:Name``."""
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: class {reference} cannot be imported: {exc}") from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ConfigError(f"{where}: {module_name} has no class {attr}")
    return cls


def import_element_module(folder: Path) -> ModuleType:
    """Import the code of an element folder. If the folder is part of an importable package (every folder up to a
    ``sys.path`` entry has an ``__init__.py``), it is imported under its real name, so that
    ``from elements.services.NormalType import NormalService`` and the loader see the same class; otherwise under a
    private name derived from its path."""
    parts: list[str] = []
    current = folder
    while (current / "__init__.py").is_file():
        parts.insert(0, current.name)
        current = current.parent
    if parts:
        name = ".".join(parts)
        try:
            module = importlib.import_module(name)
        except ImportError:
            module = None
        if module is not None and module.__file__ and Path(module.__file__).resolve().parent == folder.resolve():
            return module
    private_name = "_jit_element_" + re.sub(r"\W", "_", str(folder.resolve()))
    if private_name in sys.modules:
        return sys.modules[private_name]
    spec = importlib.util.spec_from_file_location(private_name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[private_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[private_name]
        raise
    return module


def source_class(source: ElementSource) -> type | None:
    """The class one source names: its ``class: module:Name``, or the class its folder's ``__init__.py`` exports under
    the element's short name (or as ``ELEMENT_CLASS``); None if it names none."""
    where = f"{source.fullName} (layer {source.layer})"
    if source.model.class_:
        return import_class(source.model.class_, where)
    if source.folder is not None and (source.folder / "__init__.py").is_file():
        try:
            module = import_element_module(source.folder)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"{where}: its code failed to import: {type(exc).__name__}: {exc}") from exc
        short = source.fullName.rsplit(".", 1)[-1]
        cls = getattr(module, short, None) or getattr(module, "ELEMENT_CLASS", None)
        if not isinstance(cls, type):
            raise ConfigError(f"{where}: {source.folder / '__init__.py'} exports no class {short} "
                              f"(nor ELEMENT_CLASS)")
        return cls
    return None


def element_class(define: ElementDefine, type_class: type | None) -> type[Element]:
    """The class of an element: its own (each override's class must subclass the one below it, and the lowest must
    subclass its type's class), or else its type's class, or :class:`Element`."""
    current: type = type_class or Element
    for source in define.sources:
        cls = source_class(source)
        if cls is None:
            continue
        if not issubclass(cls, current):
            parent_name = f"{current.__module__}.{current.__qualname__}"
            raise ConfigError(f"{define.fullName} (layer {source.layer}): class {cls.__module__}.{cls.__qualname__} "
                              f"must subclass {parent_name}, the class it overrides")
        current = cls
    if not issubclass(current, Element):
        raise ConfigError(f"{define.fullName}: class {current.__qualname__} is not a jitcore Element")
    return current
