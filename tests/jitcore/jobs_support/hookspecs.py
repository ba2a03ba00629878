"""The test plugins' own event, added with ``jit_hookspecs`` like the payment events are."""

from __future__ import annotations

from typing import Any

from jitcore import hookspec


@hookspec
def jit_test_thing_happened(app: Any, thing: dict[str, Any], event: dict[str, Any]) -> None:
    """A test event: ``thing`` is whatever the test published; ``event`` carries the delivery's id and attempt."""
