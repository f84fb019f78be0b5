"""The worker's link to MongoDB: outages noticed, probed, backed off and retried through.

An outage starts with the first call that fails for one (``is_outage``)
and ends with the first call that succeeds; a probe pings meanwhile so
writes waiting for the server go at once when it is back. After an outage
no expired lock is taken over for one lock period: every worker was cut
off alike, and the owners of those locks are about to write.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from muzo_ops.constants import ERROR_BACKOFF_BASE_S
from muzo_ops.mongo.errors import is_outage
from muzo_ops.queue.events import Observers
from muzo_ops.queue.retry import backoff_delay

T = TypeVar("T")


@dataclass
class StopState:
    """A stop request: ``stopping`` drains; ``force`` skips the drain wait and the retries."""

    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    force: bool = False


class DatabaseLink:
    """Outage state and retries of one worker's MongoDB calls."""

    def __init__(self, lock_s: float, error_backoff_cap_s: float, events: Observers, stop: StopState,
                 slow_s: float | None = None) -> None:
        self.lock_s = lock_s
        self.slow_s = slow_s if slow_s is not None else lock_s / 3  # a round trip this long: the server stalled
        self.error_backoff_cap_s = error_backoff_cap_s
        self.events = events
        self.stop = stop
        self.client: Any = None  # the AsyncMongoClient once connected: the probe pings it
        self.consecutive_errors = 0
        self.in_outage = False  # a MongoDB call failed for an outage and none succeeded since
        self.up = asyncio.Event()  # set while MongoDB answers: wakes pending writes at once
        self.no_takeover_until = 0.0  # monotonic: no expired job is taken over before
        self._probe: asyncio.Task[None] | None = None

    def ok(self) -> None:
        """A MongoDB call succeeded: the outage (if any) is over."""
        self.consecutive_errors = 0
        if self.in_outage:
            self.in_outage = False
            # Every worker was cut off alike: the owners of expired locks are
            # about to write. Take none over for one lock period.
            self.no_takeover_until = time.monotonic() + self.lock_s
            self.events.takeovers_paused(self.lock_s)
        self.up.set()
        self.events.db_ok()

    def mark_outage(self) -> None:
        """MongoDB is out of reach: pending writes wait for the probe to see it back."""
        self.in_outage = True
        self.up.clear()
        if self.client is not None and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self._probe_loop(), name="probe")

    async def _probe_loop(self) -> None:
        """Ping until the server answers (pymongo re-checks it every half second meanwhile)."""
        while self.in_outage and not self.stop.force:
            try:
                await self.client.admin.command("ping")
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.2)
                continue
            self.ok()
            return

    async def close(self) -> None:
        """Stop the probe (at shutdown)."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)

    def round_trip(self, sent: float) -> bool:
        """A call sent at ``sent`` (monotonic) was just answered; whether it was slow.

        A slow answer means the server stalled (frozen, or unreachable within
        server selection, with no error): the owners of locks that expired
        meanwhile have writes waiting too, so no takeover for one lock period.
        """
        if time.monotonic() - sent <= self.slow_s:
            return False
        now = time.monotonic()
        if now >= self.no_takeover_until:
            self.events.takeovers_paused(self.lock_s)
        self.no_takeover_until = max(self.no_takeover_until, now + self.lock_s)
        return True

    def takeover_allowed(self) -> bool:
        return not self.in_outage and time.monotonic() >= self.no_takeover_until

    def problem(self, exc: BaseException, where: str) -> float:
        """Report an outage; the back-off delay before the next try."""
        self.consecutive_errors += 1
        self.mark_outage()
        self.events.connection_error(where, self.consecutive_errors, exc)
        return backoff_delay(self.consecutive_errors, ERROR_BACKOFF_BASE_S, self.error_backoff_cap_s)

    async def sleep(self, seconds: float, db_back: bool = False) -> bool:
        """Sleep unless stopping (or, with ``db_back``, until MongoDB answers again);
        True when stopping was requested."""
        waits = [asyncio.ensure_future(self.stop.stopping.wait())]
        if db_back:
            waits.append(asyncio.ensure_future(self.up.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        return self.stop.stopping.is_set()

    async def retrying(self, what: str, call: Callable[[], Awaitable[T]],
                       deadline: dt.datetime | None = None, until_stop: bool = False) -> T | None:
        """Run a MongoDB call, retrying through outages (at once when the server is back);
        None once ``deadline`` passed, on a forced stop, or (``until_stop``) once stopping."""
        while True:
            sent = time.monotonic()
            try:
                result = await call()
                self.ok()
                self.round_trip(sent)
                return result
            except Exception as exc:
                if not is_outage(exc):
                    raise
                delay = self.problem(exc, what)
                if deadline is not None and dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay) > deadline:
                    return None
                if self.stop.force or (until_stop and self.stop.stopping.is_set()):
                    return None
                if until_stop:
                    await self.sleep(delay, db_back=True)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.up.wait(), delay)


__all__ = ["DatabaseLink", "StopState"]
