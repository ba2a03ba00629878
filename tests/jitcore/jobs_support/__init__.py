"""Helpers for the job queue tests: an app YAML with the test plugins, delivery records, subprocess environment.

The plugins record what their handlers and event implementations did as JSON lines in the file named by
``settings.jobtest.record`` (appended atomically, so several processes can share it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import update

from jitcore.jobs import decode_value, job_table

REPO = Path(__file__).resolve().parents[3]
JIT = str(Path(sys.executable).parent / "jit")
PLUGIN = "tests.jitcore.jobs_support.jobs_plugin"
SECOND = "tests.jitcore.jobs_support.second_plugin"
PLAIN = "tests.jitcore.jobs_support.plain_plugin"
RESERVED = "tests.jitcore.jobs_support.reserved_plugin"


def write_app(directory: Path, *, database: str | None = None, plugins: list[str] | None = None,
              jobs: dict[str, Any] | None = None, **jobtest: Any) -> Path:
    """Write ``directory/app.yaml``: appId ``jobs``, the test plugins (default: PLUGIN then SECOND), a short poll
    interval, ``settings.jobtest`` with ``record`` (``directory/records.jsonl``) and ``jobtest``."""
    config: dict[str, Any] = {
        "appId": "jobs",
        "plugins": plugins if plugins is not None else [PLUGIN, SECOND],
        "jobs": {"pollSeconds": 0.05, **(jobs or {})},
        "settings": {"jobtest": {"record": str(directory / "records.jsonl"), **jobtest}},
    }
    if database:
        config["database"] = database
    path = directory / "app.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def records(directory: Path, **match: Any) -> list[dict[str, Any]]:
    """The records written so far (decoded), those whose fields equal ``match``."""
    path = directory / "records.jsonl"
    if not path.exists():
        return []
    lines = [decode_value(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if all(line.get(key) == value for key, value in match.items())]


def make_due(app: Any, job_id: int) -> None:
    """Pretend a job's backoff has passed: its dueAt one second ago."""
    past = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
    with app.engine.begin() as conn:
        conn.execute(update(job_table).where(job_table.c.id == job_id).values(dueAt=past))


def env() -> dict[str, str]:
    """The environment of a subprocess: this repository importable, installed plugins off."""
    return {**os.environ, "PYTHONPATH": str(REPO), "JIT_PLUGINS": "none"}


def jit(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``jit ARGS`` to completion."""
    return subprocess.run([JIT, *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
