"""Adversarial runs against the worker's lease promises (docs/WORKER_TROUBLESHOOTING.md, "Lease lost").

Each test attacks one promise from outside, with real processes against SecantusDB:

- a finished job never runs again, and a run whose lease was lost is never recorded DONE (not even
  when its command answers SIGTERM at once with exit 0 and valid JSON);
- once a worker knows it lost a lease, at most one process runs the job's code, except for the grace;
- a database freeze shorter than two thirds of the lock cancels nothing;
- every job ends DONE or FAILED or is retried, and the in-progress gauge returns to 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from tests.helpers import descendants, process_table, wait_until
from tests.servers import Secantus, free_port
from tests.test_worker_lease_lost import _lost_lines as _lost
from tests.test_worker_lease_lost import (
    _stop,
    own_server,  # noqa: F401  (fixture)
)
from tests.workers import WorkerProcess, mockup_payload, prisma_job, start_worker

# An exec handler. Ledger lines: "<job> <event> <attempt> <pid> <time>". payload.seconds: how long it
# works (payload.retrySeconds, default 1, on later attempts); payload.escape: leaves a grandchild in a
# new session (setsid); payload.onTerm: "ignore" (only SIGKILL ends it) or "done" (prints a valid JSON
# answer and exits 0 the instant SIGTERM comes).
CHILD = r'''
import json, os, signal, subprocess, sys, time
ledger = sys.argv[1]
job = json.loads(sys.stdin.read())
def note(event, pid=None):
    with open(ledger, "a") as out:
        out.write(f"{job['id']} {event} {job['attempt']} {pid or os.getpid()} {time.time():.3f}\n")
if job["payload"].get("escape"):  # a grandchild in a session of its own (setsid)
    note("escapee", subprocess.Popen(["sleep", "600"], start_new_session=True).pid)
on_term = job["payload"].get("onTerm")
if on_term == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif on_term == "done":
    def answer(*_):
        note("term-answered")
        print(json.dumps({"attempt": job["attempt"], "answeredSigterm": True}), flush=True)
        os._exit(0)
    signal.signal(signal.SIGTERM, answer)
note("start")
time.sleep(float(job["payload"]["seconds"] if job["attempt"] == 1 else job["payload"].get("retrySeconds", 1)))
note("end")
print(json.dumps({"attempt": job["attempt"]}))
'''

def _ledger(path: Path) -> list[tuple[str, str, int, int]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        job_id, event, attempt, pid, _at = line.split()
        rows.append((job_id, event, int(attempt), int(pid)))
    return rows


def _events(path: Path) -> list[tuple[str, int]]:
    return [(event, attempt) for _job, event, attempt, _pid in _ledger(path)]


def _worker(tmp_path: Path, url: str, ledger: Path, name: str, lock: float, *args: str) -> WorkerProcess:
    script = tmp_path / "attack_child.py"
    script.write_text(CHILD)
    return start_worker(tmp_path, url, "--poll-seconds", "0.2", "--lock-seconds", str(lock), *args, name=name,
                        handler=f"MOCKUP=exec:{sys.executable} {script} {ledger}")


def _collection(server: Secantus, name: str) -> tuple[MongoClient[dict[str, Any]], Any, str]:
    client: MongoClient[dict[str, Any]] = MongoClient(server.uri, serverSelectionTimeoutMS=60000)
    return client, client[name]["Job"], server.url(name, serverSelectionTimeoutMS="30000")


def _freeze(server: Secantus, seconds: float) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_a_command_answering_sigterm_with_exit_0_after_a_lost_lease_is_not_recorded_done(
        tmp_path: Path, own_server: Secantus) -> None:  # noqa: F811
    """The database frozen 1.5 locks: the worker cancels the run; its command answers SIGTERM at once
    with exit 0 and valid JSON. That answer is not the job's result: the job runs again, to its end."""
    client, jobs, url = _collection(own_server, "exit0")
    doc = prisma_job("MOCKUP", mockup_payload(1, seconds=5, onTerm="done"), max_attempts=3)
    jobs.insert_one(doc)
    ledger = tmp_path / "ledger.txt"
    worker = _worker(tmp_path, url, ledger, "w", 3)
    try:
        worker.wait_for(lambda: ("start", 1) in _events(ledger), 30, "attempt 1 started")
        _freeze(own_server, 4.5)
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] in ("DONE", "FAILED"), 40, "finished")
        time.sleep(1)
    finally:
        _stop(worker)
    final = jobs.find_one({"_id": doc["_id"]})
    assert _lost(worker), worker.text()[-3000:]
    assert ("term-answered", 1) in _events(ledger), _events(ledger)
    assert final["status"] == "DONE" and "answeredSigterm" not in final["result"], (final, _events(ledger))
    assert [e for e in _events(ledger) if e[0] == "end"] == [("end", final["result"]["attempt"])]
    client.close()


