"""The ``Job`` documents of the web app's queue, as Prisma writes them.

Field names, enum strings, BSON dates and ObjectIds are Prisma's; documents
whose optional fields are missing rather than null are read the same.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any, ClassVar, TypeGuard

from muzo_ops.constants import DEFAULT_MAX_ATTEMPTS
from muzo_ops.errors import UsageError


class JobType(enum.StrEnum):
    """What a job does; each type is one queue."""

    GENERATION = "GENERATION"  # AI artwork generation (queue "generation")
    MOCKUP = "MOCKUP"  # product mockups (queue "mockup")
    FULFILLMENT = "FULFILLMENT"  # send an order to a print provider (queue "fulfillment")

    @property
    def queue(self) -> str:
        return self.value.lower()

    @classmethod
    def from_queue(cls, queue: str) -> JobType:
        return cls(queue.strip().upper())

    @classmethod
    def parse(cls, text: str) -> JobType:
        """A job type as an operator types it; UsageError names the choices."""
        try:
            return cls(text.strip().upper())
        except ValueError as exc:
            choices = ", ".join(t.value for t in cls)
            from muzo_ops.redact.documents import echo_input  # an echo never shows part of a secret

            raise UsageError(f"unknown job type {echo_input(text)}: use one of {choices}") from exc


class JobStatus(enum.StrEnum):
    """Where a job is; the worker owns every change after PENDING."""

    PENDING = "PENDING"  # waiting for availableAt and a worker
    RUNNING = "RUNNING"  # locked by a worker until lockedUntil
    DONE = "DONE"  # finished, result stored
    FAILED = "FAILED"  # gave up, lastError stored


class FatalJobError(Exception):
    """Raised by a handler when retrying cannot help: the job fails at once."""


class PayloadError(FatalJobError):
    """The payload does not match its type's schema (a fatal error)."""


class MalformedJobError(FatalJobError):
    """The document itself breaks the Job contract (``attempts: null``, a string ``availableAt``…)."""


class RetryJob(Exception):
    """Raised by a handler to ask for another attempt, not before ``after_seconds``.

    The delay is held to the type's retry cap; without one the retry policy
    decides. An attempt is spent as for any failure, so ``maxAttempts``
    still bounds the job.
    """

    def __init__(self, message: str = "the handler asked for a retry", *, after_seconds: float | None = None) -> None:
        super().__init__(message)
        ok = isinstance(after_seconds, int | float) and not isinstance(after_seconds, bool) and (
            0 <= after_seconds < float("inf"))
        self.after_seconds: float | None = float(after_seconds) if ok and after_seconds is not None else None


class JobTimeoutError(Exception):
    """The handler ran longer than its type's timeout (retried or failed like any error)."""

    def __init__(self, job_type: JobType, timeout_s: float, abandoned_thread: bool = False) -> None:
        self.timeout_s = timeout_s
        self.abandoned_thread = abandoned_thread
        where = "; its thread was abandoned" if abandoned_thread else ""
        super().__init__(f"{job_type.value} job timed out after {timeout_s:g} s "
                         f"(JOB_TIMEOUT_{job_type.value}_SECONDS){where}")


class LeaseLostError(Exception):
    """The worker cancelled the run: its lease on the job was lost, or could no longer be proved.

    Its writes are fenced: nothing is written unless the job is still this
    worker's, and then it is retried or failed like any error (``lease``).
    """

    REASONS: ClassVar[dict[str, str]] = {
        "not_ours": "the job's lock was no longer this worker's at renewal (taken over by another worker, or "
                    "changed by an operator)",
        "expired": "no renewal of the job's lock was confirmed for a lock period (MongoDB out of reach or "
                   "frozen, or this worker paused)",
    }

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{self.REASONS.get(reason, reason)}; its run was cancelled")


@dataclass(frozen=True)
class Job:
    """What a handler receives: never the lock, never the status."""

    id: str  # the ObjectId as 24 hex characters
    type: JobType
    payload: dict[str, Any]
    attempts: int  # this run's number, from 1
    max_attempts: int
    project_id: str | None


