"""The queue worker: runs ``Job`` documents through their handlers.

One asyncio loop per process: a claim loop that keeps up to
``concurrency`` jobs running, a heartbeat per job, a change-stream watcher
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
import concurrent.futures
import contextlib
import datetime as dt
import inspect
import math
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
    STALE_SWEEP_INTERVAL_S,
    TAKEOVER_INTERVAL_S,
    VERSION,
    WORKER_LOGGER_NAME,
)
from muzo_ops.env import checks, database_url, schema
from muzo_ops.errors import ConfigError
from muzo_ops.logs import Logger
from muzo_ops.mongo import topology
from muzo_ops.mongo import url as mongourl
from muzo_ops.mongo.errors import AUTHENTICATION_FAILED, is_outage
from muzo_ops.queue import handlers as handlers_module
from muzo_ops.queue.events import JobInfo, Observer, Observers, Outcome, WorkerInfo
from muzo_ops.queue.handlers import Handler
from muzo_ops.queue.jobs import (
    FatalJobError,
    JobStatus,
    JobTimeoutError,
    JobType,
    MalformedJobError,
    PayloadError,
    document_problems,
    job_from_document,
    max_attempts_of,
)
from muzo_ops.queue.logobserver import LogObserver
from muzo_ops.queue.payloads import validate
from muzo_ops.queue.store import JobStore, change_stream_pipeline, error_document, utcnow
from muzo_ops.redact.redactor import Redactor
from muzo_ops.sdnotify import Notifier

T = TypeVar("T")
Doc = dict[str, Any]

# A plain handler's thread cannot be killed: after its timeout it is
# abandoned. This many abandoned threads still running make the worker
# drain and exit 1, so its service manager starts a fresh process.
MAX_ABANDONED_THREADS = 3
# While the claim loop is busy the change stream waits for it up to the poll
# interval (at most this) per event, and the events it already fetched are
# read through at least this often, so it asks the server again: well within
# the server's idle cursor timeout (10 minutes).
WATCH_PAUSE_MAX_S = 60.0
# Start-up range checks: (setting, flag, variable). The variable's schema
# minimum and maximum bound the value whether it came from the flag or the
# env file (finite, a lock that still makes a BSON date, delays asyncio takes).
_RANGES = (
    ("lock_s", "--lock-seconds", "WORKER_LOCK_SECONDS"),
    ("poll_s", "--poll-seconds", "WORKER_POLL_SECONDS"),
    ("drain_timeout_s", "--drain-timeout", "WORKER_DRAIN_TIMEOUT_SECONDS"),
    ("retry_base_s", "--retry-base", "WORKER_RETRY_BASE_SECONDS"),
    ("retry_cap_s", "--retry-cap", "WORKER_RETRY_CAP_SECONDS"),
)
TIMEOUT_VARIABLES = {t: f"JOB_TIMEOUT_{t.value}_SECONDS" for t in JobType}
# Hard limits of any duration setting, whoever builds the settings: finite,
# and small enough for a BSON date (year 9999) and asyncio's timers.
MAX_DURATION_S = 30 * 86400.0


def _default_timeouts() -> dict[JobType, float]:
    return {t: float(schema.get(name).default or "300") for t, name in TIMEOUT_VARIABLES.items()}


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
    job_timeouts: dict[JobType, float] = field(default_factory=_default_timeouts)  # per type, seconds
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:"
                                                   f"{random.getrandbits(24):06x}")

    def __post_init__(self) -> None:
        durations = {"lock_s": self.lock_s, "poll_s": self.poll_s, "retry_base_s": self.retry_base_s,
                     "retry_cap_s": self.retry_cap_s, "drain_timeout_s": self.drain_timeout_s,
                     "error_backoff_cap_s": self.error_backoff_cap_s,
                     "sweep_interval_s": self.sweep_interval_s, "takeover_interval_s": self.takeover_interval_s,
                     **{f"job_timeouts[{t.value}]": v for t, v in self.job_timeouts.items()}}
        for name, value in durations.items():
            low_ok = value >= 0 if name == "drain_timeout_s" else value > 0
            if not (isinstance(value, int | float) and math.isfinite(value) and low_ok
                    and value <= MAX_DURATION_S):
                raise ConfigError(f"worker setting {name}={value!r} is out of range: use a finite number of "
                                  f"seconds above 0 and at most {MAX_DURATION_S:g}")
        if not 1 <= self.concurrency <= 1000:
            raise ConfigError(f"worker setting concurrency={self.concurrency} is out of range: use 1 to 1000")

    @property
    def heartbeat_s(self) -> float:
        return max(0.05, self.lock_s * DEFAULT_HEARTBEAT_FRACTION)

    def timeout_for(self, job_type: JobType) -> float:
        """How long a handler of ``job_type`` may run."""
        return self.job_timeouts.get(job_type) or float(schema.get(TIMEOUT_VARIABLES[job_type]).default or "300")

    @classmethod
    def from_values(cls, values: Mapping[str, str], *, queues: str | None = None,
                    concurrency: int | None = None, lock_s: float | None = None,
                    poll_s: float | None = None, drain_timeout_s: float | None = None,
                    retry_base_s: float | None = None, retry_cap_s: float | None = None,
                    change_streams: bool | None = None, burst: bool = False) -> WorkerSettings:
        """Settings from env values, each keyword (a command-line flag) overriding its variable.

        ConfigError (one line) names an invalid value; a flag's value is held
        to its variable's range. Only the variables the worker itself reads
        are checked here; the API keys handlers need are ``check-env --app
        worker``'s business.
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
        elif concurrency > 1000:
            raise ConfigError(f"--concurrency {concurrency} is out of range: use 1 to 1000 (as WORKER_CONCURRENCY)")
        given = {"lock_s": lock_s, "poll_s": poll_s, "drain_timeout_s": drain_timeout_s,
                 "retry_base_s": retry_base_s, "retry_cap_s": retry_cap_s}
        for key, flag, name in _RANGES:
            value = given[key]
            if value is None:
                continue
            var = schema.get(name)
            low = var.minimum if var.minimum is not None else 0.0
            high = var.maximum if var.maximum is not None else MAX_DURATION_S
            if not (math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"{flag} {value:g} is out of range: use {low:g} to {high:g} seconds (as {name})")
        timeouts = {t: number(name, None, float(schema.get(name).default or "300"))
                    for t, name in TIMEOUT_VARIABLES.items()}
        streams_text = checked("WORKER_CHANGE_STREAMS")
        base = number("WORKER_RETRY_BASE_SECONDS", retry_base_s, DEFAULT_RETRY_BASE_S)
        cap = number("WORKER_RETRY_CAP_SECONDS", retry_cap_s, DEFAULT_RETRY_CAP_S)
        if base > cap:
            raise ConfigError(f"the retry base ({base:g} s) is longer than the retry cap ({cap:g} s): raise "
                              "WORKER_RETRY_CAP_SECONDS / --retry-cap or lower the base")
        return cls(
            url=url, queues=types, concurrency=concurrency,
            transactions=checked("QUEUE_TRANSACTIONS"),
            log_level=checked("LOG_LEVEL") or "info",
            lock_s=number("WORKER_LOCK_SECONDS", lock_s, DEFAULT_LOCK_DURATION_S),
            poll_s=number("WORKER_POLL_SECONDS", poll_s, DEFAULT_POLL_INTERVAL_S),
            drain_timeout_s=number("WORKER_DRAIN_TIMEOUT_SECONDS", drain_timeout_s, DEFAULT_DRAIN_TIMEOUT_S),
            retry_base_s=base,
            retry_cap_s=cap,
            change_streams=change_streams if change_streams is not None else (
                schema.parse_bool(streams_text) if streams_text is not None else True),
            burst=burst,
            job_timeouts=timeouts,
        )


