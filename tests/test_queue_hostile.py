"""Issue 15.2 and 15.3: hostile documents of every BSON type in every field never stop the claim
loop, every claimed job ends DONE or FAILED with the reason; jobs are tracked by their real _id.

Invariant: a claimed document ends DONE, FAILED (lastError says why) or back PENDING (released),
never RUNNING after its worker stopped, whatever its fields hold.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from typing import Any

from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from pymongo.errors import OperationFailure

from muzo_ops.logs import Logger
from muzo_ops.queue.events import JobInfo, Observer
from muzo_ops.queue.jobs import Job, JobType
from muzo_ops.queue.worker import Worker, WorkerSettings
from tests.servers import Secantus
from tests.workers import mockup_payload, prisma_job

FIELDS = ("_id", "type", "status", "attempts", "maxAttempts", "lockedAt", "lockedUntil", "lockedBy",
          "availableAt", "lastError", "payload", "result", "projectId", "createdAt", "updatedAt")


def bson_values() -> list[Any]:
    """One value of every BSON type (and the awkward ones of some)."""
    return [1.5, float("nan"), float("inf"), "x", "", {}, {"a": 1}, [], [1, "x"], Binary(b"\x00\xff"),
            ObjectId(), True, False, dt.datetime.now(dt.UTC), dt.datetime(9999, 12, 31, tzinfo=dt.UTC), None,
            Regex("^a"),
            Code("x"), Code("x", {"a": 1}), 5, -1, 0, Timestamp(1, 1), Int64(2**63 - 1), Int64(-(2**63)),
            Decimal128("1"), MinKey(), MaxKey()]


def hostile_documents() -> list[dict[str, Any]]:
    docs = []
    for name in FIELDS:
        values = bson_values()
        if name == "type":
            values += [["MOCKUP"], ["MOCKUP", 1], ["MOCKUP", "GENERATION"]]
        if name == "status":
            values += [["PENDING"], ["PENDING", "DONE"]]
        if name == "availableAt":
            values += [[dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)]]
        for value in values:
            if name == "_id" and (isinstance(value, list | Regex) or value != value):
                # MongoDB refuses these as _id; SecantusDB cannot update a document whose _id is NaN
                continue
            doc = prisma_job("MOCKUP", mockup_payload())
            doc[name] = value
            docs.append(doc)
    return docs


class Starts(Observer):
    def __init__(self) -> None:
        self.started: list[JobInfo] = []
        self.errors: list[BaseException] = []

    def job_started(self, job: JobInfo, wait_s: float | None) -> None:
        self.started.append(job)

    def job_error(self, job: JobInfo, error: BaseException) -> None:
        self.errors.append(error)


def _echo(job: Job) -> dict[str, Any]:
    return {"ok": True}


def test_every_bson_type_in_every_field_ends_done_or_failed(secantus: Secantus, db: tuple[str, Any]) -> None:
    name, collection = db
    docs = hostile_documents()
    refused = 0
    for doc in docs:
        try:
            collection.insert_one(doc)
        except OperationFailure:  # the server refuses it: it cannot reach a worker
            refused += 1
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    controls = [prisma_job("MOCKUP", mockup_payload(i), availableAt=later, createdAt=later) for i in range(3)]
    collection.insert_many(controls)
    settings = WorkerSettings.from_values({"DATABASE_URL": secantus.url(name)}, queues="mockup", burst=True,
                                          concurrency=4)
    observer = Starts()
    stream = io.StringIO()
    worker = Worker(settings, {JobType.MOCKUP: _echo}, logger=Logger("muzo-worker", "warn", stream),
                    observers=[observer])

    async def run() -> int:
        await asyncio.sleep(1.1)  # the controls are due, after every hostile document
        return await worker.run()

    try:
        code = asyncio.run(asyncio.wait_for(run(), timeout=45))
    except TimeoutError:
        code = -1
    left = [{k: v for k, v in d.items() if k != "payload"} for d in collection.find({"status": "RUNNING"})]
    # a burst run that failed jobs for good exits 1 (the hostile ones fail); -1 would be a hang, 70 a crash
    if code != 1:
        import collections
        import json
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
        print(collections.Counter(x["msg"] for x in lines))
        print(collections.Counter((x["msg"], (x.get("err") or {}).get("message", "")[:200])
                                  for x in lines if x["msg"] != "Job failed permanently"))
    assert code == 1, left[:5]
    assert stream.getvalue().splitlines()[-1].count("Burst run finished") == 1
    running = list(collection.find({"status": "RUNNING"}, {"payload": 0}))
    assert running == [], running
    for doc in collection.find({"status": "FAILED"}):
        error = doc.get("lastError")
        assert isinstance(error, dict) and error.get("message"), doc
    for control in controls:
        assert collection.find_one({"_id": control["_id"]})["status"] == "DONE"
    assert observer.errors == [], observer.errors
    failed = collection.count_documents({"status": "FAILED"})
    done = collection.count_documents({"status": "DONE"})
    print(f"hostile: {len(docs)} documents ({refused} refused by the server); "
          f"claimed {len(observer.started)}, DONE {done}, FAILED {failed}")


async def _sleepy(job: Job) -> None:
    await asyncio.sleep(30)


def test_ids_one_and_string_one_are_two_jobs(secantus: Secantus, db: tuple[str, Any]) -> None:
    """_id "1" and _id 1 are different jobs: both run, both are released at shutdown."""
    name, collection = db
    collection.insert_many([prisma_job("MOCKUP", _id="1"), prisma_job("MOCKUP", _id=1)])
    settings = WorkerSettings.from_values({"DATABASE_URL": secantus.url(name)}, queues="mockup",
                                          concurrency=2, drain_timeout_s=0)
    observer = Starts()
    worker = Worker(settings, {JobType.MOCKUP: _sleepy}, logger=Logger("muzo-worker", "warn", io.StringIO()),
                    observers=[observer])

    async def run() -> int:
        task = asyncio.create_task(worker.run())
        while len(observer.started) < 2:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert len(worker.running) == 2
        worker.request_stop()
        return await task

    assert asyncio.run(asyncio.wait_for(run(), timeout=60)) == 0
    statuses = {repr(d["_id"]): d["status"] for d in collection.find()}
    assert statuses == {"'1'": "PENDING", "1": "PENDING"}, statuses


class _SweepCrashes(Worker):
    """Fault injection: the sweep loop raises what no one expected, once the worker runs."""

    async def _sweep_loop(self) -> None:
        await asyncio.sleep(0.3)
        raise RuntimeError("injected: a bug in a long-lived task")


def test_a_crashing_long_lived_task_is_logged_and_exits_1(secantus: Secantus, db: tuple[str, Any]) -> None:
    """Supervision: never silence. The worker logs the crash (level 60), drains and exits 1."""
    name, collection = db
    collection.insert_one(prisma_job("MOCKUP", mockup_payload()))
    settings = WorkerSettings.from_values({"DATABASE_URL": secantus.url(name)}, queues="mockup")
    stream = io.StringIO()
    worker = _SweepCrashes(settings, {JobType.MOCKUP: _echo}, logger=Logger("muzo-worker", "info", stream))
    code = asyncio.run(asyncio.wait_for(worker.run(), timeout=60))
    import json

    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    crashed = [x for x in lines if x["msg"].startswith("Worker task crashed")]
    assert code == 1, lines[-5:]
    assert len(crashed) == 1 and crashed[0]["level"] == 60 and crashed[0]["task"] == "sweep", crashed
    assert "injected" in crashed[0]["err"]["message"]
    assert lines[-1]["msg"] == "Worker stopped"
