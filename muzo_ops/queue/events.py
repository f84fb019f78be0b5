"""What a worker reports while it runs: events, and the observers that receive them.

The worker calls one ``Observer`` (``Observers`` fans out to many); logs,
metrics and tests are observers of the same events, not code woven into
the claim loop (dramatiq's middleware idea). An observer must be quick and
must not raise: ``Observers`` swallows what one raises so the others and
the worker go on.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from muzo_ops.queue.jobs import JobType


class Outcome(enum.StrEnum):
    """How one run of a job ended."""

    DONE = "done"  # handler returned; result stored, job DONE
    FAILED = "failed"  # FAILED for good: fatal error, invalid payload or attempts used up
    RETRIED = "retried"  # back to PENDING with a back-off delay
    LOST = "lost"  # the lock went to another worker: nothing written
    RELEASED = "released"  # stopped at shutdown: back to PENDING, the attempt not spent
    TIMED_OUT = "timed_out"  # passed its type's timeout (then retried or failed)


class LeaseLoss(enum.StrEnum):
    """Why a worker gave up a running job's lease (and cancelled the run)."""

    NOT_OURS = "not_ours"  # a renewal reached the server and matched nothing, twice: taken over or changed
    EXPIRED = "expired"  # no renewal confirmed for a lock period: the lease may have run out on the server


@dataclass(frozen=True)
class JobInfo:
    """The job an event is about: never its payload."""

    id: str  # the ObjectId as 24 hex characters (str() of another _id)
    type: JobType
    attempt: int  # this run's number, from 1
    max_attempts: int
    key: tuple[str, Any] | None = None  # the real _id's identity (jobs.job_key): "1" and 1 differ

    @property
    def identity(self) -> tuple[str, Any]:
        """What tells two jobs apart (the key, else the id)."""
        return self.key if self.key is not None else ("string", self.id)

    @property
    def queue(self) -> str:
        return self.type.queue


@dataclass(frozen=True)
class WorkerInfo:
    """Who the worker is, once connected."""

    worker_id: str
    version: str
    queues: tuple[JobType, ...]
    concurrency: int
    transactions: bool
    change_streams: bool
    handlers: tuple[tuple[JobType, str], ...] = ()  # (type, the handler's qualified name)


