"""Exec handlers: real Node commands run by a real worker against SecantusDB (docs/HANDLERS.md)."""

from __future__ import annotations

import os
import shlex
import signal
import time
from pathlib import Path
from typing import Any

from tests.conftest import _marked_processes
from tests.handlers_support import FAULTS, OPENAI_KEY, RUN_JOB, all_output, retry_delay, wait_until, worker
from tests.servers import Secantus
from tests.workers import generation_payload, mockup_payload, prisma_job

FULFILLMENT_PAYLOAD = {
    "provider": "cloudprinter",
    "order": {"orderId": "order-77", "files": [{"url": "https://cdn.example.com/a.png", "type": "default"}],
              "shipping": {"name": "A B", "address1": "1 Road", "city": "Town", "zip": "1000", "country": "DK"},
              "items": [{"variantId": "v1", "quantity": 2}, {"variantId": 7, "quantity": 1}]},
}


def _exec(job_type: str, script: Path = RUN_JOB, *args: str) -> str:
    return f"{job_type}=exec:node {shlex.quote(str(script))} {' '.join(shlex.quote(a) for a in args)}".rstrip()


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is dead)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_three_job_types_done_with_results_from_node(tmp_path: Path, secantus: Secantus, dbname: str,
                                                     jobs: Any) -> None:
    """GENERATION and MOCKUP from --handler, FULFILLMENT from MUZO_WORKER_HANDLERS with the quoting rule."""
    gen = prisma_job("GENERATION", generation_payload(parameters={"n": 2, "outputFormat": "webp"}))
    mock = prisma_job("MOCKUP", mockup_payload(3, template="mug"))
    ful = prisma_job("FULFILLMENT", FULFILLMENT_PAYLOAD)
    jobs.insert_many([gen, mock, ful])
    # In the env file: the whole value in single quotes, double quotes inside (docs/HANDLERS.md).
    env_value = f'MOCKUP=muzo_ops.queue.handlers.demo:echo,FULFILLMENT=exec:node "{RUN_JOB}" "fulfillment"'

    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec("GENERATION", RUN_JOB, "generation"),
               "--handler", _exec("MOCKUP", RUN_JOB, "mockup"), queues="generation,mockup,fulfillment",
               env_lines=f"MUZO_WORKER_HANDLERS='{env_value}'\n")
    try:
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 3, 60, "3 DONE", w)
    finally:
        assert w.terminate() == 0
    by_id = {d["_id"]: d for d in jobs.find({})}
    result = by_id[gen["_id"]]["result"]
    assert [i["url"] for i in result["images"]] == [
        f"s3://muzo-assets/generations/{gen['_id']}/0.webp", f"s3://muzo-assets/generations/{gen['_id']}/1.webp"]
    assert result["attempt"] == 1
    assert by_id[mock["_id"]]["result"]["mockupUrl"] == "s3://muzo-assets/mockups/order-3/var-1-mug.jpg"
    fulfilled = by_id[ful["_id"]]["result"]
    assert fulfilled["idempotencyKey"] == str(ful["_id"]) and fulfilled["items"] == 3
    assert all(d["lastError"] is None and d["attempts"] == 1 for d in by_id.values())


def test_job_on_stdin_env_from_the_env_file_cwd_and_no_secret_on_the_command_line(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    doc = prisma_job("MOCKUP", mockup_payload(fault="env", note="\u00e9t\u00e9 \u2603"), max_attempts=4)
    jobs.insert_one(doc)
    workdir = tmp_path / "jobs-home"
    workdir.mkdir()
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec("MOCKUP", FAULTS, "one arg", "a,b"),
               "--handler-cwd", str(workdir), env={"MUZO_TEST_FROM_PROCESS": "yes"})
    try:
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 1, 30, "DONE", w)
    finally:
        assert w.terminate() == 0
    seen = jobs.find_one({})["result"]
    assert seen["argv"] == ["one arg", "a,b"]
    assert seen["cwd"] == str(workdir)
    assert seen["hasDatabaseUrl"] and seen["hasOpenAiKey"] and seen["fromProcess"] == "yes"
    assert seen["job"] == {"id": str(doc["_id"]), "type": "MOCKUP", "payload": doc["payload"], "attempt": 1,
                           "maxAttempts": 4, "projectId": str(doc["projectId"])}


