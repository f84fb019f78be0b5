"""jobs status / enqueue / retry-failed / clear-failed, and dev-db."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from tests.helpers import run_cli
from tests.servers import Secantus, free_port
from tests.workers import mockup_payload, now, prisma_job


def test_jobs_commands(tmp_path: Path, secantus: Secantus) -> None:
    db = "j" + uuid.uuid4().hex[:10]
    env = tmp_path / ".env"
    env.write_text(f"DATABASE_URL={secantus.url(db)}\n")
    client: MongoClient[dict[str, Any]] = MongoClient(secantus.uri)
    jobs = client[db]["Job"]
    old = now() - dt.timedelta(days=10)
    jobs.insert_many([
        prisma_job("MOCKUP", status="FAILED", updatedAt=old, attempts=3),
        prisma_job("GENERATION", status="FAILED", attempts=3),
        prisma_job("MOCKUP", status="RUNNING", lockedBy="dead", lockedUntil=now() - dt.timedelta(minutes=1)),
        prisma_job("MOCKUP", availableAt=now() - dt.timedelta(seconds=90)),
        prisma_job("MOCKUP", availableAt=now() + dt.timedelta(hours=1)),
    ])
    proc = run_cli("jobs", "status", "--env-file", str(env), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["counts"]["MOCKUP"] == {"PENDING": 2, "RUNNING": 1, "DONE": 0, "FAILED": 1}
    assert data["runningPastLock"] == 1 and data["pendingNotYetDue"] == 1
    assert 85 <= data["oldestDuePendingSeconds"] < 200
    text = run_cli("jobs", "status", "--env-file", str(env)).stdout
    assert "RUNNING past their lock (worker died or stalled): 1" in text

    proc = run_cli("jobs", "enqueue", "MOCKUP", "--env-file", str(env), "--format", "json",
                   "--payload", json.dumps(mockup_payload(7)), "--run-at", "+30s")
    assert proc.returncode == 0, proc.stderr
    created = jobs.find_one({"payload.orderId": "order-7"})
    assert created["status"] == "PENDING" and created["attempts"] == 0 and created["maxAttempts"] == 3
    assert created["availableAt"] > created["createdAt"] + dt.timedelta(seconds=25)
    bad = run_cli("jobs", "enqueue", "MOCKUP", "--env-file", str(env), "--payload", '{"orderId": 1}')
    assert bad.returncode == 2 and bad.stderr.startswith("error: invalid MOCKUP payload: orderId")
    bad = run_cli("jobs", "enqueue", "MOCKUP", "--env-file", str(env), "--payload", "{nope")
    assert bad.returncode == 2 and "--payload is not JSON" in bad.stderr

    proc = run_cli("jobs", "retry-failed", "--type", "generation", "--env-file", str(env), "--format", "json")
    assert json.loads(proc.stdout) == {"retried": 1}
    assert jobs.count_documents({"type": "GENERATION", "status": "PENDING", "attempts": 0}) == 1
    proc = run_cli("jobs", "clear-failed", "--older-than", "7d", "--env-file", str(env), "--format", "json")
    assert json.loads(proc.stdout) == {"deleted": 1}
    assert jobs.count_documents({"status": "FAILED"}) == 0
    assert run_cli("jobs", "clear-failed", "--older-than", "week", "--env-file", str(env)).returncode == 2
    for args in (["retry-failed", "--type", "printing"], ["enqueue", "PRINTING", "--payload", "{}"]):
        proc = run_cli("jobs", *args, "--env-file", str(env))
        assert proc.returncode == 2
        assert proc.stderr.strip() == ("error: unknown job type 'printing': use one of GENERATION, MOCKUP, FULFILLMENT"
                                       if "retry-failed" in args else
                                       "error: unknown job type 'PRINTING': use one of GENERATION, MOCKUP, FULFILLMENT")
    client.drop_database(db)
    client.close()


def test_jobs_without_a_reachable_database_is_one_line(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(f"DATABASE_URL=mongodb://127.0.0.1:{free_port()}/x?serverSelectionTimeoutMS=500\n")
    proc = run_cli("jobs", "status", "--env-file", str(env))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: MongoDB unreachable (connection refused): check DATABASE_URL and that the server runs "
        "(muzo-ops check-env --connect)"]


def test_dev_db_prints_a_working_url(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "muzo_ops", "dev-db", "--port", str(port),
                             "--data", str(tmp_path / "dev")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline and url is None:
            line = proc.stdout.readline()
            if line.startswith("DATABASE_URL="):
                url = line.strip().split("=", 1)[1]
        assert url is not None
        client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=10000)
        assert client.admin.command("ping")["ok"] == 1
        client.close()
        env = tmp_path / ".env"
        env.write_text(f"DATABASE_URL={url}\n")
        check = run_cli("check-env", "--env-file", str(env), "--app", "worker", "--format", "json")
        assert not [p for p in json.loads(check.stdout)["problems"] if p["variable"] == "DATABASE_URL"]
    finally:
        proc.terminate()
        proc.wait(30)


def test_numeric_options_are_checked_before_anything_runs() -> None:
    cases = [
        (["worker", "--lock-seconds", "-1"], "argument --lock-seconds: '-1' must be above 0"),
        (["worker", "--concurrency", "0"], "argument --concurrency: '0' must be a whole number of at least 1"),
        (["check-env", "--timeout", "soon"], "argument --timeout: 'soon' is not a number"),
        (["jobs", "enqueue", "MOCKUP", "--payload", "{}", "--max-attempts", "0"], "--max-attempts"),
    ]
    for args, message in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2 and proc.stdout == ""
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_status_shows_every_status_unknown_types_apart_and_undated_jobs_as_due(tmp_path: Path,
                                                                                secantus: Secantus) -> None:
    db = "s" + uuid.uuid4().hex[:10]
    env = tmp_path / ".env"
    env.write_text(f"DATABASE_URL={secantus.url(db)}\n")
    client: MongoClient[dict[str, Any]] = MongoClient(secantus.uri)
    jobs = client[db]["Job"]
    undated = prisma_job("MOCKUP", createdAt=now() - dt.timedelta(seconds=40))
    del undated["availableAt"]
    jobs.insert_many([
        prisma_job("MOCKUP", status="CANCELLED"),
        prisma_job("PRINTING", availableAt=now() - dt.timedelta(days=3)),  # a type no worker knows
        undated,
        prisma_job("GENERATION", availableAt=now() - dt.timedelta(seconds=10)),
    ])
    data = json.loads(run_cli("jobs", "status", "--env-file", str(env), "--format", "json").stdout)
    assert data["counts"]["MOCKUP"]["CANCELLED"] == 1 and data["counts"]["PRINTING"] == {"PENDING": 1}
    assert data["pendingUnknownType"] == 1 and data["pendingDue"] == 2
    assert 39 <= data["oldestDuePendingSeconds"] < 120  # the undated job, not the 3-day-old PRINTING one
    text = run_cli("jobs", "status", "--env-file", str(env)).stdout
    header, *rows = text.splitlines()
    assert header.split() == ["type", "PENDING", "RUNNING", "DONE", "FAILED", "CANCELLED"]
    mockup = next(r for r in rows if r.startswith("MOCKUP"))
    assert mockup.split() == ["MOCKUP", "1", "0", "0", "0", "1"]
    assert "PENDING due now: 2" in text
    assert "PENDING of a type no worker knows (PRINTING), never run: 1" in text
    client.drop_database(db)
    client.close()


def test_enqueue_prints_when_the_job_is_due(tmp_path: Path, secantus: Secantus) -> None:
    db = "e" + uuid.uuid4().hex[:10]
    env = tmp_path / ".env"
    env.write_text(f"DATABASE_URL={secantus.url(db)}\n")
    proc = run_cli("jobs", "enqueue", "MOCKUP", "--env-file", str(env), "--format", "json",
                   "--payload", json.dumps(mockup_payload(1)), "--run-at", "2030-01-02T03:04:05+01:00")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["availableAt"] == "2030-01-02T02:04:05.000Z"
    before = now()
    proc = run_cli("jobs", "enqueue", "MOCKUP", "--env-file", str(env), "--payload", json.dumps(mockup_payload(2)))
    line = proc.stdout.strip()
    assert line.startswith("enqueued MOCKUP job ") and ", due " in line and line.endswith("Z")
    due = dt.datetime.fromisoformat(line.rsplit(" ", 1)[1].replace("Z", "+00:00"))
    assert abs((due - before).total_seconds()) < 10
    client: MongoClient[dict[str, Any]] = MongoClient(secantus.uri)
    client.drop_database(db)
    client.close()


def test_status_honours_the_urls_server_selection_timeout_and_timeout_flag(tmp_path: Path) -> None:
    """Issue 15.8: a frozen-free but unreachable server: the URL's 20000 ms (not a hard-coded
    10 s) and ``--timeout 1`` decide how long ``jobs status`` waits."""
    import socket
    import time

    # a listening socket that never answers: server selection waits its whole timeout
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        port = silent.getsockname()[1]
        env = tmp_path / ".env"
        env.write_text(f"DATABASE_URL=mongodb://127.0.0.1:{port}/x?serverSelectionTimeoutMS=1500"
                       "&connectTimeoutMS=1500\n")
        started = time.monotonic()
        proc = run_cli("jobs", "status", "--env-file", str(env), "--format", "json")
        url_bound = time.monotonic() - started
        assert proc.returncode == 1, proc.stderr
        started = time.monotonic()
        flagged = run_cli("jobs", "status", "--env-file", str(env), "--timeout", "1")
        flag_bound = time.monotonic() - started
    assert flagged.returncode == 1, flagged.stderr
    # the hard-coded 10 s would take at least 10 s; the URL's 1.5 s and --timeout 1 well under it
    assert url_bound < 8 and flag_bound < 8, (url_bound, flag_bound)


def test_status_calls_not_yet_due_jobs_scheduled(tmp_path: Path, secantus: Secantus) -> None:
    env = tmp_path / ".env"
    env.write_text(f"DATABASE_URL={secantus.url('sched' + str(free_port()))}\n")
    assert run_cli("jobs", "enqueue", "MOCKUP", "--env-file", str(env), "--run-at", "+1d", "--payload",
                   '{"orderId": "o1", "outputAssetId": "a1", "productVariantId": "v1"}').returncode == 0
    proc = run_cli("jobs", "status", "--env-file", str(env))
    assert proc.returncode == 0, proc.stderr
    assert "PENDING scheduled (not yet due: --run-at or a retry waiting): 1" in proc.stdout, proc.stdout