def is_whole(value: Any) -> TypeGuard[int]:
    """An integer, not a boolean (BSON int32/int64 read by pymongo)."""
    return isinstance(value, int) and not isinstance(value, bool)


# attempts at or past this are malformed: the claim's +1 must stay a 64-bit integer.
ATTEMPTS_LIMIT = 2**62


def job_key(job_id: Any) -> tuple[str, Any]:
    """A hashable key equal for the _id values MongoDB holds equal: ``"1"`` and ``1`` differ,
    ``1`` and ``Int64(1)`` do not; any BSON value (a document _id too) has one."""
    if is_whole(job_id) or isinstance(job_id, float):
        return "number", job_id
    if type(job_id) is str:  # not bson.Code, a str subclass that cannot be hashed
        return "string", job_id
    return type(job_id).__name__, repr(job_id)


def claimed_type(value: Any, queues: tuple[JobType, ...]) -> JobType:
    """The type a claimed document is run (or failed) as: its own when it is a known type's
    string, else the first of ``queues`` it holds (an array matches a claim filter), else the first."""
    candidates = value if isinstance(value, list) else [value]
    for candidate in candidates:
        if type(candidate) is str and candidate in JobType.__members__ and JobType(candidate) in queues:
            return JobType(candidate)
    return queues[0]


def attempts_of(doc: dict[str, Any]) -> int:
    """The document's ``attempts`` when it is a whole number, else 0."""
    value = doc.get("attempts")
    return value if is_whole(value) else 0


def document_problems(doc: dict[str, Any]) -> list[str]:
    """What makes a Job document (as it was before the claim) unusable; [] when it is fine.

    Missing optional fields are fine (Prisma may omit them): a missing
    ``attempts`` is 0, a missing ``availableAt`` is due now, a missing
    ``maxAttempts`` is the default. Present with the wrong type, they are not.
    """
    problems = []
    kind = doc.get("type")
    if not (type(kind) is str and kind in JobType.__members__):
        problems.append(f"type is {_describe(kind)} (expected one of {', '.join(t.value for t in JobType)})")
    if "attempts" in doc and not (is_whole(doc["attempts"]) and 0 <= doc["attempts"] < ATTEMPTS_LIMIT):
        problems.append(f"attempts is {_describe(doc['attempts'])} (expected a whole number from 0)")
    maximum = doc.get("maxAttempts")
    if maximum is not None and not (is_whole(maximum) and maximum >= 1):
        problems.append(f"maxAttempts is {_describe(maximum)} (expected a whole number from 1)")
    available = doc.get("availableAt")
    if available is not None and not isinstance(available, dt.datetime):
        problems.append(f"availableAt is {_describe(available)} (expected a date)")
    return problems


def _describe(value: Any) -> str:
    """A value's kind for an error message, never its text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if is_whole(value):
        return f"{value}" if abs(value) < 10**12 else "a huge number"
    if type(value) is str:
        return "a string" if value not in JobType.__members__ else repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, float):
        return "a fractional number"
    if isinstance(value, dt.datetime):
        return "a date"
    if type(value).__name__ == "DatetimeMS":
        return "a date out of range"
    return f"a {type(value).__name__}"


def max_attempts_of(doc: dict[str, Any]) -> int:
    value = doc.get("maxAttempts")
    return int(value) if isinstance(value, int) and value > 0 else DEFAULT_MAX_ATTEMPTS


def job_from_document(doc: dict[str, Any]) -> Job:
    """The handler's view of a claimed document."""
    project = doc.get("projectId")
    payload = doc.get("payload")
    return Job(
        id=str(doc["_id"]),
        type=JobType(doc["type"]),
        payload=payload if isinstance(payload, dict) else {},
        attempts=attempts_of(doc),
        max_attempts=max_attempts_of(doc),
        project_id=str(project) if project is not None else None,
    )
