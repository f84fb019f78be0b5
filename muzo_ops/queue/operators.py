"""What operators see of the queue and do to single jobs: the job dashboard and ``jobs list|show|…`` share it.

Every query and update is the store's (``opsstore``); this module
parses operators' input, masks what is shown and shapes the answers. A job
is shown masked, always: secret-named keys' values and every known secret
value become ``***`` (``muzo_ops.redact.documents``).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from muzo_ops.errors import MuzoOpsError, UsageError
from muzo_ops.queue.admin import iso
from muzo_ops.queue.jobs import JobStatus, JobType
from muzo_ops.queue.opsstore import (
    PAGE_SIZE,
    STATUSES,
    QueueCounts,
    Seen,
    cancel_job,
    delete_job,
    find_job,
    list_page,
    list_query,
    retry_failed_seen,
    retry_job,
)
from muzo_ops.redact.documents import echo_input, mask_document
from muzo_ops.redact.redactor import Redactor

if TYPE_CHECKING:
    from pymongo.collection import Collection

Doc = dict[str, Any]
_HEX_ID = re.compile(r"[0-9a-fA-F]{24}")
CHANGED = "changed meanwhile, reload"


class Action(enum.StrEnum):
    """What an operator can do to one job, and the statuses it applies to."""

    RETRY = "retry"  # FAILED -> due PENDING, attempts 0
    CANCEL = "cancel"  # PENDING -> FAILED "cancelled by <user>"
    DELETE = "delete"  # DONE or FAILED -> gone

    @property
    def applies_to(self) -> tuple[JobStatus, ...]:
        return {Action.RETRY: (JobStatus.FAILED,), Action.CANCEL: (JobStatus.PENDING,),
                Action.DELETE: (JobStatus.DONE, JobStatus.FAILED)}[self]


class ActionRefused(MuzoOpsError):
    """An action that wrote nothing: ``http_status`` 404 (no such job) or 409 (running, changed, wrong status)."""

    exit_code = 1

    def __init__(self, message: str, http_status: int) -> None:
        self.http_status = http_status
        super().__init__(message)


# ---------------------------------------------------------------- input


def parse_job_id(text: str, what: str = "job id") -> ObjectId:
    """A 24-hex-character ObjectId; UsageError otherwise."""
    if not _HEX_ID.fullmatch(text.strip()):
        raise UsageError(f"{what} {echo_input(text)}: expected 24 hexadecimal characters (an ObjectId)")
    return ObjectId(text.strip().lower())


def parse_status(text: str) -> JobStatus:
    try:
        return JobStatus(text.strip().upper())
    except ValueError:
        raise UsageError(f"unknown status {echo_input(text)}: use one of "
                         f"{', '.join(s.value for s in JobStatus)}") from None


@dataclass(frozen=True)
class ListFilter:
    """A list's filters, as parsed: each None when not given."""

    status: JobStatus | None = None
    job_type: JobType | None = None
    q: ObjectId | None = None  # a job id or a projectId
    after: ObjectId | None = None  # the last id of the previous page

    @classmethod
    def parse(cls, status: str | None = None, job_type: str | None = None, q: str | None = None,
              after: str | None = None) -> ListFilter:
        """From operators' text (empty means not given); UsageError names what is wrong."""
        return cls(status=parse_status(status) if status else None,
                   job_type=JobType.parse(job_type) if job_type else None,
                   q=parse_job_id(q, "search (a job id or projectId)") if q and q.strip() else None,
                   after=parse_job_id(after, "after") if after else None)

    def params(self, after: str | None = None) -> dict[str, str]:
        """Query parameters that repeat these filters (for links to the next page)."""
        out = {"status": self.status.value if self.status else "", "type": self.job_type.value if self.job_type else "",
               "q": str(self.q) if self.q else ""}
        if after:
            out["after"] = after
        return {k: v for k, v in out.items() if v}


# ---------------------------------------------------------------- showing documents


def plain(value: Any, depth: int = 0) -> Any:
    """A document's value as JSON-able data: ObjectIds and dates as text, binary by its size, never a failure."""
    if depth > 200:
        return "…"
    if type(value).__name__ == "Code":  # a str subclass: JavaScript is not shown
        return "<JavaScript code>"
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, bytes):  # Binary is a bytes subclass
        return f"<binary, {len(value)} bytes>"
    if type(value).__name__ == "DatetimeMS":
        return f"<date out of range: {int(value)} ms>"
    return str(value)  # ObjectId, Decimal128, Regex, Timestamp, UUID, MinKey, MaxKey, DBRef…


