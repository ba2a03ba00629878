"""Layers and hooks: precedence (app > app plugins > installed plugins > official), the real installed entry-point
plugin, the JIT_PLUGINS switch, misspelt hooks, and every hook in jitcore/hookspecs.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from jitcore.errors import ConfigError
from jitcore.hookspecs import jit_app_loaded, jit_element_dirs, jit_resolve_element, jit_routes
from tests.jitcore.conftest import APP_PLUGIN
from tests.jitcore.fixtures import plugins

PAYSVC = "pays.services.PaySvc"
PLUGIN_MODULE = "tests.jitcore.fixtures.plugins"


def test_precedence_app_over_app_plugins_over_installed_over_official(make_app: Any, installed: Any,
                                                                      tmp_path: Any) -> None:
    (tmp_path / "own" / "pays" / "services" / "PaySvc").mkdir(parents=True)
    (tmp_path / "own" / "pays" / "services" / "PaySvc" / "e.yaml").write_text("config: {layer: app_dir, app_dir: true}\n")
    installed(b=f"{PLUGIN_MODULE}:installed_b", a=f"{PLUGIN_MODULE}:installed_a")

    official = make_app(plugins=[]).getDefine(PAYSVC)
    assert official.layer == "installed:a"  # a sorts before b, so a is higher
    assert official.config["layer"] == "installed_a" and official.config["installed_b"] is True
    assert official.function("create") is not None  # the official definition is still the base
    assert official.overrides == ["official", "installed:b"]

    with_plugin = make_app(plugins=[APP_PLUGIN]).getDefine(PAYSVC)
    assert with_plugin.config["layer"] == "app_plugin" and with_plugin.title == "from app_plugin"

    with_app = make_app(plugins=[APP_PLUGIN], elementDirs=["own"],
                        elements={PAYSVC: {"title": "from the app YAML", "config": {"layer": "app"}}})
    top = with_app.getDefine(PAYSVC)
    assert top.title == "from the app YAML" and top.config["layer"] == "app"
    assert all(top.config[name] is True for name in ("app_dir", "app_plugin", "installed_a", "installed_b"))
    assert [s.layer for s in top.sources] == ["official", "installed:b", "installed:a", "app-plugin:" + APP_PLUGIN,
                                              "app", "app"]
    assert [layer.name for layer in with_app.layers] == ["app", "app-plugin:" + APP_PLUGIN, "installed:a",
                                                         "installed:b", "official"]


def test_real_installed_distribution_works_with_no_change_to_the_app(make_app: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JIT_PLUGINS", raising=False)
    app = make_app()
    assert app.getElement("acme.services.HelloSvc").hello(name="x") == {"greeting": "Hello, x!", "from": "acme"}
    define = app.getDefine("acme.services.HelloSvc")
    assert define.layer == "installed:acme" and define.kind == "Instance"
    import acme_elements

    assert "site-packages" in acme_elements.__file__  # a real (non-editable) install, not the source tree


def test_jit_plugins_switch(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JIT_PLUGINS", "none")
    app = make_app()
    assert "acme.services.HelloSvc" not in app.elementNames()
    assert not [layer for layer in app.layers if layer.name.startswith("installed:")]
    monkeypatch.setenv("JIT_PLUGINS", "acme")
    app = make_app()
    assert [layer.name for layer in app.layers if layer.name.startswith("installed:")] == ["installed:acme"]
    monkeypatch.setenv("JIT_PLUGINS", "acme,nosuchplugin")
    with pytest.raises(ConfigError, match="nosuchplugin"):
        make_app()


def test_a_misspelt_hook_is_an_error(make_app: Any, installed: Any) -> None:
    installed(typo=f"{PLUGIN_MODULE}:misspelt")
    with pytest.raises(ConfigError, match="jit_element_dir"):
        make_app()


def test_a_broken_app_plugin_is_an_error(make_app: Any) -> None:
    with pytest.raises(ConfigError, match="no_such_module"):
        make_app(plugins=["no_such_module"])


def test_hook_jit_element_dirs(make_app: Any) -> None:
    assert jit_element_dirs.__doc__
    app = make_app(plugins=[APP_PLUGIN])
    assert app.getDefine("demo.services.Greeter").layer == "app-plugin:" + APP_PLUGIN


def test_hook_jit_resolve_element_first_result_wins(make_app: Any, installed: Any) -> None:
    assert jit_resolve_element.__doc__
    installed(resolver=f"{PLUGIN_MODULE}:resolver")
    app = make_app()
    assert app.getDefine("memory.services.Answer").config == {"answer": 42}
    assert app.getDefine("services.NormalType").layer == "official"  # others fall through to the default


def test_hook_jit_app_loaded(make_app: Any, installed: Any) -> None:
    assert jit_app_loaded.__doc__
    installed(lifecycle=f"{PLUGIN_MODULE}:lifecycle")
    plugins.loaded.clear()
    make_app(appId="loaded1")
    assert plugins.loaded == ["loaded1"]


def test_hook_jit_routes_plugin_routes_come_first(make_app: Any) -> None:
    assert jit_routes.__doc__
    assert _get(make_app(), "/healthz").json()["status"] == "ok"
    assert _get(make_app(plugins=[APP_PLUGIN]), "/healthz").text == "plugin health"


def _get(app: Any, path: str) -> httpx.Response:
    """GET ``path`` from the app served on loopback."""
    from jitcore.http import build_asgi_app
    from tests.support.live import ServerThread, bind_loopback

    sock = bind_loopback()
    server = ServerThread(build_asgi_app(app), sock)
    server.start()
    try:
        return httpx.get(f"http://127.0.0.1:{sock.getsockname()[1]}{path}", timeout=5)
    finally:
        server.stop()


def test_payment_event_hooks_are_specified(make_app: Any) -> None:
    app = make_app()
    for name in ("jit_order_created", "jit_order_paid", "jit_order_closed", "jit_order_refunded"):
        caller = getattr(app.hook, name)
        assert caller.spec is not None and caller.spec.function.__doc__


def test_each_app_has_its_own_plugin_manager(make_app: Any) -> None:
    first, second = make_app(), make_app(plugins=[APP_PLUGIN])
    assert first.pm is not second.pm
    assert "demo.services.Greeter" not in first.elementNames()



def test_every_hook_is_documented_in_its_docstring_and_the_readme() -> None:
    from pathlib import Path

    from elements.pays import hookspecs as pay_hookspecs
    from jitcore import hookspecs

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for module in (hookspecs, pay_hookspecs):
        names = [name for name in dir(module) if name.startswith("jit_")]
        assert names
        for name in names:
            assert getattr(module, name).__doc__, name
            assert name in readme, name
