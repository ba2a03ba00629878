"""Errors with a stable code and a message a person can act on.

Every error the runtime or an element raises on purpose is a :class:`JitError`. Its ``code`` is part of the public
contract (clients switch on it); its ``message`` is for people. Over HTTP an error becomes
``{"error": {"code": ..., "message": ...}}`` with ``http_status``. A message never carries a secret.
"""

from __future__ import annotations

from typing import Any


class JitError(Exception):
    """An expected failure with a stable ``code`` and a human ``message``."""

    code: str = "JIT_ERROR"
    http_status: int = 400

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of this error: ``{"code", "message"}`` plus any details."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConfigError(JitError):
    """The app YAML, an element definition or a plugin is wrong; raised while loading."""

    code = "CONFIG_ERROR"
    http_status = 500


class ElementNotFound(JitError):
    """No layer defines an element of that fullName (or it is private to another layer)."""

    code = "ELEMENT_NOT_FOUND"
    http_status = 404


class FunctionNotFound(JitError):
    """The element declares no function of that name in its ``functionList``."""

    code = "FUNCTION_NOT_FOUND"
    http_status = 404


class ArgumentError(JitError):
    """A call's arguments do not match the function's declaration."""

    code = "ARGUMENT_INVALID"
    http_status = 400


class AuthError(JitError):
    """The caller did not present a valid API key."""

    code = "UNAUTHORIZED"
    http_status = 401