def test_exit_75_retries_not_before_retry_after_seconds(tmp_path: Path, secantus: Secantus, dbname: str,
                                                        jobs: Any) -> None:
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(simulate={"busyAttempts": 1, "retryAfterSeconds": 3})))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec("MOCKUP", RUN_JOB), "--retry-base", "0.05",
               "--retry-cap", "30")
    try:
        wait_until(lambda: jobs.count_documents({"attempts": 1, "status": "PENDING"}) == 1, 30, "retry", w)
        waiting = jobs.find_one({})
        assert waiting["lastError"]["name"] == "RetryJob"
        assert "asked for a retry after 3 s" in waiting["lastError"]["message"]
        assert "mockup renderer is busy (attempt 1)" in waiting["lastError"]["message"]
        assert retry_delay(waiting) >= 2.9, retry_delay(waiting)  # the base alone would give 0.05 s
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 1, 30, "DONE", w)
    finally:
        assert w.terminate() == 0
    assert jobs.find_one({})["result"]["attempt"] == 2


def test_retry_after_is_held_to_the_cap(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(simulate={"busyAttempts": 1, "retryAfterSeconds": 3600})))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec("MOCKUP", RUN_JOB), "--retry-base", "0.05",
               "--retry-cap", "1")
    try:
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 1, 30, "DONE", w)
    finally:
        assert w.terminate() == 0
    assert jobs.find_one({})["attempts"] == 2


def test_exit_65_fails_at_once(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(simulate={"refuse": "variant discontinued"}), max_attempts=5))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec("MOCKUP", RUN_JOB))
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 1, 30, "FAILED", w)
    finally:
        assert w.terminate() == 0
    failed = jobs.find_one({})
    assert failed["attempts"] == 1
    assert failed["lastError"]["name"] == "FatalJobError"
    assert "refused the job (exit 65, fatal)" in failed["lastError"]["message"]
    assert "variant discontinued" in failed["lastError"]["message"]


def test_crash_and_signal_are_retried_then_fail(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    thrown = prisma_job("MOCKUP", mockup_payload(1, fault="throw"), max_attempts=2)
    aborted = prisma_job("MOCKUP", mockup_payload(2, fault="abort"), max_attempts=2)
    not_json = prisma_job("MOCKUP", mockup_payload(3, fault="notjson"), max_attempts=1)
    jobs.insert_many([thrown, aborted, not_json])
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec("MOCKUP", FAULTS), "--retry-base", "0.05",
               "--retry-cap", "0.1")
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 3, 40, "3 FAILED", w)
    finally:
        assert w.terminate() == 0
    by_id = {d["_id"]: d for d in jobs.find({})}
    assert by_id[thrown["_id"]]["attempts"] == 2
    assert "exited with status 1" in by_id[thrown["_id"]]["lastError"]["message"]
    assert f"job {thrown['_id']} broke on attempt 2" in by_id[thrown["_id"]]["lastError"]["message"]
    assert by_id[aborted["_id"]]["attempts"] == 2
    assert "was killed by SIGABRT" in by_id[aborted["_id"]]["lastError"]["message"]
    assert "was not JSON (10 bytes)" in by_id[not_json["_id"]]["lastError"]["message"]
    assert "all done" not in by_id[not_json["_id"]]["lastError"]["message"]
    assert "was killed by SIGABRT" in w.text()  # logged on failure


def test_timeout_kills_the_whole_group_grandchild_included(tmp_path: Path, secantus: Secantus, dbname: str,
                                                           jobs: Any) -> None:
    pid_file = tmp_path / "pids.txt"
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(fault="hang", pidFile=str(pid_file)), max_attempts=1))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec("MOCKUP", FAULTS), "--handler-grace", "1",
               env_lines="JOB_TIMEOUT_MOCKUP_SECONDS=1\n")
    try:
        wait_until(pid_file.exists, 30, "the pid file", w)
        child, grandchild = (int(p) for p in pid_file.read_text().split())
        assert _alive(child) and _alive(grandchild)
        started = time.monotonic()
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 1, 30, "FAILED", w)
        # Both ignore SIGTERM: only SIGKILL after the grace ends them, before the job is written.
        assert not _alive(child) and not _alive(grandchild)
        assert time.monotonic() - started < 10
    finally:
        assert w.terminate() == 0
    failed = jobs.find_one({})
    assert failed["lastError"]["name"] == "JobTimeoutError"
    assert "SIGTERM ignored" not in failed["lastError"]["message"]


