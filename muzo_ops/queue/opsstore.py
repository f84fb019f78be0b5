"""The operators' side of the store: ``AdminStore`` (synchronous pymongo) and its query builders.

``jobs status | enqueue | retry-failed | clear-failed``, the exporter and
the dashboard read and write the ``Job`` collection only through these.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING

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


__all__ = [
    "AdminStore",
    "due_pending_query",
    "failed_query",
    "known_types_query",
    "running_past_lock_query",
    "scheduled_pending_query",
    "status_pipeline",
    "type_status_query",
    "undated_pending_query",
    "unknown_type_pending_query",
]