class Observer:
    """Receives a worker's events; every method is a no-op here, override what you need."""

    def worker_ready(self, info: WorkerInfo) -> None:
        """Connected, indexes checked, claiming (systemd READY=1 goes out with it)."""

    def claim_tick(self) -> None:
        """The claim loop went round (a liveness signal)."""

    def claim_idle(self) -> None:
        """A claim found no due job."""

    def db_ok(self) -> None:
        """A MongoDB call succeeded (after an outage: the outage is over)."""

    def connection_error(self, where: str, consecutive_errors: int, error: BaseException) -> None:
        """A MongoDB call failed because the server is out of reach."""

    def job_started(self, job: JobInfo, wait_s: float | None) -> None:
        """A job was claimed and its handler starts; ``wait_s``: availableAt to claim."""

    def job_taken_over(self, job: JobInfo, previous_worker: str | None) -> None:
        """The job was claimed from a worker whose lock expired (it died or stalled)."""

    def job_finished(self, job: JobInfo, outcome: Outcome, duration_s: float, error: BaseException | None) -> None:
        """A run ended; ``error`` is what the handler raised, if anything."""

    def jobs_released(self, jobs: Sequence[JobInfo]) -> None:
        """Jobs put back to PENDING at shutdown (each also gets ``job_finished(RELEASED)``)."""

    def exhausted_failed(self, jobs: Sequence[JobInfo], previous_workers: Sequence[str | None]) -> None:
        """The sweep failed jobs whose worker died on their last attempt."""

    # ---- added with the hardening issue; no-ops by default, like the rest

    def transactions_decided(self, enabled: bool, reason: str, source: str) -> None:
        """At start-up: whether the queue uses transactions, and what decided it."""

    def indexes_created(self, names: Sequence[str]) -> None:
        """At start-up: the queue's missing indexes were created."""

    def indexes_unchecked(self, error: BaseException) -> None:
        """At start-up: the indexes could not be listed or created (the worker goes on)."""

    def polling(self, poll_s: float, code: int | None) -> None:
        """Change streams are off or unavailable (``code``: the server's refusal): polling."""

    def change_stream_error(self, error: BaseException) -> None:
        """The change stream broke for a reason other than an outage; it is reopened."""

    def claim_error(self, error: BaseException) -> None:
        """A claim failed for a reason other than an outage (backed off, retried)."""

    def takeovers_paused(self, seconds: float) -> None:
        """The connection came back after an outage: no expired job is taken over for ``seconds``."""

    def job_malformed(self, job: JobInfo, problems: Sequence[str]) -> None:
        """The claimed document breaks the Job contract; it is failed with ``problems``."""

    def job_retrying(self, job: JobInfo, delay_s: float, error: BaseException) -> None:
        """The run failed; the job is back to PENDING for ``delay_s`` (``job_finished`` follows)."""

    def job_failed(self, job: JobInfo, reason: str, error: BaseException) -> None:
        """The job is FAILED for good (``job_finished`` follows)."""

    def job_timed_out(self, job: JobInfo, timeout_s: float, thread_abandoned: bool) -> None:
        """The handler passed its type's timeout (cancelled, or its thread abandoned)."""

    def thread_abandoned(self, job: JobInfo, abandoned: int, limit: int) -> None:
        """A plain handler's thread outlived its timeout; ``abandoned`` such threads still run."""

    def too_many_abandoned_threads(self, abandoned: int) -> None:
        """``abandoned`` reached the limit: the worker drains and exits non-zero."""

    def job_lock_lost(self, job: JobInfo) -> None:
        """A heartbeat found the lock taken over (the final write is fenced; LOST unless it comes back)."""

    def job_lease_lost(self, job: JobInfo, reason: LeaseLoss, status: str | None, locked_by: str | None) -> None:
        """The worker lost the job's lease (or can no longer prove it holds it) and cancels the run;
        ``status``/``locked_by``: the job as the server last showed it (None: not read)."""

    def task_crashed(self, task: str, error: BaseException) -> None:
        """A long-lived task (claim, watch, sweep, watchdog) raised: the worker stops with exit 1."""

    def takeover_given_back(self, job: JobInfo, waited_s: float) -> None:
        """A takeover claim waited ``waited_s`` for the server: the job went back to its owner."""

    def job_error(self, job: JobInfo, error: BaseException) -> None:
        """A bug or a refused write while processing (the lock expires, the job is retried)."""

    def heartbeat_error(self, job: JobInfo, error: BaseException) -> None:
        """A heartbeat failed for a reason other than an outage."""

    def burst_finished(self, stats: dict[str, int]) -> None:
        """``--burst``: no job is due; the worker stops."""

    def draining(self, running: int, timeout_s: float) -> None:
        """On stop: ``running`` jobs may finish for up to ``timeout_s``."""

    def worker_stopping(self) -> None:
        """A stop was requested: no more claims; draining."""

    def worker_stopped(self, stats: dict[str, int]) -> None:
        """Drained and disconnected."""

    def burst_summary(self, failed: int, retries_waiting: int, next_due: dt.datetime | None) -> None:
        """``--burst``, the last event: jobs failed for good, retries scheduled and the earliest one's time."""


