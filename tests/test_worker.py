"""The queue worker against a real MongoDB wire server (SecantusDB)."""

from __future__ import annotations

import itertools
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from tests.helpers import wait_until
from tests.servers import Secantus
from tests.workers import generation_payload, mockup_payload, prisma_job, records, start_worker


def test_four_workers_200_jobs_each_run_exactly_once(tmp_path: Path, secantus: Secantus, dbname: str,
                                                     jobs: Any) -> None:
    jobs.insert_many([prisma_job("MOCKUP", mockup_payload(i)) for i in range(200)])
    url = secantus.url(dbname)
    workers = [start_worker(tmp_path, url, "--concurrency", "2", name=f"w{i}") for i in range(4)]
    try:
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 200, 240, "200 jobs DONE")
    finally:
        codes = [w.terminate() for w in workers]
    assert codes == [0, 0, 0, 0]
    runs = Counter(job_id for job_id, event, _ in records(tmp_path / "record.txt") if event == "start")
    assert len(runs) == 200 and set(runs.values()) == {1}
    assert jobs.count_documents({"status": "DONE", "attempts": 1, "lockedBy": None}) == 200
    busy = [w for w in workers if "Job completed" in w.messages()]
    assert len(busy) >= 2  # the work was shared


def test_kill9_mid_job_runs_again_after_lock_expiry(tmp_path: Path, secantus: Secantus, dbname: str,
                                                     jobs: Any) -> None:
    doc = prisma_job("MOCKUP", mockup_payload(seconds=1.5))
    jobs.insert_one(doc)
    url = secantus.url(dbname)
    first = start_worker(tmp_path, url, "--lock-seconds", "2", name="first")
    first.wait_for(lambda: records(tmp_path / "record.txt") != [], 30, "job started")
    first.kill9()
    second = start_worker(tmp_path, url, "--lock-seconds", "2", name="second")
    try:
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] == "DONE", 60, "DONE")
    finally:
        assert second.terminate() == 0
    final = jobs.find_one({"_id": doc["_id"]})
    assert final["attempts"] == 2 and final["result"] == {"ok": True, "attempt": 2}
    events = records(tmp_path / "record.txt")
    assert [e for _, e, _ in events] == ["start", "start", "end"]
    assert "Released stale jobs" in second.messages()


def test_job_longer_than_the_lock_is_not_run_twice(tmp_path: Path, secantus: Secantus, dbname: str,
                                                    jobs: Any) -> None:
    doc = prisma_job("MOCKUP", mockup_payload(seconds=4))
    jobs.insert_one(doc)
    url = secantus.url(dbname)
    workers = [start_worker(tmp_path, url, "--lock-seconds", "1.5", "--poll-seconds", "0.2", name=f"w{i}")
               for i in range(2)]
    try:
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] == "DONE", 60, "DONE")
    finally:
        for w in workers:
            assert w.terminate() == 0
    assert [e for _, e, _ in records(tmp_path / "record.txt")] == ["start", "end"]
    assert jobs.find_one({"_id": doc["_id"]})["attempts"] == 1


def test_worker_whose_lock_was_taken_over_writes_nothing(tmp_path: Path, secantus: Secantus, dbname: str,
                                                         jobs: Any) -> None:
    """While the handler runs, another worker takes the job over (as after a lock expiry)."""
    doc = prisma_job("MOCKUP", mockup_payload(seconds=2.5))
    jobs.insert_one(doc)
    worker = start_worker(tmp_path, secantus.url(dbname), "--lock-seconds", "3", name="victim")
    try:
        worker.wait_for(lambda: records(tmp_path / "record.txt") != [], 30, "job started")
        import datetime as dt

        from tests.workers import now

        jobs.update_one({"_id": doc["_id"]}, {"$set": {"lockedBy": "thief",
                                                       "lockedUntil": now() + dt.timedelta(hours=1)},
                                              "$inc": {"attempts": 1}})
        worker.wait_for(lambda: any("lock lost" in m for m in worker.messages()), 30, "lock lost")
        time.sleep(2.5)
    finally:
        assert worker.terminate() == 0
    final = jobs.find_one({"_id": doc["_id"]})
    assert final["status"] == "RUNNING" and final["lockedBy"] == "thief" and final.get("result") is None


