"""A worker that loses a job's lease stops the job's run (docs/WORKER_TROUBLESHOOTING.md, "Lease lost").

Invariants, checked by fault injection against SecantusDB with real child processes:

- once a worker knows (or can no longer prove) that it holds a job's lease, at most one process runs
  the job's code, except for the handler's grace period (SIGTERM, then SIGKILL): the losing worker's
  exec command and everything in its session are gone before its run is reported over;
- a finished job never runs again, and nothing the losing run did is written (fenced writes);
- a heartbeat that merely waits for the server is not a lost lease: a database frozen for less than
  the lock minus one heartbeat interval stops nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from muzo_ops.queue.events import JobInfo, LeaseLoss, Observer, Outcome
from muzo_ops.queue.handlers import HandlerOptions, build
from muzo_ops.queue.jobs import JobType
from muzo_ops.queue.store import JobStore
from tests import handlers_for_tests as th
from tests.helpers import descendants, process_table, wait_until
from tests.servers import Secantus
from tests.test_queue_hardening import Recorder, burst
from tests.workers import WorkerProcess, mockup_payload, now, prisma_job, start_worker

# An exec handler: notes its pid and a grandchild's (a process of the job's session) in a ledger,
# sleeps payload.seconds, notes its end and prints the attempt. payload.ignoreTerm: SIGTERM ignored
# (only SIGKILL, after the grace period, ends it).
CHILD = r'''
import json, os, signal, subprocess, sys, time
ledger = sys.argv[1]
job = json.loads(sys.stdin.read())
if job["payload"].get("ignoreTerm"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grand = subprocess.Popen(["sleep", "600"])
def note(event):
    with open(ledger, "a") as out:
        out.write(f"{job['id']} {event} {job['attempt']} {os.getpid()} {grand.pid} {time.time():.3f}\n")
note("start")
time.sleep(float(job["payload"]["seconds"]))
note("end")
grand.kill()
print(json.dumps({"attempt": job["attempt"], "pid": os.getpid()}))
'''

LOST_LINE = "Job lease lost; cancelling its run"


def _ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        job_id, event, attempt, pid, grand, at = line.split()
        rows.append({"job": job_id, "event": event, "attempt": int(attempt), "pid": int(pid),
                     "grand": int(grand), "at": float(at)})
    return rows


def _started(path: Path, attempt: int) -> dict[str, Any] | None:
    return next((r for r in _ledger(path) if r["event"] == "start" and r["attempt"] == attempt), None)


def _alive(*pids: int) -> set[int]:
    table = process_table()
    return {pid for pid in pids if pid in table}


def _exec_worker(tmp_path: Path, url: str, ledger: Path, name: str, *args: str) -> WorkerProcess:
    script = tmp_path / "lease_child.py"
    script.write_text(CHILD)
    return start_worker(tmp_path, url, "--poll-seconds", "0.2", "--handler-grace", "1", *args, name=name,
                        handler=f"MOCKUP=exec:{sys.executable} {script} {ledger}")


def _lost_lines(worker: WorkerProcess) -> list[dict[str, Any]]:
    return [line for line in worker.lines() if line.get("msg") == LOST_LINE]


def _stop(*workers: WorkerProcess) -> None:
    for worker in workers:
        if worker.proc.poll() is None:
            os.kill(worker.proc.pid, signal.SIGCONT)
            worker.terminate()


def _one_job(server: Secantus, name: str, i: int) -> tuple[MongoClient[dict[str, Any]], Any, dict[str, Any], str]:
    """(a client, the Job collection of database ``name``, a 6 s job inserted there, the workers' URL)."""
    client: MongoClient[dict[str, Any]] = MongoClient(server.uri, serverSelectionTimeoutMS=60000)
    jobs = client[name]["Job"]
    doc = prisma_job("MOCKUP", mockup_payload(i, seconds=6), max_attempts=3)
    jobs.insert_one(doc)
    return client, jobs, doc, server.url(name, serverSelectionTimeoutMS="30000")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Secantus]:
    """A SecantusDB of this test's own (it gets frozen)."""
    server = Secantus(tmp_path / "own-data")
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