def test_database_freezes_of_0_3_and_0_6_locks_at_any_phase_cancel_nothing(
        tmp_path: Path, own_server: Secantus) -> None:  # noqa: F811
    """Freezes of 0.3 and 0.6 locks (under the promised two thirds), at shifting phases of the heartbeat."""
    client, jobs, url = _collection(own_server, "short")
    doc = prisma_job("MOCKUP", mockup_payload(2, seconds=9), max_attempts=3)
    jobs.insert_one(doc)
    ledger = tmp_path / "ledger.txt"
    worker = _worker(tmp_path, url, ledger, "w", 4)
    try:
        worker.wait_for(lambda: ("start", 1) in _events(ledger), 30, "attempt 1 started")
        for pause, freeze in [(0.1, 1.2), (0.3, 2.4), (0.9, 2.4)]:
            time.sleep(pause)
            _freeze(own_server, freeze)
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] == "DONE", 40, "DONE")
    finally:
        _stop(worker)
    assert not _lost(worker), worker.text()[-3000:]
    assert _events(ledger) == [("start", 1), ("end", 1)]
    client.close()


def _gauge(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port + 1}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("muzo_worker_jobs_in_progress{"))


def test_three_workers_racing_through_a_freeze_of_3_locks_run_each_job_to_its_end_once(
        tmp_path: Path, own_server: Secantus) -> None:  # noqa: F811
    client, jobs, url = _collection(own_server, "race")
    docs = [prisma_job("MOCKUP", mockup_payload(10 + i, seconds=3, retrySeconds=3,
                                                onTerm="done" if i % 2 else "ignore"), max_attempts=5)
            for i in range(4)]
    jobs.insert_many(docs)
    ledger = tmp_path / "ledger.txt"
    ports = [free_port() - 1 for _ in range(3)]  # a mockup-only worker adds 1
    workers = [_worker(tmp_path, url, ledger, f"w{i}", 2, "--concurrency", "2", "--handler-grace", "1",
                       "--metrics-port", str(ports[i])) for i in range(3)]
    try:
        wait_until(lambda: len([e for e in _events(ledger) if e[0] == "start"]) >= 3, 30, "jobs started")
        _freeze(own_server, 6)
        wait_until(lambda: jobs.count_documents({"status": {"$in": ["DONE", "FAILED"]}}) == 4, 90,
                   "all finished", lambda: str(list(jobs.find({}, {"status": 1, "attempts": 1}))))
        time.sleep(2.5)  # past a lock: a finished job would be claimed again now
        gauges = [_gauge(port) for port in ports]
    finally:
        _stop(*workers)
    rows = _ledger(ledger)
    for doc in docs:
        final = jobs.find_one({"_id": doc["_id"]})
        ends = [r for r in rows if r[0] == str(doc["_id"]) and r[1] == "end"]
        assert final["status"] == "DONE", final
        assert len(ends) == 1 and "answeredSigterm" not in final["result"], (final, rows)
        assert final["result"]["attempt"] == ends[0][2]
    assert gauges == [0.0, 0.0, 0.0]
    for worker in workers:
        assert worker.proc.returncode == 0, worker.text()[-2000:]
        assert not descendants(worker.proc.pid)
    client.close()


