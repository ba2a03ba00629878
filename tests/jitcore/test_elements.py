"""Elements: kinds, getElement (cache, threads, unknown names), overrides with config merge, rejected overrides,
subclassing in Python, new instances of a Type, accessModifier."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from jitcore.errors import ConfigError, ElementNotFound, FunctionNotFound
from tests.jitcore.conftest import APP_PLUGIN

GREETER = "demo.services.Greeter"


def test_kinds(make_app: Any) -> None:
    app = make_app()
    kinds = {name: app.getDefine(name).kind for name in ("services.Meta", "services.NormalType", "pays.Meta",
                                                         "pays.AliPayType", "pays.services.PaySvc")}
    assert kinds == {"services.Meta": "Meta", "services.NormalType": "Type", "pays.Meta": "Meta",
                     "pays.AliPayType": "Type", "pays.services.PaySvc": "Instance"}


def test_get_element_caches_and_loads_once_under_threads(make_app: Any) -> None:
    app = make_app(plugins=[APP_PLUGIN])
    cls = app.classOf(app.getDefine(GREETER))
    built: list[Any] = []
    original = cls.jit_load.__func__

    def counting(klass: Any, app_: Any, define: Any) -> Any:
        built.append(define.fullName)
        return original(klass, app_, define)

    cls.jit_load = classmethod(counting)
    try:
        results: list[Any] = []
        barrier = threading.Barrier(8)

        def get() -> None:
            barrier.wait()
            results.append(app.getElement(GREETER))

        threads = [threading.Thread(target=get) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del cls.jit_load
    assert built == [GREETER]
    assert all(r is results[0] for r in results)
    assert app.getElement(GREETER).greet(name="Ann")["text"] == "Hello, Ann!"


def test_unknown_element_names_it_and_suggests(make_app: Any) -> None:
    app = make_app()
    with pytest.raises(ElementNotFound) as info:
        app.getElement("pays.services.PaySrv")
    assert "pays.services.PaySrv" in info.value.message and "pays.services.PaySvc" in info.value.message


def test_only_declared_functions_are_callable(make_app: Any) -> None:
    greeter = make_app(plugins=[APP_PLUGIN]).getElement(GREETER)
    with pytest.raises(FunctionNotFound, match="declared: greet"):
        greeter.secret()


def test_override_deep_merges_config(make_app: Any) -> None:
    app = make_app(plugins=[APP_PLUGIN], elements={GREETER: {"config": {"greeting": "Hi", "nested": {"b": 3}}}})
    define = app.getDefine(GREETER)
    assert define.config == {"greeting": "Hi", "punctuation": "!", "nested": {"a": 1, "b": 3}}
    assert app.getElement(GREETER).greet(name="Bo") == {"text": "Hi, Bo!", "nested": {"a": 1, "b": 3}}


def test_override_class_must_subclass(make_app: Any) -> None:
    with pytest.raises(ConfigError, match="must subclass"):
        make_app(plugins=[APP_PLUGIN],
                 elements={GREETER: {"class": "tests.jitcore.fixtures.app_classes:LoudGreeter"}})


def test_protected_elements_cannot_be_overridden(make_app: Any) -> None:
    with pytest.raises(ConfigError, match="protected"):
        make_app(elements={"services.NormalType": {"title": "mine"}})


def test_override_cannot_change_the_type(make_app: Any) -> None:
    with pytest.raises(ConfigError, match="changes the type"):
        make_app(elements={"pays.services.PaySvc": {"type": "pays.Meta"}})


def test_private_elements(make_app: Any, tmp_path: Any) -> None:
    folder = tmp_path / "own" / "secret" / "services" / "Hidden"
    folder.mkdir(parents=True)
    (folder / "e.yaml").write_text("type: services.NormalType\naccessModifier: private\n")
    app = make_app(elementDirs=["own"])
    assert app.getDefine("secret.services.Hidden").accessModifier == "private"
    app.getElement("secret.services.Hidden")  # the app sees its own private element
    # a plugin layer's private element is neither visible to the app nor usable as a type from the app
    with pytest.raises(ConfigError, match="private"):
        make_app(plugins=["tests.jitcore.fixtures.private_plugin"],
                 elements={"mine.services.Sub": {"type": "plugin.services.Private"}})
    other = make_app(plugins=["tests.jitcore.fixtures.private_plugin"])
    with pytest.raises(ElementNotFound, match="private"):
        other.getElement("plugin.services.Private")
    with pytest.raises(ConfigError, match="private"):
        make_app(plugins=["tests.jitcore.fixtures.private_plugin"],
                 elements={"plugin.services.Private": {"config": {"x": 1}}})


def test_python_subclass_overrides_and_adds_functions(make_app: Any) -> None:
    app = make_app(plugins=[APP_PLUGIN], elements={GREETER: {
        "class": "tests.jitcore.fixtures.app_classes:PoliteGreeter",
        "functionList": [{"name": "farewell", "args": [{"name": "name", "dataType": "Stext", "required": True},
                                                      {"name": "times", "dataType": "Integer"}]}]}})
    greeter = app.getElement(GREETER)
    assert greeter.greet(name="Cy")["text"] == "Hello, Cy! Welcome."
    assert greeter.farewell("Cy", 2) == {"text": "Goodbye, Cy. Goodbye, Cy."}
    assert [f.name for f in app.getDefine(GREETER).functionList] == ["greet", "farewell"]
    assert app.getDefine(GREETER).overrides == ["app-plugin:" + APP_PLUGIN]


def test_declared_function_without_a_method_is_an_error(make_app: Any) -> None:
    app = make_app(plugins=[APP_PLUGIN], elements={GREETER: {"functionList": [{"name": "vanish"}]}})
    with pytest.raises(ConfigError, match="vanish"):
        app.getElement(GREETER)


def test_new_instance_of_a_type(make_app: Any) -> None:
    app = make_app(plugins=[APP_PLUGIN], elements={"shop.services.Welcome": {
        "type": GREETER, "title": "Welcome desk", "config": {"greeting": "Welcome"}}})
    define = app.getDefine("shop.services.Welcome")
    assert define.type == GREETER and define.kind == "Instance" and define.layer == "app"
    assert app.getElement("shop.services.Welcome").greet(name="Di")["text"] == "Welcome, Di!"
    assert app.getElement(GREETER).greet(name="Di")["text"] == "Hello, Di!"  # the parent is unchanged


def test_new_element_with_an_unknown_type(make_app: Any) -> None:
    with pytest.raises(ConfigError, match="services.NormalTyp.*did you mean services.NormalType"):
        make_app(elements={"shop.services.X": {"type": "services.NormalTyp"}})


def test_type_cycles_are_refused(make_app: Any) -> None:
    with pytest.raises(ConfigError, match="cycle"):
        make_app(elements={"a.services.A": {"type": "a.services.B"}, "a.services.B": {"type": "a.services.A"}})