def test_a_worker_paused_longer_than_the_lock_kills_its_command_when_it_resumes(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    """Worker A is frozen (SIGSTOP) past its lock, B takes the job over; when A resumes it ends its
    command (SIGTERM ignored: SIGKILL after the 1 s grace) and its grandchild, and writes nothing."""
    doc = prisma_job("MOCKUP", mockup_payload(1, seconds=8, ignoreTerm=True), max_attempts=3)
    jobs.insert_one(doc)
    ledger = tmp_path / "ledger.txt"
    url = secantus.url(dbname)
    first = _exec_worker(tmp_path, url, ledger, "first", "--lock-seconds", "2")
    second: WorkerProcess | None = None
    try:
        first.wait_for(lambda: _started(ledger, 1) is not None, 30, "attempt 1 started")
        mine = _started(ledger, 1)
        assert mine is not None
        os.kill(first.proc.pid, signal.SIGSTOP)
        second = _exec_worker(tmp_path, url, ledger, "second", "--lock-seconds", "2")
        second.wait_for(lambda: _started(ledger, 2) is not None, 30, "attempt 2 started by the second worker")
        theirs = _started(ledger, 2)
        assert theirs is not None
        os.kill(first.proc.pid, signal.SIGCONT)
        first.wait_for(lambda: any("result not written" in m or "failure not written" in m
                                   for m in first.messages()), 30, "the first worker's run ended LOST")
        # The run is reported over only once its command's session is gone.
        assert not _alive(mine["pid"], mine["grand"]), first.text()[-2000:]
        assert not descendants(first.proc.pid)
        assert _alive(theirs["pid"]) == {theirs["pid"]}  # the owner's run goes on
        lost = _lost_lines(first)
        assert len(lost) == 1 and lost[0]["jobId"] == str(doc["_id"]), first.text()[-2000:]
        assert lost[0]["reason"] == LeaseLoss.EXPIRED.value
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] == "DONE", 40, "DONE")
        time.sleep(3)  # a finished job never runs again: a wrong claim would start now
    finally:
        _stop(first, *([second] if second else []))
    final = jobs.find_one({"_id": doc["_id"]})
    assert final["result"]["attempt"] == 2 and final["attempts"] == 2
    assert [(r["event"], r["attempt"]) for r in _ledger(ledger)] == [("start", 1), ("start", 2), ("end", 2)]
    assert second is not None and not _lost_lines(second)


def test_a_database_frozen_longer_than_the_lock_stops_the_command_before_it_thaws(
        tmp_path: Path, own_server: Secantus) -> None:
    """MongoDB frozen (SIGSTOP) for 2.5 locks at least, two workers: the owner cannot renew, so when its
    lease may have run out it stops its command without the server; after the thaw the job runs again,
    once at a time."""
    client, jobs, doc, url = _one_job(own_server, "frozen", 2)
    ledger = tmp_path / "ledger.txt"
    workers = [_exec_worker(tmp_path, url, ledger, f"w{i}", "--lock-seconds", "2") for i in range(2)]
    assert own_server.proc is not None
    try:
        wait_until(lambda: _started(ledger, 1) is not None, 30, "attempt 1 started")
        mine = _started(ledger, 1)
        assert mine is not None
        owner = next(w for w in workers if mine["pid"] in descendants(w.proc.pid))
        os.kill(own_server.proc.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            # Stopped while the server is still frozen: the worker decided on its own clock.
            owner.wait_for(lambda: bool(_lost_lines(owner)), 20, "the lease declared lost")
            wait_until(lambda: not _alive(mine["pid"], mine["grand"]), 10, "the command and its grandchild gone")
            assert _lost_lines(owner)[0]["reason"] == LeaseLoss.EXPIRED.value
            time.sleep(max(0.0, frozen_at + 5 - time.monotonic()))  # frozen for 2.5 locks at least
        finally:
            os.kill(own_server.proc.pid, signal.SIGCONT)
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] == "DONE", 60, "DONE after the thaw")
        time.sleep(3)
    finally:
        _stop(*workers)
    final = jobs.find_one({"_id": doc["_id"]})
    rows = _ledger(ledger)
    assert [(r["event"], r["attempt"]) for r in rows] == [("start", 1), ("start", 2), ("end", 2)], rows
    assert final["result"]["attempt"] == 2
    client.close()


