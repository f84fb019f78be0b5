"""The ``Job`` collection as the worker uses it: claim, heartbeat, finish, release, in single round trips.

With ``opsstore`` (the operators' queries and updates) this is the store:
every filter and update of the ``Job`` collection lives in the two.

Every write after a claim is fenced on ``_id``, ``lockedBy`` and
``attempts``: a worker that lost its lock matches nothing and writes
nothing. The lease is the server's: ``lockedAt``/``lockedUntil`` are set
from ``$$NOW`` in the claim, the heartbeat and the takeover (update
pipelines, MongoDB 4.2+), and whether a lock has expired is decided by the
server's ``$$NOW`` too, so no worker's clock, and no wait for a server
before a command lands, decides who owns a job. Other times (``availableAt``
of a retry, ``updatedAt`` of a finish) are the worker's clock (BSON dates,
UTC). Works with pymongo's asyncio client against MongoDB 6.0–8.x.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo import ASCENDING, ReturnDocument

from muzo_ops.constants import DEFAULT_MAX_ATTEMPTS, JOB_COLLECTION
from muzo_ops.queue.jobs import ATTEMPTS_LIMIT, JobStatus, JobType, is_whole

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

# How the worker decodes documents: no document can make decoding fail (a
# date beyond Python's range comes back as DatetimeMS, bad UTF-8 as U+FFFD),
# so a malformed job is read, then FAILED with what is wrong, never a claim
# error that blocks the queue.
CODEC_OPTIONS: CodecOptions[Doc] = CodecOptions(
    document_class=dict, tz_aware=True, tzinfo=dt.UTC, unicode_decode_error_handler="replace",
    datetime_conversion=DatetimeConversion.DATETIME_AUTO)

# attempts + 1 when it is a whole number (or missing: 0) below ATTEMPTS_LIMIT; any other
# value is kept as it is, so the claim never fails or overflows on it, and the worker fails
# the job as malformed.
_INCREMENTED_ATTEMPTS: Doc = {"$cond": [
    {"$and": [{"$in": [{"$type": "$attempts"}, ["int", "long", "missing"]]},
              {"$lt": [{"$ifNull": ["$attempts", 0]}, ATTEMPTS_LIMIT]}]},
    {"$add": [{"$ifNull": ["$attempts", 0]}, 1]},
    "$attempts",
]}


def due_condition(now: dt.datetime) -> Doc:
    """``availableAt`` is a date up to ``now`` (a range on the first index).

    A missing or null ``availableAt`` is due too (the web app means "now"):
    ``UNDATED`` matches it, an equality on the same index. Each is its own
    claim try: an ``$or`` of both, or ``$not: {$gt: now}``, leaves the index
    on some servers (SecantusDB scans them).
    """
    return {"$lte": now}


UNDATED: Doc = {"availableAt": None}  # missing or null: due now
# A present availableAt that is not a date (a string, a number…): never due by
# date, so only this filter finds it, for the worker to fail it with the reason.
MISDATED: Doc = {"availableAt": {"$exists": True, "$not": {"$type": ["date", "null"]}}}


def utcnow() -> dt.datetime:
    """Now, at BSON's millisecond precision."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def unlocked(status: JobStatus, now: dt.datetime, **fields: Any) -> Doc:
    """The ``$set`` that leaves a job unlocked in ``status`` (plus ``fields``)."""
    return {"status": status.value, "lockedBy": None, "lockedAt": None, "lockedUntil": None,
            "updatedAt": now, **fields}


def lease_until(lock_s: float) -> Doc:
    """The server's now plus ``lock_s`` (an aggregation expression for update pipelines)."""
    return {"$add": ["$$NOW", int(lock_s * 1000)]}


# A lock that has expired by the server's clock. A RUNNING job whose lockedUntil is
# not a date never expires (as before: a query's $lt never matched null).
EXPIRED_LOCK: Doc = {"lockedUntil": {"$type": "date"}}
# Compared as milliseconds ($toLong, MongoDB 4.0+): SecantusDB compares a stored date with
# $$NOW wrongly, and the numbers mean the same on every server.
EXPIRED_LOCK_EXPR: Doc = {"$lt": [{"$toLong": "$lockedUntil"}, {"$toLong": "$$NOW"}]}


