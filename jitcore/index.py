"""The element index: every definition from every layer, and how one fullName resolves.

Resolution of a fullName: take its sources lowest layer first; each higher source overrides the one below (its
``config`` deep-merges, its functions replace by name, its texts replace); a ``protected`` or ``private`` element
cannot be overridden. Then the element inherits from its ``type``: the type's config is the base of its config, the
type's functions come before its own. A ``private`` element cannot be used as a type from another layer, nor fetched
by the app unless the app defines it.
"""

from __future__ import annotations

import difflib
import os
import threading
from collections import defaultdict
from typing import TYPE_CHECKING

from jitcore.defines import (ElementDefine, ElementSource, deep_merge, merge_functions, read_element_folder,
                             scan_element_dir)
from jitcore.errors import ConfigError, ElementNotFound

if TYPE_CHECKING:
    from jitcore.app import App
    from jitcore.plugins import Layer


class ElementIndex:
    """All element sources of an app, by fullName, lowest layer first; resolves effective definitions."""

    def __init__(self, app: "App", layers: list["Layer"]) -> None:
        self.app = app
        self.sources: dict[str, list[ElementSource]] = defaultdict(list)
        self._resolved: dict[str, ElementDefine] = {}
        self._lock = threading.RLock()
        self._collect(layers)

    def _collect(self, layers: list["Layer"]) -> None:
        hook_impls = self.app.pm.hook.jit_element_dirs.get_hookimpls()
        for layer in reversed(layers):  # lowest first
            seen_in_layer: dict[str, ElementSource] = {}
            for plugin in layer.plugins:
                for impl in hook_impls:
                    if impl.plugin is not plugin:
                        continue
                    dirs = impl.function(app=self.app) or []
                    for root in dirs:
                        for fullName, folder in scan_element_dir(root).items():
                            if fullName in seen_in_layer:
                                other = seen_in_layer[fullName].folder
                                raise ConfigError(f"{fullName} is defined twice in layer {layer.name}: "
                                                  f"{other} and {folder}")
                            source = ElementSource(fullName, read_element_folder(folder), layer.name, layer.rank,
                                                   folder, root)
                            seen_in_layer[fullName] = source
                            self.sources[fullName].append(source)
        # the app YAML's own entries are the very top
        for fullName, model in self.app.model.elements.items():
            if not (model.type or model.class_ or self.sources.get(fullName)):
                raise ConfigError(f"elements.{fullName}: no layer defines {fullName}, so this entry overrides "
                                  f"nothing, and it gives no type (or class) to be a new element"
                                  f"{self._missing_hint(fullName)}", details={"fullName": fullName})
            self.sources[fullName].append(ElementSource(fullName, model, "app", 0))

    def _missing_hint(self, fullName: str) -> str:
        """Why ``fullName`` may be undefined: close matches, and the installed plugin that ships it but is switched
        off (``JIT_PLUGINS``), or else what is switched off or installed."""
        from jitcore.plugins import PLUGINS_ENV, installed_entry_points, ships_element, switched_off_entry_points

        parts = []
        close = self.suggest(fullName)
        if close:
            parts.append(f"did you mean {', '.join(close)}?")
        off = switched_off_entry_points()
        owner = next((ep for ep in off if ships_element(ep, fullName)), None)
        setting = f"{PLUGINS_ENV}={os.environ.get(PLUGINS_ENV, '')!r}"
        if owner is not None:
            parts.append(f"it comes from the installed plugin {owner.name!r} ({owner.value}), which {setting} "
                         f"switches off: add {owner.name} to {PLUGINS_ENV}")
        elif not any(name.split(".", 1)[0] == fullName.split(".", 1)[0] for name in self.sources):
            # nothing of its namespace is defined: a plugin's element, most likely
            if off:
                parts.append(f"if a plugin provides it: {setting} switches off the installed plugins "
                             f"{', '.join(ep.name for ep in off)}")
            else:
                on = ", ".join(ep.name for ep in installed_entry_points()) or "none"
                parts.append(f"if a plugin provides it, that plugin is not installed (installed plugins: {on}) "
                             f"or not listed under plugins:")
        return "; " + "; ".join(parts) if parts else ""

    def names(self) -> list[str]:
        """Every fullName any layer defines, sorted."""
        return sorted(self.sources)

    def configured(self, fullName: str) -> bool:
        """Whether the app layer (the app YAML's ``elements:`` or its ``elementDirs``) defines or overrides
        ``fullName``."""
        return any(source.layer == "app" for source in self.sources.get(fullName, ()))

    def suggest(self, fullName: str) -> list[str]:
        """Close matches of an unknown name, for error messages."""
        return difflib.get_close_matches(fullName, self.names(), n=3, cutoff=0.6)

    def resolve(self, fullName: str) -> ElementDefine | None:
        """The effective definition of ``fullName``, or None if no layer defines it."""
        define = self._resolved.get(fullName)
        if define is not None:
            return define
        with self._lock:
            return self._resolve(fullName, ())

    def _resolve(self, fullName: str, chain: tuple[str, ...]) -> ElementDefine | None:
        if fullName in self._resolved:
            return self._resolved[fullName]
        sources = self.sources.get(fullName)
        if not sources:
            return None
        if fullName in chain:
            raise ConfigError(f"type cycle: {' -> '.join(chain + (fullName,))}")
        base = sources[0]
        access = base.model.accessModifier or "public"
        for source in sources[1:]:
            if access != "public":
                raise ConfigError(f"{fullName} is {access} in layer {base.layer}: layer {source.layer} cannot "
                                  f"override it")
            if source.model.type and base.model.type and source.model.type != base.model.type:
                raise ConfigError(f"{fullName}: the override in layer {source.layer} changes the type from "
                                  f"{base.model.type} to {source.model.type}; declare a new element instead")
            if source.model.accessModifier and source.model.accessModifier != access:
                access = source.model.accessModifier
        own_type = next((s.model.type for s in reversed(sources) if s.model.type), None)
        functions = merge_functions([], None)
        config: dict = {}
        for source in sources:
            functions = merge_functions(functions, source.model.functionList)
            config = deep_merge(config, source.model.config)
        title = next((s.model.title for s in reversed(sources) if s.model.title), "")
        description = next((s.model.description for s in reversed(sources) if s.model.description), "")

        kind = "Meta"
        if own_type:
            parent = self._resolve(own_type, chain + (fullName,))
            if parent is None:
                raise ConfigError(f"{fullName}: its type {own_type} is not defined{self._missing_hint(own_type)}")
            if parent.accessModifier == "private" and parent.sources[-1].layer != sources[-1].layer:
                raise ConfigError(f"{fullName}: type {own_type} is private to layer {parent.sources[-1].layer}")
            config = deep_merge(parent.config, config)
            functions = merge_functions(parent.functionList, functions)
            if parent.kind == "Meta" or (parent.kind == "Type" and fullName.rsplit(".", 1)[-1].endswith("Type")):
                kind = "Type"
            else:
                kind = "Instance"
        define = ElementDefine(fullName=fullName, type=own_type, kind=kind, title=title, description=description,
                               accessModifier=access, functionList=functions, config=config,
                               layer=sources[-1].layer, sources=list(sources))
        self._resolved[fullName] = define
        return define

    def not_found(self, fullName: str) -> ElementNotFound:
        """The error for an unknown name, with close matches."""
        close = self.suggest(fullName)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return ElementNotFound(f"no element named {fullName}{hint}", details={"fullName": fullName})

