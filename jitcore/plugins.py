"""Building an App's plugin manager: the four layers, registered lowest first.

Precedence, highest first (written down here, tested in ``tests/jitcore/test_layers.py``):

1. ``app``: the app YAML's ``elements:`` and its ``elementDirs``;
2. ``app-plugin:<module>``: modules listed under ``plugins:`` in the app YAML, earlier in the list = higher;
3. ``installed:<name>``: entry points of group ``jitcore``, ordered by entry point name (A before B = higher);
4. ``official``: the official element library (``elements.official``).

The environment variable ``JIT_PLUGINS`` limits installed plugins: unset = all, ``none`` = none, or a comma-separated
list of entry point names (a name that is not installed is a load error).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from jitcore import hookspecs
from jitcore.errors import ConfigError
from jitcore.hookspecs import hookimpl

if TYPE_CHECKING:
    from jitcore.app import App

ENTRY_POINT_GROUP = "jitcore"
OFFICIAL_PLUGIN = "elements.official"
PLUGINS_ENV = "JIT_PLUGINS"


@dataclass
class Layer:
    """One precedence layer: its name, rank (0 = highest) and the plugin objects registered for it."""

    name: str
    rank: int
    plugins: list[Any] = field(default_factory=list)


class AppLayerPlugin:
    """The app itself as a plugin: contributes the YAML's ``elementDirs``."""

    def __init__(self, app: "App") -> None:
        self.app = app

    @hookimpl
    def jit_element_dirs(self, app: "App") -> list[Path]:
        """The app's own element folders (``elementDirs`` in the YAML, relative to it)."""
        return [app.root / d for d in app.model.elementDirs]


class DefaultResolver:
    """The built-in ``jit_resolve_element``: walks the layers' element folders and the app YAML."""

    @hookimpl(trylast=True)
    def jit_resolve_element(self, app: "App", fullName: str) -> Any:
        """Resolve from the element index (overrides and type inheritance applied)."""
        return app.index.resolve(fullName)


def installed_entry_points() -> list[importlib.metadata.EntryPoint]:
    """Entry points of group ``jitcore``, filtered by ``JIT_PLUGINS``, sorted by name."""
    points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    wanted = os.environ.get(PLUGINS_ENV)
    if wanted is None:
        return points
    wanted = wanted.strip()
    if wanted.lower() == "none" or wanted == "":
        return []
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    available = {ep.name for ep in points}
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(f"{PLUGINS_ENV} names plugins that are not installed: {', '.join(missing)} "
                          f"(installed: {', '.join(sorted(available)) or 'none'})")
    return [ep for ep in points if ep.name in names]


def switched_off_entry_points() -> list[importlib.metadata.EntryPoint]:
    """Installed plugins that ``JIT_PLUGINS`` leaves out (none when it is unset), sorted by name."""
    if os.environ.get(PLUGINS_ENV) is None:
        return []
    kept = {ep.name for ep in installed_entry_points()}
    return sorted((ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name not in kept),
                  key=lambda ep: ep.name)


def ships_element(ep: importlib.metadata.EntryPoint, fullName: str) -> bool:
    """Whether the distribution of an entry point ships an element folder for ``fullName`` (judged from its
    installed files, without importing it; an editable install lists none, so its package name must match the
    fullName's first part)."""
    wanted = "/".join(fullName.split(".")) + "/e.yaml"
    dist = getattr(ep, "dist", None)
    files = (dist.files if dist is not None else None) or []
    if any(str(f).replace("\\", "/").endswith(wanted) for f in files):
        return True
    namespace = fullName.split(".", 1)[0].lower()
    return namespace in (ep.name.lower(), ep.value.split(".", 1)[0].split(":", 1)[0].lower())


def _import_plugin(module_name: str, what: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {module_name!r} cannot be imported: {exc}") from None


def build_plugin_manager(app: "App") -> tuple[pluggy.PluginManager, list[Layer]]:
    """Create the app's PluginManager and register every layer, lowest first. Nothing is global: each App has its
    own manager. A hook implementation with no matching spec is a ConfigError."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(DefaultResolver(), name="jitcore.resolver")

    official = Layer("official", 3, [_import_plugin(OFFICIAL_PLUGIN, "the official element library")])
    installed_layers = []
    for ep in installed_entry_points():
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken installed plugin must say which one it is
            raise ConfigError(f"installed plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from None
        installed_layers.append(Layer(f"installed:{ep.name}", 2, [plugin]))
    app_plugin_layers = [Layer(f"app-plugin:{name}", 1, [_import_plugin(name, "app plugin")])
                         for name in app.model.plugins]
    app_layer = Layer("app", 0, [AppLayerPlugin(app)])

    # lowest first; within a rank, the first listed has the higher precedence, so it registers last
    ordered = [official, *reversed(installed_layers), *reversed(app_plugin_layers), app_layer]
    for layer in ordered:
        for plugin in layer.plugins:
            for spec_source in getattr(plugin, "jit_hookspecs", ()):
                pm.add_hookspecs(spec_source)
    for layer in ordered:
        for plugin in layer.plugins:
            if pm.is_registered(plugin):
                raise ConfigError(f"plugin {layer.name} is registered twice")
            pm.register(plugin, name=layer.name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) if getattr(exc, "plugin", None) is not None else "?"
        raise ConfigError(f"plugin {name}: {exc} (a hook implementation must match a hookspec in "
                          f"jitcore/hookspecs.py or one a plugin adds; check the name for typos)") from None
    highest_first = [app_layer, *app_plugin_layers, *installed_layers, official]
    return pm, highest_first
