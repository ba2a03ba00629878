"""Renewing the leases of the jobs a process is running, for as long as their handlers run, and giving up those that
run past their time limit.

A runner claims a job for ``leaseSeconds`` (:mod:`jitcore.jobs`); another runner takes the job again once the lease
has passed, as a new attempt. Without renewal a handler that runs longer than its lease (a provider that answers
slowly, a long sweep) would be started a second time while it still runs. :class:`LeaseKeeper` is one thread per job
queue that renews each running attempt's lease every third of it, with a fenced update that only the attempt holding
the lease can make. So a job is taken again when its runner stops renewing (the process died, or froze longer than
the lease: a paused machine, a swap storm), not because it is slow. A renewal that finds the lease taken over (the
process froze) stops renewing that attempt and says so; the attempt's outcome is then not recorded (finishing is
fenced too).

An attempt may also have a time limit (its kind's ``timeoutSeconds``): once it has run that long the keeper stops
renewing it and calls ``on_timeout`` (the job queue records the attempt failed and frees its runner), so that a
handler that hangs for ever does not hold its job, and the jobs queued after it, until its process ends.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable

log = logging.getLogger("jitcore.jobs")

__all__ = ["LeaseKeeper", "Held"]

#: seconds the keeper waits before it tries again a renewal that failed (the database was unreachable)
RETRY_SECONDS = 1.0


class Held:
    """One running attempt whose lease the keeper renews: the claimed job row, its lease, the next renewal and the
    time limit (on the monotonic clock; ``inf``: none), what to call when that passes, and the thread running it."""

    __slots__ = ("row", "seconds", "due", "lost", "deadline", "on_timeout", "thread")

    def __init__(self, row: Any, seconds: float, due: float, deadline: float = math.inf,
                 on_timeout: Callable[[Held], None] | None = None) -> None:
        self.row = row
        self.seconds = seconds
        self.due = due
        self.lost = False
        self.deadline = deadline
        self.on_timeout = on_timeout
        self.thread = threading.current_thread()

    def next_event(self) -> float:
        """When the keeper must next look at this attempt: its renewal or its time limit, the earlier (never, once
        its lease was taken over: its job is someone else's)."""
        return math.inf if self.lost else min(self.due, self.deadline)


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
        self._next_wake = math.inf

    def hold(self, row: Any, seconds: float, *, timeout: float | None = None,
             on_timeout: Callable[[Held], None] | None = None) -> Held:
        """Keep renewing the lease of the attempt that claimed ``row`` (``seconds`` long), run by the calling thread,
        until :meth:`release`; with ``timeout``, only for that many seconds: then the renewals stop and
        ``on_timeout(held)`` is called (in the keeper's thread) unless the attempt was released first."""
        if timeout is not None and on_timeout is None:
            raise ValueError("a time limit needs on_timeout")
        now = time.monotonic()
        held = Held(row, seconds, now + seconds / 3, math.inf if timeout is None else now + timeout, on_timeout)
        with self._changed:
            self._held[held] = None
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif held.next_event() < self._next_wake:
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
                expired = [held for held in self._held if not held.lost and held.deadline <= now]
                for held in expired:  # no more renewals; a release from now on finds nothing
                    del self._held[held]
                due = [held for held in self._held if not held.lost and held.due <= now]
                if not due and not expired:
                    self._next_wake = min((held.next_event() for held in self._held), default=math.inf)
                    self._changed.wait(None if self._next_wake == math.inf else self._next_wake - now)
                    continue
                self._next_wake = -math.inf  # working: a new hold need not wake the thread
            for held in expired:
                self._expire(held)
            for held in due:
                self._renew_one(held)

    def _expire(self, held: Held) -> None:
        row, on_timeout = held.row, held.on_timeout
        assert on_timeout is not None  # hold() gives every time limit its callback
        try:
            on_timeout(held)
        except Exception:
            log.exception("job %s (%s): giving up attempt %d after its time limit failed; its lease is no longer "
                          "renewed and expires", row.id, row.kind, row.attempts)

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
