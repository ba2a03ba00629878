"""``GET /openapi.json`` lists every declared function of every element of the app with its arguments, the required
ones and their data types; public functions carry ``security: []``. ``GET /healthz`` answers without a key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from tests.http.test_api import assert_no_secret
from tests.support.live import LiveApp, start_live_app

PAYSVC_YAML = Path(__file__).resolve().parents[2] / "elements" / "pays" / "services" / "PaySvc" / "e.yaml"

#: the JSON Schema each JitAi data type must be shown as (checked loosely: the distinctive keys)
EXPECTED_TYPES: dict[str, dict[str, Any]] = {
    "Stext": {"type": "string", "maxLength": 255},
    "Ltext": {"type": "string"},
    "Integer": {"type": "integer"},
    "Boolean": {"type": "boolean"},
    "JitDict": {"type": "object"},
    "JitList": {"type": "array"},
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    with start_live_app(tmp_path_factory.mktemp("openapi")) as live_app:
        yield live_app


@pytest.fixture(scope="module")
def doc(live: LiveApp) -> dict[str, Any]:
    with live.client() as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def declared_functions(live: LiveApp) -> dict[str, tuple[str, Any]]:
    """``{path: (fullName, spec)}`` of every function declared by a visible element of the app."""
    found = {}
    for name in live.app.elementNames():
        define = live.app.getDefine(name)
        if define.accessModifier == "private" and define.layer != "app":
            continue
        for spec in define.functionList:
            found[f"/api/{live.app.appId}/{name.replace('.', '/')}/{spec.name}"] = (name, spec)
    return found


def request_schema(operation: dict[str, Any]) -> dict[str, Any]:
    return operation["requestBody"]["content"]["application/json"]["schema"]


def test_document_header(doc: dict[str, Any], live: LiveApp) -> None:
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    schemes = doc["components"]["securitySchemes"]
    assert any(s.get("type") == "http" and s.get("scheme", "").lower() == "bearer" for s in schemes.values())
    # protected by default
    assert doc["security"] and all(set(req) <= set(schemes) for req in doc["security"])


def test_every_declared_function_is_listed(doc: dict[str, Any], live: LiveApp) -> None:
    declared = declared_functions(live)
    assert len(declared) >= 8
    api_paths = {path for path in doc["paths"] if path.startswith("/api/")}
    assert api_paths == set(declared)
    for path in declared:
        assert set(doc["paths"][path]) == {"post"}
    operation_ids = [doc["paths"][p]["post"]["operationId"] for p in api_paths]
    assert len(set(operation_ids)) == len(operation_ids)


def test_paysvc_functions_match_its_e_yaml(doc: dict[str, Any]) -> None:
    """Against the declaration file itself, not the runtime's reading of it."""
    functions = yaml.safe_load(PAYSVC_YAML.read_text())["functionList"]
    assert {f["name"] for f in functions} == {"create", "getPayUrl", "query", "check", "close", "refund",
                                              "alipayNotify", "wechatNotify"}
    for function in functions:
        path = f"/api/shop/pays/services/PaySvc/{function['name']}"
        operation = doc["paths"][path]["post"]
        schema = request_schema(operation)
        assert schema["type"] == "object"
        args = function.get("args", [])
        assert list(schema["properties"]) == [a["name"] for a in args]
        assert sorted(schema.get("required", [])) == sorted(a["name"] for a in args if a.get("required"))
        assert schema.get("additionalProperties") is False  # unknown arguments are refused, as the API does
        for arg in args:
            prop = schema["properties"][arg["name"]]
            assert prop["x-jit-dataType"] == arg["dataType"]
            if arg.get("title"):
                assert prop.get("description") == arg["title"]
        if function.get("title"):
            assert operation["summary"] == function["title"]
        if function.get("public"):
            assert operation["security"] == []
        else:
            assert "security" not in operation or operation["security"], function["name"]


def test_create_arguments_in_detail(doc: dict[str, Any]) -> None:
    schema = request_schema(doc["paths"]["/api/shop/pays/services/PaySvc/create"]["post"])
    assert schema["required"] == ["subject", "amount"]
    subject, amount, order_id = (schema["properties"][k] for k in ("subject", "amount", "orderId"))
    assert subject["type"] == "string" and subject["maxLength"] == 255
    assert order_id["type"] == "string"
    # Money: an exact decimal string (what the API returns) or a JSON number
    kinds = {alt.get("type") for alt in amount.get("oneOf", amount.get("anyOf", [amount]))}
    assert "string" in kinds and "number" in kinds


@pytest.mark.parametrize("data_type, expected", list(EXPECTED_TYPES.items()))
def test_data_types_are_json_schema(doc: dict[str, Any], live: LiveApp, data_type: str,
                                    expected: dict[str, Any]) -> None:
    seen = False
    for path, (_, spec) in declared_functions(live).items():
        schema = request_schema(doc["paths"][path]["post"])
        for arg in spec.args:
            if arg.dataType == data_type:
                seen = True
                prop = schema["properties"][arg.name]
                assert {k: prop.get(k) for k in expected} == expected, (path, arg.name, prop)
    if data_type in ("Stext", "JitDict"):
        assert seen  # PaySvc uses these


def test_every_argument_of_every_element_is_typed(doc: dict[str, Any], live: LiveApp) -> None:
    for path, (_, spec) in declared_functions(live).items():
        operation = doc["paths"][path]["post"]
        schema = request_schema(operation)
        assert list(schema["properties"]) == [a.name for a in spec.args]
        assert sorted(schema.get("required", [])) == sorted(a.name for a in spec.args if a.required)
        for arg in spec.args:
            prop = schema["properties"][arg.name]
            assert prop["x-jit-dataType"] == arg.dataType
            assert "type" in prop or "oneOf" in prop or "anyOf" in prop, (path, arg.name)
        assert "200" in operation["responses"]
        if spec.public:
            assert operation["security"] == []
        else:
            assert "security" not in operation or operation["security"]
            assert {"401", "403"} <= set(operation["responses"])


def test_public_flags_hold_over_http(doc: dict[str, Any], live: LiveApp) -> None:
    """What the document says about security is what the server does."""
    public = {p for p, op in doc["paths"].items() if p.startswith("/api/") and op["post"].get("security") == []}
    assert public == {"/api/shop/pays/services/PaySvc/alipayNotify", "/api/shop/pays/services/PaySvc/wechatNotify"}
    with httpx.Client(base_url=live.url, timeout=10) as anonymous:
        for path in doc["paths"]:
            if not path.startswith("/api/"):
                continue
            response = anonymous.post(path, content=b"")
            if path in public:
                assert response.status_code not in (401, 403, 404, 500), (path, response.text)
            else:
                assert response.status_code == 401, (path, response.text)
                assert response.json()["error"]["code"] == "UNAUTHORIZED"


def test_document_and_health_need_no_key(live: LiveApp) -> None:
    with httpx.Client(base_url=live.url, timeout=10) as anonymous:
        health = anonymous.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert anonymous.get("/openapi.json").status_code == 200


def test_no_secret_in_the_document(doc: dict[str, Any], live: LiveApp) -> None:
    assert_no_secret(live, json.dumps(doc))
