"""The worker's health as ``/healthz`` and ``/readyz`` report it, kept by an ``Observer``.

``/healthz`` (liveness) is 200 while the claim loop goes round (or every
slot is busy with a running job, when the loop waits for one to end),
the event loop runs a callback sent from outside it (a thread) within
``loop_bound_s`` (10 s by default), and MongoDB answers or has been out of
reach for less than ``outage_grace_s``; 503 with the reasons otherwise. ``/readyz`` is 200 from ``worker_ready``
(connected, indexes checked) until a stop is requested. Written from the
worker's event loop, read from the HTTP server's threads: each event only
sets plain attributes, and a report reads a consistent enough snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from muzo_ops.queue.events import JobInfo, Observer, Outcome, WorkerInfo

DEFAULT_STALE_AFTER_S = 120.0  # a claim blocks up to serverSelectionTimeoutMS (30 s) plus back-off (10 s)
DEFAULT_OUTAGE_GRACE_S = 30.0  # short outages (a replica set election) are not a reason to restart
# The event loop must run a callback sent from the health thread within this: past it, a
# handler (or anything else) blocks the loop, and /healthz says 503.
DEFAULT_LOOP_BOUND_S = 10.0
LOOP_PROBE_INTERVAL_S = 0.5

OK = 200
UNAVAILABLE = 503
Report = tuple[int, dict[str, Any]]


class HealthState(Observer):
    """What ``/healthz`` and ``/readyz`` answer, from the worker's events."""

    def __init__(self, stale_after_s: float = DEFAULT_STALE_AFTER_S,
                 outage_grace_s: float = DEFAULT_OUTAGE_GRACE_S,
                 clock: Callable[[], float] = time.monotonic,
                 loop_bound_s: float = DEFAULT_LOOP_BOUND_S) -> None:
        self.stale_after_s = stale_after_s
        self.loop_bound_s = loop_bound_s
        self._loop_waiting_since: float | None = None  # a probe sent to the loop and not yet run
        self._watching = threading.Event()
        self.outage_grace_s = outage_grace_s
        self._clock = clock
        self.started_at = clock()
        self.ready = False
        self.stopping = False
        self.last_tick: float | None = None
        self.outage_since: float | None = None  # first connection error since the last success
        self.outage_where = ""
        self.outage_error = ""  # the exception's class name only: messages can hold host names
        self.consecutive_errors = 0
        self._running: set[tuple[tuple[str, Any], int]] = set()

    # ---------------------------------------------------------------- events

    def worker_ready(self, info: WorkerInfo) -> None:
        self.ready = True
        self.last_tick = self._clock()  # connected just now: the loop starts from here
        with contextlib.suppress(RuntimeError):  # called outside a loop (tests): nothing to watch
            self._watch(asyncio.get_running_loop())

    # ---------------------------------------------------------------- the loop, watched from outside

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Probe ``loop`` from a thread: every LOOP_PROBE_INTERVAL_S a callback is sent to it;
        while one waits to run, the loop is busy (``healthz`` says how long)."""
        if self._watching.is_set():
            return
        self._watching.set()

        def answered() -> None:
            self._loop_waiting_since = None

        def probe() -> None:
            while self._watching.is_set() and not loop.is_closed():
                if self._loop_waiting_since is None:
                    self._loop_waiting_since = self._clock()
                    try:
                        loop.call_soon_threadsafe(answered)
                    except RuntimeError:  # the loop closed
                        return
                time.sleep(LOOP_PROBE_INTERVAL_S)

        threading.Thread(target=probe, name="muzo-loop-watch", daemon=True).start()

    def worker_stopped(self, stats: dict[str, int]) -> None:
        self._watching.clear()
        self._loop_waiting_since = None

    def claim_tick(self) -> None:
        self.last_tick = self._clock()

    def db_ok(self) -> None:
        self.outage_since = None
        self.consecutive_errors = 0

    def connection_error(self, where: str, consecutive_errors: int, error: BaseException) -> None:
        if self.outage_since is None:
            self.outage_since = self._clock()
        self.outage_where = where[:40]
        self.outage_error = type(error).__name__
        self.consecutive_errors = consecutive_errors

    def job_started(self, job: JobInfo, wait_s: float | None) -> None:
        self._running.add((job.identity, job.attempt))
        self.db_ok()  # a claim just succeeded

    def job_finished(self, job: JobInfo, outcome: Outcome, duration_s: float, error: BaseException | None) -> None:
        self._running.discard((job.identity, job.attempt))

    def claim_idle(self) -> None:
        self.db_ok()  # a claim was answered: no job due

    def worker_stopping(self) -> None:
        self.stopping = True

    # ---------------------------------------------------------------- reports

    def healthz(self) -> Report:
        """(HTTP status, JSON body): 200 while alive, 503 with the reasons."""
        now = self._clock()
        reasons: list[str] = []
        outage = self.outage_since
        outage_s = None if outage is None else now - outage
        if outage_s is not None and outage_s >= self.outage_grace_s:
            reasons.append(f"MongoDB out of reach for {outage_s:.0f}s (last error in {self.outage_where}: "
                           f"{self.outage_error}, {self.consecutive_errors} in a row)")
        waiting = self._loop_waiting_since
        loop_wait_s = None if waiting is None else max(0.0, now - waiting)
        if loop_wait_s is not None and loop_wait_s >= self.loop_bound_s:
            reasons.append(f"event loop unresponsive for {loop_wait_s:.0f}s (bound {self.loop_bound_s:g}s): "
                           "a handler blocks it (an async def handler doing blocking work?)")
        tick = self.last_tick
        tick_age = None if tick is None else now - tick
        busy = len(self._running)
        if not self.stopping and not busy:
            since = tick if tick is not None else self.started_at
            if now - since >= self.stale_after_s:
                what = "claim loop has not run" if tick is not None else "worker not ready"
                reasons.append(f"{what} for {now - since:.0f}s")
        if reasons:
            status = "unhealthy"
        elif self.stopping:
            status = "stopping"
        elif not self.ready:
            status = "starting"
        else:
            status = "ok"
        body: dict[str, Any] = {
            "status": status, "ready": self.ready and not self.stopping, "inProgress": busy,
            "lastClaimAgeSeconds": None if tick_age is None else round(tick_age, 3),
            "mongoOutageSeconds": None if outage_s is None else round(outage_s, 3),
            "loopWaitSeconds": None if loop_wait_s is None else round(loop_wait_s, 3),
        }
        if reasons:
            body["reasons"] = reasons
        return (UNAVAILABLE if reasons else OK), body

    def readyz(self) -> Report:
        """(HTTP status, JSON body): 200 from READY until a stop is requested."""
        if self.stopping:
            return UNAVAILABLE, {"status": "stopping", "ready": False}
        if not self.ready:
            return UNAVAILABLE, {"status": "starting", "ready": False,
                                 "reasons": ["not connected to MongoDB or indexes not checked yet"]}
        return OK, {"status": "ready", "ready": True}


__all__ = ["DEFAULT_LOOP_BOUND_S", "DEFAULT_OUTAGE_GRACE_S", "DEFAULT_STALE_AFTER_S", "HealthState", "Report"]
