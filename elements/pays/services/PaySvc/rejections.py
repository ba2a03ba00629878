"""Rejected notifications in the audit log, bounded: strangers cannot fill it.

Anyone can post to the notification routes, so what a rejection stores is bounded twice:

- **size**: a notification refused before it was applied (unparseable, unsigned, forged, too large, for another
  merchant) keeps :func:`bounded_payload`: the first :data:`EXCERPT_BYTES` of its body, the SHA-256 of the whole body
  (to match it against a provider's records or a packet capture) and its size, never the body itself;
- **rate**: per process, at most ``perSource`` such rejections per provider and source address, and at most
  ``total`` in all, are stored in each window of ``windowSeconds`` (defaults :data:`DEFAULT_LIMITS`: 20, 100, 60 s;
  ``settings.pays.rejectedNotifications`` changes them). Further ones are counted, not stored: a warning is logged
  at the first one of a source, and when the window has ended one ``rejected-summary`` row per source records how
  many there were and their error codes. The summary is written with the next audit record after the window, by the
  periodic sweep, or when the app closes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

log = logging.getLogger("jitpay")

#: how much of a rejected notification's body is kept
EXCERPT_BYTES = 2048
#: the most a rejected notification's stored payload takes (its excerpt is shortened to fit: JSON escapes and
#: replacement characters may grow it)
PAYLOAD_MAX_BYTES = 8192
#: ``settings.pays.rejectedNotifications``: stored rejections per provider and source address, and in all, per window
DEFAULT_LIMITS = {"perSource": 20, "total": 100, "windowSeconds": 60}
#: sources told apart in one window; rejections from more are counted together as "other sources"
MAX_SOURCES = 1000
OTHER_SOURCES = "other sources"
UNKNOWN_SOURCE = "unknown"


def bounded_payload(payload: Any, source: str | None = None) -> dict[str, Any] | None:
    """What a rejected notification stores of ``payload`` (its raw body as bytes or text, or its fields): its size
    in bytes, the SHA-256 of all of it and an excerpt of its first :data:`EXCERPT_BYTES` (at most
    :data:`PAYLOAD_MAX_BYTES` as JSON), with the source address when known."""
    if payload is None:
        return {"source": source} if source else None
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    elif isinstance(payload, str):
        data = payload.encode("utf-8", "surrogatepass")
    else:
        data = json.dumps(payload, ensure_ascii=False, default=str, sort_keys=True).encode("utf-8", "surrogatepass")
    bounded: dict[str, Any] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                               "excerpt": data[:EXCERPT_BYTES].decode("utf-8", "replace")}
    if source:
        bounded["source"] = source[:64]
    while len(json.dumps(bounded, ensure_ascii=False).encode("utf-8", "surrogatepass")) > PAYLOAD_MAX_BYTES:
        bounded["excerpt"] = bounded["excerpt"][:len(bounded["excerpt"]) // 2]
    return bounded


@dataclass
class _Source:
    stored: int = 0
    suppressed: int = 0
    codes: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class Suppressed:
    """Rejections of one provider and source that a window counted but did not store."""

    provider: str | None
    source: str
    count: int
    codes: dict[str, int]
    start: datetime
    end: datetime


class RejectionLimiter:
    """Decides which rejected notifications are stored (see the module docstring). Thread-safe; one per ledger,
    so per process."""

    def __init__(self, perSource: int = DEFAULT_LIMITS["perSource"], total: int = DEFAULT_LIMITS["total"],
                 windowSeconds: float = DEFAULT_LIMITS["windowSeconds"], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.perSource = perSource
        self.total = total
        self.windowSeconds = float(windowSeconds)
        self.clock = clock
        self._lock = threading.Lock()
        self._start: float | None = None
        self._started_at: datetime | None = None
        self._sources: dict[tuple[str | None, str], _Source] = {}
        self._stored = 0

    def admit(self, provider: str | None, source: str | None, error_code: str | None) -> tuple[bool, list[Suppressed]]:
        """Whether to store this rejection, and what an ended window counted without storing (to record now)."""
        with self._lock:
            now = self.clock()
            ended = self._roll(now, force=False)
            if self._start is None:
                self._start, self._started_at = now, datetime.now(timezone.utc)
            key = (provider, (source or UNKNOWN_SOURCE)[:64])
            if key not in self._sources and len(self._sources) >= MAX_SOURCES:
                key = (provider, OTHER_SOURCES)
            counts = self._sources.setdefault(key, _Source())
            if counts.stored < self.perSource and self._stored < self.total:
                counts.stored += 1
                self._stored += 1
                return True, ended
            counts.suppressed += 1
            counts.codes[error_code or "?"] += 1
            suppressed_first = counts.suppressed == 1
        if suppressed_first:
            log.warning("rejected %s notifications from %s: over the audit log's limit (%d per source, %d in all, "
                        "per %g s); further ones are counted, not stored, until the window ends", provider, key[1],
                        self.perSource, self.total, self.windowSeconds)
        return False, ended

    def flush(self, *, force: bool = False) -> list[Suppressed]:
        """What an ended window (or, with ``force``, the current one: at shutdown) counted without storing."""
        with self._lock:
            return self._roll(self.clock(), force=force)

    def pending(self) -> int:
        """How many rejections the current window counted without storing (yet to be summarised)."""
        with self._lock:
            return sum(s.suppressed for s in self._sources.values())

    def _roll(self, now: float, *, force: bool) -> list[Suppressed]:
        if self._start is None or (not force and now - self._start < self.windowSeconds):
            return []
        assert self._started_at is not None
        end = datetime.now(timezone.utc)
        ended = [Suppressed(provider, source, counts.suppressed, dict(counts.codes), self._started_at, end)
                 for (provider, source), counts in self._sources.items() if counts.suppressed]
        self._start, self._started_at, self._sources, self._stored = None, None, {}, 0
        for item in ended:
            log.warning("%d rejected %s notifications from %s between %s and %s were counted, not stored (%s)",
                        item.count, item.provider, item.source, item.start.isoformat(timespec="seconds"),
                        item.end.isoformat(timespec="seconds"),
                        ", ".join(f"{code}: {n}" for code, n in sorted(item.codes.items())))
        return ended

    def summary_fields(self, item: Suppressed) -> dict[str, Any]:
        """The audit fields of a ``rejected-summary`` row (for :func:`.ledger.audit_values`)."""
        return {"provider": item.provider, "verified": False, "error_code": "AUDIT_LIMIT",
                "message": f"{item.count} more rejected notifications from {item.source} between "
                           f"{item.start.isoformat(timespec='seconds')} and {item.end.isoformat(timespec='seconds')} "
                           f"were counted, not stored (the limit: {self.perSource} per provider and source, "
                           f"{self.total} in all, per {self.windowSeconds:g} s)",
                "payload": {"source": item.source, "count": item.count, "errorCodes": item.codes,
                            "from": item.start.isoformat(), "until": item.end.isoformat()}}