def test_fenced_writes_in_process(secantus: Secantus, dbname: str, jobs: Any) -> None:
    import asyncio

    from pymongo import AsyncMongoClient

    from muzo_ops.queue.jobs import JobType
    from muzo_ops.queue.store import JobStore

    jobs.insert_one(prisma_job("MOCKUP"))

    async def scenario() -> tuple[bool, bool, Any, bool]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(secantus.uri)
        store = JobStore(client[dbname])
        claimed = await store.claim("A", [JobType.MOCKUP], 0.2)
        assert claimed is not None
        _, mine = claimed
        await asyncio.sleep(0.4)  # lock expired: B takes it over
        taken = await store.claim("B", [JobType.MOCKUP], 30)
        hb = await store.heartbeat(mine, 30)
        done = await store.complete(mine, {"from": "A"})
        failed = await store.fail(mine, {"name": "X"})
        await client.close()
        return done, failed, hb, taken is not None

    done, failed, hb, taken = asyncio.run(scenario())
    assert taken and hb is None and not done and not failed
    final = jobs.find_one({})
    assert final["lockedBy"] == "B" and final["status"] == "RUNNING" and final["attempts"] == 2


def test_prisma_documents_with_missing_optional_fields(tmp_path: Path, secantus: Secantus, dbname: str,
                                                       jobs: Any) -> None:
    full = prisma_job("GENERATION", generation_payload())
    minimal = prisma_job("GENERATION", generation_payload(), minimal=True)
    del minimal["maxAttempts"]
    jobs.insert_many([full, minimal])
    worker = start_worker(tmp_path, secantus.url(dbname), "--queues", "generation", name="g",
                          handler="GENERATION=muzo_ops.queue.handlers.demo:echo")
    try:
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 2, 30, "both DONE")
    finally:
        assert worker.terminate() == 0
    for doc in jobs.find():
        assert len(doc["result"]["digest"]) == 64 and doc["lockedBy"] is None
        assert doc["updatedAt"] > doc["createdAt"] or doc["updatedAt"] == doc["createdAt"]
    indexes = {tuple(ix["key"]) for ix in jobs.list_indexes()}
    assert ("type", "status", "availableAt") in indexes and ("status", "lockedUntil") in indexes


def test_retries_backoff_fatal_and_invalid_payloads(tmp_path: Path, secantus: Secantus, dbname: str,
                                                    jobs: Any) -> None:
    flaky = prisma_job("MOCKUP", mockup_payload(failTimes=2))
    exhausted = prisma_job("MOCKUP", mockup_payload(failTimes=9), max_attempts=2)
    invalid = prisma_job("MOCKUP", {"orderId": "x"})
    jobs.insert_many([flaky, exhausted, invalid])
    worker = start_worker(tmp_path, secantus.url(dbname), "--retry-base", "0.1", "--retry-cap", "0.3",
                          "--poll-seconds", "0.1", name="f", handler="MOCKUP=tests.handlers_for_tests:flaky")
    try:
        wait_until(lambda: jobs.count_documents({"status": {"$in": ["DONE", "FAILED"]}}) == 3, 60, "settled")
    finally:
        assert worker.terminate() == 0
    done = jobs.find_one({"_id": flaky["_id"]})
    assert done["status"] == "DONE" and done["attempts"] == 3 and done["lastError"] is None
    failed = jobs.find_one({"_id": exhausted["_id"]})
    assert failed["status"] == "FAILED" and failed["attempts"] == 2
    assert failed["lastError"]["name"] == "RuntimeError" and failed["lastError"]["attempts"] == 2
    assert "transient failure" in failed["lastError"]["message"] and "Traceback" in failed["lastError"]["stack"]
    bad = jobs.find_one({"_id": invalid["_id"]})
    assert bad["status"] == "FAILED" and bad["attempts"] == 1
    assert bad["lastError"]["name"] == "PayloadError"
    assert "outputAssetId: required" in bad["lastError"]["message"]
    messages = worker.messages()
    assert messages.count("Retrying job after failure") == 3
    assert messages.count("Job failed permanently") == 2
    retry = next(line for line in worker.lines() if line.get("msg") == "Retrying job after failure")
    assert retry["level"] == 40 and retry["err"]["type"] == "RuntimeError" and retry["delayMs"] <= 300


