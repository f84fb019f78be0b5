"""The ``Job`` collection: claim, heartbeat, finish, release, in single round trips.

Every write after a claim is fenced on ``_id``, ``lockedBy`` and
``attempts``: a worker that lost its lock matches nothing and writes
nothing. Times are the client's clock (BSON dates, UTC), never ``$$NOW``.
Works with pymongo's asyncio client against MongoDB 6.0–8.x.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument

from muzo_ops.constants import DEFAULT_MAX_ATTEMPTS, JOB_COLLECTION
from muzo_ops.jobs import JobStatus, JobType

if TYPE_CHECKING:
    from pymongo.asynchronous.client_session import AsyncClientSession
    from pymongo.asynchronous.collection import AsyncCollection
    from pymongo.asynchronous.database import AsyncDatabase

Doc = dict[str, Any]

# The indexes of the reference, as Prisma names them would not matter: we
# only create them when no index has the same keys.
INDEXES: tuple[tuple[tuple[str, int], ...], ...] = (
    (("type", ASCENDING), ("status", ASCENDING), ("availableAt", ASCENDING)),
    (("status", ASCENDING), ("lockedUntil", ASCENDING)),
)
CLAIM_SORT = [("availableAt", ASCENDING), ("createdAt", ASCENDING)]


def utcnow() -> dt.datetime:
    """Now, at BSON's millisecond precision."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def fence(doc: Doc) -> Doc:
    """The filter that matches ``doc`` only while its claim still holds."""
    return {"_id": doc["_id"], "lockedBy": doc["lockedBy"], "attempts": doc["attempts"],
            "status": JobStatus.RUNNING.value}


