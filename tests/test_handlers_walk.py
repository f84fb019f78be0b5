"""The newcomer's walk: --version, readable logs on a terminal, --burst's exit code and last line."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from muzo_ops.constants import VERSION
from muzo_ops.logs import Logger, default_format
from muzo_ops.redact.redactor import Redactor
from tests.handlers_support import FAULTS, RUN_JOB, worker
from tests.servers import Secantus
from tests.workers import mockup_payload, prisma_job

ROOT = Path(__file__).resolve().parent.parent


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "muzo_ops", "--version"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0 and done.stdout == f"muzo-ops {VERSION}\n"


def test_pretty_lines_are_readable_and_redacted() -> None:
    stream = io.StringIO()
    log = Logger("muzo-worker", "info", stream, Redactor(["topsecretvalue"]), log_format="pretty")
    log.info("Job finished", job="abc", type="MOCKUP", duration=0.25, note="has topsecretvalue in it")
    try:
        raise ValueError("bad topsecretvalue")
    except ValueError as exc:
        log.child("muzo-queue-init").log("error", "Job failed", err=exc)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith('INFO  muzo-worker: Job finished  job=abc type=MOCKUP duration=0.25 '
                             'note="has *** in it"')
    assert "ERROR muzo-queue-init: Job failed" in lines[1] and lines[2] == "  ValueError: bad ***"
    assert "topsecretvalue" not in stream.getvalue()


def test_default_format_pretty_on_a_terminal_json_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_format(io.StringIO()) == "json"
    main, secondary = pty.openpty()
    try:
        with open(secondary, "w", closefd=False) as terminal:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
            assert default_format(terminal) == "pretty"
            monkeypatch.setenv("JOURNAL_STREAM", "8:1234")  # systemd's journal
            assert default_format(terminal) == "json"
    finally:
        os.close(main)
        os.close(secondary)
    stream = io.StringIO()
    Logger("x", "info", stream).info("hello")
    assert json.loads(stream.getvalue())["msg"] == "hello"


# ---------------------------------------------------------------- through a real worker


def test_burst_exits_1_after_a_failure_and_its_last_line_counts_the_retries_waiting(
        tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    jobs.insert_many([
        prisma_job("MOCKUP", mockup_payload(1)),  # done
        prisma_job("MOCKUP", mockup_payload(2, simulate={"refuse": "gone"})),  # fatal: failed for good
        prisma_job("MOCKUP", mockup_payload(3, simulate={"busyAttempts": 1, "retryAfterSeconds": 90})),  # waits
    ])
    w = worker(tmp_path, secantus.url(dbname), "--burst", "--handler", f"MOCKUP=exec:node {RUN_JOB}")
    assert w.proc.wait(60) == 1, w.text()[-2000:]
    last = w.lines()[-1]
    assert last["msg"].startswith("Burst run finished: 1 job(s) failed for good; 1 retry waiting, the next due at ")
    assert last["msg"].endswith("(in 90 s)") or last["msg"].endswith("(in 89 s)"), last["msg"]
    assert last["failed"] == 1 and last["retriesWaiting"] == 1 and last["nextRetryDue"]
    assert jobs.count_documents({"status": "DONE"}) == 1 and jobs.count_documents({"status": "FAILED"}) == 1


def test_burst_exits_0_when_nothing_failed_for_good(tmp_path: Path, secantus: Secantus, dbname: str,
                                                    jobs: Any) -> None:
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(1)))
    w = worker(tmp_path, secantus.url(dbname), "--burst", "--handler", f"MOCKUP=exec:node {RUN_JOB}")
    assert w.proc.wait(60) == 0, w.text()[-2000:]
    assert w.lines()[-1]["msg"] == "Burst run finished: no job failed for good; 0 retries waiting"


def test_policy_per_type_overrides_max_attempts_and_timeout(tmp_path: Path, secantus: Secantus, dbname: str,
                                                            jobs: Any) -> None:
    pid_file = tmp_path / "pids.txt"
    crash = prisma_job("MOCKUP", mockup_payload(1, fault="throw"), max_attempts=5)
    hang = prisma_job("MOCKUP", mockup_payload(2, fault="hang", pidFile=str(pid_file)), max_attempts=5)
    jobs.insert_many([crash, hang])
    w = worker(tmp_path, secantus.url(dbname), "--burst", "--concurrency", "2", "--handler-grace", "0.5",
               "--handler", f"MOCKUP=exec:node {FAULTS}", "--policy", "MOCKUP:max-attempts=1,timeout=2")
    assert w.proc.wait(60) == 1, w.text()[-2000:]
    by_id = {d["_id"]: d for d in jobs.find({})}
    assert by_id[crash["_id"]]["status"] == "FAILED" and by_id[crash["_id"]]["attempts"] == 1
    assert by_id[hang["_id"]]["status"] == "FAILED" and by_id[hang["_id"]]["lastError"]["name"] == "JobTimeoutError"
    assert "after 2 s" in by_id[hang["_id"]]["lastError"]["message"]


def test_log_format_pretty_through_the_worker(tmp_path: Path, secantus: Secantus, dbname: str, jobs: Any) -> None:
    jobs.insert_one(prisma_job("MOCKUP", mockup_payload(1)))
    w = worker(tmp_path, secantus.url(dbname), "--burst", "--log-format", "pretty",
               "--handler", "MOCKUP=muzo_ops.queue.handlers.demo:echo")
    assert w.proc.wait(60) == 0
    text = w.text()
    assert " INFO  muzo-worker: Burst run finished: no job failed for good; 0 retries waiting" in text
    assert not any(line.startswith("{") for line in text.splitlines())


def test_unusable_handler_settings_are_one_line_with_exit_2(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    env = tmp_path / ".env"
    env.write_text("DATABASE_URL=mongodb://127.0.0.1:9/muzo\nWORKER_QUEUES=mockup\nNODE_ENV=production\n"
                   "MUZO_HANDLER_SIGNING_SECRET=handler-secret-0123456789abcdef0123456789\n")
    cases = [
        (["--handler", "MOCKUP=exec:node x.js", "--handler-cwd", str(tmp_path / "missing")], "is not a folder"),
        (["--handler", "MOCKUP=exec:node 'x.js"], "no closing quotation: close the quote"),
        (["--handler", "MOCKUP=http://web.internal/api/jobs/mockup"], "plain http:// to web.internal"),
        (["--handler", "MOCKUP=muzo_ops.queue.handlers.demo:echo", "--policy", "MOCKUP:speed=2"],
         "'speed' is not one of"),
    ]
    for args, message in cases:
        proc = run_cli("worker", "--env-file", str(env), *args, env={"PYTHONPATH": str(ROOT)})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert message in lines[0], lines[0]
        assert "handler-secret-0123456789abcdef0123456789" not in proc.stderr + proc.stdout
