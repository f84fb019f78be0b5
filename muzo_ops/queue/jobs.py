"""The ``Job`` documents of the web app's queue, as Prisma writes them.

Field names, enum strings, BSON dates and ObjectIds are Prisma's; documents
whose optional fields are missing rather than null are read the same.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

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
            raise UsageError(f"unknown job type {text[:40]!r}: use one of {choices}") from exc


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


@dataclass(frozen=True)
class Job:
    """What a handler receives: never the lock, never the status."""

    id: str  # the ObjectId as 24 hex characters
    type: JobType
    payload: dict[str, Any]
    attempts: int  # this run's number, from 1
    max_attempts: int
    project_id: str | None


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
        attempts=int(doc.get("attempts") or 0),
        max_attempts=max_attempts_of(doc),
        project_id=str(project) if project is not None else None,
    )
