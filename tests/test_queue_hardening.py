"""Issue 7, the queue: malformed documents, handlers that raise BaseException, timeouts,
redacted lastError, start-up ranges, and the events every observer sees."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from muzo_ops.logs import Logger
from muzo_ops.queue.events import JobInfo, Observer, Outcome, WorkerInfo
from muzo_ops.queue.handlers import Handler
from muzo_ops.queue.jobs import JobType
from muzo_ops.queue.worker import Worker, WorkerSettings
from muzo_ops.redact.redactor import Redactor
from tests import handlers_for_tests as th
from tests.helpers import run_cli
from tests.servers import Secantus
from tests.workers import mockup_payload, now, prisma_job


class Recorder(Observer):
    """Keeps every event it is sent, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_") or name == "events" or not hasattr(Observer, name):
            return object.__getattribute__(self, name)

        def record(*args: Any) -> None:
            object.__getattribute__(self, "events").append((name, args))
        return record

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for event, args in self.events if event == name]


def burst(secantus: Secantus, name: str, handler: Handler, *, observers: Sequence[Observer] = (),
          redactor: Redactor | None = None, timeout: float = 60, **settings: Any) -> tuple[int, Worker, str]:
    """Run a burst worker for MOCKUP in this process: (exit code, the worker, its log)."""
    options: dict[str, Any] = {"queues": "mockup", "burst": True, **settings}
    timeouts = options.pop("job_timeouts", None)
    base = WorkerSettings.from_values({"DATABASE_URL": secantus.url(name)}, **options)
    if timeouts is not None:
        import dataclasses

        base = dataclasses.replace(base, job_timeouts=timeouts)
    stream = io.StringIO()
    worker = Worker(base, {JobType.MOCKUP: handler}, logger=Logger("muzo-worker", "debug", stream, redactor),
                    redactor=redactor, observers=observers)
    code = asyncio.run(asyncio.wait_for(worker.run(), timeout=timeout))
    return code, worker, stream.getvalue()


def messages(log: str) -> list[str]:
    return [json.loads(line)["msg"] for line in log.splitlines()]


def test_malformed_documents_fail_with_the_reason_and_the_queue_goes_on(
        secantus: Secantus, db: tuple[str, Any]) -> None:
    name, jobs = db
    good = [prisma_job(payload=mockup_payload(i)) for i in range(2)]
    no_available = prisma_job(payload=mockup_payload(9))
    del no_available["availableAt"]
    bad = {
        "null-attempts": prisma_job(payload=mockup_payload(3), attempts=None),
        "string-attempts": prisma_job(payload=mockup_payload(4), attempts="2"),
        "string-available": prisma_job(payload=mockup_payload(5), availableAt="tomorrow"),
        "number-available": prisma_job(payload=mockup_payload(6), availableAt=1700000000000),
        "string-max": prisma_job(payload=mockup_payload(7), maxAttempts="lots"),
    }
    jobs.insert_many([*bad.values(), *good, no_available])
    code, worker, log = burst(secantus, name, th.raiser, timeout=30)
    assert code == 1  # malformed documents failed for good
    for doc in [*good, no_available]:
        assert jobs.find_one({"_id": doc["_id"]})["status"] == "DONE"
    expected = {"null-attempts": "attempts is null", "string-attempts": "attempts is a string",
                "string-available": "availableAt is a string", "number-available": "availableAt is a huge number",
                "string-max": "maxAttempts is a string"}
    for key, doc in bad.items():
        final = jobs.find_one({"_id": doc["_id"]}, projection={"availableAt": 0})
        assert final["status"] == "FAILED", key
        assert final["lastError"]["name"] == "MalformedJobError"
        assert expected[key] in final["lastError"]["message"], final["lastError"]["message"]
        assert final["lockedBy"] is None
    assert worker.stats["failed"] == 5 and worker.stats["done"] == 3
    assert "Unexpected error while claiming a job" not in messages(log)


