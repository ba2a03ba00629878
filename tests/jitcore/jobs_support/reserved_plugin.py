"""A plugin that tries to register a kind under jitcore's reserved ``jit.`` prefix."""

from __future__ import annotations

from typing import Any

from jitcore import hookimpl


@hookimpl
def jit_job_handlers(app: Any) -> dict[str, Any]:
    """Refused: ``jit.`` names are jitcore's."""
    return {"jit.mine": lambda app, payload, job: None}
