"""An event implementation tagged "c" that declares only the event's own argument, not ``event``."""

from __future__ import annotations

from typing import Any

from jitcore import hookimpl
from tests.jitcore.jobs_support.jobs_plugin import deliver


@hookimpl
def jit_test_thing_happened(app: Any, thing: dict[str, Any]) -> None:
    """Implementation "c"."""
    deliver(app, "c", thing, None)