@pytest.mark.parametrize(("handler", "kind", "name"), [
    (th.raiser, "exit", "SystemExit"), (th.raiser, "interrupt", "KeyboardInterrupt"),
    (th.raiser, "genexit", "GeneratorExit"), (th.raiser_async, "exit", "SystemExit"),
    (th.raiser_async, "interrupt", "KeyboardInterrupt"), (th.raiser_async, "cancel", "CancelledError"),
])
def test_any_base_exception_from_a_handler_is_a_job_failure(
        secantus: Secantus, db: tuple[str, Any], handler: Handler, kind: str, name: str) -> None:
    db_name, jobs = db
    retried = prisma_job(payload=mockup_payload(1, **{"raise": kind}), max_attempts=2)
    after = prisma_job(payload=mockup_payload(2))
    jobs.insert_many([retried, after])
    recorder = Recorder()
    code, worker, _ = burst(secantus, db_name, handler, observers=[recorder], retry_base_s=0.6,
                            retry_cap_s=0.6, timeout=30)
    assert code == 0
    first = jobs.find_one({"_id": retried["_id"]})
    assert first["status"] == "PENDING" and first["attempts"] == 1 and first["lastError"]["name"] == name
    outcomes = {args[0].id: args[1] for args in recorder.named("job_finished")}
    assert outcomes == {str(retried["_id"]): Outcome.RETRIED, str(after["_id"]): Outcome.DONE}
    import time

    time.sleep(0.7)
    code, _worker, _ = burst(secantus, db_name, handler, timeout=30)
    assert code == 1  # the job failed for good
    final = jobs.find_one({"_id": retried["_id"]})
    assert final["status"] == "FAILED" and final["attempts"] == 2 and final["lastError"]["name"] == name
    assert jobs.find_one({"_id": after["_id"]})["status"] == "DONE"


def test_handler_base_exceptions_leave_a_real_worker_running(tmp_path: Path, secantus: Secantus,
                                                             db: tuple[str, Any]) -> None:
    from tests.workers import start_worker

    name, jobs = db
    docs = [prisma_job(payload=mockup_payload(i, **{"raise": kind}), max_attempts=1)
            for i, kind in enumerate(["exit", "interrupt"])]
    jobs.insert_many(docs)
    worker = start_worker(tmp_path, secantus.url(name), "--poll-seconds", "0.2", name="exits",
                          handler="MOCKUP=tests.handlers_for_tests:raiser")
    try:
        worker.wait_for(lambda: jobs.count_documents({"status": "FAILED"}) == 2, 30, "both FAILED")
        late = prisma_job(payload=mockup_payload(9))
        jobs.insert_one(late)
        worker.wait_for(lambda: jobs.find_one({"_id": late["_id"]})["status"] == "DONE", 30, "still claiming")
        assert worker.proc.poll() is None
    finally:
        assert worker.terminate() == 0
    assert {d["lastError"]["name"] for d in jobs.find({"status": "FAILED"})} == {"SystemExit", "KeyboardInterrupt"}


