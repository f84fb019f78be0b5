"""``jobs status | enqueue | retry-failed | clear-failed``: operating the queue.

Every query and update comes from the store (``muzo_ops.queue.opsstore``); this module
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
from muzo_ops.queue.opsstore import (
    AdminStore,
    due_pending_query,
    known_types_query,
    running_past_lock_query,
    scheduled_pending_query,
    undated_pending_query,
    unknown_type_pending_query,
)
from muzo_ops.queue.store import new_job_document, utcnow

# MongoDB nests documents at most 100 deep; the payload sits inside the Job.
MAX_PAYLOAD_DEPTH = 90
MAX_DURATION = dt.timedelta(days=36500)  # --run-at +…, --older-than: a century at most
INT64 = (-(2**63), 2**63 - 1)


def connect(url: str, timeout_s: float | None = None) -> AdminStore:
    """The operators' store on DATABASE_URL's ``Job`` collection."""
    return AdminStore.connect(url, timeout_s)


def connect_from_values(values: Mapping[str, str], timeout_s: float | None = None) -> AdminStore:
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
    except RecursionError:
        raise UsageError(f"--payload is nested too deep: MongoDB stores at most {MAX_PAYLOAD_DEPTH} "
                         "levels here") from None
    if not isinstance(payload, dict):
        raise UsageError("--payload must be a JSON object")
    problem = payload_problem(payload)
    if problem:
        raise UsageError(f"--payload {problem}")
    return payload


def payload_problem(value: Any, path: str = "", depth: int = 1) -> str | None:
    """Why MongoDB could not store ``value`` as a payload (None: it can), naming the place.

    Too deep, an integer beyond 64 bits, a string or key that is not valid
    UTF-8 (a lone surrogate), a key with a NUL character. Never quotes a value.
    """
    where = path or "the payload"
    if depth > MAX_PAYLOAD_DEPTH:
        return f"is nested too deep at {where}: MongoDB stores at most {MAX_PAYLOAD_DEPTH} levels here"
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return None
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            return f"has an integer too large for MongoDB (64 bits) at {where}: send it as a string"
        return None
    if isinstance(value, str):
        return None if _utf8(value) else f"has a string that is not valid UTF-8 (a lone surrogate) at {where}"
    if isinstance(value, list):
        for i, item in enumerate(value):
            problem = payload_problem(item, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not _utf8(key):
                return f"has a key that is not valid UTF-8 (a lone surrogate) under {where}"
            if "\x00" in key:
                return f"has a key with a NUL character under {where}: MongoDB refuses it"
            problem = payload_problem(item, f"{path}.{key}" if path else key, depth + 1)
            if problem:
                return problem
        return None
    return f"has a value MongoDB cannot store at {where}"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``15m``, ``12h``, ``7d`` into a timedelta."""
    match = re.fullmatch(r"\s*([0-9]{1,12})\s*([smhd])\s*", text)
    if not match:
        raise UsageError(f"duration {text[:40]!r}: use a whole number and s, m, h or d (e.g. 7d), "
                         "at most 36500d")
    seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if seconds > MAX_DURATION.total_seconds():
        raise UsageError(f"duration {text.strip()!r} is too long: at most 36500d (a century)")
    return dt.timedelta(seconds=seconds)


def parse_run_at(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``+30s``-style offsets or an ISO 8601 time (UTC when no zone)."""
    now = now or utcnow()
    if text.startswith("+"):
        return now + parse_duration(text[1:])
    try:
        when = dt.datetime.fromisoformat(text)
        when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
        when.astimezone(dt.UTC)  # an offset that pushes it past year 1 or 9999
    except (ValueError, OverflowError) as exc:
        raise UsageError(f"--run-at {text[:40]!r}: use ISO 8601 (2026-12-01T09:00:00Z) or +30s") from exc
    return when


def iso(when: dt.datetime) -> str:
    """``when`` in UTC as ISO 8601 with milliseconds and ``Z``."""
    utc = when.astimezone(dt.UTC) if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class QueueStatus:
    """What ``jobs status`` reports."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # type -> status -> n
    oldest_due_pending_s: float | None = None  # age of the oldest due PENDING job (known types)
    stuck_running: int = 0  # RUNNING past lockedUntil (worker died or stalled)
    future_pending: int = 0  # PENDING scheduled: not yet due (--run-at, or a retry waiting)
    due_pending: int = 0  # PENDING due now (a missing availableAt is due), known types
    unknown_type_pending: int = 0  # PENDING of a type no worker knows: they never run

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "oldestDuePendingSeconds": self.oldest_due_pending_s,
                "runningPastLock": self.stuck_running, "pendingNotYetDue": self.future_pending,
                "pendingDue": self.due_pending, "pendingUnknownType": self.unknown_type_pending}

    def statuses(self) -> list[str]:
        """Every status to show: the known ones, then any other present (e.g. CANCELLED)."""
        known = [s.value for s in JobStatus]
        extra = sorted({s for counts in self.counts.values() for s, n in counts.items() if n} - set(known))
        return known + extra

    def unknown_types(self) -> list[str]:
        known = {t.value for t in JobType}
        return sorted(t for t in self.counts if t not in known)


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
    result.future_pending = store.count({**scheduled_pending_query(now), **known_types_query()})
    result.due_pending = (store.count({**due_pending_query(now), **known_types_query()})
                          + store.count({**undated_pending_query(), **known_types_query()}))
    result.unknown_type_pending = store.count(unknown_type_pending_query())
    return result


def enqueue_job(store: AdminStore, job_type: JobType, payload: dict[str, Any], run_at: dt.datetime | None = None,
                max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> tuple[str, dt.datetime]:
    """Validate and insert a PENDING job: (its id, when it is due). UsageError for an invalid payload."""
    from muzo_ops.queue.jobs import PayloadError
    from muzo_ops.queue.payloads import validate

    try:
        validate(job_type, payload)
    except PayloadError as exc:
        raise UsageError(str(exc)) from exc
    project = payload.get("projectId") if job_type is JobType.GENERATION else None
    project_id = project if isinstance(project, str) and re.fullmatch(r"[0-9a-f]{24}", project) else None
    problem = payload_problem(payload)
    if problem:
        raise UsageError(f"payload {problem}")
    doc = new_job_document(job_type, payload, utcnow(), run_at, max_attempts, project_id)
    return store.insert(doc), doc["availableAt"]


def retry_failed(store: AdminStore, job_type: JobType | None = None) -> int:
    """FAILED jobs back to PENDING, due now, attempts reset; how many."""
    return store.retry_failed(job_type)


def clear_failed(store: AdminStore, older_than: dt.timedelta, job_type: JobType | None = None) -> int:
    """Delete FAILED jobs last updated before ``older_than`` ago; how many."""
    return store.clear_failed(dt.datetime.now(dt.UTC) - older_than, job_type)
