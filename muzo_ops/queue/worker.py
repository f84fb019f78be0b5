"""The queue worker: runs ``Job`` documents through their handlers.

One asyncio loop per process: a claim loop that keeps up to
``concurrency`` jobs running, a heartbeat per job, a change-stream watcher
that wakes the claim loop when a job is inserted (polling otherwise), a
slow sweep that fails jobs whose worker died on their last attempt, and
systemd notifications. MongoDB outages are logged and backed off, never
fatal. SIGTERM/SIGINT drain, release what is left and exit 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import inspect
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import bson
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from muzo_ops.constants import (
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_HEARTBEAT_FRACTION,
    DEFAULT_LOCK_DURATION_S,
    DEFAULT_POLL_INTERVAL_S,
    DEFAULT_RETRY_BASE_S,
    DEFAULT_RETRY_CAP_S,
    ERROR_BACKOFF_BASE_S,
    ERROR_BACKOFF_CAP_S,
    QUEUE_INIT_LOGGER_NAME,
    STALE_SWEEP_INTERVAL_S,
    TAKEOVER_INTERVAL_S,
    WORKER_LOGGER_NAME,
)
from muzo_ops.env import checks, database_url, mongourl, schema
from muzo_ops.errors import ConfigError
from muzo_ops.logs import Logger
from muzo_ops.queue import handlers as handlers_module
from muzo_ops.queue import topology
from muzo_ops.queue.errors import AUTHENTICATION_FAILED, is_outage
from muzo_ops.queue.handlers import Handler
from muzo_ops.queue.jobs import FatalJobError, JobStatus, JobType, PayloadError, job_from_document, max_attempts_of
from muzo_ops.queue.payloads import validate
from muzo_ops.queue.store import JobStore, change_stream_pipeline, error_document, utcnow
from muzo_ops.sdnotify import Notifier
from muzo_ops.secrets.redact import Redactor

T = TypeVar("T")
Doc = dict[str, Any]

@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process needs; ``from_values`` builds it from env values."""

    url: str
    queues: tuple[JobType, ...] = (JobType.GENERATION,)
    concurrency: int = 1
    transactions: str | None = None  # QUEUE_TRANSACTIONS as written, None: auto-detect
    log_level: str = "info"
    lock_s: float = DEFAULT_LOCK_DURATION_S
    poll_s: float = DEFAULT_POLL_INTERVAL_S
    retry_base_s: float = DEFAULT_RETRY_BASE_S
    retry_cap_s: float = DEFAULT_RETRY_CAP_S
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    error_backoff_cap_s: float = ERROR_BACKOFF_CAP_S
    sweep_interval_s: float = STALE_SWEEP_INTERVAL_S
    takeover_interval_s: float = TAKEOVER_INTERVAL_S
    change_streams: bool = True
    burst: bool = False  # exit once no job is due (cron, tests)
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:"
                                                   f"{random.getrandbits(24):06x}")

    @property
    def heartbeat_s(self) -> float:
        return max(0.05, self.lock_s * DEFAULT_HEARTBEAT_FRACTION)

    @classmethod
    def from_values(cls, values: Mapping[str, str], *, queues: str | None = None,
                    concurrency: int | None = None, lock_s: float | None = None,
                    poll_s: float | None = None, drain_timeout_s: float | None = None,
                    retry_base_s: float | None = None, retry_cap_s: float | None = None,
                    change_streams: bool | None = None, burst: bool = False) -> WorkerSettings:
        """Settings from env values, each keyword (a command-line flag) overriding its variable.

        ConfigError (one line) names an invalid value. Only the variables the
        worker itself reads are checked here; the API keys handlers need are
        ``check-env --app worker``'s business.
        """
        def checked(name: str) -> str | None:
            value = values.get(name, "")
            if value == "":
                return None
            problem = checks.value_error(schema.get(name), value)
            if problem:
                raise ConfigError(f"{name} {problem}")
            return value

        def number(name: str, given: float | None, default: float) -> float:
            if given is not None:
                return given
            text = checked(name)
            return float(text) if text is not None else default

        url = database_url(values)
        if queues is not None:
            problem = checks.value_error(schema.get("WORKER_QUEUES"), queues)
            if problem:
                raise ConfigError(f"--queues {problem}")
        queue_text = queues or checked("WORKER_QUEUES") or "generation"
        types = tuple(dict.fromkeys(JobType.from_queue(q) for q in queue_text.split(",")))
        if concurrency is None:
            concurrency = int(checked("WORKER_CONCURRENCY") or checked("GENERATION_WORKER_CONCURRENCY") or "1")
        streams_text = checked("WORKER_CHANGE_STREAMS")
        return cls(
            url=url, queues=types, concurrency=concurrency,
            transactions=checked("QUEUE_TRANSACTIONS"),
            log_level=checked("LOG_LEVEL") or "info",
            lock_s=number("WORKER_LOCK_SECONDS", lock_s, DEFAULT_LOCK_DURATION_S),
            poll_s=number("WORKER_POLL_SECONDS", poll_s, DEFAULT_POLL_INTERVAL_S),
            drain_timeout_s=number("WORKER_DRAIN_TIMEOUT_SECONDS", drain_timeout_s, DEFAULT_DRAIN_TIMEOUT_S),
            retry_base_s=number("WORKER_RETRY_BASE_SECONDS", retry_base_s, DEFAULT_RETRY_BASE_S),
            retry_cap_s=number("WORKER_RETRY_CAP_SECONDS", retry_cap_s, DEFAULT_RETRY_CAP_S),
            change_streams=change_streams if change_streams is not None else (
                schema.parse_bool(streams_text) if streams_text is not None else True),
            burst=burst,
        )