def test_a_command_killed_mid_job_takes_its_group_with_it(tmp_path: Path, secantus: Secantus, dbname: str,
                                                          jobs: Any) -> None:
    """Fault injection: kill -9 the command (not the worker); the grandchild it left must not outlive the job."""
    pid_file = tmp_path / "pids.txt"
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(fault="hang", pidFile=str(pid_file)), max_attempts=1))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec("MOCKUP", FAULTS), "--handler-grace", "1")
    try:
        wait_until(pid_file.exists, 30, "the pid file", w)
        child, grandchild = (int(p) for p in pid_file.read_text().split())
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 1, 30, "FAILED", w)
        assert not _alive(grandchild)  # it ignores SIGTERM: SIGKILL after the grace ended it
    finally:
        assert w.terminate() == 0
    assert "was killed by SIGKILL" in jobs.find_one({})["lastError"]["message"]


def test_sigterm_to_the_worker_gives_children_sigterm_and_their_grace(tmp_path: Path, secantus: Secantus,
                                                                      dbname: str, jobs: Any) -> None:
    pid_file = tmp_path / "pids.txt"
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(fault="hang", pidFile=str(pid_file))))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec("MOCKUP", FAULTS), "--handler-grace", "1",
               "--drain-timeout", "0.5")
    try:
        wait_until(pid_file.exists, 30, "the pid file", w)
        child, grandchild = (int(p) for p in pid_file.read_text().split())
    finally:
        assert w.terminate() == 0
    assert not _alive(child) and not _alive(grandchild)
    released = jobs.find_one({})
    assert released["status"] == "PENDING" and released["attempts"] == 0  # released, no attempt spent


def test_secret_printed_on_stderr_is_masked_everywhere(tmp_path: Path, secantus: Secantus, dbname: str,
                                                       jobs: Any) -> None:
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(fault="leak"), max_attempts=1))
    w = worker(tmp_path, secantus.url(dbname), "--handler", _exec("MOCKUP", FAULTS))
    try:
        wait_until(lambda: jobs.count_documents({"status": "FAILED"}) == 1, 30, "FAILED", w)
    finally:
        assert w.terminate() == 0
    message = jobs.find_one({})["lastError"]["message"]
    assert "calling the provider with key *** failed" in message  # stderr was captured, then masked
    assert OPENAI_KEY not in all_output(w, jobs)
    assert OPENAI_KEY[8:30] not in all_output(w, jobs)


def test_python_handler_asks_for_a_delay_with_retry_job(tmp_path: Path, secantus: Secantus, dbname: str,
                                                         jobs: Any) -> None:
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(retryAfter=3)))
    w = worker(tmp_path, secantus.url(dbname), "--handler", "MOCKUP=tests.handlers_support:retry_once",
               "--retry-base", "0.05", "--retry-cap", "30")
    try:
        wait_until(lambda: jobs.count_documents({"attempts": 1, "status": "PENDING"}) == 1, 30, "retry", w)
        waiting = jobs.find_one({})
        assert waiting["lastError"]["name"] == "RetryJob" and retry_delay(waiting) >= 2.9
        wait_until(lambda: jobs.count_documents({"status": "DONE"}) == 1, 30, "DONE", w)
    finally:
        assert w.terminate() == 0
    assert jobs.find_one({})["result"] == {"attempt": 2}


def test_nothing_left_running() -> None:
    """The tests above end every process they start (the session check looks at the end too)."""
    left = [(pid, command) for pid, command in _marked_processes(os.environ["MUZO_OPS_TEST_SESSION"])
            if ("exec_faults" in command or "run-job" in command or "setInterval" in command) and _alive(pid)]
    assert not left