class Observers(Observer):
    """Fans every event out to several observers; one that raises is skipped, not fatal."""

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.observers: list[Observer] = list(observers)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def _each(self, name: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, name)(*args)
            except Exception:  # an observer's bug must not stop the worker
                continue

    def worker_ready(self, info: WorkerInfo) -> None:
        self._each("worker_ready", info)

    def claim_tick(self) -> None:
        self._each("claim_tick")

    def claim_idle(self) -> None:
        self._each("claim_idle")

    def db_ok(self) -> None:
        self._each("db_ok")

    def connection_error(self, where: str, consecutive_errors: int, error: BaseException) -> None:
        self._each("connection_error", where, consecutive_errors, error)

    def job_started(self, job: JobInfo, wait_s: float | None) -> None:
        self._each("job_started", job, wait_s)

    def job_taken_over(self, job: JobInfo, previous_worker: str | None) -> None:
        self._each("job_taken_over", job, previous_worker)

    def job_finished(self, job: JobInfo, outcome: Outcome, duration_s: float, error: BaseException | None) -> None:
        self._each("job_finished", job, outcome, duration_s, error)

    def jobs_released(self, jobs: Sequence[JobInfo]) -> None:
        self._each("jobs_released", jobs)

    def exhausted_failed(self, jobs: Sequence[JobInfo], previous_workers: Sequence[str | None]) -> None:
        self._each("exhausted_failed", jobs, previous_workers)

    def transactions_decided(self, enabled: bool, reason: str, source: str) -> None:
        self._each("transactions_decided", enabled, reason, source)

    def indexes_created(self, names: Sequence[str]) -> None:
        self._each("indexes_created", names)

    def indexes_unchecked(self, error: BaseException) -> None:
        self._each("indexes_unchecked", error)

    def polling(self, poll_s: float, code: int | None) -> None:
        self._each("polling", poll_s, code)

    def change_stream_error(self, error: BaseException) -> None:
        self._each("change_stream_error", error)

    def claim_error(self, error: BaseException) -> None:
        self._each("claim_error", error)

    def takeovers_paused(self, seconds: float) -> None:
        self._each("takeovers_paused", seconds)

    def job_malformed(self, job: JobInfo, problems: Sequence[str]) -> None:
        self._each("job_malformed", job, problems)

    def job_retrying(self, job: JobInfo, delay_s: float, error: BaseException) -> None:
        self._each("job_retrying", job, delay_s, error)

    def job_failed(self, job: JobInfo, reason: str, error: BaseException) -> None:
        self._each("job_failed", job, reason, error)

    def job_timed_out(self, job: JobInfo, timeout_s: float, thread_abandoned: bool) -> None:
        self._each("job_timed_out", job, timeout_s, thread_abandoned)

    def thread_abandoned(self, job: JobInfo, abandoned: int, limit: int) -> None:
        self._each("thread_abandoned", job, abandoned, limit)

    def too_many_abandoned_threads(self, abandoned: int) -> None:
        self._each("too_many_abandoned_threads", abandoned)

    def job_lock_lost(self, job: JobInfo) -> None:
        self._each("job_lock_lost", job)

    def job_lease_lost(self, job: JobInfo, reason: LeaseLoss, status: str | None, locked_by: str | None) -> None:
        self._each("job_lease_lost", job, reason, status, locked_by)

    def task_crashed(self, task: str, error: BaseException) -> None:
        self._each("task_crashed", task, error)

    def takeover_given_back(self, job: JobInfo, waited_s: float) -> None:
        self._each("takeover_given_back", job, waited_s)

    def job_error(self, job: JobInfo, error: BaseException) -> None:
        self._each("job_error", job, error)

    def heartbeat_error(self, job: JobInfo, error: BaseException) -> None:
        self._each("heartbeat_error", job, error)

    def burst_finished(self, stats: dict[str, int]) -> None:
        self._each("burst_finished", stats)

    def draining(self, running: int, timeout_s: float) -> None:
        self._each("draining", running, timeout_s)

    def worker_stopping(self) -> None:
        self._each("worker_stopping")

    def worker_stopped(self, stats: dict[str, int]) -> None:
        self._each("worker_stopped", stats)

    def burst_summary(self, failed: int, retries_waiting: int, next_due: dt.datetime | None) -> None:
        self._each("burst_summary", failed, retries_waiting, next_due)