def test_last_error_is_redacted(secantus: Secantus, db: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    name, jobs = db
    secret = "sk_live_" + "q" * 24
    monkeypatch.setenv("LEAK", secret)
    doc = prisma_job(payload=mockup_payload(1, **{"raise": "secret"}), max_attempts=1)
    jobs.insert_one(doc)
    code, _, log = burst(secantus, name, th.raiser, redactor=Redactor([secret]))
    assert code == 1  # the job failed for good
    error = jobs.find_one({"_id": doc["_id"]})["lastError"]
    assert error["message"] == "provider refused key ***"
    assert secret not in error["stack"] and "***" in error["stack"]
    assert secret not in log


def test_timeouts_cancel_coroutines_and_abandon_threads(secantus: Secantus, db: tuple[str, Any]) -> None:
    name, jobs = db
    doc = prisma_job(payload=mockup_payload(1, seconds=30), max_attempts=1)
    jobs.insert_one(doc)
    recorder = Recorder()
    code, _worker, log = burst(secantus, name, th.hang_async, observers=[recorder],
                              job_timeouts={t: 0.5 for t in JobType})
    assert code == 1  # the job failed for good
    final = jobs.find_one({"_id": doc["_id"]})
    assert final["status"] == "FAILED" and final["lastError"]["name"] == "JobTimeoutError"
    assert "timed out after 0.5 s (JOB_TIMEOUT_MOCKUP_SECONDS)" in final["lastError"]["message"]
    assert [args[1] for args in recorder.named("job_finished")] == [Outcome.TIMED_OUT]
    assert recorder.named("job_timed_out")[0][1:] == (0.5, False)
    assert "Job timed out" in messages(log)


def test_abandoned_threads_free_their_slot_then_stop_the_worker(secantus: Secantus, db: tuple[str, Any]) -> None:
    name, jobs = db
    hanging = [prisma_job(payload=mockup_payload(i, seconds=2.5), max_attempts=2) for i in range(3)]
    jobs.insert_many(hanging)
    recorder = Recorder()
    code, _worker, log = burst(secantus, name, th.hang, observers=[recorder], concurrency=1,
                              job_timeouts={t: 0.3 for t in JobType}, retry_base_s=5, retry_cap_s=5)
    # concurrency 1: each hung job freed the slot for the next; the third abandoned thread stops the worker
    assert code == 1
    assert [a[1] for a in recorder.named("thread_abandoned")] == [1, 2, 3]
    assert recorder.named("too_many_abandoned_threads") == [(3,)]
    assert jobs.count_documents({"status": "PENDING", "attempts": 1, "lastError.name": "JobTimeoutError"}) == 3
    assert "Too many abandoned handler threads; draining, then exiting with code 1" in messages(log)


def test_timeouts_come_from_the_schema_variables() -> None:
    s = WorkerSettings.from_values({"DATABASE_URL": "mongodb://h/muzo"})
    assert s.job_timeouts == {JobType.GENERATION: 1800.0, JobType.MOCKUP: 120.0, JobType.FULFILLMENT: 300.0}
    s = WorkerSettings.from_values({"DATABASE_URL": "mongodb://h/muzo", "JOB_TIMEOUT_MOCKUP_SECONDS": "7"})
    assert s.timeout_for(JobType.MOCKUP) == 7.0


def test_events_reach_every_observer_at_the_right_moments(secantus: Secantus, db: tuple[str, Any]) -> None:
    name, jobs = db
    waited = prisma_job(payload=mockup_payload(1), availableAt=now() - dt.timedelta(seconds=5))
    invalid = prisma_job(payload={"orderId": "x"})
    jobs.insert_many([waited, invalid])
    recorder = Recorder()

    class Broken(Observer):
        def job_started(self, job: JobInfo, wait_s: float | None) -> None:
            raise RuntimeError("an observer's bug")

    code, worker, _ = burst(secantus, name, th.raiser, observers=[Broken(), recorder])
    assert code == 1  # the invalid payload failed for good
    names = [event for event, _ in recorder.events]
    assert names[:2] == ["db_ok", "transactions_decided"] and "worker_ready" in names
    assert names[-2:] == ["worker_stopped", "burst_summary"]
    assert recorder.named("burst_summary") == [(1, 0, None)]
    info = recorder.named("worker_ready")[0][0]
    assert isinstance(info, WorkerInfo) and info.queues == (JobType.MOCKUP,) and info.transactions is True
    assert names.index("worker_ready") < names.index("claim_tick") and "db_ok" in names and "claim_idle" in names
    started = {args[0].id: args[1] for args in recorder.named("job_started")}
    assert 4.9 <= started[str(waited["_id"])] < 30
    finished = {args[0].id: args[1] for args in recorder.named("job_finished")}
    assert finished == {str(waited["_id"]): Outcome.DONE, str(invalid["_id"]): Outcome.FAILED}
    assert recorder.named("job_failed")[0][1] == "invalid payload"
    assert recorder.named("worker_stopped")[0][0] == worker.stats


@pytest.mark.parametrize(("args", "message"), [
    (["--lock-seconds", "1e12"], "--lock-seconds 1e+12 is out of range: use 1 to 86400 seconds (as WORKER_LOCK_SECONDS)"),
    (["--drain-timeout", "inf"], "argument --drain-timeout: 'inf' must be a finite number"),
    (["--drain-timeout", "1e9"], "--drain-timeout 1e+09 is out of range"),
    (["--poll-seconds", "0.001"], "--poll-seconds 0.001 is out of range: use 0.05 to 3600"),
    (["--retry-cap", "1e300"], "--retry-cap 1e+300 is out of range"),
    (["--concurrency", "100000"], "--concurrency 100000 is out of range: use 1 to 1000"),
])
def test_worker_ranges_are_checked_at_start_up(tmp_path: Path, args: list[str], message: str) -> None:
    env = tmp_path / ".env"
    env.write_text("DATABASE_URL=mongodb://127.0.0.1:9/muzo\nWORKER_QUEUES=mockup\n")
    proc = run_cli("worker", "--env-file", str(env), "--handler", "MOCKUP=muzo_ops.queue.handlers.demo:echo", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_a_worker_never_takes_over_its_own_expired_job(secantus: Secantus, db: tuple[str, Any]) -> None:
    """After an outage its own lock may have expired: the job is still its own (running or writing)."""
    from pymongo import AsyncMongoClient

    from muzo_ops.queue.store import JobStore

    name, jobs = db
    jobs.insert_one(prisma_job(payload=mockup_payload(1)))

    async def scenario() -> tuple[bool, bool, bool, bool]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(secantus.uri)
        store = JobStore(client[name])
        claimed = await store.claim("A", [JobType.MOCKUP], 0.2)
        await asyncio.sleep(0.4)  # A's lock expired while it was cut off
        again = await store.claim("A", [JobType.MOCKUP], 30, expired_first=True)
        paused = await store.claim("B", [JobType.MOCKUP], 30, expired_first=True, takeover=False)
        swept = await store.fail_exhausted([JobType.MOCKUP], worker_id="A")
        taken = await store.claim("B", [JobType.MOCKUP], 30, expired_first=True)
        await client.close()
        return claimed is not None, again is None and paused is None, swept == [], taken is not None

    assert asyncio.run(scenario()) == (True, True, True, True)
    assert jobs.find_one({})["lockedBy"] == "B"


def test_a_real_worker_with_three_abandoned_threads_exits_1(tmp_path: Path, secantus: Secantus,
                                                             db: tuple[str, Any]) -> None:
    from tests.workers import start_worker

    name, jobs = db
    jobs.insert_many([prisma_job(payload=mockup_payload(i, seconds=30), max_attempts=1) for i in range(3)])
    worker = start_worker(tmp_path, secantus.url(name), "--poll-seconds", "0.2", name="hung",
                          handler="MOCKUP=tests.handlers_for_tests:hang", env={"JOB_TIMEOUT_MOCKUP_SECONDS": "1"})
    try:
        code = worker.proc.wait(30)
    finally:
        worker.kill9()
    assert code == 1
    assert jobs.count_documents({"status": "FAILED", "lastError.name": "JobTimeoutError"}) == 3
    lines = worker.lines()
    assert [line["abandonedThreads"] for line in lines
            if line.get("msg") == "Handler thread abandoned after its timeout"] == [1, 2, 3]
    assert lines[-1]["msg"] == "Worker stopped"


def test_claim_filters_run_on_the_indexes(secantus: Secantus, db: tuple[str, Any]) -> None:
    """The claims of due jobs (by date, and without availableAt) run on the first index.

    (The periodic tries, expired locks and malformed dates, are rare; SecantusDB scans for them.)"""
    from muzo_ops.queue.store import CLAIM_SORT, JobStore, utcnow

    _name, jobs = db
    jobs.insert_many([prisma_job(payload=mockup_payload(i)) for i in range(20)])
    for keys in (["type", "status", "availableAt"], ["status", "lockedUntil"]):
        jobs.create_index([(k, 1) for k in keys])
    t = utcnow()

    def scans(plan: Any) -> list[str]:
        if isinstance(plan, dict):
            own = [str(plan.get("indexName", plan.get("keyPattern")))] if plan.get("stage") == "IXSCAN" else []
            return own + [s for v in plan.values() for s in scans(v)]
        if isinstance(plan, list):
            return [s for v in plan for s in scans(v)]
        return []

    for make in (JobStore.due_filter, JobStore.undated_filter):
        query = make(JobType.MOCKUP, t)
        plan = jobs.database.command("explain", {"findAndModify": "Job", "query": query, "sort": dict(CLAIM_SORT),
                                                 "update": [{"$set": {"x": 1}}]})
        assert scans(plan), (make.__name__, plan)
