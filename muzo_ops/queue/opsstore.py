"""The operators' side of the store: ``AdminStore`` (synchronous pymongo) and its query builders.

``jobs status | enqueue | retry-failed | clear-failed``, the exporter and
the dashboard read and write the ``Job`` collection only through these.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pymongo
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING

from muzo_ops.constants import JOB_COLLECTION
from muzo_ops.queue.jobs import JobStatus, JobType
from muzo_ops.queue.store import CODEC_OPTIONS, UNDATED, due_condition, unlocked, utcnow

if TYPE_CHECKING:
    from pymongo.collection import Collection

Doc = dict[str, Any]

DEFAULT_TIMEOUT_S = 10.0  # an operator's command waits this long for MongoDB unless the URL or --timeout says


def status_pipeline() -> list[Doc]:
    """Counts by (type, status) of the whole collection."""
    return [{"$group": {"_id": {"type": "$type", "status": "$status"}, "n": {"$sum": 1}}}]


def known_types_query() -> Doc:
    """Jobs of a type muzo knows (a worker can run them)."""
    return {"type": {"$in": [t.value for t in JobType]}}


def due_pending_query(now: dt.datetime) -> Doc:
    """PENDING jobs due by ``now`` by date (any type); add ``undated_pending_query()`` for the
    jobs without availableAt, which are due too."""
    return {"status": JobStatus.PENDING.value, "availableAt": due_condition(now)}


def undated_pending_query() -> Doc:
    """PENDING jobs without availableAt (missing or null): due now (any type)."""
    return {"status": JobStatus.PENDING.value, **UNDATED}


def scheduled_pending_query(now: dt.datetime) -> Doc:
    """PENDING jobs not due yet (scheduled jobs and retries waiting), any type."""
    return {"status": JobStatus.PENDING.value, "availableAt": {"$gt": now}}


def unknown_type_pending_query() -> Doc:
    """PENDING jobs of a type no worker knows (they never run)."""
    return {"status": JobStatus.PENDING.value, "type": {"$nin": [t.value for t in JobType]}}


def type_status_query(job_type: JobType, status: JobStatus) -> Doc:
    """Jobs of one type in one status: equality, equality (the first index's prefix)."""
    return {"type": job_type.value, "status": status.value}


def running_past_lock_query(now: dt.datetime) -> Doc:
    """RUNNING jobs whose lock expired (their worker died or stalled)."""
    return {"status": JobStatus.RUNNING.value, "lockedUntil": {"$lt": now}}


def failed_query(job_type: JobType | None = None, updated_before: dt.datetime | None = None) -> Doc:
    """FAILED jobs, of one type and last updated before a time when given."""
    query: Doc = {"status": JobStatus.FAILED.value}
    if job_type is not None:
        query["type"] = job_type.value
    if updated_before is not None:
        query["updatedAt"] = {"$lt": updated_before}
    return query


class AdminStore:
    """The operators' view of the ``Job`` collection (synchronous pymongo)."""

    def __init__(self, jobs: Collection[Doc]) -> None:
        self.jobs = jobs

    @classmethod
    def connect(cls, url: str, timeout_s: float | None = None) -> AdminStore:
        """DATABASE_URL's ``Job`` collection; the client connects on first use.

        ``timeout_s`` (``--timeout``) bounds server selection, connecting and
        each reply; without it the URL's own serverSelectionTimeoutMS and
        connectTimeoutMS hold (10 s each when the URL does not set them), and
        a reply waits as long as the URL's socketTimeoutMS (no limit when
        unset: a status count over millions of jobs may take long).
        """
        from pymongo import MongoClient

        from muzo_ops.mongo import url as mongourl

        parsed = mongourl.parse(url)
        kwargs: dict[str, Any] = {}
        for option in ("serverSelectionTimeoutMS", "connectTimeoutMS", "socketTimeoutMS"):
            if timeout_s is not None:
                kwargs[option] = int(timeout_s * 1000)
            elif parsed.option(option) is None and option != "socketTimeoutMS":
                kwargs[option] = int(DEFAULT_TIMEOUT_S * 1000)
        client: MongoClient[Doc] = MongoClient(url, appname="muzo-ops jobs", **kwargs)
        db = client.get_default_database(default="muzo")
        return cls(db.get_collection(JOB_COLLECTION, codec_options=CODEC_OPTIONS))

    def counts(self) -> list[tuple[str, str, int]]:
        """(type, status, count) for every pair present."""
        return [(str(row["_id"].get("type")), str(row["_id"].get("status")), int(row["n"]))
                for row in self.jobs.aggregate(status_pipeline())]

    def oldest_due(self, now: dt.datetime) -> dt.datetime | None:
        """Since when the oldest due PENDING job (of a known type) has been due.

        A job without ``availableAt`` has been due since it was created.
        """
        dated = self.jobs.find_one(
            {**due_pending_query(now), **known_types_query(), "availableAt": {"$lte": now}},
            sort=[("availableAt", ASCENDING)], projection={"availableAt": 1})
        undated = self.jobs.find_one(
            {**undated_pending_query(), **known_types_query()},
            sort=[("createdAt", ASCENDING)], projection={"createdAt": 1})
        found = [d for d in ((dated or {}).get("availableAt"), (undated or {}).get("createdAt"))
                 if isinstance(d, dt.datetime)]
        return min((d if d.tzinfo else d.replace(tzinfo=dt.UTC) for d in found), default=None)

    def count(self, query: Doc) -> int:
        return int(self.jobs.count_documents(query))

    def insert(self, doc: Doc) -> str:
        return str(self.jobs.insert_one(doc).inserted_id)

    def retry_failed(self, job_type: JobType | None = None) -> int:
        """FAILED jobs back to PENDING, due now, attempts reset; how many."""
        now = utcnow()
        result = self.jobs.update_many(failed_query(job_type), {"$set": unlocked(
            JobStatus.PENDING, now, attempts=0, availableAt=now)})
        return int(result.modified_count)

    def clear_failed(self, updated_before: dt.datetime, job_type: JobType | None = None) -> int:
        """Delete FAILED jobs last updated before ``updated_before``; how many."""
        return int(self.jobs.delete_many(failed_query(job_type, updated_before)).deleted_count)

# ---------------------------------------------------------------- the dashboard's and the jobs commands' queries
#
# The operators' queries and fenced single-job updates (the job dashboard and ``jobs list|show|…``).
#
# Cost: whatever the collection's size, each read is a fixed number of
# commands, and each walks an index for a bounded number of keys:
#
# - counts per (type, status): a ``count`` capped at ``cap`` on the
#   (type, status, availableAt) index, five per type, plus one ``find`` of the
#   oldest due job per type (18 commands for three types: what the metrics
#   exporter serves, the same code). Cached ``cache_s`` seconds.
# - activity (finished and failed in the last hour; the workers seen, with
#   their RUNNING jobs past the lock): three commands, each capped, on
#   (status, updatedAt) and (status, lockedUntil).
# - a list page: one ``find`` of 51 documents on (type, status, _id) newest
#   first, continued by an ``_id`` cursor (never ``skip``).
# - a job: one ``find`` by ``_id``.
#
# Fenced updates: each names the job's ``_id``, the status it must still be
# in (never RUNNING), and the ``updatedAt`` and ``attempts`` the operator saw;
# a job that changed meanwhile matches nothing and nothing is written.

DEFAULT_CACHE_S = 5.0
DEFAULT_CAP = 100_000  # index keys a count walks at most: a few milliseconds on MongoDB
# one refresh of the counts answers within this (a scrape must beat Prometheus's 10 s scrape_timeout)
DEFAULT_COUNTS_TIMEOUT_S = 5.0
PAGE_SIZE = 50
MAX_WORKERS_SHOWN = 100
ERROR_HISTORY_KEPT = 10  # lastError values kept in errorHistory by an operator's retry

# Indexes the operators' pages need beyond the worker's two, created the same
# way (only when no index has the same keys): lists newest first per
# (type, status); a project's jobs; what finished in the last hour.
OPERATOR_INDEXES: tuple[tuple[tuple[str, int], ...], ...] = (
    (("type", ASCENDING), ("status", ASCENDING), ("_id", ASCENDING)),
    (("projectId", ASCENDING), ("_id", ASCENDING)),
    (("status", ASCENDING), ("updatedAt", ASCENDING)),
)

# The ``status`` label of the counts: PENDING split into due and scheduled.
PENDING_DUE = "PENDING_DUE"
PENDING_SCHEDULED = "PENDING_SCHEDULED"
STATUSES: tuple[str, ...] = (PENDING_DUE, PENDING_SCHEDULED, JobStatus.RUNNING.value, JobStatus.DONE.value,
                             JobStatus.FAILED.value)


def ensure_operator_indexes(jobs: Collection[Doc]) -> list[str]:
    """Create the operators' indexes when missing (as the worker creates its own); the names created."""
    existing = {tuple((k, int(v)) for k, v in index["key"].items()) for index in jobs.list_indexes()}
    return [jobs.create_index(list(keys)) for keys in OPERATOR_INDEXES if keys not in existing]


# ---------------------------------------------------------------- counts (shared with the exporter)


def status_query(job_type: JobType, status: str, now: dt.datetime) -> Doc:
    """The filter counted for one (type, status) pair; every one starts on the first index."""
    if status == PENDING_DUE:
        query = due_pending_query(now)
    elif status == PENDING_SCHEDULED:
        query = scheduled_pending_query(now)
    elif status == JobStatus.FAILED.value:
        return failed_query(job_type)
    else:  # RUNNING, DONE
        return type_status_query(job_type, JobStatus(status))
    return {"type": job_type.value, **query}


@dataclass
class Snapshot:
    """Counts and the oldest due ages at one moment, and whether MongoDB answered."""

    up: bool
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (type, status) -> n, at most cap
    oldest_due_age_s: dict[str, float] = field(default_factory=dict)  # type -> seconds (0: none due)
    duration_s: float = 0.0
    error: BaseException | None = None


@dataclass
class Worker:
    """A worker seen holding RUNNING jobs: its last heartbeat is the newest updatedAt among them."""

    worker_id: str
    running: int
    last_heartbeat: dt.datetime | None
    locked_until: dt.datetime | None


@dataclass
class Activity:
    """What the overview adds to the counts: the last hour, dead workers' jobs, the workers seen."""

    up: bool
    finished_last_hour: dict[str, int] = field(default_factory=dict)  # type -> n, at most cap
    failed_last_hour: dict[str, int] = field(default_factory=dict)
    running_past_lock: int = 0
    workers: list[Worker] = field(default_factory=list)
    error: BaseException | None = None


def _aware(when: Any) -> dt.datetime | None:
    if not isinstance(when, dt.datetime):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def is_pymongo_error(exc: BaseException) -> bool:
    """An error of the driver (the database could not be asked), not of this code."""
    return type(exc).__module__.startswith(("pymongo", "bson"))


class QueueCounts:
    """Capped counts per (type, status) and the oldest due age per type, cached ``cache_s``.

    Thread-safe; one refresh at a time (concurrent callers wait for it and
    share its answer). ``snapshot`` is what the metrics exporter serves;
    ``activity`` is what the dashboard's overview adds, cached the same way.
    """

    def __init__(self, jobs: Collection[Doc], cache_s: float = DEFAULT_CACHE_S, cap: int = DEFAULT_CAP,
                 types: Iterable[JobType] = tuple(JobType),
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], dt.datetime] = utcnow, timeout_s: float = DEFAULT_COUNTS_TIMEOUT_S) -> None:
        self.jobs = jobs
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self.cap = cap
        self.types = tuple(types)
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._cached: dict[str, tuple[float, Any]] = {}

    def _cached_or(self, key: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._cached.get(key)
            if hit is None or self._clock() - hit[0] >= self.cache_s:
                hit = (self._clock(), make())
                self._cached[key] = hit
            return hit[1]

    def snapshot(self) -> Snapshot:
        """The cached counts, or fresh ones when older than ``cache_s``."""
        snap: Snapshot = self._cached_or("counts", self._counts)
        return snap

    def activity(self) -> Activity:
        """The cached activity, or a fresh one when older than ``cache_s``."""
        act: Activity = self._cached_or("activity", self._activity)
        return act

    def _counts(self) -> Snapshot:
        started = time.monotonic()
        now = self._now()
        snap = Snapshot(up=True)
        try:
            with pymongo.timeout(self.timeout_s):  # one deadline for the whole refresh (also sets maxTimeMS)
                for job_type in self.types:
                    for status in STATUSES:
                        n = int(self.jobs.count_documents(status_query(job_type, status, now), limit=self.cap))
                        if status == PENDING_DUE:  # due by date, plus those without availableAt (due at once)
                            n = min(self.cap, n + int(self.jobs.count_documents(
                                {"type": job_type.value, **undated_pending_query()}, limit=self.cap)))
                        snap.counts[(job_type.value, status)] = n
                    dated = self.jobs.find_one(status_query(job_type, PENDING_DUE, now),
                                               sort=[("availableAt", ASCENDING)],
                                               projection={"availableAt": 1, "_id": 0})
                    undated = self.jobs.find_one({"type": job_type.value, **undated_pending_query()},
                                                 sort=[("createdAt", ASCENDING)], projection={"createdAt": 1, "_id": 0})
                    since = [w for w in (_aware((dated or {}).get("availableAt")),
                                         _aware((undated or {}).get("createdAt"))) if w is not None]
                    snap.oldest_due_age_s[job_type.value] = max(
                        [0.0, *((now - w).total_seconds() for w in since)])
        except Exception as exc:
            if not is_pymongo_error(exc):
                raise
            snap = Snapshot(up=False, error=exc)
        snap.duration_s = time.monotonic() - started
        return snap

    def _activity(self) -> Activity:
        now = self._now()
        act = Activity(up=True)
        try:
            with pymongo.timeout(self.timeout_s):
                hour_ago = now - dt.timedelta(hours=1)
                for status, into in ((JobStatus.DONE, act.finished_last_hour),
                                     (JobStatus.FAILED, act.failed_last_hour)):
                    for row in self.jobs.aggregate([
                            {"$match": {"status": status.value, "updatedAt": {"$gte": hour_ago}}},
                            {"$limit": self.cap},
                            {"$group": {"_id": "$type", "n": {"$sum": 1}}}]):
                        into[str(row["_id"])] = int(row["n"])
                # one command: the workers, and how many of their jobs are past the lock (a date before now, as
                # running_past_lock_query matches: a null lockedUntil sorts below every date, so the type is asked)
                rows = list(self.jobs.aggregate([
                    {"$match": {"status": JobStatus.RUNNING.value}},
                    {"$limit": self.cap},
                    {"$group": {"_id": "$lockedBy", "running": {"$sum": 1}, "lastHeartbeat": {"$max": "$updatedAt"},
                                "lockedUntil": {"$max": "$lockedUntil"},
                                "pastLock": {"$sum": {"$cond": [{"$and": [
                                    {"$eq": [{"$type": "$lockedUntil"}, "date"]},
                                    {"$lt": ["$lockedUntil", {"$literal": now}]}]}, 1, 0]}}}},
                    {"$sort": {"lastHeartbeat": DESCENDING}}]))
                act.running_past_lock = sum(int(row.get("pastLock") or 0) for row in rows)
                act.workers = [Worker(str(row["_id"]) if row["_id"] is not None else "(none)", int(row["running"]),
                                      _aware(row.get("lastHeartbeat")), _aware(row.get("lockedUntil")))
                               for row in rows[:MAX_WORKERS_SHOWN]]
        except Exception as exc:
            if not is_pymongo_error(exc):
                raise
            act = Activity(up=False, error=exc)
        return act


# ---------------------------------------------------------------- lists and single jobs


LAST_OBJECT_ID = ObjectId("f" * 24)


def list_query(status: JobStatus | None = None, job_type: JobType | None = None,
               ids: Iterable[ObjectId] = (), before: ObjectId | None = None) -> Doc:
    """Jobs newest first matching the filters, older than ``before`` (the cursor).

    With a status or a type, the other is spelled out as every known value so
    the query walks (type, status, _id) point by point, already in ``_id``
    order (a merge, no sort in memory). ``ids``: a job id or a projectId.
    """
    query: Doc = {}
    if status is not None or job_type is not None:
        query["type"] = job_type.value if job_type else {"$in": [t.value for t in JobType]}
        query["status"] = status.value if status else {"$in": [s.value for s in JobStatus]}
    wanted = list(ids)
    if wanted:
        as_text = [str(i) for i in wanted]
        query["$or"] = [{"_id": {"$in": wanted}}, {"projectId": {"$in": [*wanted, *as_text]}}]
    # Only ObjectId ids are listed: an id of another BSON type (a date or a boolean sorts above every
    # ObjectId) would fill a page whose "after" cursor could not continue, hiding the real jobs.
    query["_id"] = {"$lt": before} if before is not None else {"$lte": LAST_OBJECT_ID}
    return query


LIST_PROJECTION: Doc = {"type": 1, "status": 1, "attempts": 1, "maxAttempts": 1, "availableAt": 1,
                        "createdAt": 1, "updatedAt": 1, "lockedBy": 1, "projectId": 1, "lastError.name": 1,
                        "lastError.message": 1}


def list_page(jobs: Collection[Doc], query: Doc, size: int = PAGE_SIZE) -> tuple[list[Doc], bool]:
    """One page of ``query`` newest first (one command): (the documents, whether more follow)."""
    docs = list(jobs.find(query, projection=LIST_PROJECTION, sort=[("_id", DESCENDING)], limit=size + 1,
                          batch_size=size + 1))
    return docs[:size], len(docs) > size


def find_job(jobs: Collection[Doc], job_id: ObjectId) -> Doc | None:
    """The whole document of one job (one command)."""
    return jobs.find_one({"_id": job_id})


@dataclass(frozen=True)
class Seen:
    """What an operator saw of a job: the fence of an action taken on it."""

    job_id: ObjectId
    updated_at: dt.datetime | None  # None: missing or null
    attempts: int | None  # None: not a whole number (left out of the fence)


def seen_fence(seen: Seen, statuses: Iterable[JobStatus]) -> Doc:
    """The filter that matches the job only while it is as seen and in one of ``statuses`` (never RUNNING)."""
    allowed = [s.value for s in statuses if s is not JobStatus.RUNNING]
    query: Doc = {"_id": seen.job_id, "status": {"$in": allowed}, "updatedAt": seen.updated_at}
    if seen.attempts is not None:
        query["attempts"] = seen.attempts
    return query


def _retried(now: dt.datetime) -> list[Doc]:
    """The update pipeline that puts a FAILED job back to due PENDING, attempts 0, lastError kept in history."""
    history = {"$slice": [{"$concatArrays": [
        {"$cond": [{"$isArray": "$errorHistory"}, "$errorHistory", []]},
        [{"$ifNull": ["$lastError", None]}]]}, -ERROR_HISTORY_KEPT]}
    return [{"$set": {**{k: {"$literal": v} for k, v in unlocked(JobStatus.PENDING, now).items()},
                      "attempts": 0, "availableAt": now, "errorHistory": history}}]


def retry_job(jobs: Collection[Doc], seen: Seen) -> bool:
    """A FAILED job, as seen, back to due PENDING with attempts 0 (its lastError pushed on errorHistory).

    Invariant: only a FAILED job unchanged since ``seen`` is written; False and nothing written otherwise.
    """
    return jobs.update_one(seen_fence(seen, [JobStatus.FAILED]), _retried(utcnow())).matched_count == 1


def cancel_job(jobs: Collection[Doc], seen: Seen, user: str) -> bool:
    """A PENDING job, as seen, to FAILED with lastError "cancelled by USER".

    Invariant: only a PENDING job unchanged since ``seen`` is written (a worker's
    claim changes it first, so a claimed job is never cancelled); False otherwise.
    """
    now = utcnow()
    error = {"name": "Cancelled", "message": f"cancelled by {user}", "stack": None,
             "attempts": seen.attempts}
    return jobs.update_one(seen_fence(seen, [JobStatus.PENDING]),
                           {"$set": unlocked(JobStatus.FAILED, now, lastError=error)}).matched_count == 1


def delete_job(jobs: Collection[Doc], seen: Seen) -> bool:
    """Delete a DONE or FAILED job, as seen. Invariant: nothing else is ever deleted; False otherwise."""
    return jobs.delete_one(seen_fence(seen, [JobStatus.DONE, JobStatus.FAILED])).deleted_count == 1


def retry_failed_seen(jobs: Collection[Doc], job_type: JobType, seen_at: dt.datetime) -> int:
    """Every FAILED job of ``job_type`` last updated by ``seen_at`` back to due PENDING; how many.

    Invariant: a job that failed after ``seen_at`` (after the operator looked)
    and any job not FAILED is left alone.
    """
    query = {**failed_query(job_type), "updatedAt": {"$lte": seen_at}}
    return int(jobs.update_many(query, _retried(utcnow())).modified_count)


def watch_jobs(jobs: Collection[Doc], max_await_ms: int = 1000, stall_s: float = 10.0) -> Iterator[Doc]:
    """Change events of the collection (ids and kinds only: never a payload).

    OperationFailure where the server has no change streams (standalone).
    Each wait is bounded (``stall_s``): a getMore whose answer never comes (the
    server was stopped while it was asked, the client has no socket timeout)
    raises a timeout instead of holding the feed forever.
    """
    import pymongo

    pipeline = [{"$project": {"operationType": 1, "documentKey": 1}}]
    with jobs.watch(pipeline, max_await_time_ms=max_await_ms) as stream:
        while stream.alive:
            with pymongo.timeout(stall_s):
                change = stream.try_next()
            yield change if change is not None else {}


__all__ = [
    "DEFAULT_CACHE_S",
    "DEFAULT_CAP",
    "OPERATOR_INDEXES",
    "PAGE_SIZE",
    "PENDING_DUE",
    "PENDING_SCHEDULED",
    "STATUSES",
    "Activity",
    "AdminStore",
    "QueueCounts",
    "Seen",
    "Snapshot",
    "Worker",
    "cancel_job",
    "delete_job",
    "due_pending_query",
    "ensure_operator_indexes",
    "failed_query",
    "find_job",
    "is_pymongo_error",
    "known_types_query",
    "list_page",
    "list_query",
    "retry_failed_seen",
    "retry_job",
    "running_past_lock_query",
    "scheduled_pending_query",
    "seen_fence",
    "status_pipeline",
    "status_query",
    "type_status_query",
    "undated_pending_query",
    "unknown_type_pending_query",
    "watch_jobs",
]
