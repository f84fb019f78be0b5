"""Handler execution: one claimed job's handler run within its timeout.

Coroutine handlers run in the job's own task; plain functions run in a
thread pool. A coroutine handler runs while the job's lease holds
(``lease``): a lost lease cancels it. A plain handler's thread cannot be
killed: after its timeout it is abandoned, and ``MAX_ABANDONED_THREADS``
of them still running make the worker drain and exit 1, so its service
manager starts a fresh process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import bson

from muzo_ops.queue.events import JobInfo, Observers
from muzo_ops.queue.handlers import Handler
from muzo_ops.queue.jobs import FatalJobError, JobTimeoutError, LeaseLostError, job_from_document
from muzo_ops.queue.lease import Lease

Doc = dict[str, Any]
Outcome = tuple[bool, Any]  # (True, result) or (False, the error)

MAX_ABANDONED_THREADS = 3


def _call_plain(handler: Handler, job: Any) -> Outcome:
    """In a handler thread: (True, result) or (False, whatever it raised, BaseException included)."""
    try:
        return True, handler(job)
    except BaseException as exc:  # SystemExit, KeyboardInterrupt…: a job failure, not the worker's
        return False, exc


async def _guarded(awaitable: Awaitable[Any]) -> Outcome:
    """Await a coroutine handler: (True, result) or (False, what it raised).

    A ``CancelledError`` is the worker's own (timeout, shutdown) only when
    this task is being cancelled; one the handler raises by itself is a
    job failure like any other ``BaseException``.
    """
    try:
        return True, await awaitable
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return False, exc
    except BaseException as exc:
        return False, exc


def handler_name(handler: Handler) -> str:
    return str(getattr(handler, "__qualname__", "?"))


@dataclass
class Running:
    """A claimed job while its handler runs."""

    doc: Doc
    info: JobInfo
    lease: Lease
    task: asyncio.Task[None] | None = None
    heartbeat: asyncio.Task[None] | None = None  # started by a timer once the job runs that long
    lost: bool = False  # the last renewal matched nothing (the lease is given up on a second miss)
    started: float = field(default_factory=time.monotonic)


class HandlerRunner:
    """Runs handlers within their timeouts; keeps count of abandoned handler threads."""

    def __init__(self, concurrency: int, events: Observers, on_too_many_abandoned: Callable[[], None]) -> None:
        self.events = events
        self._on_too_many = on_too_many_abandoned
        # Room for the running jobs plus the threads abandoned after a timeout.
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, concurrency) + MAX_ABANDONED_THREADS, thread_name_prefix="muzo-handler")
        self.abandoned: set[concurrent.futures.Future[Outcome]] = set()

    async def call(self, entry: Running, handler: Handler, timeout: float) -> Outcome:
        """Run ``handler`` on the entry's job within ``timeout`` and while its lease holds:
        (True, result) or (False, the error: ``JobTimeoutError``, ``LeaseLostError``, the handler's)."""
        job = job_from_document(entry.doc)
        entry.lease.cancellable = inspect.iscoroutinefunction(handler)
        try:
            async with entry.lease.guard():
                return await self._call(entry, handler, job, timeout)
        except LeaseLostError as exc:
            return False, exc

    async def _call(self, entry: Running, handler: Handler, job: Any, timeout: float) -> Outcome:
        deadline = time.monotonic() + timeout
        # asyncio.timeout, not wait_for: no extra task per job; the handler runs in
        # this job's task, whose cancelling() tells _guarded the worker's cancel apart.
        if inspect.iscoroutinefunction(handler):
            try:
                async with asyncio.timeout(timeout):
                    return await _guarded(handler(job))
            except TimeoutError:
                return self._timed_out(entry, timeout, None)
        future = self.executor.submit(_call_plain, handler, job)
        try:
            async with asyncio.timeout(timeout):
                ok, value = await asyncio.wrap_future(future)
        except TimeoutError:
            return self._timed_out(entry, timeout, future)
        if ok and inspect.isawaitable(value):  # a plain function that returned a coroutine
            try:
                async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                    return await _guarded(value)
            except TimeoutError:
                return self._timed_out(entry, timeout, None)
        return ok, value

    def _timed_out(self, entry: Running, timeout: float,
                   future: concurrent.futures.Future[Outcome] | None) -> Outcome:
        """The handler passed its timeout: report it (and an abandoned thread); the error to record."""
        abandoned = future is not None and not future.done()
        self.events.job_timed_out(entry.info, timeout, abandoned)
        if abandoned and future is not None:
            loop = asyncio.get_running_loop()
            self.abandoned.add(future)
            future.add_done_callback(lambda f: loop.call_soon_threadsafe(self.abandoned.discard, f))
            self.events.thread_abandoned(entry.info, len(self.abandoned), MAX_ABANDONED_THREADS)
            if len(self.abandoned) >= MAX_ABANDONED_THREADS:
                self._on_too_many()
        return False, JobTimeoutError(entry.info.type, timeout, abandoned)

    @staticmethod
    def check_storable(result: Any) -> None:
        """FatalJobError when ``result`` cannot be stored as BSON."""
        try:
            bson.encode({"result": result})
        except Exception as exc:
            raise FatalJobError(f"handler returned a value that cannot be stored: {type(exc).__name__}") from exc

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def threads_alive(self) -> bool:
        """Whether a plain-function handler is still running in a thread."""
        return any(t.is_alive() for t in getattr(self.executor, "_threads", ()))


__all__ = ["MAX_ABANDONED_THREADS", "HandlerRunner", "Running", "handler_name"]
