"""Live updates: a change stream on the ``Job`` collection (or a polling tick where there is none) as a counter.

One thread per app reads the store's change stream and bumps ``version`` on
every change; each ``GET /events`` client waits for the counter to move and
gets an ``event: change``, then one more ``cache_s`` later (the overview's
counts are cached, so the page fetched right after a change may not show it
yet). Where the server has no change streams (a standalone mongod) or
``change_streams`` is off, the thread ticks every ``poll_s`` instead. Events
carry no job data: the page fetches what changed through its normal routes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from muzo_ops.logs import Logger

if TYPE_CHECKING:
    from pymongo.collection import Collection

DEFAULT_POLL_S = 3.0
DEFAULT_STALL_S = 4.0  # a stream's open, each wait for a change and its close end within this (plus MAX_AWAIT_MS)
MAX_AWAIT_MS = 500
KEEPALIVE_S = 15.0
CHECK_S = 0.2  # how often a client's stream looks at the counter

MODE_STARTING = "starting"
MODE_CHANGE_STREAM = "change stream"
MODE_POLLING = "polling"


class ChangeFeed:
    """``version`` moves on every change of the collection (or every ``poll_s`` when polling)."""

    def __init__(self, jobs: Collection[dict[str, Any]], logger: Logger, poll_s: float = DEFAULT_POLL_S,
                 change_streams: bool = True, stall_s: float = DEFAULT_STALL_S) -> None:
        self.jobs = jobs
        self.stall_s = stall_s
        self.logger = logger
        self.poll_s = poll_s
        self.change_streams = change_streams
        self.version = 0
        self.mode = MODE_STARTING
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ChangeFeed:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="dashboard-change-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        from pymongo.errors import OperationFailure

        from muzo_ops.mongo.errors import error_line, is_outage
        from muzo_ops.queue.opsstore import is_pymongo_error, watch_jobs

        failures = 0
        while self.change_streams and not self._stop.is_set():
            try:
                for change in self._bounded(watch_jobs(self.jobs, max_await_ms=MAX_AWAIT_MS, stall_s=self.stall_s)):
                    if self.mode != MODE_CHANGE_STREAM:
                        self.mode = MODE_CHANGE_STREAM
                        self.logger.info("dashboard live updates from a change stream")
                    if failures:  # a stream opened after an outage: what changed meanwhile was not heard
                        self.version += 1
                    failures = 0
                    if change:
                        self.version += 1
                    if self._stop.is_set():
                        return
            except OperationFailure as exc:
                if not is_outage(exc):  # this server has no change streams (a standalone mongod)
                    self.logger.info("change streams unavailable; dashboard polls", pollSeconds=self.poll_s,
                                     code=exc.code)
                    break
                failures += 1
                self.logger.warn("dashboard change stream failed", reason=error_line(exc))
            except Exception as exc:
                if not is_pymongo_error(exc):
                    raise
                failures += 1
                self.logger.warn("dashboard change stream failed", reason=error_line(exc))
            if failures >= 3:  # keep the page live by polling, try the stream again later
                self.mode = MODE_POLLING
            if self._wait_polling(min(self.poll_s * failures, 30.0)):
                return
        self.mode = MODE_POLLING
        while not self._stop.wait(self.poll_s):
            self.version += 1

    def _bounded(self, stream: Iterator[Any]) -> Iterator[Any]:
        """``stream``'s items, each step (the open, a wait, the close) under one pymongo deadline: a frozen
        server fails the stream within ``stall_s`` instead of holding the feed on the client's own timeouts."""
        import pymongo

        limit = self.stall_s + MAX_AWAIT_MS / 1000
        try:
            while True:
                with pymongo.timeout(limit):
                    item = next(stream, None)
                if item is None:
                    return
                yield item
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                with pymongo.timeout(limit):
                    close()

    def _wait_polling(self, seconds: float) -> bool:
        """Wait ``seconds`` before trying the stream again (True: stopped meanwhile); while polling,
        pages are told to refresh every ``poll_s`` as they wait, so they stay live through an outage."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._stop.wait(min(left, self.poll_s)):
                return True
            if self.mode == MODE_POLLING:
                self.version += 1
        return False

    async def events(self, disconnected: Callable[[], Any], trailing_s: float,
                     since: int | None = None) -> AsyncIterator[str]:
        """Server-sent events for one client until it disconnects: ``change`` on each move of ``version``.

        ``since``: the version the client's page was drawn at; a change between
        drawing and connecting is sent at once.
        """
        seen = self.version if since is None else since
        loop = asyncio.get_running_loop()
        trailing_at: float | None = None
        quiet_since = loop.time()
        yield f"retry: 3000\nevent: hello\ndata: {self.mode}\n\n"
        while True:
            if await disconnected():
                return
            now = loop.time()
            if self.version != seen:
                seen = self.version
                trailing_at = now + trailing_s
                quiet_since = now
                yield f"event: change\ndata: {seen}\n\n"
            elif trailing_at is not None and now >= trailing_at:
                trailing_at = None
                quiet_since = now
                yield f"event: change\ndata: {seen}\n\n"
            elif now - quiet_since >= KEEPALIVE_S:
                quiet_since = now
                yield ": keep-alive\n\n"
            await asyncio.sleep(CHECK_S)


__all__ = ["DEFAULT_POLL_S", "MODE_CHANGE_STREAM", "MODE_POLLING", "ChangeFeed"]
