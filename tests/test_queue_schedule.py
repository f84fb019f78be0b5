"""Issue 11: scheduled jobs and retries start on time, whatever the poll interval."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from tests.helpers import run_cli
from tests.servers import Secantus
from tests.workers import mockup_payload, prisma_job, start_worker


def _started_ms(lines: list[dict[str, Any]], job_id: str, attempt: int = 1) -> int:
    return next(int(line["time"]) for line in lines
                if line.get("msg") == "Job started" and line.get("jobId") == job_id and line.get("attempt") == attempt)


def test_a_scheduled_job_starts_within_a_second_of_due_under_a_30s_poll(
        tmp_path: Path, secantus: Secantus, db: tuple[str, Any]) -> None:
    name, _jobs = db
    env = tmp_path / "enqueue.env"
    env.write_text(f"DATABASE_URL={secantus.url(name)}\n")
    worker = start_worker(tmp_path, secantus.url(name), "--poll-seconds", "30", name="sched")
    try:
        worker.wait_log("Worker bootstrapped and listening for jobs")
        time.sleep(0.5)
        proc = run_cli("jobs", "enqueue", "MOCKUP", "--env-file", str(env), "--format", "json",
                       "--payload", json.dumps(mockup_payload(1)), "--run-at", "+3s")
        assert proc.returncode == 0, proc.stderr
        created = json.loads(proc.stdout)
        due = dt.datetime.fromisoformat(created["availableAt"].replace("Z", "+00:00"))
        worker.wait_for(lambda: "Job completed" in worker.messages(), 15, "the scheduled job ran")
    finally:
        assert worker.terminate() == 0
    boot = next(line for line in worker.lines() if line.get("msg") == "Worker bootstrapped and listening for jobs")
    assert boot["changeStreams"] is True
    delay = _started_ms(worker.lines(), created["id"]) / 1000 - due.timestamp()
    print(f"scheduled job started {delay:.3f}s after due (poll 30 s)")
    assert -0.05 <= delay < 1.0, delay


def test_a_retry_starts_on_time_under_a_30s_poll(tmp_path: Path, secantus: Secantus, db: tuple[str, Any]) -> None:
    name, jobs = db
    worker = start_worker(tmp_path, secantus.url(name), "--poll-seconds", "30", "--retry-base", "2",
                          "--retry-cap", "2", name="retry", handler="MOCKUP=tests.handlers_for_tests:flaky")
    try:
        worker.wait_log("Worker bootstrapped and listening for jobs")
        doc = prisma_job("MOCKUP", mockup_payload(1, failTimes=1))
        jobs.insert_one(doc)
        worker.wait_for(lambda: "Job completed" in worker.messages(), 15, "the retry ran")
    finally:
        assert worker.terminate() == 0
    lines = worker.lines()
    retry = next(line for line in lines if line.get("msg") == "Retrying job after failure")
    due_ms = int(retry["time"]) + int(retry["delayMs"])
    delay = (_started_ms(lines, str(doc["_id"]), 2) - due_ms) / 1000
    print(f"retry started {delay:.3f}s after due (poll 30 s)")
    assert -0.1 <= delay < 1.0, delay
