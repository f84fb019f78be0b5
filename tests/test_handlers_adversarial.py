"""Adversarial tests of exec and HTTP handlers: hostile children and servers against a real worker.

Each test attacks one promise of docs/HANDLERS.md (the process group ends with the job, no secret in any
output or Job field, the protocol's outcome, bounded memory and time, a verifiable signature).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests import handlers_support
from tests.handlers_support import all_output, retry_delay, wait_until, worker
from tests.servers import Secantus
from tests.test_handlers_exec import FULFILLMENT_PAYLOAD, _alive
from tests.workers import generation_payload, mockup_payload, prisma_job

dbname = handlers_support.dbname  # fixtures
jobs = handlers_support.jobs

CHILD = Path(__file__).resolve().parent / "hostile_child.py"
SECRET = "p@ss/w0rd:with%25 spaces&plus+=semi;colon?x#frag"
SECRET_LINE = f"SMTP_PASSWORD='{SECRET}'\n"


def _exec(*args: str) -> str:
    return "MOCKUP=exec:" + " ".join(shlex.quote(a) for a in (sys.executable, str(CHILD), *args))


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _job(mode: str, max_attempts: int = 1, **payload: Any) -> dict[str, Any]:
    return prisma_job("MOCKUP", mockup_payload(mode=mode, **payload), max_attempts=max_attempts)


def _pieces(secret: str, length: int = 8) -> list[str]:
    return [secret[i:i + length] for i in range(len(secret) - length + 1)]


def test_child_that_never_reads_a_huge_job_does_not_wedge_the_worker(tmp_path: Path, secantus: Secantus,
                                                                     dbname: str, jobs: Any) -> None:
    jobs.insert_one(_job("noread", blob="z" * (6 << 20)))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec("noread"),
               env_lines="JOB_TIMEOUT_MOCKUP_SECONDS=20\n")
    try:
        wait_until(lambda: jobs.count_documents({"status": {"$in": ["DONE", "FAILED"]}}) == 1, 30, "ended", w)
    finally:
        assert w.terminate() == 0
    doc = jobs.find_one({})
    assert doc["status"] == "DONE", doc["lastError"]
    assert doc["result"] is None


def test_protocol_edges_closed_stdio_bad_utf8_nan(tmp_path: Path, secantus: Secantus, dbname: str,
                                                  jobs: Any) -> None:
    closed, bad, nan = _job("closeio"), _job("badutf8"), _job("nan")
    jobs.insert_many([closed, bad, nan])
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--concurrency", "3")
    try:
        wait_until(lambda: jobs.count_documents({"status": {"$in": ["DONE", "FAILED"]}}) == 3, 30, "ended", w)
    finally:
        assert w.terminate() == 0
    by_id = {d["_id"]: d for d in jobs.find({})}
    assert by_id[closed["_id"]]["status"] == "DONE" and by_id[closed["_id"]]["result"] is None
    assert by_id[bad["_id"]]["status"] == "FAILED"
    assert "was not JSON" in by_id[bad["_id"]]["lastError"]["message"]
    # NaN and Infinity are not JSON (RFC 8259): the documented "one JSON value" refuses them.
    assert by_id[nan["_id"]]["status"] == "FAILED", by_id[nan["_id"]]
    assert "was not JSON" in by_id[nan["_id"]]["lastError"]["message"]


def test_gigantic_stdout_and_stderr_keep_the_worker_small(tmp_path: Path, secantus: Secantus, dbname: str,
                                                          jobs: Any) -> None:
    out, err = _job("bigout", mib=400), _job("bigerr", mib=400)
    jobs.insert_many([out, err])
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--concurrency", "2",
               env_lines="JOB_TIMEOUT_MOCKUP_SECONDS=40\n")
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 2, 60, "both FAILED", w)
        peak = _peak_rss_mib(w.proc.pid)
    finally:
        assert w.terminate() == 0
    assert peak < 200, f"the worker's peak RSS was {peak:.0f} MiB for 2 x 400 MiB of output"
    by_id = {d["_id"]: d for d in jobs.find({})}
    assert len(by_id[err["_id"]]["lastError"]["message"]) < 6000
    assert len(str(by_id[out["_id"]]["lastError"])) < 6000


def test_hostile_retry_after_values_stay_within_zero_and_the_cap(tmp_path: Path, secantus: Secantus, dbname: str,
                                                                 jobs: Any) -> None:
    raws = ['{"retryAfterSeconds": -5}', '{"retryAfterSeconds": NaN}', '{"retryAfterSeconds": 1e308}',
            '{"retryAfterSeconds": "30"}', '{"retryAfterSeconds": ' + "9" * 400 + "}",
            '{"retryAfterSeconds": Infinity}', '{"retryAfterSeconds": -Infinity}', '{"retryAfterSeconds": true}',
            '[1,2]', '{"retryAfterSeconds": {"$gt": 1}}']
    docs = [_job("retry", max_attempts=3, raw=raw) for raw in raws]
    jobs.insert_many(docs)
    # base = cap = 20 s: whatever the child says, each retry is due within [0, 20] s of its write
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--retry-base", "20", "--retry-cap", "20",
               "--concurrency", "4")
    try:
        wait_until(lambda: jobs.count_documents({"attempts": {"$gte": 1}, "status": {"$ne": "RUNNING"}}) == len(raws),
                   40, "every first attempt written", w)
        waiting = list(jobs.find({}))
        alive = w.proc.poll() is None
    finally:
        assert w.terminate() == 0
    assert alive
    for doc in waiting:
        delay = retry_delay(doc)
        assert doc["status"] == "PENDING" and doc["attempts"] == 1, doc
        assert 0 <= delay <= 20.5, (doc["payload"]["raw"][:40], delay)


def test_a_grandchild_holding_stdout_open_neither_hangs_the_job_nor_outlives_it(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    pid_file = tmp_path / "pids.txt"
    jobs.insert_one(_job("grandchild_stdout", pidFile=str(pid_file)))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--handler-grace", "1",
               env_lines="JOB_TIMEOUT_MOCKUP_SECONDS=30\n")
    try:
        wait_until(pid_file.exists, 20, "pids", w)
        started = time.monotonic()
        wait_until(lambda: jobs.count_documents({"status": {"$in": ["DONE", "FAILED"]}}) == 1, 25, "ended", w)
        took = time.monotonic() - started
        _, grandchild = (int(p) for p in pid_file.read_text().split())
        grandchild_alive = _alive(grandchild)
    finally:
        assert w.terminate() == 0
    doc = jobs.find_one({})
    assert doc["status"] == "DONE" and doc["result"] == {"ok": True}, doc
    assert not grandchild_alive
    assert took < 20  # not the job's 30 s timeout


def test_double_forked_grandchild_that_ignores_sigterm_dies_with_the_job(tmp_path: Path, secantus: Secantus,
                                                                         dbname: str, jobs: Any) -> None:
    pid_file = tmp_path / "pids.txt"
    jobs.insert_one(_job("doublefork", pidFile=str(pid_file)))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--handler-grace", "1")
    try:
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 1, 30, "DONE", w)
        pids = [int(p) for p in pid_file.read_text().split()]
        left = [pid for pid in pids if _alive(pid)]
    finally:
        assert w.terminate() == 0
        for pid in pids if pid_file.exists() else []:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert len(pids) == 2, pids
    assert left == []


def test_drain_of_a_child_that_ignores_sigterm_kills_it_and_releases_the_job(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    pid_file = tmp_path / "pids.txt"
    jobs.insert_one(_job("ignore_term", max_attempts=3, pidFile=str(pid_file)))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--handler-grace", "1",
               "--drain-timeout", "1")
    wait_until(pid_file.exists, 20, "pids", w)
    pids = [int(p) for p in pid_file.read_text().split()]
    started = time.monotonic()
    code = w.terminate(timeout=20)
    took = time.monotonic() - started
    assert code == 0, w.text()[-2000:]
    assert [p for p in pids if _alive(p)] == []
    doc = jobs.find_one({})
    assert doc["status"] == "PENDING" and doc["attempts"] == 0, doc
    assert took < 15


def test_command_missing_not_executable_or_cwd_gone_fails_the_job_not_the_worker(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\necho null\n")
    script.chmod(0o644)
    gone = tmp_path / "gone"
    gone.mkdir()
    jobs.insert_many([prisma_job("MOCKUP", mockup_payload(), max_attempts=1),
                      prisma_job("GENERATION", generation_payload(), max_attempts=1)])
    w = worker(tmp_path, secantus.url(dbname), "--handler", f"MOCKUP=exec:{tmp_path}/no-such-command --x",
               "--handler", f"GENERATION=exec:{script}", "--handler", f"FULFILLMENT=exec:{sys.executable} -c 0",
               "--handler-cwd", str(gone), queues="mockup,generation,fulfillment")
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 2, 30, "2 FAILED", w)
        gone.rmdir()  # the working directory vanishes under a running worker
        jobs.insert_one(prisma_job("FULFILLMENT", FULFILLMENT_PAYLOAD, max_attempts=1))
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 3, 30, "3 FAILED", w)
        alive = w.proc.poll() is None
    finally:
        w.terminate()
    assert alive
    for doc in jobs.find({}):
        assert doc["lastError"]["message"], doc


def test_secret_split_encoded_or_at_the_tail_boundary_never_reaches_output(tmp_path: Path, secantus: Secantus,
                                                                           dbname: str, jobs: Any) -> None:
    docs = [_job("split_secret"), _job("encoded_secret"), _job("result_secret")]
    docs += [_job("tail_secret", cut=cut) for cut in (1, 5, 20, len(SECRET) - 9)]
    jobs.insert_many(docs)
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec(), "--concurrency", "3", env_lines=SECRET_LINE)
    try:
        wait_until(lambda: jobs.count_documents({"status": {"$in": ["DONE", "FAILED"]}}) == len(docs), 40, "ended", w)
    finally:
        assert w.terminate() == 0
    text = all_output(w, jobs)
    from urllib.parse import quote
    for form in (SECRET, quote(SECRET, safe=""), quote(SECRET)):
        leaked = [piece for piece in _pieces(form, 10) if piece in text]
        assert leaked == [], (form, leaked[:3])
