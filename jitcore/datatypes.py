"""JitAi data types: how a declared argument's value is checked and converted.

Each converter takes a value and returns the converted value, or raises ``ValueError`` with a short reason. They are
deliberately strict (a bool is not an Integer, a number is not text) and they never let a binary float through:
``Numeric``/``Money`` go through ``str``, so ``99.99`` arrives as ``Decimal("99.99")``. Text forms of numbers and
booleans are accepted so that the CLI (``key=value``) and query strings work.

Text holds no C0 control character (U+0000 to U+001F) but tab; ``Ltext`` also carries line breaks (``\n``, ``\r``),
``Stext`` is one line. Such characters are refused at the door because no payment provider, XML document or log
line carries them safely (DEL and the C1 controls are valid XML and JSON and are kept).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Mapping

Converter = Callable[[Any], Any]

_INTEGER_TEXT = re.compile(r"^[+-]?\d{1,30}$")
STEXT_MAX = 255


#: control characters refused in text: every C0 control but tab, line feed and carriage return (Ltext); Stext is
#: one line, so it refuses the line breaks too
_LTEXT_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
_STEXT_CONTROL = re.compile("[\x00-\x08\x0a-\x1f]")


def _text(value: Any, control: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    found = control.search(value)
    if found:
        char = found.group()
        name = "NUL characters" if char == "\x00" else f"control characters (U+{ord(char):04X} at {found.start()})"
        raise ValueError(f"{what} must not contain {name}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (a lone surrogate)") from None
    return value


def _ltext(value: Any) -> str:
    return _text(value, _LTEXT_CONTROL, "text")


def _stext(value: Any) -> str:
    value = _text(value, _STEXT_CONTROL, "one-line text")
    if len(value) > STEXT_MAX:
        raise ValueError(f"text longer than {STEXT_MAX} characters")
    return value


def _integer(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and _INTEGER_TEXT.match(value.strip()):
        return int(value)
    raise ValueError(f"expected an integer, got {type(value).__name__}")


def _numeric(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a number, got bool")
    if isinstance(value, (int, float)):
        # str() of a float is its shortest round-tripping repr: 99.99 -> "99.99", never 99.98999999...
        return Decimal(str(value))
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise ValueError("expected a number") from None
    raise ValueError(f"expected a number, got {type(value).__name__}")


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise ValueError(f"expected true or false, got {type(value).__name__}")


def _jitdict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, Mapping):
        return dict(value)
    raise ValueError(f"expected a mapping, got {type(value).__name__}")


def _jitlist(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    raise ValueError(f"expected a list, got {type(value).__name__}")


CONVERTERS: dict[str, Converter] = {
    "Stext": _stext,
    "Ltext": _ltext,
    "Integer": _integer,
    "Numeric": _numeric,
    "Money": _numeric,
    "Boolean": _boolean,
    "JitDict": _jitdict,
    "JitList": _jitlist,
}

#: JSON Schema of each data type, for the OpenAPI document. Numbers travel as strings or numbers; results carry
#: money as strings with two places.
JSON_SCHEMAS: dict[str, dict[str, Any]] = {
    "Stext": {"type": "string", "maxLength": STEXT_MAX},
    "Ltext": {"type": "string"},
    "Integer": {"type": "integer"},
    "Numeric": {"oneOf": [{"type": "string", "pattern": r"^-?\d+(\.\d+)?$"}, {"type": "number"}]},
    "Money": {"oneOf": [{"type": "string", "pattern": r"^\d+(\.\d{1,2})?$"}, {"type": "number"}]},
    "Boolean": {"type": "boolean"},
    "JitDict": {"type": "object"},
    "JitList": {"type": "array"},
}