def version_of(doc: Doc) -> str:
    """The job as seen, for an action's fence: ``updatedAt`` in ms (or ``-``) and attempts (or ``-``)."""
    updated = doc.get("updatedAt")
    attempts = doc.get("attempts")
    stamp = str(round(_aware(updated).timestamp() * 1000)) if isinstance(updated, dt.datetime) else "-"
    count = str(attempts) if isinstance(attempts, int) and not isinstance(attempts, bool) else "-"
    return f"{stamp}:{count}"


def seen(job_id: ObjectId, version: str) -> Seen:
    """The fence an action's form carries; ActionRefused (409) for a version this code never drew."""
    match = re.fullmatch(r"(-|-?[0-9]{1,15}):(-|-?[0-9]{1,19})", version or "")  # before 1970: negative
    if not match:
        raise ActionRefused(CHANGED, 409)
    stamp, count = match.groups()
    try:  # a forged stamp past year 9999, or attempts past int64, is no version either
        updated = None if stamp == "-" else dt.datetime.fromtimestamp(int(stamp) / 1000, dt.UTC)
    except (ValueError, OverflowError, OSError):
        raise ActionRefused(CHANGED, 409) from None
    attempts = None if count == "-" else int(count)
    if attempts is not None and not -(2**63) <= attempts < 2**63:
        raise ActionRefused(CHANGED, 409)
    return Seen(job_id, updated, attempts)


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@dataclass
class JobView:
    """One job as shown to an operator: masked, JSON-able."""

    id: str
    type: str
    status: str
    attempts: Any
    max_attempts: Any
    timeline: dict[str, Any]  # createdAt, availableAt, lockedAt, lockedUntil, updatedAt (ISO text or None)
    locked_by: Any
    project_id: Any
    payload: Any
    result: Any
    last_error: Any
    error_history: Any
    version: str
    actions: list[str] = field(default_factory=list)  # what this status allows

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "status": self.status, "attempts": self.attempts,
                "maxAttempts": self.max_attempts, **self.timeline, "lockedBy": self.locked_by,
                "projectId": self.project_id, "payload": self.payload, "result": self.result,
                "lastError": self.last_error, "errorHistory": self.error_history, "version": self.version}


TIMELINE = ("createdAt", "availableAt", "lockedAt", "lockedUntil", "updatedAt")


def job_view(doc: Doc, redactor: Redactor) -> JobView:
    """``doc`` as shown: every string masked by ``redactor``, secret-named keys' values masked."""
    shown = mask_document(plain(doc), redactor)
    status = str(shown.get("status"))
    return JobView(
        id=str(shown.get("_id")), type=str(shown.get("type")), status=status,
        attempts=shown.get("attempts"), max_attempts=shown.get("maxAttempts"),
        timeline={k: shown.get(k) for k in TIMELINE}, locked_by=shown.get("lockedBy"),
        project_id=shown.get("projectId"), payload=shown.get("payload"), result=shown.get("result"),
        last_error=shown.get("lastError"), error_history=shown.get("errorHistory"), version=version_of(doc),
        actions=[a.value for a in Action if status in a.applies_to])


def show(jobs: Collection[Doc], job_id: ObjectId, redactor: Redactor) -> JobView:
    """One job, masked; ActionRefused (404) when there is none."""
    doc = find_job(jobs, job_id)
    if doc is None:
        raise ActionRefused(f"no job {job_id}", 404)
    return job_view(doc, redactor)


@dataclass
class JobPage:
    """One list page: its rows (masked) and the cursor of the next page (None: last page)."""

    rows: list[JobView]
    next_after: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": [{k: v for k, v in r.to_dict().items() if k not in ("payload", "result", "errorHistory")}
                         for r in self.rows], "nextAfter": self.next_after}


def list_jobs(jobs: Collection[Doc], filters: ListFilter, redactor: Redactor, size: int = PAGE_SIZE) -> JobPage:
    """One page newest first on an index (one command), after ``filters.after``."""
    docs, more = list_page(jobs, list_query(filters.status, filters.job_type,
                                            [filters.q] if filters.q else (), filters.after), size)
    rows = [job_view(d, redactor) for d in docs]
    return JobPage(rows, rows[-1].id if more and rows else None)


# ---------------------------------------------------------------- actions


def act(jobs: Collection[Doc], action: Action, job_id: ObjectId, version: str, user: str) -> None:
    """Do ``action`` to the job as it was seen (``version``), fenced; ActionRefused says why nothing was written.

    Invariant: a RUNNING job is never written, nor one that changed since it
    was seen, nor one whose status the action does not apply to.
    """
    fence = seen(job_id, version)
    if action is Action.RETRY:
        done = retry_job(jobs, fence)
    elif action is Action.CANCEL:
        done = cancel_job(jobs, fence, user)
    else:
        done = delete_job(jobs, fence)
    if not done:
        raise _why_not(jobs, action, job_id)


