"""Element definitions: finding them in folders and the app YAML, and merging overrides and type inheritance."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jitcore.config import ElementModel, FunctionModel, load_element_model

ELEMENT_FILE = "e.yaml"


@dataclass
class ElementSource:
    """One layer's definition of a fullName, as written (before merging)."""

    fullName: str
    model: ElementModel
    layer: str  # "app", "app-plugin:NAME", "installed:NAME", "official"
    rank: int  # 0 = app (highest) ... larger = lower precedence
    folder: Path | None = None  # the element folder (None for an app YAML entry)
    root: Path | None = None  # the element dir the folder was found under


@dataclass
class ElementDefine:
    """The effective definition of an element: overrides applied and inherited fields filled in from its type."""

    fullName: str
    type: str | None
    kind: str  # "Meta" | "Type" | "Instance"
    title: str
    description: str
    accessModifier: str
    functionList: list[FunctionModel]
    config: dict[str, Any]
    layer: str
    sources: list[ElementSource] = field(default_factory=list)  # lowest layer first

    @property
    def overrides(self) -> list[str]:
        """The layers this definition overrides (every source below the top one)."""
        return [s.layer for s in self.sources[:-1]]

    def function(self, name: str) -> FunctionModel | None:
        """The declared function ``name``, or None."""
        for spec in self.functionList:
            if spec.name == name:
                return spec
        return None


def scan_element_dir(root: Path) -> dict[str, Path]:
    """Every element folder below ``root``: fullName -> folder (the folder holds an ``e.yaml``)."""
    found: dict[str, Path] = {}
    root = Path(root)
    if not root.is_dir():
        return found
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        if ELEMENT_FILE in files:
            relative = Path(current).relative_to(root)
            if relative.parts:
                found[".".join(relative.parts)] = Path(current)
    return found


def read_element_folder(folder: Path) -> ElementModel:
    """Read the ``e.yaml`` of an element folder."""
    return load_element_model(folder / ELEMENT_FILE)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged over ``base``: nested mappings merge key by key, anything else replaces. Inputs are not
    changed."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_functions(base: list[FunctionModel], override: list[FunctionModel] | None) -> list[FunctionModel]:
    """``override``'s functions replace ``base``'s of the same name; new ones are appended."""
    if not override:
        return list(base)
    by_name = {f.name: f for f in base}
    order = [f.name for f in base]
    for spec in override:
        if spec.name not in by_name:
            order.append(spec.name)
        by_name[spec.name] = spec
    return [by_name[name] for name in order]
