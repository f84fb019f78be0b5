"""What a worker reports while it runs: events, and the observers that receive them.

The worker calls one ``Observer`` (``Observers`` fans out to many); logs,
metrics and tests are observers of the same events, not code woven into
the claim loop (dramatiq's middleware idea). An observer must be quick and
must not raise: ``Observers`` swallows what one raises so the others and
the worker go on.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from muzo_ops.queue.jobs import JobType


class Outcome(enum.StrEnum):
    """How one run of a job ended."""

    DONE = "done"  # handler returned; result stored, job DONE
    FAILED = "failed"  # FAILED for good: fatal error, invalid payload or attempts used up
    RETRIED = "retried"  # back to PENDING with a back-off delay
    LOST = "lost"  # the lock went to another worker: nothing written
    RELEASED = "released"  # stopped at shutdown: back to PENDING, the attempt not spent
    TIMED_OUT = "timed_out"  # passed its type's timeout (then retried or failed)


@dataclass(frozen=True)
class JobInfo:
    """The job an event is about: never its payload."""

    id: str  # the ObjectId as 24 hex characters
    type: JobType
    attempt: int  # this run's number, from 1
    max_attempts: int

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

    def worker_stopping(self) -> None:
        """A stop was requested: no more claims; draining."""

    def worker_stopped(self, stats: dict[str, int]) -> None:
        """Drained and disconnected."""


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

    def worker_stopping(self) -> None:
        self._each("worker_stopping")

    def worker_stopped(self, stats: dict[str, int]) -> None:
        self._each("worker_stopped", stats)
