"""Renewing the leases of the jobs a process is running, for as long as their handlers run.

A runner claims a job for ``leaseSeconds`` (:mod:`jitcore.jobs`); another runner takes the job again once the lease
has passed, as a new attempt. Without renewal a handler that runs longer than its lease (a provider that answers
slowly, a long sweep) would be started a second time while it still runs. :class:`LeaseKeeper` is one thread per job
queue that renews each running attempt's lease every third of it, with a fenced update that only the attempt holding
the lease can make. So a job is taken again when its runner stops renewing (the process died, or froze longer than
the lease: a paused machine, a swap storm), not because it is slow; a handler that hangs for ever holds its job until
its process ends (give external calls timeouts). A renewal that finds the lease taken over (the process froze) stops
renewing that attempt and says so; the attempt's outcome is then not recorded (finishing is fenced too).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger("jitcore.jobs")

__all__ = ["LeaseKeeper", "Held"]

#: seconds the keeper waits before it tries again a renewal that failed (the database was unreachable)
RETRY_SECONDS = 1.0


class Held:
    """One running attempt whose lease the keeper renews: the claimed job row, its lease and the next renewal (on
    the monotonic clock)."""

    __slots__ = ("row", "seconds", "due", "lost")

    def __init__(self, row: Any, seconds: float, due: float) -> None:
        self.row = row
        self.seconds = seconds
        self.due = due
        self.lost = False


class LeaseKeeper:
    """Renews the leases of the attempts this process runs (see the module docstring). ``renew(row, seconds)``
    extends the lease of the attempt that claimed ``row`` to ``seconds`` from now and says whether it still held it.
    The thread starts with the first :meth:`hold`; :meth:`close` ends it."""

    def __init__(self, renew: Callable[[Any, float], bool], name: str) -> None:
        self._renew = renew
        self._name = name
        self._held: dict[Held, None] = {}
        self._changed = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False
        self._next_wake = float("inf")

    def hold(self, row: Any, seconds: float) -> Held:
        """Keep renewing the lease of the attempt that claimed ``row`` (``seconds`` long) until :meth:`release`."""
        held = Held(row, seconds, time.monotonic() + seconds / 3)
        with self._changed:
            self._held[held] = None
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif held.due < self._next_wake:
                self._changed.notify()
        return held

    def release(self, held: Held) -> None:
        """The attempt's handler returned or raised: no more renewals (before its outcome is recorded)."""
        with self._changed:
            self._held.pop(held, None)

    def holding(self) -> int:
        """How many attempts' leases are being kept."""
        with self._changed:
            return len(self._held)

    def close(self, timeout: float = 5.0) -> None:
        """End the thread (leases still held then expire as if the process had stopped)."""
        with self._changed:
            self._closed = True
            thread, self._thread = self._thread, None
            self._changed.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                now = time.monotonic()
                due = [held for held in self._held if not held.lost and held.due <= now]
                if not due:
                    self._next_wake = min((held.due for held in self._held if not held.lost), default=float("inf"))
                    self._changed.wait(None if self._next_wake == float("inf") else self._next_wake - now)
                    continue
                self._next_wake = float("-inf")  # renewing: a new hold need not wake the thread
            for held in due:
                self._renew_one(held)

    def _renew_one(self, held: Held) -> None:
        row = held.row
        try:
            kept = self._renew(row, held.seconds)
        except Exception:
            log.warning("job %s (%s): renewing the lease of attempt %d failed; trying again in %.0f s", row.id,
                        row.kind, row.attempts, RETRY_SECONDS, exc_info=True)
            with self._changed:
                held.due = time.monotonic() + min(RETRY_SECONDS, held.seconds / 3)
            return
        with self._changed:
            if held not in self._held:
                return  # the handler ended meanwhile (its outcome may already be recorded)
            if kept:
                held.due = time.monotonic() + held.seconds / 3
                return
            held.lost = True
        log.warning("job %s (%s): attempt %d still runs but its lease was taken over (its process was stopped or "
                    "frozen longer than %.0f s); its outcome will not be recorded", row.id, row.kind, row.attempts,
                    held.seconds)