def change_stream_pipeline() -> list[Doc]:
    """Change events that can make a job claimable: inserts and moves back to PENDING."""
    return [{"$match": {"$or": [
        {"operationType": "insert"},
        {"updateDescription.updatedFields.status": JobStatus.PENDING.value},
    ]}}]


def fence(doc: Doc) -> Doc:
    """The filter that matches ``doc`` only while its claim still holds.

    ``lockedBy`` is unique to a worker process, which never takes over its
    own job; ``attempts`` is matched too when it is a whole number (a
    malformed value, NaN or a MinKey say, is left out: equality on it is
    not the same on every server).
    """
    attempts = doc.get("attempts")
    return {"_id": doc["_id"], "lockedBy": doc["lockedBy"], "status": JobStatus.RUNNING.value,
            **({"attempts": attempts} if is_whole(attempts) else {})}


class JobStore:
    """Queue operations on one database's ``Job`` collection."""

    def __init__(self, db: AsyncDatabase[Doc], collection: str = JOB_COLLECTION) -> None:
        self.db = db
        self.jobs: AsyncCollection[Doc] = db.get_collection(collection, codec_options=CODEC_OPTIONS)

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
        return {"type": job_type.value, "status": JobStatus.PENDING.value, "availableAt": due_condition(now)}

    @staticmethod
    def undated_filter(job_type: JobType, now: dt.datetime) -> Doc:
        """PENDING jobs of one type without availableAt (due now): equality on the first index."""
        return {"type": job_type.value, "status": JobStatus.PENDING.value, **UNDATED}

    @staticmethod
    def misdated_filter(job_type: JobType, now: dt.datetime) -> Doc:
        """PENDING jobs of one type whose availableAt is not a date (malformed: to be failed)."""
        return {"type": job_type.value, "status": JobStatus.PENDING.value, **MISDATED}

    @staticmethod
    def expired_filter(job_type: JobType, now: dt.datetime, worker_id: str = "") -> Doc:
        """RUNNING jobs whose worker stopped renewing the lock, with attempts left.

        Never a job locked by ``worker_id`` itself: a job it still runs, or
        has finished and is still writing after an outage.
        """
        return {
            "type": job_type.value,
            "status": JobStatus.RUNNING.value,
            **EXPIRED_LOCK,
            "lockedBy": {"$ne": worker_id},
            "$expr": {"$and": [EXPIRED_LOCK_EXPR,
                               {"$lt": [{"$ifNull": ["$attempts", 0]},
                                        {"$ifNull": ["$maxAttempts", DEFAULT_MAX_ATTEMPTS]}]}]},
        }

    async def claim(self, worker_id: str, types: Sequence[JobType], lock_s: float,
                    expired_first: bool = False, takeover: bool = True) -> tuple[Doc, Doc] | None:
        """Claim the oldest due job, each try ONE atomic ``find_one_and_update``.

        Tries due PENDING jobs (oldest ``availableAt`` then ``createdAt``),
        type by type in the order given, and RUNNING jobs whose lock expired
        (their worker died): after the PENDING ones, or before them with
        ``expired_first`` so a busy queue still takes them over. There is no
        read-then-write window: the server picks and locks the document in
        one command. One filter per kind keeps each claim on an index; a
        single ``$or`` of both cost the server about 40 % more per claim.
        Without ``takeover`` only PENDING jobs are tried (after an outage,
        while the owners of expired locks may still be writing). Returns
        (the document before, the document as claimed) or None.
        """
        def expired(job_type: JobType, now: dt.datetime) -> Doc:
            return self.expired_filter(job_type, now, worker_id)

        # expired_first: the periodic round, which also looks for malformed availableAt values
        kinds = ([expired, self.misdated_filter, self.due_filter, self.undated_filter] if expired_first
                 else [self.due_filter, self.undated_filter, expired])
        for make_filter in kinds:
            if make_filter is expired and not takeover:
                continue
            for job_type in types:
                claimed = await self._claim_one(make_filter(job_type, utcnow()), worker_id, lock_s)
                if claimed is not None:
                    return claimed
        return None

    async def next_due(self, types: Sequence[JobType]) -> dt.datetime | None:
        """``availableAt`` of the earliest PENDING job of ``types`` not due yet (None: none)."""
        doc = await self.jobs.find_one(
            {"type": {"$in": [t.value for t in types]}, "status": JobStatus.PENDING.value,
             "availableAt": {"$gt": utcnow()}},
            projection={"_id": 0, "availableAt": 1}, sort=[("availableAt", ASCENDING)])
        when = doc.get("availableAt") if doc else None
        return when if isinstance(when, dt.datetime) else None

    async def scheduled(self, types: Sequence[JobType]) -> tuple[int, dt.datetime | None]:
        """How many PENDING jobs of ``types`` are not due yet (retries waiting), and the earliest one's time."""
        count = await self.jobs.count_documents(
            {"type": {"$in": [t.value for t in types]}, "status": JobStatus.PENDING.value,
             "availableAt": {"$gt": utcnow()}})
        return count, (await self.next_due(types) if count else None)

    async def _claim_one(self, query: Doc, worker_id: str, lock_s: float) -> tuple[Doc, Doc] | None:
        # An update pipeline (MongoDB 4.2+): unlike $inc it cannot fail on a
        # malformed attempts value, so one bad document never blocks the queue;
        # the lease starts when the server applies the claim ($$NOW).
        before = await self.jobs.find_one_and_update(
            query,
            [{"$set": {"status": JobStatus.RUNNING.value, "lockedBy": {"$literal": worker_id},
                       "lockedAt": "$$NOW", "lockedUntil": lease_until(lock_s), "updatedAt": "$$NOW",
                       "attempts": _INCREMENTED_ATTEMPTS}}],
            sort=CLAIM_SORT,
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            return None
        # The worker's copy: its lock times are this clock's estimate (only for wait metrics);
        # the fence uses _id, lockedBy and attempts.
        now = utcnow()
        until = now + dt.timedelta(seconds=lock_s)
        after = dict(before)
        attempts = before.get("attempts", 0)
        after.update(status=JobStatus.RUNNING.value, lockedBy=worker_id, lockedAt=now,
                     lockedUntil=until, updatedAt=now,
                     attempts=attempts + 1 if is_whole(attempts) and attempts < ATTEMPTS_LIMIT else attempts)
        return before, after

    async def heartbeat(self, doc: Doc, lock_s: float) -> dt.datetime | None:
        """Extend the lock to the server's now + ``lock_s``; this clock's estimate of the new
        lockedUntil, or None when the lock is not ours (now)."""
        result = await self.jobs.update_one(fence(doc), [{"$set": {"lockedUntil": lease_until(lock_s),
                                                                   "updatedAt": "$$NOW"}}])
        return utcnow() + dt.timedelta(seconds=lock_s) if result.matched_count else None

    async def holder(self, doc: Doc) -> Doc | None:
        """The job's ``status`` and ``lockedBy`` as the server has them now (None: the job is gone)."""
        return await self.jobs.find_one({"_id": doc["_id"]}, projection={"_id": 0, "status": 1, "lockedBy": 1})

    async def give_back(self, claimed: Doc, before: Doc, lock_s: float) -> bool:
        """Undo a takeover: the job back to its previous owner with a fresh lease; False when
        ``claimed``'s lock no longer holds.

        For a takeover whose claim waited so long (a frozen or unreachable server) that the
        owner's heartbeat may have waited behind it: the owner's fence matches again.
        """
        restored: Doc = {"lockedBy": {"$literal": before.get("lockedBy")},
                         "attempts": {"$literal": before.get("attempts")},
                         "lockedAt": {"$literal": before.get("lockedAt")},
                         "lockedUntil": lease_until(lock_s), "updatedAt": "$$NOW"}
        result = await self.jobs.update_one(fence(claimed), [{"$set": restored}])
        return result.matched_count == 1

    async def complete(self, doc: Doc, result: Any) -> bool:
        """DONE with ``result``; False when the lock was lost (nothing written)."""
        now = utcnow()
        outcome = await self.jobs.update_one(fence(doc), {"$set": unlocked(
            JobStatus.DONE, now, result=result, lastError=None)})
        return outcome.matched_count == 1

    async def retry_later(self, doc: Doc, error: Doc, available_at: dt.datetime) -> bool:
        """Back to PENDING until ``available_at`` with ``lastError``; False when the lock was lost."""
        outcome = await self.jobs.update_one(fence(doc), {"$set": unlocked(
            JobStatus.PENDING, utcnow(), availableAt=available_at, lastError=error)})
        return outcome.matched_count == 1

    async def fail(self, doc: Doc, error: Doc) -> bool:
        """FAILED with ``lastError``; False when the lock was lost."""
        outcome = await self.jobs.update_one(fence(doc), {"$set": unlocked(
            JobStatus.FAILED, utcnow(), lastError=error)})
        return outcome.matched_count == 1

    async def release(self, docs: Sequence[Doc], session: AsyncClientSession | None = None) -> list[Doc]:
        """Put claimed jobs back to PENDING without spending an attempt; those released."""
        released = []
        now = utcnow()
        for doc in docs:
            undo: Doc = {"$inc": {"attempts": -1}} if is_whole(doc.get("attempts")) else {}
            outcome = await self.jobs.update_one(
                fence(doc), {"$set": unlocked(JobStatus.PENDING, now, availableAt=now), **undo},
                session=session,
            )
            if outcome.matched_count:
                released.append(doc)
        return released

    async def fail_exhausted(self, types: Sequence[JobType], session: AsyncClientSession | None = None,
                             worker_id: str = "") -> list[Doc]:
        """FAIL the RUNNING jobs whose lock expired on their last attempt; those documents.

        Their worker died mid-run on the last attempt; running them again
        would exceed maxAttempts. Each is written with a fence on its
        expired lock, so a live worker's job is never touched.
        """
        now = utcnow()
        found = self.jobs.find({
            "type": {"$in": [t.value for t in types]},
            "status": JobStatus.RUNNING.value,
            **EXPIRED_LOCK,
            "lockedBy": {"$ne": worker_id},
            "$expr": {"$and": [EXPIRED_LOCK_EXPR,
                               {"$gte": [{"$ifNull": ["$attempts", 0]},
                                         {"$ifNull": ["$maxAttempts", DEFAULT_MAX_ATTEMPTS]}]}]},
        }, session=session)
        failed = []
        async for doc in found:
            attempts = doc.get("attempts")
            error = {"name": "MaxAttemptsExceeded", "message": "Maximum attempts exhausted",
                     "stack": None, "attempts": attempts if is_whole(attempts) else None,
                     "lockedBy": doc.get("lockedBy")}
            outcome = await self.jobs.update_one(
                {"_id": doc["_id"], "status": JobStatus.RUNNING.value,
                 "lockedBy": doc.get("lockedBy"), "lockedUntil": doc.get("lockedUntil"),
                 "$expr": EXPIRED_LOCK_EXPR},
                {"$set": unlocked(JobStatus.FAILED, now, lastError=error)},
                session=session,
            )
            if outcome.matched_count:
                failed.append(doc)
        return failed


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


def error_document(exc: BaseException, attempts: int | None,
                   redact: Callable[[str], str] | None = None) -> Doc:
    """``lastError`` for ``exc``: name, message, stack, attempts.

    ``redact`` (the worker's Redactor) hides known secrets in the message
    and stack before they are stored: operators print lastError and the
    dashboard shows it.
    """
    import traceback

    def text(make: Callable[[], str]) -> str:
        try:
            value = make()
        except Exception:  # an exception whose __str__ raises
            value = f"<{type(exc).__name__} that cannot be shown>"
        return redact(value) if redact is not None else value

    stack = text(lambda: "".join(traceback.format_exception(exc)).rstrip())
    return {
        "name": type(exc).__name__,
        "message": text(lambda: str(exc))[:8000],
        "stack": stack[-8000:],
        "attempts": attempts,
    }


__all__ = [
    "UNDATED",
    "JobStore",
    "change_stream_pipeline",
    "due_condition",
    "error_document",
    "fence",
    "new_job_document",
    "unlocked",
    "utcnow",
]