def test_sigterm_to_a_worker_while_it_cancels_a_lost_run_ends_the_command_and_gives_nothing_back(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    """Worker A frozen past its lock, B takes the job over; A resumes and cancels its run (the command
    ignores SIGTERM, grace 3 s); SIGTERM to A meanwhile: A's command is gone within the grace, A does
    not hand B's job back, B runs it to its end once."""
    doc = prisma_job("MOCKUP", mockup_payload(3, seconds=6, retrySeconds=2, onTerm="ignore"), max_attempts=3)
    jobs.insert_one(doc)
    ledger = tmp_path / "ledger.txt"
    url = secantus.url(dbname)
    first = _worker(tmp_path, url, ledger, "first", 2, "--handler-grace", "3")
    second: WorkerProcess | None = None
    try:
        first.wait_for(lambda: ("start", 1) in _events(ledger), 30, "attempt 1 started")
        mine = next(r for r in _ledger(ledger) if r[1] == "start")
        os.kill(first.proc.pid, signal.SIGSTOP)
        second = _worker(tmp_path, url, ledger, "second", 2)
        second.wait_for(lambda: ("start", 2) in _events(ledger), 30, "attempt 2 started")
        os.kill(first.proc.pid, signal.SIGCONT)
        first.wait_for(lambda: bool(_lost(first)), 10, "the lease declared lost")
        os.kill(first.proc.pid, signal.SIGTERM)
        code = first.proc.wait(30)
        assert mine[3] not in process_table(), "the cancelled command outlived the worker's stop"
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] == "DONE", 40, "DONE",
                   lambda: str(jobs.find_one({"_id": doc["_id"]})))
        time.sleep(2.5)
    finally:
        _stop(first, *([second] if second else []))
    assert code == 0, first.text()[-3000:]
    final = jobs.find_one({"_id": doc["_id"]})
    assert final["result"]["attempt"] == 2 and final["attempts"] == 2, final
    assert _events(ledger) == [("start", 1), ("start", 2), ("end", 2)]


def test_a_worker_paused_1_5_locks_alone_does_not_record_its_commands_sigterm_answer(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    """The worker itself frozen (SIGSTOP) for 1.5 locks, no other worker: on resuming it gives the lease
    up before any server call; its command's exit 0 and JSON on SIGTERM is not the job's result."""
    doc = prisma_job("MOCKUP", mockup_payload(4, seconds=8, onTerm="done"), max_attempts=3)
    jobs.insert_one(doc)
    ledger = tmp_path / "ledger.txt"
    worker = _worker(tmp_path, secantus.url(dbname), ledger, "w", 3)
    try:
        worker.wait_for(lambda: ("start", 1) in _events(ledger), 30, "attempt 1 started")
        os.kill(worker.proc.pid, signal.SIGSTOP)
        time.sleep(4.5)
        os.kill(worker.proc.pid, signal.SIGCONT)
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] in ("DONE", "FAILED"), 40, "finished")
        time.sleep(1)
    finally:
        _stop(worker)
    final = jobs.find_one({"_id": doc["_id"]})
    events = _events(ledger)
    assert _lost(worker) and ("term-answered", 1) in events, (events, worker.text()[-3000:])
    assert final["status"] == "DONE" and final["result"] == {"attempt": 2}, (final, events)
    assert [e for e in events if e[0] == "end"] == [("end", 2)]


