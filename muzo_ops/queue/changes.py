"""The change-stream watcher: wakes the claim loop when a job is inserted or put back to PENDING.

While the claim loop is busy (it claims again by itself) the watcher reads
the stream only once per poll interval; on an outage it backs off; when the
server refuses change streams it returns and the worker polls.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pymongo.errors import OperationFailure

from muzo_ops.constants import ERROR_BACKOFF_BASE_S
from muzo_ops.mongo.errors import is_outage
from muzo_ops.queue.connection import DatabaseLink
from muzo_ops.queue.events import Observers
from muzo_ops.queue.retry import backoff_delay
from muzo_ops.queue.store import change_stream_pipeline

if TYPE_CHECKING:
    from pymongo.asynchronous.collection import AsyncCollection

# While the claim loop is busy the change stream waits for it up to the poll
# interval (at most this) per event, and the events it already fetched are
# read through at least this often, so it asks the server again: well within
# the server's idle cursor timeout (10 minutes).
WATCH_PAUSE_MAX_S = 60.0


class ChangeWatcher:
    """Sets ``wake`` on every change that can make a job claimable."""

    def __init__(self, jobs: AsyncCollection[dict[str, Any]], wake: asyncio.Event, idle: asyncio.Event,
                 stopping: asyncio.Event, db: DatabaseLink, events: Observers, poll_s: float) -> None:
        self.jobs = jobs
        self.wake = wake
        self.idle = idle  # set while the claim loop waits for ``wake``
        self.stopping = stopping
        self.db = db
        self.events = events
        self.poll_s = poll_s

    async def run(self) -> bool:
        """Watch until stopped (True), or until the server refuses change streams (False: poll)."""
        pipeline = change_stream_pipeline()
        pause = min(self.poll_s, WATCH_PAUSE_MAX_S)
        # While the claim loop is busy (it claims again by itself), each event waits until the
        # claim loop waits for work, or ``pause`` at most: a round trip per event otherwise.
        # Once per WATCH_PAUSE_MAX_S of such waits the events already fetched are read at once,
        # so the stream still goes to the server: ``draining`` stays true until the stream next
        # yields to the loop (its next round trip).
        loop = asyncio.get_running_loop()
        draining = False

        def drained() -> None:
            nonlocal draining
            draining = False

        failures = 0
        while not self.stopping.is_set():
            try:
                async with await self.jobs.watch(pipeline, max_await_time_ms=500) as stream:
                    failures = 0
                    self.wake.set()
                    next_drain = loop.time() + WATCH_PAUSE_MAX_S
                    async for _change in stream:
                        self.wake.set()
                        if draining or self.idle.is_set():
                            continue
                        try:
                            await asyncio.wait_for(self.idle.wait(), pause)
                        except TimeoutError:
                            if loop.time() >= next_drain:
                                next_drain = loop.time() + WATCH_PAUSE_MAX_S
                                draining = True
                                loop.call_soon(drained)
            except OperationFailure as exc:
                if is_outage(exc):
                    failures += 1
                    self.db.mark_outage()
                else:
                    self.events.polling(self.poll_s, exc.code)
                    return False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_outage(exc):
                    self.events.change_stream_error(exc)
                else:
                    self.db.mark_outage()
                failures += 1
            if await self.db.sleep(backoff_delay(failures, ERROR_BACKOFF_BASE_S, self.db.error_backoff_cap_s),
                                   db_back=True):
                return True
        return True


__all__ = ["WATCH_PAUSE_MAX_S", "ChangeWatcher"]
