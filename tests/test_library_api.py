"""The library entry points, called directly (no subprocess): what the CLI, the
deploy and the secrets commands build on."""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

import pytest
from pymongo import MongoClient

from muzo_ops import Job, env
from muzo_ops.env.schema import App
from muzo_ops.errors import ConfigError
from muzo_ops.logs import Logger
from muzo_ops.queue.jobs import JobStatus, JobType
from muzo_ops.queue.worker import Worker, WorkerSettings
from muzo_ops.redact.redactor import Redactor
from tests.envdata import FULL, SECRETS, write_env
from tests.servers import Secantus
from tests.workers import mockup_payload, now, prisma_job


def test_check_values_needs_no_file() -> None:
    report = env.check_values(FULL, App.WORKER)
    assert report.ok and report.problems == []
    assert {v.name for v in report.variables} >= {"DATABASE_URL", "OPENAI_API_KEY"}
    assert "NEXTAUTH_SECRET" not in {v.name for v in report.variables}  # web only
    broken = env.check_values({**FULL, "WORKER_LOCK_SECONDS": "1e12"}, App.WORKER)
    assert [(p.variable, p.code) for p in broken.errors] == [("WORKER_LOCK_SECONDS", "invalid")]


def test_check_file_fills_the_redactor_and_reports_mode(tmp_path: Path) -> None:
    path = write_env(tmp_path / ".env", FULL)
    os.chmod(path, 0o644)
    redactor = Redactor()
    report = env.check_file(str(path), redactor=redactor)
    assert report.ok and [p.code for p in report.warnings] == ["file-permissions"]
    for secret in SECRETS:
        assert secret in redactor and redactor(f"x{secret}y") == "x***y"
    assert report.connections is None


def test_check_file_probes_report_progress(tmp_path: Path) -> None:
    from tests.servers import free_port

    port = free_port()
    path = write_env(tmp_path / ".env", {**FULL, "NODE_ENV": "development",
                                         "DATABASE_URL": f"mongodb://127.0.0.1:{port}/muzo"
                                         "?serverSelectionTimeoutMS=30000",
                                         "REDIS_URL": f"redis://127.0.0.1:{port}"})
    seen: list[str] = []
    report = env.check_file(str(path), App.WORKER, connect=True, timeout_s=0.5, progress=seen.append)
    assert seen == ["… connecting to MongoDB (timeout 0.5s)"]  # REDIS_URL is web-only
    assert report.connections is not None and [ok for ok, _ in report.connections] == [False]
    assert [p.code for p in report.errors] == ["mongo-unreachable"]


def test_worker_values_layers_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_env(tmp_path / "w.env", {"DATABASE_URL": "mongodb://a/muzo", "WORKER_QUEUES": "mockup"})
    monkeypatch.setenv("WORKER_QUEUES", "fulfillment")
    values = env.worker_values(str(path), explicit=True)
    assert values["DATABASE_URL"] == "mongodb://a/muzo" and values["WORKER_QUEUES"] == "fulfillment"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "mongodb://from-env/muzo")
    assert env.worker_values(".env", explicit=False)["DATABASE_URL"] == "mongodb://from-env/muzo"


def test_settings_from_values_variables_and_overrides() -> None:
    values = {"DATABASE_URL": "mongodb://h/muzo", "WORKER_QUEUES": "mockup", "WORKER_CONCURRENCY": "4",
              "GENERATION_WORKER_CONCURRENCY": "2", "WORKER_LOCK_SECONDS": "60", "WORKER_POLL_SECONDS": "0.5",
              "WORKER_DRAIN_TIMEOUT_SECONDS": "5", "WORKER_RETRY_BASE_SECONDS": "1",
              "WORKER_RETRY_CAP_SECONDS": "10", "WORKER_CHANGE_STREAMS": "off"}
    s = WorkerSettings.from_values(values)
    assert (s.queues, s.concurrency, s.lock_s, s.poll_s, s.drain_timeout_s, s.retry_base_s, s.retry_cap_s,
            s.change_streams) == ((JobType.MOCKUP,), 4, 60.0, 0.5, 5.0, 1.0, 10.0, False)
    s = WorkerSettings.from_values(values, queues="generation", concurrency=2, lock_s=9, change_streams=True)
    assert (s.queues, s.concurrency, s.lock_s, s.change_streams) == ((JobType.GENERATION,), 2, 9, True)
    legacy = WorkerSettings.from_values({"DATABASE_URL": "mongodb://h/muzo", "GENERATION_WORKER_CONCURRENCY": "3"})
    assert legacy.concurrency == 3
    with pytest.raises(ConfigError, match="WORKER_LOCK_SECONDS must be a number from 1 to 86400"):
        WorkerSettings.from_values({**values, "WORKER_LOCK_SECONDS": "inf"})
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        WorkerSettings.from_values({"DATABASE_URL": "postgres://x"})


