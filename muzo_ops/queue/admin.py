"""``jobs status | enqueue | retry-failed | clear-failed``: operating the queue.

Every query and update comes from ``muzo_ops.queue.store``; this module
parses operators' input and shapes the answers.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from muzo_ops.constants import DEFAULT_MAX_ATTEMPTS
from muzo_ops.errors import UsageError
from muzo_ops.queue.jobs import JobStatus, JobType
from muzo_ops.queue.store import (
    AdminStore,
    new_job_document,
    running_past_lock_query,
    scheduled_pending_query,
    utcnow,
)


def connect(url: str, timeout_s: float = 10.0) -> AdminStore:
    """The operators' store on DATABASE_URL's ``Job`` collection."""
    return AdminStore.connect(url, timeout_s)


def connect_from_values(values: Mapping[str, str], timeout_s: float = 10.0) -> AdminStore:
    """The operators' store on the ``Job`` collection of env ``values``' DATABASE_URL."""
    from muzo_ops.env import database_url

    return AdminStore.connect(database_url(values), timeout_s)


def parse_payload(text: str) -> dict[str, Any]:
    """``--payload`` JSON into an object; UsageError says what is wrong."""
    import json

    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--payload is not JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(payload, dict):
        raise UsageError("--payload must be a JSON object")
    return payload


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``15m``, ``12h``, ``7d`` into a timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text)
    if not match:
        raise UsageError(f"duration {text!r}: use a number and s, m, h or d (e.g. 7d)")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return dt.timedelta(**{unit: int(match.group(1))})


def parse_run_at(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``+30s``-style offsets or an ISO 8601 time (UTC when no zone)."""
    now = now or utcnow()
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


def status(store: AdminStore, now: dt.datetime | None = None) -> QueueStatus:
    """Counts by type and status, the oldest due job's age, stuck and scheduled jobs."""
    now = now or dt.datetime.now(dt.UTC)
    result = QueueStatus(counts={t.value: {s.value: 0 for s in JobStatus} for t in JobType})
    for job_type, job_status, n in store.counts():
        result.counts.setdefault(job_type, {})[job_status] = n
    oldest = store.oldest_due(now)
    if oldest is not None:
        result.oldest_due_pending_s = round((now - oldest.replace(tzinfo=dt.UTC)).total_seconds(), 3)
    result.stuck_running = store.count(running_past_lock_query(now))
    result.future_pending = store.count(scheduled_pending_query(now))
    return result


def enqueue(store: AdminStore, job_type: JobType, payload: dict[str, Any], run_at: dt.datetime | None = None,
            max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> str:
    """Validate and insert a PENDING job; its id. UsageError for an invalid payload."""
    from muzo_ops.queue.jobs import PayloadError
    from muzo_ops.queue.payloads import validate

    try:
        validate(job_type, payload)
    except PayloadError as exc:
        raise UsageError(str(exc)) from exc
    project = payload.get("projectId") if job_type is JobType.GENERATION else None
    project_id = project if isinstance(project, str) and re.fullmatch(r"[0-9a-f]{24}", project) else None
    return store.insert(new_job_document(job_type, payload, utcnow(), run_at, max_attempts, project_id))


def retry_failed(store: AdminStore, job_type: JobType | None = None) -> int:
    """FAILED jobs back to PENDING, due now, attempts reset; how many."""
    return store.retry_failed(job_type)


def clear_failed(store: AdminStore, older_than: dt.timedelta, job_type: JobType | None = None) -> int:
    """Delete FAILED jobs last updated before ``older_than`` ago; how many."""
    return store.clear_failed(dt.datetime.now(dt.UTC) - older_than, job_type)