def test_fatal_error_fails_at_once(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    doc = prisma_job("MOCKUP", max_attempts=5)
    jobs.insert_one(doc)
    worker = start_worker(tmp_path, secantus.url(dbname), name="fatal", handler="MOCKUP=tests.handlers_for_tests:fatal")
    try:
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] == "FAILED", 30, "FAILED")
    finally:
        assert worker.terminate() == 0
    final = jobs.find_one({"_id": doc["_id"]})
    assert final["attempts"] == 1 and final["lastError"]["name"] == "FatalJobError"


def test_taken_over_on_last_attempt_ends_failed_without_running(tmp_path: Path, secantus: Secantus,
                                                                dbname: str, jobs: Any) -> None:
    import datetime as dt

    from tests.workers import now

    dead = prisma_job("MOCKUP", status="RUNNING", attempts=3, max_attempts=3, lockedBy="dead-worker",
                      lockedAt=now() - dt.timedelta(minutes=10), lockedUntil=now() - dt.timedelta(minutes=5))
    jobs.insert_one(dead)
    worker = start_worker(tmp_path, secantus.url(dbname), name="sweep")
    try:
        wait_until(lambda: jobs.find_one({"_id": dead["_id"]})["status"] == "FAILED", 30, "FAILED")
    finally:
        assert worker.terminate() == 0
    final = jobs.find_one({"_id": dead["_id"]})
    assert final["lastError"]["message"] == "Maximum attempts exhausted" and final["attempts"] == 3
    assert records(tmp_path / "record.txt") == []


def _notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    return sock


def _received(sock: socket.socket) -> list[str]:
    got = []
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return got


def test_sigterm_drains_releases_and_exits_0(tmp_path: Path, secantus: Secantus, dbname: str,
                                             jobs: Any) -> None:
    short = prisma_job("MOCKUP", mockup_payload(1, seconds=0.8))
    long = prisma_job("MOCKUP", mockup_payload(2, seconds=60))
    jobs.insert_many([short, long])
    sock = _notify_socket(tmp_path)
    worker = start_worker(tmp_path, secantus.url(dbname), "--concurrency", "2", "--drain-timeout", "2",
                          name="drain", handler="MOCKUP=tests.handlers_for_tests:record_async",
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"})
    worker.wait_for(lambda: len(records(tmp_path / "record.txt")) == 2, 30, "both started")
    time.sleep(0.6)
    started = time.monotonic()
    assert worker.terminate() == 0
    assert time.monotonic() - started < 15
    assert jobs.find_one({"_id": short["_id"]})["status"] == "DONE"
    released = jobs.find_one({"_id": long["_id"]})
    assert released["status"] == "PENDING" and released["attempts"] == 0 and released["lockedBy"] is None
    assert "Released jobs on shutdown" in worker.messages()
    states = _received(sock)
    assert "READY=1" in states and "STOPPING=1" in states and "WATCHDOG=1" in states
    assert states.index("READY=1") < states.index("STOPPING=1")


def test_outage_is_logged_backed_off_and_survived(tmp_path: Path) -> None:
    server = Secantus(tmp_path / "own-data")
    server.start()
    try:
        url = server.url("outage", serverSelectionTimeoutMS="1000")
        client: MongoClient[dict[str, Any]] = MongoClient(server.uri, serverSelectionTimeoutMS=10000)
        jobs = client["outage"]["Job"]
        jobs.insert_many([prisma_job("MOCKUP", mockup_payload(i, seconds=0.1)) for i in range(10)])
        worker = start_worker(tmp_path, url, "--poll-seconds", "0.2", name="outage")
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 10, 60, "first batch")
        server.stop()
        worker.wait_for(lambda: worker.messages().count("MongoDB connection error in worker loop") >= 4,
                        60, "outage logged")
        server.start()
        jobs.insert_many([prisma_job("MOCKUP", mockup_payload(i, seconds=0.1)) for i in range(10, 20)])
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 20, 90, "second batch")
        assert worker.proc.poll() is None
        assert worker.terminate() == 0
        errors = [line for line in worker.lines() if line.get("msg") == "MongoDB connection error in worker loop"]
        counts = [e["consecutiveErrors"] for e in errors]
        assert counts[:3] == [1, 2, 3] and all(e["level"] == 50 for e in errors)
        gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(errors)
                if b["consecutiveErrors"] == a["consecutiveErrors"] + 1]
        # backed off, not a tight loop: each gap is a 1 s selection timeout plus a doubling delay
        assert len(gaps) >= 3 and gaps[-1] > gaps[0] + 400, gaps
        client.close()
    finally:
        server.stop()