def _insert(server: Secantus, db: str, docs: list[dict[str, object]]) -> MongoClient[dict[str, object]]:
    client: MongoClient[dict[str, object]] = MongoClient(server.url(db))
    client[db]["Job"].insert_many(docs)
    return client


async def _echo(job: Job) -> dict[str, object]:
    return {"echo": job.payload["orderId"]}


def test_burst_worker_in_process(secantus: Secantus) -> None:
    """A Worker object in this process: runs what is due, leaves scheduled jobs, returns 0."""
    import datetime as dt

    db = "inproc_burst"
    due = [prisma_job(payload=mockup_payload(i)) for i in range(5)]
    later = prisma_job(payload=mockup_payload(99), availableAt=now() + dt.timedelta(hours=1))
    client = _insert(secantus, db, [*due, later])
    stream = io.StringIO()
    settings = WorkerSettings.from_values({"DATABASE_URL": secantus.url(db)}, queues="mockup", concurrency=2,
                                          burst=True)
    worker = Worker(settings, {JobType.MOCKUP: _echo}, logger=Logger("muzo-worker", "info", stream))
    code = asyncio.run(asyncio.wait_for(worker.run(), timeout=60))
    assert code == 0
    jobs = {d["_id"]: d for d in client[db]["Job"].find()}
    for doc in due:
        assert jobs[doc["_id"]]["status"] == JobStatus.DONE.value
        assert jobs[doc["_id"]]["result"] == {"echo": doc["payload"]["orderId"]}  # type: ignore[index]
    assert jobs[later["_id"]]["status"] == JobStatus.PENDING.value
    messages = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
    assert messages.count("Job completed") == 5 and "No job due; burst run finished" in messages
    assert worker.stats["done"] == 5
    client.close()


def test_burst_worker_retries_then_fails_in_process(secantus: Secantus) -> None:
    db = "inproc_retry"
    job = prisma_job(payload=mockup_payload(1), max_attempts=2)
    client = _insert(secantus, db, [job])

    def broken(_job: Job) -> None:
        raise RuntimeError("provider down")

    settings = WorkerSettings.from_values({"DATABASE_URL": secantus.url(db)}, queues="mockup",
                                          retry_base_s=0.01, retry_cap_s=0.01, burst=True)
    stream = io.StringIO()
    codes = []
    for _ in range(2):  # the retry may not be due at once: a second burst run takes it
        worker = Worker(settings, {JobType.MOCKUP: broken}, logger=Logger("muzo-worker", "info", stream))
        asyncio.run(asyncio.sleep(0.05))
        codes.append(asyncio.run(asyncio.wait_for(worker.run(), timeout=60)))
    assert sorted(codes) == [0, 1]  # exit 1 from the run that failed the job for good
    doc = client[db]["Job"].find_one({"_id": job["_id"]})
    assert doc is not None and doc["status"] == JobStatus.FAILED.value and doc["attempts"] == 2
    assert doc["lastError"]["message"] == "provider down"
    client.close()


def test_logger_redacts_before_encoding_secrets_with_quotes_and_backslashes() -> None:
    secret = 'pa"ss\\wo\rd-with-"quotes"'
    stream = io.StringIO()
    log = Logger("muzo-worker", "info", stream, Redactor([secret]))
    try:
        raise ValueError(f"connect failed for {secret}")
    except ValueError as exc:
        log.log("error", "boom", err=exc, detail={"nested": [secret]}, **{f"key-{secret}": 1})
    text = stream.getvalue()
    encoded = json.dumps(secret)[1:-1]  # how the secret looks inside a JSON string
    assert secret not in text and encoded not in text and "wo\\\\rd" not in text
    record = json.loads(text)
    assert record["detail"] == {"nested": ["***"]} and "***" in record["err"]["message"]


def test_metrics_endpoint_from_the_env_file_or_the_flag() -> None:
    from muzo_ops import metrics

    assert metrics.endpoint({}) is None
    assert metrics.endpoint({"WORKER_METRICS_PORT": "9464"}) == ("127.0.0.1", 9464)
    assert metrics.endpoint({"WORKER_METRICS_PORT": "9464", "WORKER_METRICS_HOST": "0.0.0.0"}, 9500) == (
        "0.0.0.0", 9500)
    with pytest.raises(ConfigError, match="WORKER_METRICS_PORT must be a port number"):
        metrics.endpoint({"WORKER_METRICS_PORT": "99999"})
