"""``jobs status | enqueue | retry-failed | clear-failed``: operating the queue.

Synchronous pymongo: each command is a few round trips.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from muzo_ops.constants import DEFAULT_MAX_ATTEMPTS, JOB_COLLECTION
from muzo_ops.errors import UsageError
from muzo_ops.jobs import JobStatus, JobType


def connect(url: str, timeout_s: float = 10.0) -> Any:
    """The ``Job`` collection of DATABASE_URL's database."""
    from pymongo import MongoClient

    ms = int(timeout_s * 1000)
    client: Any = MongoClient(url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, appname="muzo-ops jobs")
    return client.get_default_database(default="muzo")[JOB_COLLECTION]


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``15m``, ``12h``, ``7d`` into a timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text)
    if not match:
        raise UsageError(f"duration {text!r}: use a number and s, m, h or d (e.g. 7d)")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return dt.timedelta(**{unit: int(match.group(1))})


def parse_run_at(text: str, now: dt.datetime) -> dt.datetime:
    """``+30s``-style offsets or an ISO 8601 time (UTC when no zone)."""
    if text.startswith("+"):
        return now + parse_duration(text[1:])
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"--run-at {text!r}: use ISO 8601 (2026-12-01T09:00:00Z) or +30s") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@dataclass
class QueueStatus:
    """What ``jobs status`` reports."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # type -> status -> n
    oldest_due_pending_s: float | None = None  # age of the oldest due PENDING job
    stuck_running: int = 0  # RUNNING past lockedUntil (worker died or stalled)
    future_pending: int = 0  # PENDING not yet due (retries waiting)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "oldestDuePendingSeconds": self.oldest_due_pending_s,
                "runningPastLock": self.stuck_running, "pendingNotYetDue": self.future_pending}


def status(jobs: Any, now: dt.datetime | None = None) -> QueueStatus:
    now = now or dt.datetime.now(dt.UTC)
    result = QueueStatus(counts={t.value: {s.value: 0 for s in JobStatus} for t in JobType})
    for row in jobs.aggregate([{"$group": {"_id": {"type": "$type", "status": "$status"}, "n": {"$sum": 1}}}]):
        key = row["_id"]
        result.counts.setdefault(str(key.get("type")), {})[str(key.get("status"))] = int(row["n"])
    oldest = jobs.find_one({"status": "PENDING", "availableAt": {"$lte": now}}, sort=[("availableAt", 1)],
                           projection={"availableAt": 1})
    if oldest and oldest.get("availableAt"):
        when = oldest["availableAt"].replace(tzinfo=dt.UTC)
        result.oldest_due_pending_s = round((now - when).total_seconds(), 3)
    result.stuck_running = jobs.count_documents({"status": "RUNNING", "lockedUntil": {"$lt": now}})
    result.future_pending = jobs.count_documents({"status": "PENDING", "availableAt": {"$gt": now}})
    return result


def enqueue(jobs: Any, job_type: JobType, payload: dict[str, Any], run_at: dt.datetime | None = None,
            max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> str:
    """Validate and insert a PENDING job; its id."""
    from muzo_ops.jobstore import new_job_document, utcnow
    from muzo_ops.payloads import validate

    validate(job_type, payload)
    project = payload.get("projectId") if job_type is JobType.GENERATION else None
    project_id = project if isinstance(project, str) and re.fullmatch(r"[0-9a-f]{24}", project) else None
    doc = new_job_document(job_type, payload, utcnow(), run_at, max_attempts, project_id)
    return str(jobs.insert_one(doc).inserted_id)


def retry_failed(jobs: Any, job_type: JobType | None = None) -> int:
    """FAILED jobs back to PENDING, due now, attempts reset; how many."""
    now = dt.datetime.now(dt.UTC)
    query: dict[str, Any] = {"status": "FAILED"}
    if job_type:
        query["type"] = job_type.value
    result = jobs.update_many(query, {"$set": {"status": "PENDING", "attempts": 0, "availableAt": now,
                                               "lockedBy": None, "lockedAt": None, "lockedUntil": None,
                                               "updatedAt": now}})
    return int(result.modified_count)


def clear_failed(jobs: Any, older_than: dt.timedelta, job_type: JobType | None = None) -> int:
    """Delete FAILED jobs last updated before ``older_than`` ago; how many."""
    cutoff = dt.datetime.now(dt.UTC) - older_than
    query: dict[str, Any] = {"status": "FAILED", "updatedAt": {"$lt": cutoff}}
    if job_type:
        query["type"] = job_type.value
    return int(jobs.delete_many(query).deleted_count)
