"""Helpers for the jitcore tests: write an app YAML, fake installed entry points."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

import jitcore

APP_PLUGIN = "tests.jitcore.fixtures.app_plugin_module"


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., Any]:
    """``make_app(**yaml_keys)`` writes app.yaml (appId ``t`` unless given) and loads it."""
    apps: list[Any] = []

    def make(text: str | None = None, **config: Any) -> Any:
        path = tmp_path / "app.yaml"
        if text is None:
            config.setdefault("appId", "t")
            text = yaml.safe_dump(config, sort_keys=False)
        path.write_text(text)
        app = jitcore.load_app(path)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``installed(name="module:attr", ...)`` makes those the only installed ``jitcore`` entry points."""

    def install(**points: str) -> None:
        eps = [importlib.metadata.EntryPoint(name=name, value=value, group="jitcore")
               for name, value in points.items()]

        def entry_points(**params: Any) -> Any:
            assert params == {"group": "jitcore"}
            return eps

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    return install
