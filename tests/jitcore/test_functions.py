"""Declared functions: positional and keyword calls, missing and unknown arguments, and every data type's accept and
reject cases."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from jitcore.errors import ArgumentError

TYPES = ["Stext", "Ltext", "Integer", "Numeric", "Money", "Boolean", "JitDict", "JitList"]


@pytest.fixture
def typed(make_app: Any) -> Any:
    functions = [{"name": "echo", "args": [{"name": t.lower(), "dataType": t} for t in TYPES]},
                 {"name": "total", "args": [{"name": n, "dataType": "Money", "required": True} for n in "abc"]}]
    app = make_app(elements={"t.services.Typed": {"type": "services.NormalType",
                                                  "class": "tests.jitcore.fixtures.app_classes:Typed",
                                                  "functionList": functions}})
    return app.getElement("t.services.Typed")


ACCEPT = [
    ("Stext", "hello", "hello"), ("Stext", "x" * 255, "x" * 255), ("Stext", "中文", "中文"),
    ("Ltext", "y" * 10000, "y" * 10000),
    # tab everywhere; line breaks in Ltext only; DEL and the C1 controls are valid XML and JSON text
    ("Stext", "a\tb", "a\tb"), ("Ltext", "line 1\r\nline 2\n\tend", "line 1\r\nline 2\n\tend"),
    ("Stext", "a\x7fb\x85", "a\x7fb\x85"), ("Ltext", "a\x7fb\x9f", "a\x7fb\x9f"),
    ("Integer", 7, 7), ("Integer", -3, -3), ("Integer", "42", 42),
    ("Numeric", 99.99, Decimal("99.99")), ("Numeric", 1, Decimal("1")), ("Numeric", "0.1", Decimal("0.1")),
    ("Numeric", Decimal("1.005"), Decimal("1.005")),
    ("Money", 99.99, Decimal("99.99")), ("Money", 0.1, Decimal("0.1")), ("Money", "299.00", Decimal("299.00")),
    ("Boolean", True, True), ("Boolean", False, False), ("Boolean", "true", True), ("Boolean", "0", False),
    ("JitDict", {"a": 1}, {"a": 1}), ("JitList", [1, 2], [1, 2]), ("JitList", (1, 2), [1, 2]),
]

REJECT = [
    ("Stext", 5), ("Stext", "x" * 256), ("Stext", b"bytes"), ("Stext", "a\x00b"), ("Stext", "\ud800"),
    ("Ltext", "a\x00b"), ("Ltext", "x\udfff"), ("Ltext", 1.5), ("Ltext", ["a"]),
    # C0 control characters (issue 11): every one but tab in Stext, every one but tab, LF and CR in Ltext
    *[("Stext", f"a{chr(c)}b") for c in range(0x20) if c != 0x09],
    *[("Ltext", f"a{chr(c)}b") for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)],
    ("Integer", True), ("Integer", 1.5), ("Integer", "1.5"), ("Integer", "abc"), ("Integer", []),
    ("Numeric", True), ("Numeric", "abc"), ("Numeric", [1]), ("Money", "1,00"), ("Money", {}),
    ("Boolean", 1), ("Boolean", "maybe"), ("JitDict", [1]), ("JitDict", "a=1"), ("JitList", {"a": 1}),
    ("JitList", "abc"),
]


@pytest.mark.parametrize("data_type, value, expected", ACCEPT)
def test_accepts(typed: Any, data_type: str, value: Any, expected: Any) -> None:
    result = typed.echo(**{data_type.lower(): value})[data_type.lower()]
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("data_type, value", REJECT)
def test_rejects_naming_element_function_and_argument(typed: Any, data_type: str, value: Any) -> None:
    with pytest.raises(ArgumentError) as info:
        typed.echo(**{data_type.lower(): value})
    message = info.value.message
    assert "t.services.Typed.echo" in message and f"'{data_type.lower()}'" in message and data_type in message


def test_money_never_goes_through_binary_float(typed: Any) -> None:
    assert typed.total(0.1, 0.2, 99.99) == Decimal("100.29")
    assert typed.total(a="0.10", b=0.2, c=Decimal("0.30")) == Decimal("0.60")


def test_positional_and_keyword(typed: Any) -> None:
    assert typed.total(1, 2, c=3) == Decimal("6")
    with pytest.raises(ArgumentError, match="takes 3 arguments"):
        typed.total(1, 2, 3, 4)
    with pytest.raises(ArgumentError, match="given twice"):
        typed.total(1, 2, 3, a=1)
    with pytest.raises(ArgumentError, match="missing required argument 'c'"):
        typed.total(1, 2)
    with pytest.raises(ArgumentError, match="missing required argument 'b'"):
        typed.total(a=1, b=None, c=3)
    with pytest.raises(ArgumentError, match="unknown argument 'd'.*declared: a, b, c"):
        typed.total(1, 2, 3, d=4)


def test_optional_arguments_left_out_use_the_method_default(typed: Any) -> None:
    assert typed.echo() == {}
    assert typed.echo(stext=None) == {}


@pytest.mark.parametrize("data_type, value, position", [("Stext", "ok\x1f", 2), ("Ltext", "\x07bell", 0),
                                                       ("Stext", "one\nline", 3)])
def test_a_control_character_is_named_with_its_position(typed: Any, data_type: str, value: str,
                                                        position: int) -> None:
    with pytest.raises(ArgumentError) as info:
        typed.echo(**{data_type.lower(): value})
    assert f"U+{ord(value[position]):04X} at {position}" in info.value.message
    assert info.value.details == {"argument": data_type.lower()}