def act_now(jobs: Collection[Doc], action: Action, job_id: ObjectId, user: str) -> JobView:
    """``act`` on the job as it is now (the command line: read, then the fenced write); the job as it was."""
    doc = find_job(jobs, job_id)
    if doc is None:
        raise ActionRefused(f"no job {job_id}", 404)
    _check_applies(action, doc)
    act(jobs, action, job_id, version_of(doc), user)
    return job_view(doc, Redactor())


def _check_applies(action: Action, doc: Doc) -> None:
    status = doc.get("status")
    if status == JobStatus.RUNNING.value:
        raise ActionRefused(f"job {doc['_id']} is RUNNING: a running job is never touched", 409)
    if status not in action.applies_to:
        allowed = " or ".join(s.value for s in action.applies_to)
        raise ActionRefused(f"job {doc['_id']} is {echo_input(str(status))}: {action.value} applies to {allowed} "
                            "jobs only", 409)


def _why_not(jobs: Collection[Doc], action: Action, job_id: ObjectId) -> ActionRefused:
    doc = find_job(jobs, job_id)
    if doc is None:
        return ActionRefused(f"no job {job_id}", 404)
    try:
        _check_applies(action, doc)
    except ActionRefused as refused:
        return refused
    return ActionRefused(CHANGED, 409)


def retry_all_failed(jobs: Collection[Doc], job_type: JobType, seen_at: dt.datetime) -> int:
    """Every FAILED job of ``job_type`` that had failed by ``seen_at`` back to due PENDING; how many."""
    return retry_failed_seen(jobs, job_type, seen_at)


# ---------------------------------------------------------------- overview


def format_count(n: int, cap: int) -> str:
    """``1,234``, or ``10,000+`` at the cap (the count stopped there)."""
    return f"{n:,}+" if n >= cap else f"{n:,}"


@dataclass
class Overview:
    """Per type: capped counts (PENDING split into due and scheduled), the oldest due age, the last hour."""

    up: bool
    cap: int
    counts: dict[str, dict[str, int]]  # type -> status label -> n (at most cap)
    oldest_due_age_s: dict[str, float]  # type -> seconds (0: none due)
    finished_last_hour: dict[str, int]
    failed_last_hour: dict[str, int]
    running_past_lock: int
    workers: list[dict[str, Any]]
    error: str | None = None

    @property
    def oldest_due_s(self) -> float:
        return max(self.oldest_due_age_s.values(), default=0.0)

    def shown(self, job_type: str, status: str) -> str:
        return format_count(self.counts.get(job_type, {}).get(status, 0), self.cap)

    def to_dict(self) -> dict[str, Any]:
        return {"up": self.up, "cap": self.cap, "counts": self.counts,
                "capped": {t: {s: n >= self.cap for s, n in c.items()} for t, c in self.counts.items()},
                "oldestDueAgeSeconds": self.oldest_due_age_s, "oldestDueSeconds": self.oldest_due_s,
                "finishedLastHour": self.finished_last_hour, "failedLastHour": self.failed_last_hour,
                "runningPastLock": self.running_past_lock, "workers": self.workers, "error": self.error}


def overview(counts: QueueCounts, redactor: Redactor) -> Overview:
    """The overview from ``counts``' caches (a fixed number of commands when they are stale, none otherwise);
    worker ids and the error line masked by ``redactor``."""
    from muzo_ops.mongo.errors import error_line

    snap = counts.snapshot()
    activity = counts.activity() if snap.up else None
    by_type: dict[str, dict[str, int]] = {t.value: dict.fromkeys(STATUSES, 0) for t in counts.types}
    for (job_type, status), n in snap.counts.items():
        by_type.setdefault(job_type, {})[status] = n
    failure = snap.error or (activity.error if activity is not None else None)
    return Overview(
        up=snap.up and activity is not None and activity.up, cap=counts.cap, counts=by_type,
        oldest_due_age_s=dict(snap.oldest_due_age_s),
        finished_last_hour=dict(activity.finished_last_hour) if activity else {},
        failed_last_hour=dict(activity.failed_last_hour) if activity else {},
        running_past_lock=activity.running_past_lock if activity else 0,
        workers=[{"id": redactor(w.worker_id), "running": w.running,
                  "lastHeartbeat": iso(w.last_heartbeat) if w.last_heartbeat else None,
                  "lockedUntil": iso(w.locked_until) if w.locked_until else None}
                 for w in (activity.workers if activity else [])],
        error=redactor(error_line(failure)) if failure is not None else None)


__all__ = ["CHANGED", "Action", "ActionRefused", "JobPage", "JobView", "ListFilter", "Overview", "act",
           "act_now", "format_count", "iso", "job_view", "list_jobs", "overview", "parse_job_id", "plain",
           "retry_all_failed", "seen", "show", "version_of"]
