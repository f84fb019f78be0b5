"""The queue worker: runs ``Job`` documents through their handlers.

One asyncio loop per process: a claim loop that keeps up to
``concurrency`` jobs running, a heartbeat per job (``lease``: a lost lease
cancels the job's run), a change-stream watcher
that wakes the claim loop when a job is inserted or put back (polling
otherwise; while the claim loop is busy, the watcher reads the stream only
once per poll interval: the claim loop claims again by itself), a slow
sweep that fails jobs whose worker died on their last
attempt, and systemd notifications. When nothing is due the claim loop
sleeps until the earliest scheduled job of its queues (or the poll
interval, a fallback for missed events). MongoDB outages are reported and
backed off, never fatal. SIGTERM/SIGINT drain, release what is left and
exit 0.

The worker reports what it does to ``self.events`` (``Observers``); the
pino log lines are one observer (``LogObserver``), metrics another.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from muzo_ops.constants import ERROR_BACKOFF_BASE_S, VERSION, WORKER_LOGGER_NAME
from muzo_ops.logs import Logger
from muzo_ops.mongo import topology
from muzo_ops.mongo import url as mongourl
from muzo_ops.mongo.errors import AUTHENTICATION_FAILED, is_outage
from muzo_ops.queue import handlers as handlers_module
from muzo_ops.queue.changes import ChangeWatcher
from muzo_ops.queue.connection import DatabaseLink, StopState
from muzo_ops.queue.events import JobInfo, Observer, Observers, Outcome, WorkerInfo
from muzo_ops.queue.execution import HandlerRunner, Running, handler_name
from muzo_ops.queue.handlers import Handler
from muzo_ops.queue.jobs import (
    FatalJobError,
    JobStatus,
    JobTimeoutError,
    JobType,
    MalformedJobError,
    PayloadError,
    attempts_of,
    claimed_type,
    document_problems,
    is_whole,
    job_key,
    max_attempts_of,
)
from muzo_ops.queue.lease import LeaseKeeper
from muzo_ops.queue.logobserver import LogObserver
from muzo_ops.queue.payloads import validate
from muzo_ops.queue.retry import backoff_delay
from muzo_ops.queue.settings import WorkerSettings
from muzo_ops.queue.store import JobStore, error_document, utcnow
from muzo_ops.redact.redactor import Redactor
from muzo_ops.sdnotify import Notifier

T = TypeVar("T")
Doc = dict[str, Any]



class Worker:
    """One worker process's loop; ``await run()`` returns when stopped and drained."""

    def __init__(self, settings: WorkerSettings, handlers: Mapping[JobType, Handler],
                 logger: Logger | None = None, notifier: Notifier | None = None,
                 redactor: Redactor | None = None, observers: Sequence[Observer] = ()) -> None:
        self.settings = settings
        self.handlers = dict(handlers)
        self.log = logger or Logger(WORKER_LOGGER_NAME, settings.log_level, redactor=redactor,
                                    log_format=settings.log_format)
        self.redactor: Redactor = redactor if redactor is not None else self.log.redactor
        self.events = Observers([LogObserver(self.log), *observers])
        self.notifier = notifier or Notifier()
        self.transactions = False
        self.running: dict[tuple[str, Any], Running] = {}
        self.stop = StopState()
        self.stopping = self.stop.stopping
        self.wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while the claim loop waits for ``wake`` (nothing due)
        self.last_tick = time.monotonic()
        self.exit_code = 0
        self.runner = HandlerRunner(settings.concurrency, self.events, self._too_many_abandoned)
        self.change_streams_active = False
        self.stats = {"done": 0, "failed": 0, "retried": 0, "lost": 0, "released": 0}
        self.failed_here = 0  # jobs this worker ran that failed for good (--burst exits 1)
        self._burst_scheduled: tuple[int, dt.datetime | None] | None = None  # retries waiting at the end
        self._rotation = 0  # which queue is tried first: rotates for fairness
        self._next_takeover = 0.0  # monotonic time of the next expired-first claim
        self.db = DatabaseLink(settings.lock_s, settings.error_backoff_cap_s, self.events, self.stop)
        self.leases = LeaseKeeper(lambda: self._store, self.db, self.events, settings.lock_s, settings.heartbeat_s)
        self._client: AsyncMongoClient[Doc] | None = None
        self._store_: JobStore | None = None

    @property
    def _store(self) -> JobStore:
        assert self._store_ is not None, "the worker is not connected"
        return self._store_

    # ---------------------------------------------------------------- control

    def request_stop(self, force: bool = False) -> None:
        """Stop claiming and drain (a second request skips the drain wait)."""
        if self.stopping.is_set():
            self.stop.force = True
        self.stop.force = self.stop.force or force
        self.stopping.set()
        self.wake.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    # ---------------------------------------------------------------- start-up

    async def _connect(self) -> None:
        parsed = mongourl.parse(self.settings.url)
        kwargs: dict[str, Any] = {"appname": "muzo-worker"}
        if parsed.option("serverSelectionTimeoutMS") is None:
            kwargs["serverSelectionTimeoutMS"] = 30000
        client: AsyncMongoClient[Doc] = AsyncMongoClient(self.settings.url, **kwargs)
        self._client = client
        self.db.client = client
        db = client.get_default_database(default="muzo")
        self._store_ = JobStore(db)
        decided = topology.from_setting_or_url(self.settings.transactions, self.settings.url)
        hello: Doc
        if self.settings.burst:  # a one-off run (cron, tests) gives up on an outage: the error says why
            try:
                hello = await client.admin.command("hello")
            except Exception as exc:
                if is_outage(exc):
                    self.db.problem(exc, "hello")
                raise
            self.db.ok()
        else:
            hello = await self.db.retrying("hello", lambda: client.admin.command("hello"), until_stop=True) or {}
        mode = decided or topology.from_hello(hello)
        self.transactions = mode.enabled
        self.change_streams_active = self.settings.change_streams and bool(
            hello.get("setName") or hello.get("msg") == "isdbgrid")
        self.events.transactions_decided(mode.enabled, mode.reason, mode.source.value)
        try:
            created = await self.db.retrying("createIndexes", self._store.ensure_indexes, until_stop=True)
        except OperationFailure as exc:
            if exc.code == AUTHENTICATION_FAILED:
                raise
            self.events.indexes_unchecked(exc)
            created = []
        if created:
            self.events.indexes_created(created)

    async def run(self) -> int:
        """Run until stopped; the process exit code (0, or 1 after too many abandoned threads)."""
        await self._connect()
        if self.stopping.is_set():
            await self._shutdown()
            return self.exit_code
        await self._sweep()
        self.notifier.notify("READY=1")
        self.events.worker_ready(WorkerInfo(
            worker_id=self.settings.worker_id, version=VERSION, queues=self.settings.queues,
            concurrency=self.settings.concurrency, transactions=self.transactions,
            change_streams=self.change_streams_active,
            handlers=tuple((t, handler_name(self.handlers[t])) for t in self.settings.queues)))
        background = [self._supervised(self._claim_loop(), "claim")]
        if self.change_streams_active:
            background.append(self._supervised(self._watch_loop(), "watch"))
        else:
            self.events.polling(self.settings.poll_s, None)
        background.append(self._supervised(self._sweep_loop(), "sweep"))
        if self.notifier.watchdog_s:
            background.append(self._supervised(self._watchdog_loop(), "watchdog"))
        await self.stopping.wait()
        self.notifier.notify("STOPPING=1")
        self.events.worker_stopping()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self._shutdown()
        if self.settings.burst:
            if self.failed_here and self.exit_code == 0:
                self.exit_code = 1  # a one-off run that failed a job for good says so
            waiting, next_due = self._burst_scheduled or (0, None)
            self.events.burst_summary(self.failed_here, waiting, next_due)
        return self.exit_code

    def _supervised(self, loop: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A long-lived task whose escaping exception is never silent: it is logged, and the
        worker drains and exits 1 (its service manager starts a fresh process)."""
        task = asyncio.create_task(loop, name=name)

        def done(finished: asyncio.Task[None]) -> None:
            if finished.cancelled() or finished.exception() is None:
                return
            error = finished.exception()
            assert error is not None
            self.events.task_crashed(name, error)
            self.exit_code = self.exit_code or 1
            self.request_stop()

        task.add_done_callback(done)
        return task

    # ---------------------------------------------------------------- loops

    async def _claim_loop(self) -> None:
        slots = asyncio.Semaphore(self.settings.concurrency)
        while not self.stopping.is_set():
            await slots.acquire()
            if self.stopping.is_set():
                slots.release()
                return
            self.last_tick = time.monotonic()
            self.events.claim_tick()
            self.wake.clear()
            try:
                types = self.settings.queues
                self._rotation = (self._rotation + 1) % len(types)
                takeover = self.db.takeover_allowed()
                # The periodic round: expired locks and malformed availableAt first, so a busy
                # queue still gets to them; repeated while it finds such jobs.
                periodic = time.monotonic() >= self._next_takeover
                sent = time.monotonic()
                claimed = await self._store.claim(self.settings.worker_id,
                                                  types[self._rotation:] + types[:self._rotation],
                                                  self.settings.lock_s, expired_first=periodic,
                                                  takeover=takeover)
                if periodic and (claimed is None or self._ordinary(claimed[0])):
                    self._next_takeover = time.monotonic() + self.settings.takeover_interval_s
                self.db.ok()
                slow = self.db.round_trip(sent)
                if claimed is not None and slow and claimed[0].get("status") == JobStatus.RUNNING.value:
                    await self._give_back(*claimed, time.monotonic() - sent)
                    slots.release()
                    continue
            except Exception as exc:
                slots.release()
                if not is_outage(exc):
                    self.events.claim_error(exc)
                    delay = backoff_delay(2, ERROR_BACKOFF_BASE_S, self.settings.error_backoff_cap_s)
                else:
                    delay = self.db.problem(exc, "claim")
                    if self.settings.burst:  # a one-off run stops on an outage, with exit code 1
                        self.exit_code = 1
                        self.request_stop()
                        return
                if await self.db.sleep(delay, db_back=True):
                    return
                continue
            if claimed is None:
                slots.release()
                self.events.claim_idle()
                if self.settings.burst:
                    tasks = {e.task for e in self.running.values() if e.task is not None}
                    if not tasks:
                        self.events.burst_finished(dict(self.stats))
                        with contextlib.suppress(Exception):  # the summary line says nothing of retries then
                            self._burst_scheduled = await self._store.scheduled(self.settings.queues)
                        self.request_stop()
                        return
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                await self._idle_wait()
                continue
            before, after = claimed
            entry = Running(after, self._job_info(after), self.leases.new_lease(sent))
            key = entry.info.identity
            self.running[key] = entry
            entry.task = asyncio.create_task(self._run_job(before, entry), name=f"job-{entry.info.id}")
            entry.task.add_done_callback(self._finished_callback(key, slots))

    async def _give_back(self, before: Doc, after: Doc, waited_s: float) -> None:
        """A takeover that waited for the server: the owner's heartbeat may have waited behind
        it. The job goes back to its owner (fenced); if the owner is dead it expires again."""
        await self.db.retrying("give back", lambda: self._store.give_back(after, before, self.settings.lock_s))
        self.events.takeover_given_back(self._job_info(after), waited_s)

    @staticmethod
    def _ordinary(before: Doc) -> bool:
        """A PENDING job with a date (or no) availableAt: not a takeover, not malformed."""
        available = before.get("availableAt")
        return before.get("status") == JobStatus.PENDING.value and (
            available is None or isinstance(available, dt.datetime))

    async def _idle_wait(self) -> None:
        """Nothing due: sleep until the earliest scheduled job of our queues, a change, or the poll."""
        timeout = self.settings.poll_s
        sent = time.monotonic()
        try:
            next_due = await self._store.next_due(self.settings.queues)
            self.db.ok()
            self.db.round_trip(sent)
        except Exception as exc:
            if is_outage(exc):
                self.db.mark_outage()
            next_due = None
        if next_due is not None:
            timeout = min(timeout, max(0.0, (next_due - utcnow()).total_seconds()) + 0.005)
        self._idle.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)
        finally:
            self._idle.clear()

    def _finished_callback(self, key: tuple[str, Any],
                           slots: asyncio.Semaphore) -> Callable[[asyncio.Task[None]], None]:
        def finished(_task: asyncio.Task[None]) -> None:
            self.running.pop(key, None)
            slots.release()
        return finished

    async def _watch_loop(self) -> None:
        watcher = ChangeWatcher(self._store.jobs, self.wake, self._idle, self.stopping, self.db, self.events,
                                self.settings.poll_s)
        if not await watcher.run():
            self.change_streams_active = False

    async def _sweep(self) -> None:
        """Fail jobs whose worker died on their last attempt (several documents at once).

        Not while takeovers are paused after an outage (their owner may be
        about to write), and never this worker's own jobs.
        """
        if not self.db.takeover_allowed():
            return
        try:
            failed = await self._in_transaction(
                lambda session: self._store.fail_exhausted(self.settings.queues, session=session,
                                                           worker_id=self.settings.worker_id))
            self.db.ok()
        except Exception as exc:
            if is_outage(exc):
                self.db.problem(exc, "sweep")
                return
            raise
        if failed:
            self.stats["failed"] += len(failed)
            self.events.exhausted_failed([self._job_info(doc) for doc in failed],
                                         [doc.get("lockedBy") for doc in failed])

    async def _sweep_loop(self) -> None:
        while not await self.db.sleep(self.settings.sweep_interval_s):
            await self._sweep()

    async def _watchdog_loop(self) -> None:
        interval = (self.notifier.watchdog_s or 1.0) / 2
        while not await self.db.sleep(interval):
            if time.monotonic() - self.last_tick < max(interval * 2, self.settings.poll_s * 2 + 1) or \
                    self.running:
                self.notifier.notify("WATCHDOG=1")

    async def _in_transaction(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``work(session)`` in one transaction when enabled; else ``work(None)``.

        Used where the worker writes several documents at once. Without
        transactions each document's write is fenced on its own, in order,
        so a crash part-way leaves every document in a valid state.
        """
        if not self.transactions or self._client is None:
            return await work(None)
        async with self._client.start_session() as session, await session.start_transaction():
            return await work(session)

    # ---------------------------------------------------------------- one job

    def _job_info(self, doc: Doc) -> JobInfo:
        """Every field through the Job contract's parsing: never raises, whatever the document holds."""
        return JobInfo(id=str(doc.get("_id")), type=claimed_type(doc.get("type"), self.settings.queues),
                       attempt=attempts_of(doc), max_attempts=max_attempts_of(doc), key=job_key(doc.get("_id")))

    async def _run_job(self, before: Doc, entry: Running) -> None:
        try:
            await self._process(before, entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a refused write: the lock expires and the job is retried
            self.events.job_error(entry.info, exc)

    async def _process(self, before: Doc, entry: Running) -> None:
        doc, info = entry.doc, entry.info
        if before.get("status") == JobStatus.RUNNING.value:
            self.events.job_taken_over(info, before.get("lockedBy"))
        available = before.get("availableAt")
        wait_s = (doc["lockedAt"] - available).total_seconds() if isinstance(available, dt.datetime) else None
        self.events.job_started(info, wait_s)
        entry.started = time.monotonic()
        problems = document_problems(before)
        if problems:
            self.events.job_malformed(info, problems)
            await self._after_failure(entry, MalformedJobError("malformed Job document: " + "; ".join(problems)))
            return
        heartbeat = asyncio.get_running_loop().call_later(self.settings.heartbeat_s, self._start_heartbeat, entry)
        error: BaseException | None = None
        result: Any = None
        try:
            validate(info.type, doc.get("payload"))
            ok, value = await self._call_handler(entry)
            if ok:
                result = value
                self.runner.check_storable(result)
            else:
                error = value
        except asyncio.CancelledError:
            self._stop_heartbeat(entry, heartbeat)
            raise
        except Exception as exc:
            error = exc
        self._stop_heartbeat(entry, heartbeat)
        if error is not None:
            await self._after_failure(entry, error)
            return
        try:
            # No deadline: the fence (id, lockedBy, attempts) makes a late write
            # safe, and after an outage no worker takes this job over for a
            # lock period while this write is retried.
            written = await self._write_fenced("complete", lambda: self._store.complete(doc, result))
        except Exception as exc:  # e.g. a result over MongoDB's 16 MB document limit
            if is_outage(exc):
                raise
            await self._after_failure(entry, FatalJobError(
                f"the result could not be stored ({type(exc).__name__})"))
            return
        if written:
            self.stats["done"] += 1
            self.events.job_finished(info, Outcome.DONE, time.monotonic() - entry.started, None)
        elif written is False:
            self._lost(entry, None)

    async def _call_handler(self, entry: Running) -> tuple[bool, Any]:
        """Run the handler within its type's timeout: (True, result) or (False, the error)."""
        job_type = entry.info.type
        return await self.runner.call(entry, self.handlers[job_type], self.settings.timeout_for(job_type))

    def _too_many_abandoned(self) -> None:
        if self.exit_code == 0:
            self.exit_code = 1
            self.events.too_many_abandoned_threads(len(self.runner.abandoned))
            self.request_stop()

    # A job's heartbeat (``LeaseKeeper.keep``) starts as a timer, not a task: most jobs end before
    # the first beat.

    def _start_heartbeat(self, entry: Running) -> None:
        entry.heartbeat = asyncio.create_task(self.leases.keep(entry), name=f"heartbeat-{entry.info.id}")

    @staticmethod
    def _stop_heartbeat(entry: Running, timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        if entry.heartbeat is not None:
            entry.heartbeat.cancel()

    async def _write_fenced(self, what: str, call: Callable[[], Awaitable[bool]]) -> bool | None:
        """A final write (fenced), tried once more a moment later when its fence matched nothing:
        a takeover that waited for the server is given back at once (True, False: lost, None)."""
        written = await self.db.retrying(what, call)
        if written is False:
            await asyncio.sleep(min(self.settings.heartbeat_s, 1.0))
            written = await self.db.retrying(what, call)
        return written

    def _lost(self, entry: Running, error: BaseException | None) -> None:
        """The one place a lost lock ends a run: nothing was written for it."""
        self.stats["lost"] += 1
        self.events.job_finished(entry.info, Outcome.LOST, time.monotonic() - entry.started, error)

    async def _after_failure(self, entry: Running, exc: BaseException) -> None:
        doc, info = entry.doc, entry.info
        raw_attempts = doc.get("attempts")
        attempts = raw_attempts if is_whole(raw_attempts) else None
        policy = self.settings.policy_for(info.type)
        error = error_document(exc, attempts, self.redactor)
        timed_out = isinstance(exc, JobTimeoutError)
        duration = time.monotonic() - entry.started
        delay = policy.decide(exc, attempts, policy.maximum(doc))
        if delay is None:
            written = await self._write_fenced("fail", lambda: self._store.fail(doc, error))
            if written:
                self.stats["failed"] += 1
                self.failed_here += 1
                reason = ("malformed document" if isinstance(exc, MalformedJobError)
                          else "invalid payload" if isinstance(exc, PayloadError)
                          else "fatal error" if isinstance(exc, FatalJobError) else "Maximum attempts exhausted")
                self.events.job_failed(info, reason, exc)
                self.events.job_finished(info, Outcome.TIMED_OUT if timed_out else Outcome.FAILED, duration, exc)
            elif written is False:
                self._lost(entry, exc)
            return
        available = utcnow() + dt.timedelta(seconds=delay)
        written = await self._write_fenced("retry", lambda: self._store.retry_later(doc, error, available))
        if written:
            self.stats["retried"] += 1
            self.events.job_retrying(info, delay, exc)
            self.events.job_finished(info, Outcome.TIMED_OUT if timed_out else Outcome.RETRIED, duration, exc)
        elif written is False:
            self._lost(entry, exc)

    # ---------------------------------------------------------------- shutdown

    async def _shutdown(self) -> None:
        tasks = [e.task for e in self.running.values() if e.task is not None]
        if tasks and not self.stop.force:
            self.events.draining(len(tasks), self.settings.drain_timeout_s)
            deadline = time.monotonic() + self.settings.drain_timeout_s
            pending = set(tasks)
            while pending and not self.stop.force and time.monotonic() < deadline:
                _done, pending = await asyncio.wait(pending, timeout=min(0.2, deadline - time.monotonic()))
        left = [e for e in self.running.values() if e.task is not None and not e.task.done()]
        for entry in left:
            assert entry.task is not None
            entry.task.cancel()
        await asyncio.gather(*(e.task for e in left if e.task is not None), return_exceptions=True)
        mine = [e for e in left if not e.lost]
        docs = [e.doc for e in mine]
        if docs:
            released = await self.db.retrying(
                "release", lambda: self._in_transaction(lambda s: self._store.release(docs, session=s)),
                deadline=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)) or []
            released_ids = {job_key(d["_id"]) for d in released}
            infos = [e.info for e in mine if e.info.identity in released_ids]
            self.stats["released"] += len(infos)
            for entry in mine:
                if entry.info.identity in released_ids:
                    self.events.job_finished(entry.info, Outcome.RELEASED, time.monotonic() - entry.started, None)
            self.events.jobs_released(infos)
        await self.db.close()
        self.runner.shutdown()
        if self._client is not None:
            await self._client.close()
        self.events.worker_stopped(dict(self.stats))

    def handler_threads_alive(self) -> bool:
        """Whether a plain-function handler is still running in a thread."""
        return self.runner.threads_alive()


def run_process(settings: WorkerSettings, cli_handlers: Sequence[str], values: Mapping[str, str],
                redactor: Redactor | None = None, observers: Sequence[Observer] = ()) -> tuple[int, bool]:
    """Run a worker in this process until stopped: (exit code, whether handler threads still run).

    Handlers come from ``cli_handlers`` (``TYPE=SPEC``: module:callable, exec:COMMAND or a URL), then
    MUZO_WORKER_HANDLERS in ``values``, then entry points. SIGTERM and
    SIGINT stop it.
    """
    loaded = handlers_module.load(settings.queues, cli_handlers, values, handlers_module.HandlerOptions(
        cwd=settings.handler_cwd, grace_s=settings.handler_grace_s))
    runner = Worker(settings, loaded, redactor=redactor, observers=observers)

    async def main() -> int:
        runner.install_signal_handlers()
        return await runner.run()

    code = asyncio.run(main())
    return code, runner.handler_threads_alive()


__all__ = ["Worker", "WorkerSettings", "backoff_delay", "run_process"]
