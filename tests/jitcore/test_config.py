"""The app YAML: validation with the key's path and a hint, $env / $file, relative paths, and each config error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jitcore.errors import ConfigError
from jitcore.http import build_asgi_app


def error_of(make_app: Any, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        make_app(text)
    return info.value.message


def test_minimal_app(make_app: Any, tmp_path: Path) -> None:
    app = make_app("appId: shop\n")
    assert app.appId == "shop" and app.title == "shop" and app.baseUrl is None
    assert app.database_url == f"sqlite:///{tmp_path.resolve() / 'shop.db'}"


def test_unknown_key_names_its_path_and_suggests(make_app: Any) -> None:
    message = error_of(make_app, "appId: shop\ndatabse: sqlite:///x.db\n")
    assert "databse: unknown key" in message and "did you mean 'database'" in message
    message = error_of(make_app, "appId: shop\nelements:\n  pays.AliPayType:\n    confg: {}\n")
    assert "elements.pays.AliPayType.confg: unknown key" in message and "'config'" in message


def test_wrong_types(make_app: Any) -> None:
    assert "plugins" in error_of(make_app, "appId: shop\nplugins: demo\n")
    message = error_of(make_app, "appId: shop\nelements:\n  a.B:\n    accessModifier: secret\n")
    assert "elements.a.B.accessModifier" in message and "'public'" in message
    message = error_of(make_app, "appId: shop\nelements:\n  a.B:\n    functionList:\n      - name: f\n"
                                 "        args: [{name: x, dataType: Float}]\n")
    assert "elements.a.B.functionList.0.args.0.dataType" in message and "Money" in message
    assert "appId" in error_of(make_app, "title: no id\n")
    assert "appId" in error_of(make_app, "appId: 'has space'\n")
    assert "baseUrl" in error_of(make_app, "appId: shop\nbaseUrl: ftp://x\n")
    assert "not a dotted fullName" in error_of(make_app, "appId: shop\nelements:\n  Single: {}\n")
    assert "class" in error_of(make_app, "appId: shop\nelements:\n  a.B:\n    class: not-a-reference\n")


def test_bad_yaml_and_shapes(make_app: Any) -> None:
    assert "not valid YAML (line 2" in error_of(make_app, "appId: shop\n  bad: [indent\n")
    assert "must be a mapping" in error_of(make_app, "- a list\n")


def test_env_and_file_references(make_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key.txt").write_text("file-api-key-0123456789\n")
    monkeypatch.setenv("SHOP_KEY", "env-api-key-0123456789")
    app = make_app("appId: shop\napiKeys:\n  - {$env: SHOP_KEY}\n  - {$file: secrets/key.txt}\n"
                   "settings:\n  x: {nested: [{$env: SHOP_KEY}]}\n")
    assert app.model.apiKeys == ["env-api-key-0123456789", "file-api-key-0123456789"]
    assert app.settings == {"x": {"nested": ["env-api-key-0123456789"]}}


def test_missing_env_and_file_name_them(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_VAR", raising=False)
    # an API key is needed only to serve: the app loads, and the HTTP face refuses to start, naming it
    app = make_app("appId: shop\napiKeys: [{$env: NO_SUCH_VAR}, {$file: secrets/missing.txt}]\n")
    assert app.model.apiKeys == []
    with pytest.raises(ConfigError) as refused:
        build_asgi_app(app)
    assert "apiKeys[0]: environment variable NO_SUCH_VAR is not set" in refused.value.message
    assert "apiKeys[1]: file secrets/missing.txt not found" in refused.value.message
    message = error_of(make_app, "appId: shop\nelements:\n  pays.AliPayType:\n    config:\n"
                                 "      privateKey: {$file: keys/missing.pem}\n")
    assert "elements.pays.AliPayType.config.privateKey" in message and "keys/missing.pem not found" in message


def test_secrets_never_appear_in_errors(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHORT_KEY", "s3cr3t-value")
    message = error_of(make_app, "appId: shop\napiKeys: [{$env: SHORT_KEY}]\n")
    assert "at least 16 characters" in message and "s3cr3t-value" not in message


def test_relative_paths_are_relative_to_the_yaml(make_app: Any, tmp_path: Path) -> None:
    app = make_app("appId: shop\ndatabase: sqlite:///data/shop.db\n")
    assert app.database_url == f"sqlite:///{tmp_path.resolve() / 'data' / 'shop.db'}"
    assert make_app("appId: shop\ndatabase: sqlite:////abs/x.db\n").database_url == "sqlite:////abs/x.db"
    url = "postgresql+psycopg://u@127.0.0.1:5432/db"
    assert make_app(f"appId: shop\ndatabase: '{url}'\n").database_url == url
    assert "database" in error_of(make_app, "appId: shop\ndatabase: 'not a url'\n")


def test_element_definition_errors_are_load_errors(make_app: Any, tmp_path: Path) -> None:
    folder = tmp_path / "own" / "x" / "services" / "Bad"
    folder.mkdir(parents=True)
    (folder / "e.yaml").write_text("type: services.NormalType\nfunctionList: [{name: f, colour: red}]\n")
    message = error_of(make_app, "appId: shop\nelementDirs: [own]\n")
    assert "e.yaml" in message and "functionList.0.colour: unknown key" in message


def test_duplicate_function_and_argument_names(make_app: Any) -> None:
    assert "declared twice" in error_of(make_app, "appId: shop\nelements:\n  a.B:\n    functionList:\n"
                                                  "      - {name: f}\n      - {name: f}\n")
