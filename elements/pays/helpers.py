"""Helpers for payment providers, part of the provider contract (docs/PROVIDERS.md, "What a provider may import"):
a provider plugin may use them as it uses :mod:`elements.pays.Meta`, :mod:`elements.pays.errors` and
:mod:`elements.pays.money`.

:class:`ConfigReader` checks an element's merged ``config`` key by key, so that every problem is a
:class:`~jitcore.errors.ConfigError` that names the element and the key and never shows a value (keys come from
``{$file: ...}`` / ``{$env: ...}``). :func:`cut_utf8` shortens text to a byte limit without splitting a character.
"""

from __future__ import annotations

import difflib
import ipaddress
from typing import Any, Mapping, Sequence

from jitcore.errors import ConfigError

__all__ = ["ConfigReader", "cut_utf8"]


class ConfigReader:
    """Reads the merged ``config`` of element ``fullName``. ``keys`` are every key it may hold: another key is refused
    at once, naming the closest known one (``"is not a {what} setting (did you mean 'appId'?)"``)."""

    def __init__(self, fullName: str, raw: Mapping[str, Any], keys: Sequence[str], *, what: str) -> None:
        self.fullName = fullName
        self.raw = raw
        self.keys = tuple(keys)
        unknown = [str(k) for k in raw if k not in self.keys]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, self.keys, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(self.keys)})"
            raise self.fail(key, f"is not a {what} setting" + hint)

    def fail(self, key: str, problem: str) -> ConfigError:
        """The error for ``key``: ``"{fullName}: config key '{key}' {problem}"`` (``problem`` must hold no value)."""
        return ConfigError(f"{self.fullName}: config key '{key}' {problem}",
                           details={"element": self.fullName, "key": key})

    def text(self, key: str, *, required: bool = True) -> str | None:
        """``key`` as text, stripped (a ``{$file: ...}`` may end with a line break; a number is read as its digits).
        Missing or empty: ``None``, or "is required" when ``required``."""
        value = self.raw.get(key)
        if value is None or value == "":
            if required:
                raise self.fail(key, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.fail(key, f"must be text, not {type(value).__name__}")
        return str(value).strip()

    def ip_address(self, key: str, default: str = "127.0.0.1") -> str:
        """``key`` as an IPv4 or IPv6 address (``default`` when not set)."""
        ip = self.text(key, required=False) or default
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise self.fail(key, "must be an IP address") from None
        return ip

    def seconds(self, key: str = "timeout", default: float = 10, most: float = 300) -> float:
        """``key`` as a number of seconds, more than 0 and at most ``most`` (``default`` when not set)."""
        raw = self.raw.get(key, default)
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise self.fail(key, "must be a number of seconds")
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(key, "must be a number of seconds") from None
        if not 0 < value <= most:
            raise self.fail(key, f"must be more than 0 and at most {most:g} seconds")
        return value


def cut_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8 without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")
