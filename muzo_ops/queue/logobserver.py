"""The worker's pino log lines, written as one observer of its events.

Every line the worker logs comes from here (names, messages and fields as
operators and docs/WORKER_TROUBLESHOOTING.md know them); the worker itself
only reports events.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from muzo_ops.constants import QUEUE_INIT_LOGGER_NAME
from muzo_ops.logs import Logger
from muzo_ops.queue.events import JobInfo, LeaseLoss, Observer, Outcome, WorkerInfo
from muzo_ops.queue.jobs import JobType


class LogObserver(Observer):
    """Writes the worker's events as pino JSON lines through ``logger`` and its children."""

    def __init__(self, logger: Logger) -> None:
        self.log = logger
        self.init = logger.child(QUEUE_INIT_LOGGER_NAME)
        self.jobs = {t: logger.child(f"muzo-{t.queue}-worker") for t in JobType}

    # ---------------------------------------------------------------- start-up

    def transactions_decided(self, enabled: bool, reason: str, source: str) -> None:
        if enabled:
            self.init.info("Mongo transactions enabled for the queue", reason=reason, source=source)
        else:
            self.init.info("Mongo replica set not detected; using non-transactional queue mode",
                           reason=reason, source=source)

    def indexes_unchecked(self, error: BaseException) -> None:
        self.init.log("warn", "Could not check or create the queue indexes; claims may be slow",
                      err=error, code=getattr(error, "code", None))

    def indexes_created(self, names: Sequence[str]) -> None:
        self.init.info("Created queue indexes", indexes=list(names))

    def worker_ready(self, info: WorkerInfo) -> None:
        self.log.info("Worker bootstrapped and listening for jobs", workerId=info.worker_id,
                      queues=[t.queue for t in info.queues], concurrency=info.concurrency,
                      transactions=info.transactions, changeStreams=info.change_streams)
        names = dict(info.handlers)
        for job_type in info.queues:
            self.init.info("Queue worker started", queue=job_type.queue, handler=names.get(job_type, "?"))

    def polling(self, poll_s: float, code: int | None) -> None:
        extra = {} if code is None else {"code": code}
        self.log.info("Change streams unavailable; polling for jobs", pollIntervalMs=int(poll_s * 1000),
                      **extra)

    # ---------------------------------------------------------------- the loop

    def connection_error(self, where: str, consecutive_errors: int, error: BaseException) -> None:
        self.log.log("error", "MongoDB connection error in worker loop", err=error,
                     consecutiveErrors=consecutive_errors, where=where)

    def takeovers_paused(self, seconds: float) -> None:
        self.log.info("MongoDB reachable again; no takeover of expired jobs for one lock period",
                      pauseMs=int(seconds * 1000))

    def claim_error(self, error: BaseException) -> None:
        self.log.log("error", "Unexpected error while claiming a job", err=error)

    def change_stream_error(self, error: BaseException) -> None:
        self.log.log("warn", "Change stream stopped; polling until it reopens", err=error)

    def burst_finished(self, stats: dict[str, int]) -> None:
        self.log.info("No job due; burst run finished", **stats)

    # ---------------------------------------------------------------- one job

    def job_taken_over(self, job: JobInfo, previous_worker: str | None) -> None:
        self.jobs[job.type].warn("Released stale jobs", count=1, jobId=job.id, previousWorker=previous_worker,
                                 attempts=job.attempt)

    def job_started(self, job: JobInfo, wait_s: float | None) -> None:
        self.jobs[job.type].info("Job started", jobId=job.id, type=job.type.value, attempt=job.attempt,
                                 maxAttempts=job.max_attempts)

    def job_timed_out(self, job: JobInfo, timeout_s: float, thread_abandoned: bool) -> None:
        self.jobs[job.type].warn("Job timed out", jobId=job.id, type=job.type.value,
                                 timeoutMs=int(timeout_s * 1000), threadAbandoned=thread_abandoned)

    def thread_abandoned(self, job: JobInfo, abandoned: int, limit: int) -> None:
        self.jobs[job.type].warn("Handler thread abandoned after its timeout", jobId=job.id,
                                 abandonedThreads=abandoned, limit=limit)

    def too_many_abandoned_threads(self, abandoned: int) -> None:
        self.log.error("Too many abandoned handler threads; draining, then exiting with code 1",
                       abandonedThreads=abandoned)

    def job_retrying(self, job: JobInfo, delay_s: float, error: BaseException) -> None:
        self.jobs[job.type].log("warn", "Retrying job after failure", err=error, jobId=job.id,
                                type=job.type.value, attempt=job.attempt, maxAttempts=job.max_attempts,
                                delayMs=int(delay_s * 1000))

    def job_failed(self, job: JobInfo, reason: str, error: BaseException) -> None:
        self.jobs[job.type].log("error", "Job failed permanently", err=error, jobId=job.id,
                                type=job.type.value, attempts=job.attempt, maxAttempts=job.max_attempts,
                                reason=reason)

    def job_lock_lost(self, job: JobInfo) -> None:
        self.jobs[job.type].warn("Job lock lost to another worker; its result is written only if the lock "
                                 "comes back (fenced)", jobId=job.id)

    def job_lease_lost(self, job: JobInfo, reason: LeaseLoss, status: str | None, locked_by: str | None) -> None:
        # The one line to grep for: the run is cancelled (an exec command's session gets SIGTERM, then
        # SIGKILL after the grace period) and its outcome written only where the job is still this worker's.
        self.jobs[job.type].warn("Job lease lost; cancelling its run", jobId=job.id, type=job.type.value,
                                 attempt=job.attempt, reason=reason.value, status=status, lockedBy=locked_by)

    def task_crashed(self, task: str, error: BaseException) -> None:
        self.log.fatal("Worker task crashed; stopping with exit code 1 for a restart", task=task, err=error)

    def takeover_given_back(self, job: JobInfo, waited_s: float) -> None:
        self.jobs[job.type].warn("Takeover given back: the claim waited for MongoDB, its owner may be alive",
                                 jobId=job.id, waitedMs=int(waited_s * 1000))

    def job_finished(self, job: JobInfo, outcome: Outcome, duration_s: float, error: BaseException | None) -> None:
        if outcome is Outcome.DONE:
            self.jobs[job.type].info("Job completed", jobId=job.id, type=job.type.value,
                                     durationMs=int(duration_s * 1000))
        elif outcome is Outcome.LOST:
            what = "result" if error is None else "failure"
            self.jobs[job.type].warn(f"Job lock lost; {what} not written", jobId=job.id)

    def job_error(self, job: JobInfo, error: BaseException) -> None:
        self.log.log("error", "Job processing error; the job will be retried after its lock expires",
                     err=error, jobId=job.id)

    def heartbeat_error(self, job: JobInfo, error: BaseException) -> None:
        self.jobs[job.type].log("warn", "Heartbeat failed", err=error, jobId=job.id)

    def exhausted_failed(self, jobs: Sequence[JobInfo], previous_workers: Sequence[str | None]) -> None:
        for job, previous in zip(jobs, previous_workers, strict=True):
            self.jobs[job.type].error("Job failed permanently", jobId=job.id, type=job.type.value,
                                      attempts=job.attempt, maxAttempts=job.max_attempts,
                                      reason="Maximum attempts exhausted", previousWorker=previous)

    # ---------------------------------------------------------------- shutdown

    def draining(self, running: int, timeout_s: float) -> None:
        self.log.info("Draining running jobs", running=running, drainTimeoutMs=int(timeout_s * 1000))

    def jobs_released(self, jobs: Sequence[JobInfo]) -> None:
        self.log.info("Released jobs on shutdown", count=len(jobs), jobIds=[j.id for j in jobs])

    def worker_stopped(self, stats: dict[str, int]) -> None:
        self.log.info("Worker stopped", **stats)

    def burst_summary(self, failed: int, retries_waiting: int, next_due: dt.datetime | None) -> None:
        if next_due is not None:
            moment = next_due if next_due.tzinfo else next_due.replace(tzinfo=dt.UTC)
            in_s = max(0.0, (moment - dt.datetime.now(dt.UTC)).total_seconds())
            when = f", the next due at {moment.isoformat(timespec='seconds').replace('+00:00', 'Z')} (in {in_s:.0f} s)"
            due: str | None = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        else:
            when, due = "", None
        failures = f"{failed} job(s) failed for good" if failed else "no job failed for good"
        self.log.log("error" if failed else "info", f"Burst run finished: {failures}; {retries_waiting} "
                     f"retr{'y' if retries_waiting == 1 else 'ies'} waiting{when}",
                     failed=failed, retriesWaiting=retries_waiting, nextRetryDue=due)