def backoff_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Between half and all of base × 2^(attempt−1) (capped): the jitter spreads retries."""
    delay = min(cap_s, base_s * float(2 ** min(62, max(0, attempt - 1))))
    return delay / 2 + random.random() * delay / 2


def _call_plain(handler: Handler, job: Any) -> tuple[bool, Any]:
    """In a handler thread: (True, result) or (False, whatever it raised, BaseException included)."""
    try:
        return True, handler(job)
    except BaseException as exc:  # SystemExit, KeyboardInterrupt…: a job failure, not the worker's
        return False, exc


async def _guarded(awaitable: Awaitable[Any]) -> tuple[bool, Any]:
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


def _handler_name(handler: Handler) -> str:
    return str(getattr(handler, "__qualname__", "?"))


@dataclass
class _Running:
    """A claimed job while its handler runs."""

    doc: Doc
    info: JobInfo
    task: asyncio.Task[None] | None = None
    heartbeat: asyncio.Task[None] | None = None  # started by a timer once the job runs that long
    lost: bool = False
    started: float = field(default_factory=time.monotonic)


class Worker:
    """One worker process's loop; ``await run()`` returns when stopped and drained."""

    def __init__(self, settings: WorkerSettings, handlers: Mapping[JobType, Handler],
                 logger: Logger | None = None, notifier: Notifier | None = None,
                 redactor: Redactor | None = None, observers: Sequence[Observer] = ()) -> None:
        self.settings = settings
        self.handlers = dict(handlers)
        self.log = logger or Logger(WORKER_LOGGER_NAME, settings.log_level, redactor=redactor)
        self.redactor: Redactor = redactor if redactor is not None else self.log.redactor
        self.events = Observers([LogObserver(self.log), *observers])
        self.notifier = notifier or Notifier()
        self.transactions = False
        self.consecutive_errors = 0
        self.running: dict[str, _Running] = {}
        self.stopping = asyncio.Event()
        self.force = False
        self.wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while the claim loop waits for ``wake`` (nothing due)
        self.last_tick = time.monotonic()
        self.exit_code = 0
        # Room for the running jobs plus the threads abandoned after a timeout.
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, settings.concurrency) + MAX_ABANDONED_THREADS, thread_name_prefix="muzo-handler")
        self.abandoned: set[concurrent.futures.Future[tuple[bool, Any]]] = set()
        self.change_streams_active = False
        self.stats = {"done": 0, "failed": 0, "retried": 0, "lost": 0, "released": 0}
        self._rotation = 0  # which queue is tried first: rotates for fairness
        self._next_takeover = 0.0  # monotonic time of the next expired-first claim
        self._in_outage = False  # a MongoDB call failed for an outage and none succeeded since
        self._db_up = asyncio.Event()  # set while MongoDB answers: wakes pending writes at once
        self._no_takeover_until = 0.0  # monotonic: no expired job is taken over before
        self._probe: asyncio.Task[None] | None = None
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

    async def _sleep(self, seconds: float, db_back: bool = False) -> bool:
        """Sleep unless stopping (or, with ``db_back``, until MongoDB answers again);
        True when stopping was requested."""
        waits = [asyncio.ensure_future(self.stopping.wait())]
        if db_back:
            waits.append(asyncio.ensure_future(self._db_up.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        return self.stopping.is_set()

    # ---------------------------------------------------------------- MongoDB health

    def _db_ok(self) -> None:
        """A MongoDB call succeeded: the outage (if any) is over."""
        self.consecutive_errors = 0
        if self._in_outage:
            self._in_outage = False
            # Every worker was cut off alike: the owners of expired locks are
            # about to write. Take none over for one lock period.
            self._no_takeover_until = time.monotonic() + self.settings.lock_s
            self.events.takeovers_paused(self.settings.lock_s)
        self._db_up.set()
        self.events.db_ok()

    def _mark_outage(self) -> None:
        """MongoDB is out of reach: pending writes wait for the probe to see it back."""
        self._in_outage = True
        self._db_up.clear()
        if self._client is not None and (self._probe is None or self._probe.done()):
            self._probe = asyncio.create_task(self._probe_loop(), name="probe")

    async def _probe_loop(self) -> None:
        """Ping until the server answers (pymongo re-checks it every half second meanwhile)."""
        assert self._client is not None
        while self._in_outage and not self.force:
            try:
                await self._client.admin.command("ping")
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.2)
                continue
            self._db_ok()
            return

    def _takeover_allowed(self) -> bool:
        return not self._in_outage and time.monotonic() >= self._no_takeover_until

    def _connection_problem(self, exc: BaseException, where: str) -> float:
        """Report an outage; the back-off delay before the next try."""
        self.consecutive_errors += 1
        self._mark_outage()
        self.events.connection_error(where, self.consecutive_errors, exc)
        return backoff_delay(self.consecutive_errors, ERROR_BACKOFF_BASE_S, self.settings.error_backoff_cap_s)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]],
                        deadline: dt.datetime | None = None, until_stop: bool = False) -> T | None:
        """Run a MongoDB call, retrying through outages (at once when the server is back);
        None once ``deadline`` passed, on a forced stop, or (``until_stop``) once stopping."""
        while True:
            try:
                result = await call()
                self._db_ok()
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
                    await self._sleep(delay, db_back=True)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._db_up.wait(), delay)

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
        hello: Doc
        if self.settings.burst:  # a one-off run (cron, tests) gives up on an outage: the error says why
            try:
                hello = await client.admin.command("hello")
            except Exception as exc:
                if is_outage(exc):
                    self._connection_problem(exc, "hello")
                raise
            self._db_ok()
        else:
            hello = await self._retrying("hello", lambda: client.admin.command("hello"), until_stop=True) or {}
        mode = decided or topology.from_hello(hello)
        self.transactions = mode.enabled
        self.change_streams_active = self.settings.change_streams and bool(
            hello.get("setName") or hello.get("msg") == "isdbgrid")
        self.events.transactions_decided(mode.enabled, mode.reason, mode.source.value)
        try:
            created = await self._retrying("createIndexes", self._store.ensure_indexes, until_stop=True)
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
            handlers=tuple((t, _handler_name(self.handlers[t])) for t in self.settings.queues)))
        background = [asyncio.create_task(self._claim_loop(), name="claim")]
        if self.change_streams_active:
            background.append(asyncio.create_task(self._watch_loop(), name="watch"))
        else:
            self.events.polling(self.settings.poll_s, None)
        background.append(asyncio.create_task(self._sweep_loop(), name="sweep"))
        if self.notifier.watchdog_s:
            background.append(asyncio.create_task(self._watchdog_loop(), name="watchdog"))
        await self.stopping.wait()
        self.notifier.notify("STOPPING=1")
        self.events.worker_stopping()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self._shutdown()
        return self.exit_code

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
                takeover = self._takeover_allowed()
                # The periodic round: expired locks and malformed availableAt first, so a busy
                # queue still gets to them; repeated while it finds such jobs.
                periodic = time.monotonic() >= self._next_takeover
                claimed = await self._store.claim(self.settings.worker_id,
                                                  types[self._rotation:] + types[:self._rotation],
                                                  self.settings.lock_s, expired_first=periodic,
                                                  takeover=takeover)
                if periodic and (claimed is None or self._ordinary(claimed[0])):
                    self._next_takeover = time.monotonic() + self.settings.takeover_interval_s
                self._db_ok()
            except Exception as exc:
                slots.release()
                if not is_outage(exc):
                    self.events.claim_error(exc)
                    delay = backoff_delay(2, ERROR_BACKOFF_BASE_S, self.settings.error_backoff_cap_s)
                else:
                    delay = self._connection_problem(exc, "claim")
                    if self.settings.burst:  # a one-off run stops on an outage, with exit code 1
                        self.exit_code = 1
                        self.request_stop()
                        return
                if await self._sleep(delay, db_back=True):
                    return
                continue
            if claimed is None:
                slots.release()
                self.events.claim_idle()
                if self.settings.burst:
                    tasks = {e.task for e in self.running.values() if e.task is not None}
                    if not tasks:
                        self.events.burst_finished(dict(self.stats))
                        self.request_stop()
                        return
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                await self._idle_wait()
                continue
            before, after = claimed
            entry = _Running(after, self._job_info(after))
            key = str(after["_id"])
            self.running[key] = entry
            entry.task = asyncio.create_task(self._run_job(before, entry), name=f"job-{key}")
            entry.task.add_done_callback(self._finished_callback(key, slots))

    @staticmethod
    def _ordinary(before: Doc) -> bool:
        """A PENDING job with a date (or no) availableAt: not a takeover, not malformed."""
        available = before.get("availableAt")
        return before.get("status") == JobStatus.PENDING.value and (
            available is None or isinstance(available, dt.datetime))

    async def _idle_wait(self) -> None:
        """Nothing due: sleep until the earliest scheduled job of our queues, a change, or the poll."""
        timeout = self.settings.poll_s
        try:
            next_due = await self._store.next_due(self.settings.queues)
            self._db_ok()
        except Exception as exc:
            if is_outage(exc):
                self._mark_outage()
            next_due = None
        if next_due is not None:
            timeout = min(timeout, max(0.0, (next_due - utcnow()).total_seconds()) + 0.005)
        self._idle.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)
        finally:
            self._idle.clear()

    def _finished_callback(self, key: str, slots: asyncio.Semaphore) -> Callable[[asyncio.Task[None]], None]:
        def finished(_task: asyncio.Task[None]) -> None:
            self.running.pop(key, None)
            slots.release()
        return finished

    async def _watch_loop(self) -> None:
        pipeline = change_stream_pipeline()
        pause = min(self.settings.poll_s, WATCH_PAUSE_MAX_S)
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
                async with await self._store.jobs.watch(pipeline, max_await_time_ms=500) as stream:
                    failures = 0
                    self.wake.set()
                    next_drain = loop.time() + WATCH_PAUSE_MAX_S
                    async for _change in stream:
                        self.wake.set()
                        if draining or self._idle.is_set():
                            continue
                        try:
                            await asyncio.wait_for(self._idle.wait(), pause)
                        except TimeoutError:
                            if loop.time() >= next_drain:
                                next_drain = loop.time() + WATCH_PAUSE_MAX_S
                                draining = True
                                loop.call_soon(drained)
            except OperationFailure as exc:
                if is_outage(exc):
                    failures += 1
                    self._mark_outage()
                else:
                    self.events.polling(self.settings.poll_s, exc.code)
                    self.change_streams_active = False
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_outage(exc):
                    self.events.change_stream_error(exc)
                else:
                    self._mark_outage()
                failures += 1
            if await self._sleep(backoff_delay(failures, ERROR_BACKOFF_BASE_S, self.settings.error_backoff_cap_s),
                                 db_back=True):
                return

    async def _sweep(self) -> None:
        """Fail jobs whose worker died on their last attempt (several documents at once).

        Not while takeovers are paused after an outage (their owner may be
        about to write), and never this worker's own jobs.
        """
        if not self._takeover_allowed():
            return
        try:
            failed = await self._in_transaction(
                lambda session: self._store.fail_exhausted(self.settings.queues, session=session,
                                                           worker_id=self.settings.worker_id))
            self._db_ok()
        except Exception as exc:
            if is_outage(exc):
                self._connection_problem(exc, "sweep")
                return
            raise
        if failed:
            self.stats["failed"] += len(failed)
            self.events.exhausted_failed([self._job_info(doc) for doc in failed],
                                         [doc.get("lockedBy") for doc in failed])

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

    @staticmethod
    def _job_info(doc: Doc) -> JobInfo:
        attempts = doc.get("attempts")
        return JobInfo(id=str(doc["_id"]), type=JobType(doc["type"]),
                       attempt=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
                       max_attempts=max_attempts_of(doc))

    async def _run_job(self, before: Doc, entry: _Running) -> None:
        try:
            await self._process(before, entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a refused write: the lock expires and the job is retried
            self.events.job_error(entry.info, exc)

    async def _process(self, before: Doc, entry: _Running) -> None:
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
                self._check_storable(result)
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
        if entry.lost:
            self._lost(entry, None)
            return
        try:
            # No deadline: the fence (id, lockedBy, attempts) makes a late write
            # safe, and after an outage no worker takes this job over for a
            # lock period while this write is retried.
            written = await self._retrying("complete", lambda: self._store.complete(doc, result))
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

    async def _call_handler(self, entry: _Running) -> tuple[bool, Any]:
        """Run the handler within its type's timeout: (True, result) or (False, the error)."""
        job_type = entry.info.type
        handler = self.handlers[job_type]
        job = job_from_document(entry.doc)
        timeout = self.settings.timeout_for(job_type)
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

    def _timed_out(self, entry: _Running, timeout: float,
                   future: concurrent.futures.Future[tuple[bool, Any]] | None) -> tuple[bool, Any]:
        """The handler passed its timeout: report it (and an abandoned thread); the error to record."""
        abandoned = future is not None and not future.done()
        self.events.job_timed_out(entry.info, timeout, abandoned)
        if abandoned and future is not None:
            loop = asyncio.get_running_loop()
            self.abandoned.add(future)
            future.add_done_callback(lambda f: loop.call_soon_threadsafe(self.abandoned.discard, f))
            self.events.thread_abandoned(entry.info, len(self.abandoned), MAX_ABANDONED_THREADS)
            if len(self.abandoned) >= MAX_ABANDONED_THREADS and self.exit_code == 0:
                self.exit_code = 1
                self.events.too_many_abandoned_threads(len(self.abandoned))
                self.request_stop()
        return False, JobTimeoutError(entry.info.type, timeout, abandoned)

    @staticmethod
    def _check_storable(result: Any) -> None:
        try:
            bson.encode({"result": result})
        except Exception as exc:
            raise FatalJobError(f"handler returned a value that cannot be stored: {type(exc).__name__}") from exc

    # A job's heartbeat starts as a timer, not a task: most jobs end before the first beat.

    def _start_heartbeat(self, entry: _Running) -> None:
        entry.heartbeat = asyncio.create_task(self._heartbeat(entry), name=f"heartbeat-{entry.info.id}")

    @staticmethod
    def _stop_heartbeat(entry: _Running, timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        if entry.heartbeat is not None:
            entry.heartbeat.cancel()

    async def _heartbeat(self, entry: _Running) -> None:
        """Renew the lock now, then every ``heartbeat_s``, until cancelled or the lock is lost."""
        while True:
            try:
                until = await self._store.heartbeat(entry.doc, self.settings.lock_s)
                self._db_ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_outage(exc):
                    self._connection_problem(exc, "heartbeat")
                else:
                    self.events.heartbeat_error(entry.info, exc)
            else:
                if until is None:
                    entry.lost = True
                    self.events.job_lock_lost(entry.info)
                    return
            await asyncio.sleep(self.settings.heartbeat_s)

    def _lost(self, entry: _Running, error: BaseException | None) -> None:
        """The one place a lost lock ends a run: nothing was written for it."""
        self.stats["lost"] += 1
        self.events.job_finished(entry.info, Outcome.LOST, time.monotonic() - entry.started, error)

    async def _after_failure(self, entry: _Running, exc: BaseException) -> None:
        doc, info = entry.doc, entry.info
        if entry.lost:
            self._lost(entry, exc)
            return
        raw_attempts = doc.get("attempts")
        whole = isinstance(raw_attempts, int) and not isinstance(raw_attempts, bool)
        attempts = raw_attempts if isinstance(raw_attempts, int) else 0
        maximum = max_attempts_of(doc)
        error = error_document(exc, attempts if whole else None, self.redactor)
        timed_out = isinstance(exc, JobTimeoutError)
        fatal = isinstance(exc, FatalJobError)
        duration = time.monotonic() - entry.started
        if fatal or not whole or attempts >= maximum:
            written = await self._retrying("fail", lambda: self._store.fail(doc, error))
            if written:
                self.stats["failed"] += 1
                reason = ("malformed document" if isinstance(exc, MalformedJobError)
                          else "invalid payload" if isinstance(exc, PayloadError)
                          else "fatal error" if fatal else "Maximum attempts exhausted")
                self.events.job_failed(info, reason, exc)
                self.events.job_finished(info, Outcome.TIMED_OUT if timed_out else Outcome.FAILED, duration, exc)
            elif written is False:
                self._lost(entry, exc)
            return
        delay = backoff_delay(attempts, self.settings.retry_base_s, self.settings.retry_cap_s)
        available = utcnow() + dt.timedelta(seconds=delay)
        written = await self._retrying("retry", lambda: self._store.retry_later(doc, error, available))
        if written:
            self.stats["retried"] += 1
            self.events.job_retrying(info, delay, exc)
            self.events.job_finished(info, Outcome.TIMED_OUT if timed_out else Outcome.RETRIED, duration, exc)
        elif written is False:
            self._lost(entry, exc)

    # ---------------------------------------------------------------- shutdown

    async def _shutdown(self) -> None:
        tasks = [e.task for e in self.running.values() if e.task is not None]
        if tasks and not self.force:
            self.events.draining(len(tasks), self.settings.drain_timeout_s)
            deadline = time.monotonic() + self.settings.drain_timeout_s
            pending = set(tasks)
            while pending and not self.force and time.monotonic() < deadline:
                _done, pending = await asyncio.wait(pending, timeout=min(0.2, deadline - time.monotonic()))
        left = [e for e in self.running.values() if e.task is not None and not e.task.done()]
        for entry in left:
            assert entry.task is not None
            entry.task.cancel()
        await asyncio.gather(*(e.task for e in left if e.task is not None), return_exceptions=True)
        mine = [e for e in left if not e.lost]
        docs = [e.doc for e in mine]
        if docs:
            released = await self._retrying(
                "release", lambda: self._in_transaction(lambda s: self._store.release(docs, session=s)),
                deadline=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)) or []
            released_ids = {str(d["_id"]) for d in released}
            infos = [e.info for e in mine if e.info.id in released_ids]
            self.stats["released"] += len(infos)
            for entry in mine:
                if entry.info.id in released_ids:
                    self.events.job_finished(entry.info, Outcome.RELEASED, time.monotonic() - entry.started, None)
            self.events.jobs_released(infos)
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            await self._client.close()
        self.events.worker_stopped(dict(self.stats))

    def handler_threads_alive(self) -> bool:
        """Whether a plain-function handler is still running in a thread."""
        return any(t.is_alive() for t in getattr(self.executor, "_threads", ()))


def run_process(settings: WorkerSettings, cli_handlers: Sequence[str], values: Mapping[str, str],
                redactor: Redactor | None = None, observers: Sequence[Observer] = ()) -> tuple[int, bool]:
    """Run a worker in this process until stopped: (exit code, whether handler threads still run).

    Handlers come from ``cli_handlers`` (``TYPE=module:callable``), then
    MUZO_WORKER_HANDLERS in ``values``, then entry points. SIGTERM and
    SIGINT stop it.
    """
    loaded = handlers_module.load(settings.queues, cli_handlers, values)
    runner = Worker(settings, loaded, redactor=redactor, observers=observers)

    async def main() -> int:
        runner.install_signal_handlers()
        return await runner.run()

    code = asyncio.run(main())
    return code, runner.handler_threads_alive()