def test_change_stream_wakes_the_worker_long_before_the_poll(tmp_path: Path, secantus: Secantus,
                                                             dbname: str, jobs: Any) -> None:
    worker = start_worker(tmp_path, secantus.url(dbname), "--poll-seconds", "30", name="cs")
    try:
        worker.wait_log("Worker bootstrapped and listening for jobs")
        time.sleep(1.0)
        doc = prisma_job("MOCKUP")
        jobs.insert_one(doc)
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] == "DONE", 10, "woken by the stream")
    finally:
        assert worker.terminate() == 0
    boot = next(line for line in worker.lines() if line.get("msg") == "Worker bootstrapped and listening for jobs")
    assert boot["changeStreams"] is True and boot["transactions"] is True


def test_standalone_server_non_transactional_polling(tmp_path: Path) -> None:
    server = Secantus(tmp_path / "standalone-data", standalone=True)
    server.start()
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(server.uri, serverSelectionTimeoutMS=10000)
        jobs = client["solo"]["Job"]
        jobs.insert_many([prisma_job("MOCKUP", mockup_payload(i)) for i in range(5)])
        long = prisma_job("MOCKUP", mockup_payload(9, seconds=60))
        jobs.insert_one(long)
        worker = start_worker(tmp_path, server.url("solo"), "--poll-seconds", "0.2", "--drain-timeout", "0.5",
                              "--concurrency", "2", name="solo")
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 5, 60, "DONE")
        assert worker.terminate() == 0
        messages = worker.messages()
        assert "Mongo replica set not detected; using non-transactional queue mode" in messages
        assert "Change streams unavailable; polling for jobs" in messages
        assert jobs.find_one({"_id": long["_id"]})["status"] == "PENDING"
        client.close()
    finally:
        server.stop()


@pytest.mark.parametrize("setting", ["on", "off"])
def test_queue_transactions_setting_decides_and_release_works(tmp_path: Path, secantus: Secantus,
                                                             dbname: str, jobs: Any, setting: str) -> None:
    jobs.insert_many([prisma_job("MOCKUP", mockup_payload(i, seconds=60)) for i in range(3)])
    worker = start_worker(tmp_path, secantus.url(dbname), "--concurrency", "3", "--drain-timeout", "0.2",
                          name="tx", env={"QUEUE_TRANSACTIONS": setting},
                          handler="MOCKUP=tests.handlers_for_tests:record_async")
    worker.wait_for(lambda: len(records(tmp_path / "record.txt")) == 3, 30, "3 started")
    assert worker.terminate() == 0
    assert jobs.count_documents({"status": "PENDING", "attempts": 0, "lockedBy": None}) == 3
    boot = next(line for line in worker.lines() if line.get("msg") == "Worker bootstrapped and listening for jobs")
    assert boot["transactions"] is (setting == "on")
    if setting == "off":
        assert "Mongo replica set not detected; using non-transactional queue mode" in worker.messages()


def test_no_payload_or_secret_in_logs(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    marker = "payload-marker-7f3a9"
    secret = "sk-proj-leakysecret000000000001"
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(note=marker, failTimes=1)))
    env_file = tmp_path / "with-secrets.env"
    env_file.write_text(f"DATABASE_URL={secantus.url(dbname)}\nOPENAI_API_KEY={secret}\nWORKER_QUEUES=mockup\n"
                        "LOG_LEVEL=trace\n")
    worker = start_worker(tmp_path, secantus.url(dbname), "--env-file", str(env_file), "--retry-base", "0.1",
                          name="leak", handler="MOCKUP=tests.handlers_for_tests:flaky", env={"LEAK": secret})
    try:
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 1, 30, "DONE")
    finally:
        assert worker.terminate() == 0
    text = worker.text()
    assert "Retrying job after failure" in text
    assert marker not in text and secret not in text