def test_a_database_frozen_1_1_locks_runs_the_job_to_its_end_once(tmp_path: Path,
                                                                   own_server: Secantus) -> None:  # noqa: F811
    """Two workers, the database frozen 1.1 locks mid-run: whether the lease ran out or not, the job ends
    DONE, run to its end once, and no two of its commands ever ran at once outside the grace."""
    client, jobs, url = _collection(own_server, "eleven")
    doc = prisma_job("MOCKUP", mockup_payload(5, seconds=4, retrySeconds=2, onTerm="ignore"), max_attempts=4)
    jobs.insert_one(doc)
    ledger = tmp_path / "ledger.txt"
    workers = [_worker(tmp_path, url, ledger, f"w{i}", 3, "--handler-grace", "1") for i in range(2)]
    try:
        wait_until(lambda: ("start", 1) in _events(ledger), 30, "attempt 1 started")
        time.sleep(0.4)
        _freeze(own_server, 3.3)
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] in ("DONE", "FAILED"), 60, "finished")
        time.sleep(3.5)  # past a lock: a finished job would be claimed again now
    finally:
        _stop(*workers)
    final = jobs.find_one({"_id": doc["_id"]})
    events = _events(ledger)
    assert final["status"] == "DONE" and [e for e in events if e[0] == "end"] == [("end", final["result"]["attempt"])]
    assert [e for e in events if e[0] == "start"] == [("start", a) for a in range(1, final["attempts"] + 1)], events
    client.close()


def test_a_worker_killed_9_mid_job_has_its_job_finished_by_another_and_no_gauge_left_up(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    """kill -9 mid-job, then a second worker: the job does not stay RUNNING, ends DONE, never runs again,
    and the second worker's in-progress gauge is back to 0. (The killed worker's command is not ended:
    nothing can end it once its worker is gone; docs/HANDLERS.md says so. Its ledger shows it.)"""
    doc = prisma_job("MOCKUP", mockup_payload(6, seconds=2, retrySeconds=2), max_attempts=3)
    jobs.insert_one(doc)
    ledger = tmp_path / "ledger.txt"
    url = secantus.url(dbname)
    first = _worker(tmp_path, url, ledger, "first", 2)
    port = free_port() - 1  # a mockup-only worker adds 1
    second: WorkerProcess | None = None
    try:
        first.wait_for(lambda: ("start", 1) in _events(ledger), 30, "attempt 1 started")
        first.kill9()
        second = _worker(tmp_path, url, ledger, "second", 2, "--metrics-port", str(port))
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] == "DONE", 30, "DONE",
                   lambda: str(jobs.find_one({"_id": doc["_id"]})))
        time.sleep(2.5)  # past a lock: a finished job would be claimed again now
        gauge = _gauge(port)
    finally:
        _stop(*([second] if second else []))
    final = jobs.find_one({"_id": doc["_id"]})
    assert final["result"] == {"attempt": 2} and final["attempts"] == 2, final
    assert [e for e in _events(ledger) if e[0] == "start"] == [("start", 1), ("start", 2)]
    assert gauge == 0.0