def backoff_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """base × 2^(attempt−1), capped, with jitter in [½, 1] of it."""
    delay = min(cap_s, base_s * float(2 ** max(0, attempt - 1)))
    return delay / 2 + random.random() * delay / 2


@dataclass
class _Running:
    """A claimed job while its handler runs."""

    doc: Doc
    task: asyncio.Task[None] | None = None
    lost: bool = False
    locked_until: dt.datetime | None = None


class Worker:
    """One worker process's loop; ``await run()`` returns when stopped and drained."""

    def __init__(self, settings: WorkerSettings, handlers: Mapping[JobType, Handler],
                 logger: Logger | None = None, notifier: Notifier | None = None,
                 redactor: Redactor | None = None) -> None:
        self.settings = settings
        self.handlers = dict(handlers)
        self.log = logger or Logger(WORKER_LOGGER_NAME, settings.log_level, redactor=redactor)
        self.notifier = notifier or Notifier()
        self.transactions = False
        self.consecutive_errors = 0
        self.running: dict[str, _Running] = {}
        self.stopping = asyncio.Event()
        self.force = False
        self.wake = asyncio.Event()
        self.last_tick = time.monotonic()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, settings.concurrency), thread_name_prefix="muzo-handler")
        self.change_streams_active = False
        self.stats = {"done": 0, "failed": 0, "retried": 0, "lost": 0, "released": 0}
        self._job_logs = {t: self.log.child(f"muzo-{t.queue}-worker") for t in JobType}
        self._rotation = 0  # which queue is tried first: rotates for fairness
        self._next_takeover = 0.0  # monotonic time of the next expired-first claim
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
            self.force = True
        self.force = self.force or force
        self.stopping.set()
        self.wake.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when stopping was requested."""
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
            return True
        except TimeoutError:
            return False

    def _connection_problem(self, exc: BaseException, where: str) -> float:
        """Log an outage; the back-off delay before the next try."""
        self.consecutive_errors += 1
        self.log.log("error", "MongoDB connection error in worker loop", err=exc,
                     consecutiveErrors=self.consecutive_errors, where=where)
        return backoff_delay(self.consecutive_errors, ERROR_BACKOFF_BASE_S, self.settings.error_backoff_cap_s)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]],
                        deadline: dt.datetime | None = None, until_stop: bool = False) -> T | None:
        """Run a MongoDB call, retrying through outages; None once ``deadline`` passed
        (or, with ``until_stop``, once a stop was requested)."""
        while True:
            try:
                result = await call()
                self.consecutive_errors = 0
                return result
            except Exception as exc:
                if not is_outage(exc):
                    raise
                delay = self._connection_problem(exc, what)
                if deadline is not None and dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay) > deadline:
                    return None
                if self.force or (until_stop and self.stopping.is_set()):
                    return None
                if until_stop:
                    await self._sleep(delay)
                else:
                    await asyncio.sleep(delay)

    # ---------------------------------------------------------------- start-up

    async def _connect(self) -> None:
        parsed = mongourl.parse(self.settings.url)
        kwargs: dict[str, Any] = {"appname": "muzo-worker"}
        if parsed.option("serverSelectionTimeoutMS") is None:
            kwargs["serverSelectionTimeoutMS"] = 30000
        client: AsyncMongoClient[Doc] = AsyncMongoClient(self.settings.url, **kwargs)
        self._client = client
        db = client.get_default_database(default="muzo")
        self._store_ = JobStore(db)
        decided = topology.from_setting_or_url(self.settings.transactions, self.settings.url)
        hello: Doc = await self._retrying("hello", lambda: client.admin.command("hello"),
                                               until_stop=True) or {}
        mode = decided or topology.from_hello(hello)
        self.transactions = mode.enabled
        self.change_streams_active = self.settings.change_streams and bool(
            hello.get("setName") or hello.get("msg") == "isdbgrid")
        init = self.log.child(QUEUE_INIT_LOGGER_NAME)
        if not mode.enabled:
            init.info("Mongo replica set not detected; using non-transactional queue mode",
                      reason=mode.reason, source=mode.source.value)
        else:
            init.info("Mongo transactions enabled for the queue", reason=mode.reason,
                      source=mode.source.value)
        try:
            created = await self._retrying("createIndexes", self._store.ensure_indexes, until_stop=True)
        except OperationFailure as exc:
            if exc.code == AUTHENTICATION_FAILED:
                raise
            init.log("warn", "Could not check or create the queue indexes; claims may be slow",
                     err=exc, code=exc.code)
            created = []
        if created:
            init.info("Created queue indexes", indexes=created)

    async def run(self) -> int:
        """Run until stopped; the process exit code (0)."""
        await self._connect()
        if self.stopping.is_set():
            await self._shutdown()
            return 0
        await self._sweep()
        self.log.info("Worker bootstrapped and listening for jobs", workerId=self.settings.worker_id,
                      queues=[t.queue for t in self.settings.queues],
                      concurrency=self.settings.concurrency, transactions=self.transactions,
                      changeStreams=self.change_streams_active)
        init = self.log.child(QUEUE_INIT_LOGGER_NAME)
        for job_type in self.settings.queues:
            init.info("Queue worker started", queue=job_type.queue,
                      handler=getattr(self.handlers[job_type], "__qualname__", "?"))
        self.notifier.notify("READY=1")
        background = [asyncio.create_task(self._claim_loop(), name="claim")]
        if self.change_streams_active:
            background.append(asyncio.create_task(self._watch_loop(), name="watch"))
        else:
            self.log.info("Change streams unavailable; polling for jobs",
                          pollIntervalMs=int(self.settings.poll_s * 1000))
        background.append(asyncio.create_task(self._sweep_loop(), name="sweep"))
        if self.notifier.watchdog_s:
            background.append(asyncio.create_task(self._watchdog_loop(), name="watchdog"))
        await self.stopping.wait()
        self.notifier.notify("STOPPING=1")
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self._shutdown()
        return 0

    # ---------------------------------------------------------------- loops

    async def _claim_loop(self) -> None:
        slots = asyncio.Semaphore(self.settings.concurrency)
        while not self.stopping.is_set():
            await slots.acquire()
            if self.stopping.is_set():
                slots.release()
                return
            self.last_tick = time.monotonic()
            self.wake.clear()
            try:
                types = self.settings.queues
                self._rotation = (self._rotation + 1) % len(types)
                expired_first = time.monotonic() >= self._next_takeover
                if expired_first:
                    self._next_takeover = time.monotonic() + self.settings.takeover_interval_s
                claimed = await self._store.claim(self.settings.worker_id,
                                                  types[self._rotation:] + types[:self._rotation],
                                                  self.settings.lock_s, expired_first=expired_first)
                self.consecutive_errors = 0
            except Exception as exc:
                slots.release()
                if not is_outage(exc):
                    self.log.log("error", "Unexpected error while claiming a job", err=exc)
                    delay = backoff_delay(2, ERROR_BACKOFF_BASE_S, self.settings.error_backoff_cap_s)
                else:
                    delay = self._connection_problem(exc, "claim")
                if await self._sleep(delay):
                    return
                continue
            if claimed is None:
                slots.release()
                if self.settings.burst:
                    tasks = {e.task for e in self.running.values() if e.task is not None}
                    if not tasks:
                        self.log.info("No job due; burst run finished", **self.stats)
                        self.request_stop()
                        return
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=self.settings.poll_s)
                continue
            before, after = claimed
            entry = _Running(after, locked_until=after["lockedUntil"])
            key = str(after["_id"])
            self.running[key] = entry
            entry.task = asyncio.create_task(self._run_job(before, entry), name=f"job-{key}")
            entry.task.add_done_callback(self._finished_callback(key, slots))

    def _finished_callback(self, key: str, slots: asyncio.Semaphore) -> Callable[[asyncio.Task[None]], None]:
        def finished(_task: asyncio.Task[None]) -> None:
            self.running.pop(key, None)
            slots.release()
        return finished

    async def _watch_loop(self) -> None:
        pipeline = change_stream_pipeline()
        failures = 0
        while not self.stopping.is_set():
            try:
                async with await self._store.jobs.watch(pipeline, max_await_time_ms=500) as stream:
                    failures = 0
                    self.wake.set()
                    async for _change in stream:
                        self.wake.set()
            except OperationFailure as exc:
                if is_outage(exc):
                    failures += 1
                else:
                    self.log.info("Change streams unavailable; polling for jobs",
                                  pollIntervalMs=int(self.settings.poll_s * 1000), code=exc.code)
                    self.change_streams_active = False
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_outage(exc):
                    self.log.log("warn", "Change stream stopped; polling until it reopens", err=exc)
                failures += 1
            if await self._sleep(backoff_delay(failures, ERROR_BACKOFF_BASE_S, self.settings.error_backoff_cap_s)):
                return

    async def _sweep(self) -> None:
        """Fail jobs whose worker died on their last attempt (several documents at once)."""
        try:
            failed = await self._in_transaction(
                lambda session: self._store.fail_exhausted(self.settings.queues, session=session))
        except Exception as exc:
            if is_outage(exc):
                self._connection_problem(exc, "sweep")
                return
            raise
        for doc in failed or []:
            self._job_logs[JobType(doc["type"])].error(
                "Job failed permanently", jobId=str(doc["_id"]), type=doc["type"],
                attempts=doc.get("attempts"), maxAttempts=max_attempts_of(doc),
                reason="Maximum attempts exhausted", previousWorker=doc.get("lockedBy"))
        if failed:
            self.stats["failed"] += len(failed)

    async def _sweep_loop(self) -> None:
        while not await self._sleep(self.settings.sweep_interval_s):
            await self._sweep()

    async def _watchdog_loop(self) -> None:
        interval = (self.notifier.watchdog_s or 1.0) / 2
        while not await self._sleep(interval):
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

    async def _run_job(self, before: Doc, entry: _Running) -> None:
        try:
            await self._process(before, entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a refused write: the lock expires and the job is retried
            self.log.log("error", "Job processing error; the job will be retried after its lock expires",
                         err=exc, jobId=str(entry.doc["_id"]))

    async def _process(self, before: Doc, entry: _Running) -> None:
        doc = entry.doc
        job_type = JobType(doc["type"])
        log = self._job_logs[job_type]
        job_id = str(doc["_id"])
        if before.get("status") == JobStatus.RUNNING.value:
            log.warn("Released stale jobs", count=1, jobId=job_id, previousWorker=before.get("lockedBy"),
                     attempts=doc["attempts"])
        log.info("Job started", jobId=job_id, type=job_type.value, attempt=doc["attempts"],
                 maxAttempts=max_attempts_of(doc))
        started = time.monotonic()
        heartbeat = asyncio.create_task(self._heartbeat(entry, log))
        try:
            validate(job_type, doc.get("payload"))
            result = await self._call_handler(job_type, doc)
            self._check_storable(result)
        except asyncio.CancelledError:
            heartbeat.cancel()
            raise
        except Exception as exc:
            heartbeat.cancel()
            await self._after_failure(entry, exc, log)
            return
        heartbeat.cancel()
        if entry.lost:
            self.stats["lost"] += 1
            log.warn("Job lock lost; result not written", jobId=job_id)
            return
        try:
            written = await self._retrying("complete", lambda: self._store.complete(doc, result),
                                           deadline=entry.locked_until)
        except Exception as exc:  # e.g. a result over MongoDB's 16 MB document limit
            if is_outage(exc):
                raise
            await self._after_failure(entry, FatalJobError(
                f"the result could not be stored ({type(exc).__name__})"), log)
            return
        if written:
            self.stats["done"] += 1
            log.info("Job completed", jobId=job_id, type=job_type.value,
                     durationMs=int((time.monotonic() - started) * 1000))
        else:
            self.stats["lost"] += 1
            log.warn("Job lock lost; result not written", jobId=job_id)

    async def _call_handler(self, job_type: JobType, doc: Doc) -> Any:
        handler = self.handlers[job_type]
        job = job_from_document(doc)
        if inspect.iscoroutinefunction(handler):
            return await handler(job)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.executor, handler, job)
        if inspect.isawaitable(result):
            return await result
        return result

    @staticmethod
    def _check_storable(result: Any) -> None:
        try:
            bson.encode({"result": result})
        except Exception as exc:
            raise FatalJobError(f"handler returned a value that cannot be stored: {type(exc).__name__}") from exc

    async def _heartbeat(self, entry: _Running, log: Logger) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                until = await self._store.heartbeat(entry.doc, self.settings.lock_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_outage(exc):
                    self._connection_problem(exc, "heartbeat")
                    continue
                log.log("warn", "Heartbeat failed", err=exc, jobId=str(entry.doc["_id"]))
                continue
            if until is None:
                entry.lost = True
                log.warn("Job lock lost to another worker; its result will not be written",
                         jobId=str(entry.doc["_id"]))
                return
            entry.locked_until = until

    async def _after_failure(self, entry: _Running, exc: Exception, log: Logger) -> None:
        doc = entry.doc
        job_id = str(doc["_id"])
        attempts = int(doc["attempts"])
        maximum = max_attempts_of(doc)
        error = error_document(exc, attempts)
        if entry.lost:
            self.stats["lost"] += 1
            log.warn("Job lock lost; failure not written", jobId=job_id)
            return
        fatal = isinstance(exc, FatalJobError)
        if fatal or attempts >= maximum:
            written = await self._retrying("fail", lambda: self._store.fail(doc, error),
                                           deadline=entry.locked_until)
            if written:
                self.stats["failed"] += 1
                log.log("error", "Job failed permanently", err=exc, jobId=job_id, type=doc["type"],
                        attempts=attempts, maxAttempts=maximum,
                        reason="invalid payload" if isinstance(exc, PayloadError)
                        else "fatal error" if fatal else "Maximum attempts exhausted")
            return
        delay = backoff_delay(attempts, self.settings.retry_base_s, self.settings.retry_cap_s)
        available = utcnow() + dt.timedelta(seconds=delay)
        written = await self._retrying("retry", lambda: self._store.retry_later(doc, error, available),
                                       deadline=entry.locked_until)
        if written:
            self.stats["retried"] += 1
            log.log("warn", "Retrying job after failure", err=exc, jobId=job_id, type=doc["type"],
                    attempt=attempts, maxAttempts=maximum, delayMs=int(delay * 1000))

    # ---------------------------------------------------------------- shutdown

    async def _shutdown(self) -> None:
        tasks = [e.task for e in self.running.values() if e.task is not None]
        if tasks and not self.force:
            self.log.info("Draining running jobs", running=len(tasks),
                          drainTimeoutMs=int(self.settings.drain_timeout_s * 1000))
            deadline = time.monotonic() + self.settings.drain_timeout_s
            pending = set(tasks)
            while pending and not self.force and time.monotonic() < deadline:
                _done, pending = await asyncio.wait(pending, timeout=min(0.2, deadline - time.monotonic()))
        left = [e for e in self.running.values() if e.task is not None and not e.task.done()]
        for entry in left:
            assert entry.task is not None
            entry.task.cancel()
        await asyncio.gather(*(e.task for e in left if e.task is not None), return_exceptions=True)
        docs = [e.doc for e in left if not e.lost]
        if docs:
            released = await self._retrying(
                "release", lambda: self._in_transaction(lambda s: self._store.release(docs, session=s)),
                deadline=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)) or 0
            self.stats["released"] += released
            self.log.info("Released jobs on shutdown", count=released,
                          jobIds=[str(d["_id"]) for d in docs])
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            await self._client.close()
        self.log.info("Worker stopped", **self.stats)

    def handler_threads_alive(self) -> bool:
        """Whether a plain-function handler is still running in a thread."""
        return any(t.is_alive() for t in getattr(self.executor, "_threads", ()))


def run_process(settings: WorkerSettings, cli_handlers: Sequence[str], values: Mapping[str, str],
                redactor: Redactor | None = None) -> tuple[int, bool]:
    """Run a worker in this process until stopped: (exit code, whether handler threads still run).

    Handlers come from ``cli_handlers`` (``TYPE=module:callable``), then
    MUZO_WORKER_HANDLERS in ``values``, then entry points. SIGTERM and
    SIGINT stop it.
    """
    loaded = handlers_module.load(settings.queues, cli_handlers, values)
    runner = Worker(settings, loaded, redactor=redactor)

    async def main() -> int:
        runner.install_signal_handlers()
        return await runner.run()

    code = asyncio.run(main())
    return code, runner.handler_threads_alive()
