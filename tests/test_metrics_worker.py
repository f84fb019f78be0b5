"""A real worker process with --metrics-port: /readyz, /metrics after known jobs, /healthz through an outage.

Runs once ``muzo-ops worker`` takes ``--metrics-port`` (the lead's wiring
of ``muzo_ops.metrics.attach``); skipped with the reason until then.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from muzo_ops import __version__
from tests.helpers import run_cli, wait_until
from tests.servers import Secantus, free_port, wait_port
from tests.workers import mockup_payload, prisma_job, start_worker


def _worker_takes_metrics_port() -> bool:
    proc = run_cli("worker", "--help")
    return proc.returncode == 0 and "--metrics-port" in proc.stdout


pytestmark = pytest.mark.skipif(not _worker_takes_metrics_port(), reason=(
    "`muzo-ops worker --help` has no --metrics-port yet: the worker start-up must call "
    "muzo_ops.metrics.attach (see docs/METRICS.md)"))


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()




Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    code, text = get(port, "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), -1.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _labels), v in samples.items() if n == name)


def test_worker_metrics_readiness_and_health_through_an_outage(tmp_path: Path) -> None:
    server = Secantus(tmp_path / "metrics-data")  # not started: the worker starts before MongoDB is up
    metrics_port = free_port()
    base = metrics_port - 1  # a mockup-only process binds base + 1
    worker = start_worker(tmp_path, server.url("metrics", serverSelectionTimeoutMS="1000"),
                          "--metrics-port", str(base), "--poll-seconds", "0.1", "--retry-base", "0.1",
                          "--retry-cap", "0.2", name="metrics", handler="MOCKUP=tests.handlers_for_tests:flaky")
    client: MongoClient[dict[str, Any]] | None = None
    try:
        wait_port(metrics_port, 30, worker.proc)
        code, body = get(metrics_port, "/readyz")
        assert code == 503 and json.loads(body)["ready"] is False
        assert get(metrics_port, "/healthz")[0] == 200  # starting, not dead
        wait_until(lambda: any(line.get("msg") == "MongoDB connection error in worker loop"
                               for line in worker.lines()), 30, "a connection error while MongoDB is down")

        server.start()
        wait_until(lambda: get(metrics_port, "/readyz")[0] == 200, 60, "ready once connected")
        client = MongoClient(server.uri, serverSelectionTimeoutMS=10000)
        jobs = client["metrics"]["Job"]
        docs = [prisma_job("MOCKUP", mockup_payload(i)) for i in range(3)]  # done at once
        docs.append(prisma_job("MOCKUP", mockup_payload(3, failTimes=2)))  # retried twice, then done
        docs.append(prisma_job("MOCKUP", mockup_payload(4, failTimes=9), max_attempts=2))  # retried, failed
        docs.append(prisma_job("MOCKUP", {"orderId": "x"}))  # invalid payload: failed at once
        jobs.insert_many(docs)
        wait_until(lambda: jobs.count_documents({"status": {"$in": ["DONE", "FAILED"]}}) == len(docs), 60,
                   "jobs settled")
        m = {"queue": "mockup", "type": "MOCKUP"}
        expected = {"done": 4.0, "retried": 3.0, "failed": 2.0, "lost": 0.0, "released": 0.0, "timed_out": 0.0}
        wait_until(lambda: all(one(scrape(metrics_port), "muzo_worker_jobs_total", outcome=o, **m) == n
                               for o, n in expected.items()), 10, "counters")
        got = scrape(metrics_port)
        runs = sum(expected.values())
        assert one(got, "muzo_worker_job_duration_seconds_count", **m) == runs
        assert one(got, "muzo_worker_job_duration_seconds_bucket", le="+Inf", **m) == runs
        assert one(got, "muzo_worker_job_wait_seconds_count", **m) == runs
        assert one(got, "muzo_worker_jobs_in_progress", queue="mockup") == 0.0
        assert one(got, "muzo_worker_concurrency") == 1.0
        assert total(got, "muzo_worker_db_errors_total") >= 1  # MongoDB was down at start
        assert time.time() - one(got, "muzo_worker_last_claim_timestamp_seconds") < 30
        info = [dict(labels) for (name, labels) in got if name == "muzo_worker_info"]
        assert len(info) == 1 and info[0]["version"] == __version__
        assert info[0]["transactions"] in ("true", "false") and info[0]["change_streams"] in ("true", "false")
        text = get(metrics_port, "/metrics")[1]
        assert not any(str(d["_id"]) in text for d in docs)
        assert json.loads(get(metrics_port, "/healthz")[1])["status"] == "ok"

        server.stop()
        wait_until(lambda: get(metrics_port, "/healthz")[0] == 503, 90, "healthz 503 in the outage")
        reasons = json.loads(get(metrics_port, "/healthz")[1])["reasons"]
        assert reasons[0].startswith("MongoDB out of reach for ")
        server.start()
        wait_until(lambda: get(metrics_port, "/healthz")[0] == 200, 60, "healthz 200 once MongoDB is back")
        assert worker.proc.poll() is None
    finally:
        if client is not None:
            client.close()
        code = worker.terminate()
        server.stop()
    assert code == 0
    with pytest.raises(OSError):
        get(metrics_port, "/metrics")  # the server stopped with the worker
