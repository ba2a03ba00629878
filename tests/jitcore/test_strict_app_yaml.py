"""Strict app YAML (issue 12, item 6): an elements: entry that neither gives a type or class nor overrides an existing
element is a load error with close matches; an element configured from a plugin that is not installed, or that
JIT_PLUGINS switches off, is a load error that says so. Real installed distributions: acme-elements and
jitpay-acmepay (tests/plugins)."""

from __future__ import annotations

from typing import Any

import pytest

from jitcore.errors import ConfigError

ACME_CONFIG = {"merchantId": "m_1", "apiKey": "k", "webhookSecret": "s", "gateway": "http://127.0.0.1:9"}


def load_error(make_app: Any, **config: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        make_app(baseUrl="http://shop.example", **config)
    return caught.value.message


def test_a_misspelt_element_with_config_is_a_load_error_with_close_matches(make_app: Any) -> None:
    message = load_error(make_app, elements={"pays.AlipayType": {"config": {"appId": "2021"}}})
    assert message.startswith("elements.pays.AlipayType: no layer defines pays.AlipayType")
    assert "no type (or class)" in message and "did you mean pays.AliPayType" in message


def test_an_element_of_a_plugin_that_is_not_installed_says_so(make_app: Any) -> None:
    message = load_error(make_app, elements={"zedpay.ZedPayType": {"config": {"key": "k"}}})
    assert "no layer defines zedpay.ZedPayType" in message
    assert "that plugin is not installed" in message and "acmepay" in message  # it lists what is installed


@pytest.mark.parametrize("switch", ["none", "acme", "sandbox,acme"])
def test_an_element_of_a_plugin_switched_off_by_jit_plugins_names_the_plugin(
        make_app: Any, monkeypatch: pytest.MonkeyPatch, switch: str) -> None:
    monkeypatch.setenv("JIT_PLUGINS", switch)
    message = load_error(make_app, elements={"acmepay.AcmePayType": {"config": ACME_CONFIG}})
    assert "the installed plugin 'acmepay' (acmepay.plugin)" in message
    assert f"JIT_PLUGINS={switch!r} switches off" in message and "add acmepay to JIT_PLUGINS" in message
    # an instance of its Type, too
    message = load_error(make_app, elements={"shop.AcmeHK": {"type": "acmepay.AcmePayType", "config": ACME_CONFIG}})
    assert message.startswith("shop.AcmeHK: its type acmepay.AcmePayType is not defined")
    assert "the installed plugin 'acmepay'" in message


def test_with_its_plugin_on_the_same_yaml_loads(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JIT_PLUGINS", "acmepay")
    app = make_app(baseUrl="http://shop.example", elements={
        "acmepay.AcmePayType": {"config": ACME_CONFIG},
        "shop.AcmeHK": {"type": "acmepay.AcmePayType", "config": ACME_CONFIG}})
    assert app.configures("acmepay.AcmePayType") and app.configures("shop.AcmeHK")
    assert app.getDefine("acmepay.AcmePayType").layer == "app"


def test_new_elements_overrides_and_classes_still_load(make_app: Any) -> None:
    app = make_app(elements={
        "pays.services.PaySvc": {"title": "an override changes a title"},  # overrides: no type needed
        "shop.services.Greeter": {"type": "services.NormalType"},           # new, with a type
        "shop.Plain": {"class": "jitcore.element:Element"},                 # new Meta with a class
    })
    assert app.getDefine("shop.services.Greeter").kind == "Instance" and app.getDefine("shop.Plain").kind == "Meta"