def test_a_database_frozen_shorter_than_the_lock_stops_nothing(tmp_path: Path, own_server: Secantus) -> None:
    """No false positive: heartbeats that wait for a frozen server are not a lost lease."""
    client, jobs, doc, url = _one_job(own_server, "short", 3)
    ledger = tmp_path / "ledger.txt"
    worker = _exec_worker(tmp_path, url, ledger, "w", "--lock-seconds", "4")
    assert own_server.proc is not None
    try:
        worker.wait_for(lambda: _started(ledger, 1) is not None, 30, "attempt 1 started")
        for _ in range(2):  # twice, a heartbeat apart: each freeze shorter than lock - heartbeat interval
            time.sleep(0.5)
            os.kill(own_server.proc.pid, signal.SIGSTOP)
            time.sleep(1.5)
            os.kill(own_server.proc.pid, signal.SIGCONT)
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] == "DONE", 40, "DONE")
    finally:
        _stop(worker)
    assert not _lost_lines(worker), worker.text()[-2000:]
    assert [(r["event"], r["attempt"]) for r in _ledger(ledger)] == [("start", 1), ("end", 1)]
    assert jobs.find_one({"_id": doc["_id"]})["result"]["attempt"] == 1
    client.close()


def test_an_operator_failing_a_running_job_stops_its_command_and_it_never_runs_again(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    """The admin cancel refuses a RUNNING job (``opsstore.cancel_job``); an operator who sets it FAILED by
    hand takes the lease away all the same: the command gets SIGTERM and the FAILED job stays as set."""
    from muzo_ops.queue.opsstore import Seen, cancel_job

    doc = prisma_job("MOCKUP", mockup_payload(4, seconds=30), max_attempts=3)
    jobs.insert_one(doc)
    ledger = tmp_path / "ledger.txt"
    worker = _exec_worker(tmp_path, secantus.url(dbname), ledger, "w", "--lock-seconds", "3")
    try:
        worker.wait_for(lambda: _started(ledger, 1) is not None, 30, "attempt 1 started")
        mine = _started(ledger, 1)
        assert mine is not None
        running = jobs.find_one({"_id": doc["_id"]})
        assert not cancel_job(jobs, Seen(doc["_id"], running["updatedAt"], running["attempts"]), "ops")
        operator_error = {"name": "Cancelled", "message": "cancelled by hand", "stack": None, "attempts": 1}
        jobs.update_one({"_id": doc["_id"]}, {"$set": {"status": "FAILED", "lockedBy": None, "lockedUntil": None,
                                                       "lockedAt": None, "lastError": operator_error}})
        worker.wait_for(lambda: bool(_lost_lines(worker)), 20, "the lease declared lost")
        worker.wait_for(lambda: not _alive(mine["pid"], mine["grand"]), 10, "the command gone")
        assert _lost_lines(worker)[0]["reason"] == LeaseLoss.NOT_OURS.value
        assert _lost_lines(worker)[0]["status"] == "FAILED"
        time.sleep(4)  # past the lock: a finished job is never claimed again
    finally:
        _stop(worker)
    final = jobs.find_one({"_id": doc["_id"]})
    assert final["status"] == "FAILED" and final["lastError"] == operator_error and final.get("result") is None
    assert [(r["event"], r["attempt"]) for r in _ledger(ledger)] == [("start", 1)]


def _take_over_when_started(jobs: Any, job_id: Any, started: threading.Event) -> threading.Thread:
    """Another worker's takeover (as after an expiry), once the handler has started."""
    def take() -> None:
        if started.wait(30):
            jobs.update_one({"_id": job_id}, {"$set": {"lockedBy": "thief", "lockedUntil":
                                                       now() + dt.timedelta(hours=1)}, "$inc": {"attempts": 1}})
    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread


def test_an_async_handler_is_cancelled_and_counted(secantus: Secantus, db: tuple[str, Any], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import generate_latest

    from muzo_ops.metrics.observer import PrometheusObserver

    name, jobs = db
    record = tmp_path / "record.txt"
    monkeypatch.setenv("MUZO_TEST_RECORD", str(record))
    doc = prisma_job(payload=mockup_payload(5, seconds=40), max_attempts=3)
    jobs.insert_one(doc)
    started = threading.Event()
    watcher = threading.Thread(target=lambda: wait_until(record.exists, 30) or started.set(), daemon=True)
    watcher.start()
    taker = _take_over_when_started(jobs, doc["_id"], started)
    recorder, metrics = Recorder(), PrometheusObserver()
    code, worker, log = burst(secantus, name, th.record_async, observers=[recorder, metrics], timeout=25,
                              lock_s=1)
    taker.join(5)
    assert code == 0
    assert [line.split()[1] for line in record.read_text().splitlines()] == ["start"]  # never reached its end
    assert [a[1:4] for a in recorder.named("job_lease_lost")] == [(LeaseLoss.NOT_OURS, "RUNNING", "thief")]
    assert [a[1] for a in recorder.named("job_finished")] == [Outcome.LOST]
    assert worker.stats["lost"] == 1
    assert LOST_LINE in log
    text = generate_latest(metrics.registry).decode()
    assert 'muzo_worker_leases_lost_total{queue="mockup",type="MOCKUP"} 1.0' in text
    final = jobs.find_one({"_id": doc["_id"]})
    assert final["lockedBy"] == "thief" and final.get("result") is None


class _SilentServer:
    """Accepts HTTP requests and never answers; notes when a client closes its connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = threading.Event()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(60)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            self.requests.set()
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass
            self.closed.set()

    def close(self) -> None:
        self.sock.close()


def test_an_http_handler_request_is_cancelled(secantus: Secantus, db: tuple[str, Any]) -> None:
    name, jobs = db
    server = _SilentServer()
    try:
        from muzo_ops.env.handlerspec import parse

        handler = build(JobType.MOCKUP, parse(f"http://127.0.0.1:{server.port}/jobs"),
                        {"MUZO_HANDLER_SIGNING_SECRET": "hs-test-secret-0123456789abcdef0123456789"},
                        HandlerOptions())
        doc = prisma_job(payload=mockup_payload(6), max_attempts=3)
        jobs.insert_one(doc)
        taker = _take_over_when_started(jobs, doc["_id"], server.requests)
        recorder = Recorder()
        closed_when_over: list[bool] = []

        class RequestClosed(Observer):
            def job_finished(self, job: JobInfo, outcome: Outcome, duration_s: float,
                             error: BaseException | None) -> None:
                closed_when_over.append(server.closed.wait(5))

        code, worker, _log = burst(secantus, name, handler, observers=[recorder, RequestClosed()], timeout=25,
                                   lock_s=1)
        taker.join(5)
        assert closed_when_over == [True], "the request was still open when the run was reported over"
        assert code == 0 and worker.stats["lost"] == 1
        assert [a[1] for a in recorder.named("job_lease_lost")] == [LeaseLoss.NOT_OURS]
    finally:
        server.close()


def test_a_heartbeat_miss_that_a_given_back_takeover_repairs_is_not_a_loss(secantus: Secantus,
                                                                            db: tuple[str, Any]) -> None:
    """A takeover claim that waited for the server is given back at once (``JobStore.give_back``): the
    owner, whose heartbeat missed meanwhile, checks again a moment later and goes on."""
    name, jobs = db
    doc = prisma_job(payload=mockup_payload(7), max_attempts=3)
    jobs.insert_one(doc)
    started = threading.Event()

    async def handler(job: Any) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(5)
        return {"ok": True}

    def steal_and_give_back() -> None:
        if not started.wait(30):
            return
        # Just after a heartbeat (it sets updatedAt), steal before the next one, give back before the
        # owner checks again (a heartbeat interval, 1 s, after its miss).
        seen = jobs.find_one({"_id": doc["_id"]})["updatedAt"]
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["updatedAt"] != seen, 10, "a heartbeat")
        time.sleep(0.75)
        before = jobs.find_one({"_id": doc["_id"]})
        jobs.update_one({"_id": doc["_id"]}, {"$set": {"lockedBy": "waited"}, "$inc": {"attempts": 1}})
        time.sleep(0.6)
        taken = dict(before, lockedBy="waited", attempts=before["attempts"] + 1)

        async def give_back() -> bool:
            from pymongo import AsyncMongoClient

            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(secantus.uri)
            try:
                return await JobStore(client[name]).give_back(taken, before, 3)
            finally:
                await client.close()

        assert asyncio.run(give_back())

    thread = threading.Thread(target=steal_and_give_back, daemon=True)
    thread.start()
    recorder = Recorder()
    code, worker, _log = burst(secantus, name, handler, observers=[recorder], timeout=25, lock_s=3)
    thread.join(5)
    assert code == 0 and worker.stats["done"] == 1, recorder.events[-5:]
    assert recorder.named("job_lock_lost") and not recorder.named("job_lease_lost")
    assert jobs.find_one({"_id": doc["_id"]})["status"] == "DONE"


def test_a_plain_function_handler_keeps_its_lease_through_a_freeze(tmp_path: Path, own_server: Secantus) -> None:
    """A thread cannot be stopped: giving its lease up would only run the job a second time beside it.
    Its heartbeat goes on through a database frozen past the lock, and its result is written (fenced)."""
    client, jobs, doc, url = _one_job(own_server, "plain", 8)
    record = tmp_path / "record.txt"
    worker = start_worker(tmp_path, url, "--lock-seconds", "2", "--poll-seconds", "0.2", name="plain",
                          record=record)
    assert own_server.proc is not None
    try:
        worker.wait_for(record.exists, 30, "the handler started")
        os.kill(own_server.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(5)
        finally:
            os.kill(own_server.proc.pid, signal.SIGCONT)
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] == "DONE", 40, "DONE")
        time.sleep(3)
    finally:
        _stop(worker)
    assert not _lost_lines(worker), worker.text()[-2000:]
    assert [line.split()[1:3] for line in record.read_text().splitlines()] == [["start", "1"], ["end", "1"]]
    assert jobs.find_one({"_id": doc["_id"]})["result"] == {"ok": True, "attempt": 1}
    client.close()


# ---------------------------------------------------------------- the run guard alone (no server)


def _guarded_run(steps: Any) -> Any:
    """Run ``steps(lease, task_started)`` and a guarded 30 s sleep side by side; what the guarded run raised."""
    from muzo_ops.queue.lease import Lease

    async def main() -> Any:
        lease = Lease(deadline=time.monotonic() + 60)
        started = asyncio.Event()

        async def run() -> None:
            async with lease.guard():
                started.set()
                await asyncio.sleep(30)

        task = asyncio.create_task(run())
        await asyncio.wait_for(started.wait(), 5)
        steps(lease, task)
        try:
            await asyncio.wait_for(task, 5)
        except BaseException as exc:
            return type(exc), task.cancelling()
        return None, task.cancelling()

    return asyncio.run(main())


def test_a_lost_lease_ends_the_guarded_run_with_lease_lost_error() -> None:
    from muzo_ops.queue.jobs import LeaseLostError

    assert _guarded_run(lambda lease, task: lease.lose(LeaseLoss.EXPIRED)) == (LeaseLostError, 0)


def test_a_shutdown_cancel_on_top_of_a_lost_lease_goes_through() -> None:
    def both(lease: Any, task: asyncio.Task[None]) -> None:
        lease.lose(LeaseLoss.NOT_OURS)
        task.cancel()

    assert _guarded_run(both)[0] is asyncio.CancelledError


def test_a_lease_lost_before_the_run_starts_it_not_and_lost_twice_reports_once() -> None:
    from muzo_ops.queue.jobs import LeaseLostError
    from muzo_ops.queue.lease import Lease

    lease = Lease(deadline=0.0)
    assert lease.lose(LeaseLoss.EXPIRED) and not lease.lose(LeaseLoss.NOT_OURS)
    assert lease.lost is LeaseLoss.EXPIRED

    async def run() -> None:
        async with lease.guard():
            raise AssertionError("ran although the lease was lost")

    with pytest.raises(LeaseLostError, match="no renewal of the job's lock was confirmed"):
        asyncio.run(run())
