"""The second test plugin: the event implementation tagged "b", and its own "test.layered" kind."""

from __future__ import annotations

from typing import Any

from jitcore import hookimpl
from tests.jitcore.jobs_support.jobs_plugin import deliver, record


@hookimpl
def jit_test_thing_happened(app: Any, thing: dict[str, Any], event: dict[str, Any]) -> None:
    """Implementation "b"."""
    deliver(app, "b", thing, event)


def layered(app: Any, payload: dict, job: Any) -> None:
    record(app, kind=job.kind, id=job.id, by="second_plugin")


@hookimpl
def jit_job_handlers(app: Any) -> dict[str, Any]:
    """Registers "test.layered" too: the higher of the two plugins wins it."""
    return {"test.layered": layered}