@pytest.mark.parametrize(
    ("env_text", "args", "message"),
    [
        ("WORKER_QUEUES=generation,printing\n", [], "WORKER_QUEUES must be a comma list"),
        ("GENERATION_WORKER_CONCURRENCY=zero\n", [], "GENERATION_WORKER_CONCURRENCY must be a whole number"),
        ("QUEUE_TRANSACTIONS=sometimes\n", [], "QUEUE_TRANSACTIONS must be on/off"),
        ("LOG_LEVEL=loud\n", [], "LOG_LEVEL must be one of"),
        ("WORKER_QUEUES=mockup\n", ["--handler", "MOCKUP=nope.missing:fn"], "cannot import nope.missing"),
        ("WORKER_QUEUES=generation,mockup\n", ["--handler", "MOCKUP=muzo_ops.queue.handlers.demo:echo"],
         "queue generation is enabled but has no handler"),
    ],
)
def test_refuses_to_start_with_one_clear_line(tmp_path: Path, secantus: Secantus, env_text: str,
                                               args: list[str], message: str) -> None:
    from tests.helpers import run_cli

    env = tmp_path / ".env"
    env.write_text(f"DATABASE_URL={secantus.url('refuse')}\n{env_text}")
    proc = run_cli("worker", "--env-file", str(env), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_runs_with_only_database_url_and_handlers_from_the_environment(tmp_path: Path, secantus: Secantus,
                                                                       dbname: str, jobs: Any) -> None:
    import os
    import subprocess
    import sys

    jobs.insert_one(prisma_job("FULFILLMENT", {
        "provider": "cloudprinter",
        "order": {"orderId": "o1", "files": [{"url": "https://cdn.example.com/a.pdf", "type": "default"}],
                  "shipping": {"name": "A", "address1": "1 rue", "city": "Paris", "zip": "75001",
                               "country": "FR"},
                  "items": [{"variantId": "v1", "quantity": 2}]}}))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET",)}
    env.update(DATABASE_URL=secantus.url(dbname), WORKER_QUEUES="fulfillment",
               MUZO_WORKER_HANDLERS="FULFILLMENT=muzo_ops.queue.handlers.demo:echo")
    proc = subprocess.Popen([sys.executable, "-m", "muzo_ops", "worker"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 1, 30, "DONE")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


def test_busy_queue_still_takes_over_expired_jobs(secantus: Secantus, dbname: str, jobs: Any) -> None:
    import asyncio
    import datetime as dt

    from pymongo import AsyncMongoClient

    from muzo_ops.queue.jobs import JobType
    from muzo_ops.queue.store import JobStore
    from tests.workers import now

    expired = prisma_job("MOCKUP", status="RUNNING", attempts=1, lockedBy="dead",
                         lockedUntil=now() - dt.timedelta(seconds=5), availableAt=now() - dt.timedelta(hours=1))
    jobs.insert_many([expired, *[prisma_job("MOCKUP", mockup_payload(i)) for i in range(3)],
                      prisma_job("GENERATION", generation_payload())])

    async def scenario() -> list[tuple[str, str, int]]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(secantus.uri)
        store = JobStore(client[dbname])
        got = []
        for expired_first in (False, True, False):
            claimed = await store.claim("w", [JobType.MOCKUP], 30, expired_first=expired_first)
            assert claimed is not None
            before, after = claimed
            got.append((before["status"], str(before.get("lockedBy")), after["attempts"]))
        other = await store.claim("w", [JobType.GENERATION, JobType.MOCKUP], 30)
        assert other is not None and other[1]["type"] == "GENERATION"
        await client.close()
        return got

    got = asyncio.run(scenario())
    assert got == [("PENDING", "None", 1), ("RUNNING", "dead", 2), ("PENDING", "None", 1)]


def test_unstorable_results_fail_the_job_instead_of_hanging(tmp_path: Path, secantus: Secantus, dbname: str,
                                                            jobs: Any) -> None:
    doc = prisma_job("MOCKUP")
    big = prisma_job("MOCKUP", mockup_payload(1, size=17_000_000))
    jobs.insert_many([doc, big])
    worker = start_worker(tmp_path, secantus.url(dbname), name="unstorable",
                          handler="MOCKUP=tests.handlers_for_tests:unstorable")
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 2, 60, "both FAILED")
    finally:
        assert worker.terminate() == 0
    first = jobs.find_one({"_id": doc["_id"]})
    assert first["attempts"] == 1 and "cannot be stored" in first["lastError"]["message"]
    second = jobs.find_one({"_id": big["_id"]})
    assert second["lastError"]["message"] == "the result could not be stored (DocumentTooLarge)"