def test_a_grandchild_that_escaped_into_its_own_session_is_gone_when_a_lost_run_is_over(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    """The command starts a grandchild with setsid, then an operator fails the RUNNING job by hand: the
    lease is lost, and the grandchild (outside the job's session) does not outlive the run either."""
    doc = prisma_job("MOCKUP", mockup_payload(7, seconds=30, escape=True), max_attempts=3)
    jobs.insert_one(doc)
    ledger = tmp_path / "ledger.txt"
    worker = _worker(tmp_path, secantus.url(dbname), ledger, "w", 3, "--handler-grace", "1")
    escapee = 0
    try:
        worker.wait_for(lambda: ("start", 1) in _events(ledger), 30, "attempt 1 started")
        escapee = next(r[3] for r in _ledger(ledger) if r[1] == "escapee")
        assert os.getsid(escapee) == escapee
        jobs.update_one({"_id": doc["_id"]}, {"$set": {"status": "FAILED", "lockedBy": None, "lockedUntil": None}})
        worker.wait_for(lambda: any("failure not written" in m for m in worker.messages()), 20, "the run over")
        left = escapee in process_table()
    finally:
        _stop(worker)
        if escapee and escapee in process_table():
            os.kill(escapee, signal.SIGKILL)
    assert _lost(worker)
    assert not left, "the setsid grandchild outlived its lost run"


def test_sigterm_to_a_worker_cancelling_a_lost_run_while_the_database_is_frozen(
        tmp_path: Path, own_server: Secantus) -> None:  # noqa: F811
    """The database frozen, the lease runs out, the worker cancels its run (the command ignores SIGTERM,
    grace 2 s), and gets SIGTERM itself meanwhile: the command is gone within the grace though the
    database is still frozen; after the thaw the job does not stay RUNNING: it runs again, to its end."""
    client, jobs, url = _collection(own_server, "termfrozen")
    doc = prisma_job("MOCKUP", mockup_payload(9, seconds=30, onTerm="ignore"), max_attempts=3)
    jobs.insert_one(doc)
    ledger = tmp_path / "ledger.txt"
    worker = _worker(tmp_path, url, ledger, "w", 2, "--handler-grace", "2")
    assert own_server.proc is not None
    again: WorkerProcess | None = None
    try:
        worker.wait_for(lambda: ("start", 1) in _events(ledger), 30, "attempt 1 started")
        mine = next(r for r in _ledger(ledger) if r[1] == "start")
        os.kill(own_server.proc.pid, signal.SIGSTOP)
        try:
            worker.wait_for(lambda: bool(_lost(worker)), 20, "the lease declared lost")
            os.kill(worker.proc.pid, signal.SIGTERM)
            wait_until(lambda: mine[3] not in process_table(), 3.5, "the command gone within the grace")
        finally:
            os.kill(own_server.proc.pid, signal.SIGCONT)
        code = worker.proc.wait(40)
        again = _worker(tmp_path, url, ledger, "again", 2)
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] == "DONE", 40, "DONE",
                   lambda: str(jobs.find_one({"_id": doc["_id"]})))
    finally:
        _stop(worker, *([again] if again else []))
    assert code == 0, worker.text()[-2000:]
    final = jobs.find_one({"_id": doc["_id"]})
    assert [e for e in _events(ledger) if e[0] == "end"] == [("end", final["result"]["attempt"])]
    client.close()


class _SlowServer:
    """Answers each POST with 200 and ``{"request": n}``; the first after ``first_delay`` seconds (or
    never, when its client hangs up first), the others at once. Notes which answers were delivered."""

    def __init__(self, first_delay: float) -> None:
        import http.server
        import threading

        outer = self
        self.first_delay = first_delay
        self.count = 0
        self.delivered: list[int] = []
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.count += 1
                    n = outer.count
                deadline = time.monotonic() + (outer.first_delay if n == 1 else 0)
                while time.monotonic() < deadline:  # wait, unless the client hung up
                    time.sleep(0.05)
                body = json.dumps({"request": n}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                    outer.delivered.append(n)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_slow_http_answer_to_a_run_whose_lease_ran_out_is_not_the_result(
        tmp_path: Path, own_server: Secantus) -> None:  # noqa: F811
    """An HTTP handler answering its first request after 5 s; the database frozen 1.5 locks (lock 2)
    meanwhile: the run is cancelled, and that late 200 is not the job's result: the retry's is."""
    client, jobs, url = _collection(own_server, "slowhttp")
    doc = prisma_job("MOCKUP", mockup_payload(11), max_attempts=3)
    jobs.insert_one(doc)
    server = _SlowServer(5)
    worker = start_worker(tmp_path, url, "--poll-seconds", "0.2", "--lock-seconds", "2", name="w",
                          env={"MUZO_HANDLER_SIGNING_SECRET": "hs-test-secret-0123456789abcdef0123456789"},
                          handler=f"MOCKUP=http://127.0.0.1:{server.port}/jobs")
    try:
        wait_until(lambda: server.count >= 1, 30, "the first request")
        _freeze(own_server, 3)
        wait_until(lambda: jobs.find_one({"_id": doc["_id"]})["status"] in ("DONE", "FAILED"), 40, "finished")
        time.sleep(max(0.0, 5.5 - 3))  # the first answer's moment has passed
    finally:
        _stop(worker)
        server.close()
    final = jobs.find_one({"_id": doc["_id"]})
    assert _lost(worker), worker.text()[-3000:]
    assert final["status"] == "DONE" and final["result"] == {"request": 2}, (final, server.delivered)
    client.close()