class JobStore:
    """Queue operations on one database's ``Job`` collection."""

    def __init__(self, db: AsyncDatabase[Doc], collection: str = JOB_COLLECTION) -> None:
        self.db = db
        self.jobs: AsyncCollection[Doc] = db[collection]

    async def ensure_indexes(self) -> list[str]:
        """Create the reference's indexes when missing; the names created."""
        existing = set()
        async for index in await self.jobs.list_indexes():
            existing.add(tuple((k, int(v)) for k, v in index["key"].items()))
        created = []
        for keys in INDEXES:
            if keys not in existing:
                created.append(await self.jobs.create_index(list(keys)))
        return created

    @staticmethod
    def due_filter(job_type: JobType, now: dt.datetime) -> Doc:
        """Due PENDING jobs of one type: equality, equality, range (the first index)."""
        return {"type": job_type.value, "status": JobStatus.PENDING.value, "availableAt": {"$lte": now}}

    @staticmethod
    def expired_filter(job_type: JobType, now: dt.datetime) -> Doc:
        """RUNNING jobs whose worker stopped renewing the lock, with attempts left."""
        return {
            "type": job_type.value,
            "status": JobStatus.RUNNING.value,
            "lockedUntil": {"$lt": now},
            "$expr": {"$lt": [{"$ifNull": ["$attempts", 0]},
                              {"$ifNull": ["$maxAttempts", DEFAULT_MAX_ATTEMPTS]}]},
        }

    async def claim(self, worker_id: str, types: Sequence[JobType], lock_s: float,
                    expired_first: bool = False) -> tuple[Doc, Doc] | None:
        """Claim the oldest due job, each try ONE atomic ``find_one_and_update``.

        Tries due PENDING jobs (oldest ``availableAt`` then ``createdAt``),
        type by type in the order given, and RUNNING jobs whose lock expired
        (their worker died): after the PENDING ones, or before them with
        ``expired_first`` so a busy queue still takes them over. There is no
        read-then-write window: the server picks and locks the document in
        one command. One filter per kind keeps each claim on an index; a
        single ``$or`` of both cost the server about 40 % more per claim.
        Returns (the document before, the document as claimed) or None.
        """
        kinds = (self.expired_filter, self.due_filter)
        for make_filter in kinds if expired_first else kinds[::-1]:
            for job_type in types:
                claimed = await self._claim_one(make_filter(job_type, utcnow()), worker_id, lock_s)
                if claimed is not None:
                    return claimed
        return None

    async def _claim_one(self, query: Doc, worker_id: str, lock_s: float) -> tuple[Doc, Doc] | None:
        now = utcnow()
        until = now + dt.timedelta(seconds=lock_s)
        before = await self.jobs.find_one_and_update(
            query,
            {"$set": {"status": JobStatus.RUNNING.value, "lockedBy": worker_id, "lockedAt": now,
                      "lockedUntil": until, "updatedAt": now},
             "$inc": {"attempts": 1}},
            sort=CLAIM_SORT,
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            return None
        after = dict(before)
        after.update(status=JobStatus.RUNNING.value, lockedBy=worker_id, lockedAt=now,
                     lockedUntil=until, updatedAt=now, attempts=int(before.get("attempts") or 0) + 1)
        return before, after

    async def heartbeat(self, doc: Doc, lock_s: float) -> dt.datetime | None:
        """Extend the lock; the new lockedUntil, or None when the lock is lost."""
        now = utcnow()
        until = now + dt.timedelta(seconds=lock_s)
        result = await self.jobs.update_one(fence(doc), {"$set": {"lockedUntil": until, "updatedAt": now}})
        return until if result.matched_count else None

    async def complete(self, doc: Doc, result: Any) -> bool:
        """DONE with ``result``; False when the lock was lost (nothing written)."""
        now = utcnow()
        outcome = await self.jobs.update_one(fence(doc), {"$set": {
            "status": JobStatus.DONE.value, "result": result, "lastError": None,
            "lockedBy": None, "lockedAt": None, "lockedUntil": None, "updatedAt": now}})
        return outcome.matched_count == 1

    async def retry_later(self, doc: Doc, error: Doc, available_at: dt.datetime) -> bool:
        """Back to PENDING until ``available_at`` with ``lastError``; False when the lock was lost."""
        outcome = await self.jobs.update_one(fence(doc), {"$set": {
            "status": JobStatus.PENDING.value, "availableAt": available_at, "lastError": error,
            "lockedBy": None, "lockedAt": None, "lockedUntil": None, "updatedAt": utcnow()}})
        return outcome.matched_count == 1

    async def fail(self, doc: Doc, error: Doc) -> bool:
        """FAILED with ``lastError``; False when the lock was lost."""
        outcome = await self.jobs.update_one(fence(doc), {"$set": {
            "status": JobStatus.FAILED.value, "lastError": error,
            "lockedBy": None, "lockedAt": None, "lockedUntil": None, "updatedAt": utcnow()}})
        return outcome.matched_count == 1

    async def release(self, docs: Sequence[Doc], session: AsyncClientSession | None = None) -> int:
        """Put claimed jobs back to PENDING without spending an attempt; how many."""
        released = 0
        now = utcnow()
        for doc in docs:
            outcome = await self.jobs.update_one(
                fence(doc),
                {"$set": {"status": JobStatus.PENDING.value, "availableAt": now, "lockedBy": None,
                          "lockedAt": None, "lockedUntil": None, "updatedAt": now},
                 "$inc": {"attempts": -1}},
                session=session,
            )
            released += outcome.matched_count
        return released

    async def fail_exhausted(self, types: Sequence[JobType],
                             session: AsyncClientSession | None = None) -> list[Doc]:
        """FAIL the RUNNING jobs whose lock expired on their last attempt; those documents.

        Their worker died mid-run on the last attempt; running them again
        would exceed maxAttempts. Each is written with a fence on its
        expired lock, so a live worker's job is never touched.
        """
        now = utcnow()
        found = self.jobs.find({
            "type": {"$in": [t.value for t in types]},
            "status": JobStatus.RUNNING.value,
            "lockedUntil": {"$lt": now},
            "$expr": {"$gte": [{"$ifNull": ["$attempts", 0]},
                               {"$ifNull": ["$maxAttempts", DEFAULT_MAX_ATTEMPTS]}]},
        }, session=session)
        failed = []
        async for doc in found:
            error = {"name": "MaxAttemptsExceeded", "message": "Maximum attempts exhausted",
                     "stack": None, "attempts": int(doc.get("attempts") or 0),
                     "lockedBy": doc.get("lockedBy")}
            outcome = await self.jobs.update_one(
                {"_id": doc["_id"], "status": JobStatus.RUNNING.value,
                 "lockedBy": doc.get("lockedBy"), "lockedUntil": {"$lt": now}},
                {"$set": {"status": JobStatus.FAILED.value, "lastError": error, "lockedBy": None,
                          "lockedAt": None, "lockedUntil": None, "updatedAt": now}},
                session=session,
            )
            if outcome.matched_count:
                failed.append(doc)
        return failed

    async def enqueue(self, job_type: JobType, payload: Doc, run_at: dt.datetime | None = None,
                      max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                      project_id: str | None = None) -> ObjectId:
        """Insert a PENDING job the way the web app does; its id."""
        now = utcnow()
        doc = new_job_document(job_type, payload, now, run_at, max_attempts, project_id)
        result = await self.jobs.insert_one(doc)
        return result.inserted_id  # type: ignore[no-any-return]


def new_job_document(job_type: JobType, payload: Doc, now: dt.datetime,
                     run_at: dt.datetime | None = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                     project_id: str | None = None) -> Doc:
    """A Job document with every field Prisma writes."""
    return {
        "type": job_type.value,
        "status": JobStatus.PENDING.value,
        "attempts": 0,
        "maxAttempts": max_attempts,
        "lockedAt": None,
        "lockedUntil": None,
        "lockedBy": None,
        "availableAt": run_at or now,
        "lastError": None,
        "payload": payload,
        "result": None,
        "projectId": ObjectId(project_id) if project_id else None,
        "createdAt": now,
        "updatedAt": now,
    }


def error_document(exc: BaseException, attempts: int) -> Doc:
    """``lastError`` for ``exc``: name, message, stack, attempts."""
    import traceback

    return {
        "name": type(exc).__name__,
        "message": str(exc),
        "stack": "".join(traceback.format_exception(exc)).rstrip()[-8000:],
        "attempts": attempts,
    }


__all__ = ["JobStore", "error_document", "fence", "new_job_document", "utcnow"]
