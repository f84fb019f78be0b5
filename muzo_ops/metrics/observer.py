"""The worker's Prometheus metrics: an ``Observer`` of its events, on its own registry.

``muzo_worker_jobs_total`` counts every reported end of a run; the
duration histogram and the in-progress gauge count each started run once,
when it first ends (should a run ever be reported twice).

Labels are only the queue, the job type, the outcome, where a MongoDB call
failed, and the worker's identity in ``muzo_worker_info``: never a job id,
a payload value or a secret, so the number of series stays fixed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from muzo_ops.queue.events import JobInfo, LeaseLoss, Observer, Outcome, WorkerInfo
from muzo_ops.queue.jobs import JobType

# Jobs here last from milliseconds (fulfillment calls) to long image generations.
DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                       30.0, 60.0, 120.0, 300.0, 600.0, 900.0)
# availableAt to claim: milliseconds on an idle worker, up to an hour behind a backlog.
WAIT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                   30.0, 60.0, 300.0, 900.0, 3600.0)
WHERE_MAX_CHARS = 40  # a ``where`` is a short fixed name from the worker's code; cut anything longer


@dataclass(frozen=True)
class _Children:
    """One job type's series."""

    in_progress: Gauge
    duration: Histogram
    wait: Histogram
    outcomes: dict[Outcome, Counter]
    leases_lost: Counter


class PrometheusObserver(Observer):
    """Counts and times what one worker does; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        r = self.registry
        self.jobs = Counter("muzo_worker_jobs", "Job runs ended, by outcome (done, failed, retried, lost, "
                            "released, timed_out).", ["queue", "type", "outcome"], registry=r)
        self.duration = Histogram("muzo_worker_job_duration_seconds", "Run time of a job, claim to end.",
                                  ["queue", "type"], buckets=DURATION_BUCKETS, registry=r)
        self.wait = Histogram("muzo_worker_job_wait_seconds", "Time from a job's availableAt to its claim.",
                              ["queue", "type"], buckets=WAIT_BUCKETS, registry=r)
        self.in_progress = Gauge("muzo_worker_jobs_in_progress", "Jobs this worker is running now.",
                                 ["queue"], registry=r)
        self.concurrency = Gauge("muzo_worker_concurrency", "Jobs this worker runs at most at once.",
                                 registry=r)
        self.leases_lost = Counter("muzo_worker_leases_lost", "Running jobs whose lease this worker lost (taken "
                                   "over or changed, or no renewal confirmed for a lock period) and whose run it "
                                   "cancelled; the reason is in the log line.", ["queue", "type"], registry=r)
        self.db_errors = Counter("muzo_worker_db_errors", "MongoDB calls that failed because the server "
                                 "was out of reach, by where they were made.", ["where"], registry=r)
        self.last_claim = Gauge("muzo_worker_last_claim_timestamp_seconds", "Unix time of the claim "
                                "loop's last claim attempt.", registry=r)
        self.info = Info("muzo_worker", "The worker's version, id and MongoDB features in use.", registry=r)
        self._running: set[tuple[tuple[str, Any], int]] = set()  # (job id, attempt): never a label, only bookkeeping
        self._by_type: dict[JobType, _Children] = {}

    def worker_ready(self, info: WorkerInfo) -> None:
        self.info.info({"version": info.version, "worker_id": info.worker_id,
                        "transactions": _flag(info.transactions), "change_streams": _flag(info.change_streams)})
        self.concurrency.set(info.concurrency)
        for job_type in info.queues:  # every series of a served queue exists from the start, at 0
            self._children(job_type)

    def claim_tick(self) -> None:
        self.last_claim.set(self._clock())

    def connection_error(self, where: str, consecutive_errors: int, error: BaseException) -> None:
        self.db_errors.labels(where[:WHERE_MAX_CHARS]).inc()

    def _children(self, job_type: JobType) -> _Children:
        """The type's labelled series, looked up once (``labels()`` takes a lock and builds a key)."""
        children = self._by_type.get(job_type)
        if children is None:
            queue, name = job_type.queue, job_type.value
            children = _Children(self.in_progress.labels(queue), self.duration.labels(queue, name),
                                 self.wait.labels(queue, name),
                                 {o: self.jobs.labels(queue, name, o.value) for o in Outcome},
                                 self.leases_lost.labels(queue, name))
            self._by_type[job_type] = children
        return children

    def job_started(self, job: JobInfo, wait_s: float | None) -> None:
        children = self._children(job.type)
        key = (job.identity, job.attempt)
        if key not in self._running:
            self._running.add(key)
            children.in_progress.inc()
        if wait_s is not None:
            children.wait.observe(max(0.0, wait_s))

    def job_finished(self, job: JobInfo, outcome: Outcome, duration_s: float, error: BaseException | None) -> None:
        children = self._children(job.type)
        children.outcomes[outcome].inc()
        key = (job.identity, job.attempt)
        if key in self._running:  # a run reported twice is timed once
            self._running.discard(key)
            children.in_progress.dec()
            children.duration.observe(max(0.0, duration_s))

    def job_lease_lost(self, job: JobInfo, reason: LeaseLoss, status: str | None, locked_by: str | None) -> None:
        self._children(job.type).leases_lost.inc()

    def exhausted_failed(self, jobs: Sequence[JobInfo], previous_workers: Sequence[str | None]) -> None:
        for job in jobs:  # a dead worker's last attempt: this worker failed it, without running it
            self._children(job.type).outcomes[Outcome.FAILED].inc()


def _flag(value: bool) -> str:
    return "true" if value else "false"


__all__ = ["DURATION_BUCKETS", "WAIT_BUCKETS", "PrometheusObserver"]
