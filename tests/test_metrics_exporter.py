"""The queue exporter (``jobs metrics``) against a real SecantusDB, its commands counted."""

from __future__ import annotations

import datetime as dt
import http.client
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient, monitoring
from pymongo.collection import Collection

from muzo_ops.cli.common import Parser
from muzo_ops.metrics import exporter as exporter_module
from muzo_ops.metrics.exporter import STATUSES, QueueExporter, exporter_registry
from tests.helpers import ROOT, run_cli
from tests.servers import Secantus, free_port, stop_pid, wait_port
from tests.workers import generation_payload, now, prisma_job

Doc = dict[str, Any]
COMMANDS_PER_SCRAPE = 24  # (6 capped counts + 2 oldest-due finds: dated, undated) x 3 job types


class Commands(monitoring.CommandListener):
    """Every database command the client sends (handshakes and heartbeats are not commands here)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(secantus: Secantus) -> Iterator[tuple[Collection[Doc], Commands]]:
    """A fresh database's Job collection, with the queue's indexes, on a client whose commands are counted."""
    name = "m" + uuid.uuid4().hex[:10]
    commands = Commands()
    client: MongoClient[Doc] = MongoClient(secantus.uri, event_listeners=[commands])
    jobs = client[name]["Job"]
    jobs.create_index([("type", 1), ("status", 1), ("availableAt", 1)])
    jobs.create_index([("status", 1), ("lockedUntil", 1)])
    commands.take()
    yield jobs, commands
    client.drop_database(name)
    client.close()


def scrape(exporter: QueueExporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(exporter_registry(exporter)).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def jobs_of(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], job_type: str, status: str) -> float:
    return got[("muzo_queue_jobs", (("status", status), ("type", job_type)))]


def test_counts_oldest_due_and_cache(db: tuple[Collection[Doc], Commands]) -> None:
    jobs, commands = db
    t = now()
    jobs.insert_many([
        prisma_job("MOCKUP", availableAt=t - dt.timedelta(seconds=120)),
        prisma_job("MOCKUP", availableAt=t - dt.timedelta(seconds=5)),
        prisma_job("MOCKUP", availableAt=t + dt.timedelta(hours=1)),
        prisma_job("MOCKUP", status="RUNNING", lockedBy="w", lockedUntil=t + dt.timedelta(minutes=5), attempts=1),
        prisma_job("MOCKUP", status="DONE", attempts=1),
        prisma_job("MOCKUP", status="DONE", attempts=1),
        prisma_job("MOCKUP", status="FAILED", attempts=3),
        prisma_job("GENERATION", generation_payload(), status="FAILED", attempts=3),
        prisma_job("FULFILLMENT", {"orderId": "o1"}, availableAt=t + dt.timedelta(seconds=30)),
        prisma_job("PRINTING", {}),  # not a type of ours: not counted, no label
    ])
    # due too, as `jobs status` counts them: no availableAt (the web app means "now"), or null
    undated = prisma_job("MOCKUP", minimal=True, createdAt=t - dt.timedelta(seconds=300))
    del undated["availableAt"]
    jobs.insert_many([undated, prisma_job("MOCKUP", availableAt=None)])
    commands.take()
    clock = Clock()
    exporter = QueueExporter(jobs, cache_s=5.0, clock=clock)
    got = scrape(exporter)
    assert commands.take() == (["aggregate"] * 6 + ["find"] * 2) * 3
    assert got[("muzo_queue_up", ())] == 1.0
    expected = {("MOCKUP", "PENDING_DUE"): 4, ("MOCKUP", "PENDING_SCHEDULED"): 1, ("MOCKUP", "RUNNING"): 1,
                ("MOCKUP", "DONE"): 2, ("MOCKUP", "FAILED"): 1, ("GENERATION", "FAILED"): 1,
                ("FULFILLMENT", "PENDING_SCHEDULED"): 1}
    for job_type in ("GENERATION", "MOCKUP", "FULFILLMENT"):
        for status in STATUSES:
            assert jobs_of(got, job_type, status) == expected.get((job_type, status), 0), (job_type, status)
            assert got[("muzo_queue_count_capped", (("status", status), ("type", job_type)))] == 0.0
    assert 299 <= got[("muzo_queue_oldest_due_age_seconds", (("type", "MOCKUP"),))] < 360
    assert got[("muzo_queue_oldest_due_age_seconds", (("type", "GENERATION"),))] == 0.0
    assert got[("muzo_queue_oldest_due_age_seconds", (("type", "FULFILLMENT"),))] == 0.0
    assert not any("PRINTING" in str(key) for key in got)

    # Within the cache time: no command at all, the same answer.
    jobs.insert_one(prisma_job("MOCKUP", status="DONE"))
    commands.take()
    clock.now += 4.9
    assert scrape(exporter) == got
    assert commands.take() == []
    clock.now += 0.2
    assert jobs_of(scrape(exporter), "MOCKUP", "DONE") == 3
    assert len(commands.take()) == COMMANDS_PER_SCRAPE


def test_commands_per_scrape_do_not_grow_with_the_collection(db: tuple[Collection[Doc], Commands]) -> None:
    jobs, commands = db
    exporter = QueueExporter(jobs, cache_s=0.0, cap=200)
    scrape(exporter)
    small = commands.take()
    t = now()
    jobs.insert_many([prisma_job("MOCKUP", status="DONE", createdAt=t) for _ in range(350)]
                     + [prisma_job("GENERATION", generation_payload(), availableAt=t - dt.timedelta(seconds=i))
                        for i in range(120)])
    commands.take()
    got = scrape(exporter)
    big = commands.take()
    assert small == big and len(big) == COMMANDS_PER_SCRAPE
    # DONE above the cap is reported as the cap, flagged.
    assert jobs_of(got, "MOCKUP", "DONE") == 200
    assert got[("muzo_queue_count_capped", (("status", "DONE"), ("type", "MOCKUP")))] == 1.0
    assert jobs_of(got, "GENERATION", "PENDING_DUE") == 120
    assert got[("muzo_queue_count_capped", (("status", "PENDING_DUE"), ("type", "GENERATION")))] == 0.0
    assert 119 <= got[("muzo_queue_oldest_due_age_seconds", (("type", "GENERATION"),))] < 200


def test_concurrent_scrapes_query_once(db: tuple[Collection[Doc], Commands]) -> None:
    jobs, commands = db
    exporter = QueueExporter(jobs, cache_s=30.0)
    results: list[float] = []

    def one_scrape() -> None:
        results.append(jobs_of(scrape(exporter), "MOCKUP", "DONE"))

    threads = [threading.Thread(target=one_scrape) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [0.0] * 4
    assert len(commands.take()) == COMMANDS_PER_SCRAPE


def index_scans(plan: Any) -> list[dict[str, Any]]:
    """Every planned IXSCAN stage (with its key pattern) anywhere in an explain answer."""
    if isinstance(plan, dict):
        found = [plan] if plan.get("stage") == "IXSCAN" and "keyPattern" in plan else []
        return found + [scan for v in plan.values() for scan in index_scans(v)]
    if isinstance(plan, list):
        return [scan for v in plan for scan in index_scans(v)]
    return []


def test_counts_and_oldest_due_run_on_the_first_index(db: tuple[Collection[Doc], Commands]) -> None:
    jobs, _commands = db
    t = now()
    jobs.insert_many([prisma_job("MOCKUP", status="DONE") for _ in range(60)]
                     + [prisma_job("MOCKUP", availableAt=t - dt.timedelta(seconds=i)) for i in range(60)])
    cap = 10  # (SecantusDB's explain ignores $limit/limit in keys examined: not checked here)
    first_index = {"type": 1, "status": 1, "availableAt": 1}
    for job_type in exporter_module.JobType:
        for status in STATUSES:
            query = exporter_module.status_query(job_type, status, t)
            assert query["type"] == job_type.value
            assert query["status"] == ("PENDING" if status.startswith("PENDING") else status)
            # the pipeline pymongo's count_documents(query, limit=cap) sends
            pipeline = [{"$match": query}, {"$limit": cap}, {"$group": {"_id": 1, "n": {"$sum": 1}}}]
            plan = jobs.database.command("explain", {"aggregate": "Job", "pipeline": pipeline, "cursor": {}})
            scans = index_scans(plan)
            assert scans and all(s["keyPattern"] == first_index for s in scans), (job_type, status, plan)
    plan = jobs.find(exporter_module.status_query(exporter_module.JobType.MOCKUP, "PENDING_DUE", t),
                     {"availableAt": 1, "_id": 0}).sort("availableAt", 1).limit(1).explain()
    assert [s["keyPattern"] for s in index_scans(plan)][:1] == [first_index]


def test_unreachable_database_is_up_0_not_an_error() -> None:
    client: MongoClient[Doc] = MongoClient(f"mongodb://127.0.0.1:{free_port()}/x?serverSelectionTimeoutMS=300")
    try:
        got = scrape(QueueExporter(client["x"]["Job"]))
    finally:
        client.close()
    assert got == {("muzo_queue_up", ()): 0.0, ("muzo_queue_scrape_duration_seconds", ()): pytest.approx(
        got[("muzo_queue_scrape_duration_seconds", ())])}
    assert got[("muzo_queue_scrape_duration_seconds", ())] >= 0.25


def test_healthz_answers_through_a_database_outage_and_readyz_says_it(secantus: Secantus) -> None:
    """The deploy gates the exporter's unit on /healthz: it must say the process works whether or not
    MongoDB answers (an outage must not roll a good exporter back); /readyz says whether it does."""
    port = free_port()
    for url, ready in ((secantus.url("m" + uuid.uuid4().hex[:10]), 200),
                       (f"mongodb://127.0.0.1:{free_port()}/x?serverSelectionTimeoutMS=300", 503)):
        stop = threading.Event()
        thread = threading.Thread(target=exporter_module.serve, kwargs={
            "values": {"DATABASE_URL": url}, "port": port, "stop": stop}, daemon=True)
        thread.start()
        try:
            wait_port(port, 10)
            codes = {}
            for path in ("/healthz", "/readyz"):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", path)
                codes[path] = conn.getresponse().status
                conn.close()
            assert codes == {"/healthz": 200, "/readyz": ready}
        finally:
            stop.set()
            thread.join(10)
        assert not thread.is_alive()


def test_serve_over_http_until_stopped(secantus: Secantus) -> None:
    port = free_port()
    stop = threading.Event()
    lines: list[str] = []
    values = {"DATABASE_URL": secantus.url("m" + uuid.uuid4().hex[:10])}
    thread = threading.Thread(target=exporter_module.serve, kwargs={
        "values": values, "port": port, "on_ready": lines.append, "stop": stop}, daemon=True)
    thread.start()
    try:
        wait_port(port, 10)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        assert resp.status == 200
        names = {f.name for f in text_string_to_metric_families(body)}
        assert {"muzo_queue_jobs", "muzo_queue_oldest_due_age_seconds", "muzo_queue_count_capped",
                "muzo_queue_up"} <= names
        assert 'muzo_queue_up 1.0' in body
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert lines == [f"serving queue metrics on http://127.0.0.1:{port}/metrics (cache 5s, counts capped at 100000)"]


def parser() -> Parser:
    from muzo_ops.cli import metrics as metrics_cli

    top = Parser(prog="muzo-ops jobs")
    sub = top.add_subparsers(dest="jobs_command", parser_class=Parser)
    metrics_cli.add_parser(sub)
    return top


def test_cli_parser() -> None:
    args = parser().parse_args(["metrics", "--port", "9470"])
    assert (args.port, args.host, args.cache_seconds, args.cap, args.env_file) == (9470, "127.0.0.1", 5.0,
                                                                                   100_000, ".env")
    assert callable(args.func)
    args = parser().parse_args(["metrics", "--port", "1", "--host", "0.0.0.0", "--env-file", "x.env"])
    assert (args.host, args.env_file) == ("0.0.0.0", "x.env")


@pytest.mark.parametrize("argv", [["metrics"], ["metrics", "--port", "0"], ["metrics", "--port", "x"]])
def test_cli_parser_rejects(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def _jobs_metrics_wired() -> bool:
    return run_cli("jobs", "metrics", "--help").returncode == 0


@pytest.mark.skipif(not _jobs_metrics_wired(), reason="`muzo-ops jobs metrics` is not registered in "
                    "muzo_ops/cli/queue.py yet (the lead adds metrics_commands.add_parser(jsub))")
def test_jobs_metrics_command_process(tmp_path: Path, secantus: Secantus) -> None:
    env = tmp_path / ".env"
    env.write_text(f"DATABASE_URL={secantus.url('m' + uuid.uuid4().hex[:10])}\n")
    port = free_port()
    full = {**os.environ}
    full.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen([sys.executable, "-m", "muzo_ops", "jobs", "metrics", "--port", str(port),
                             "--env-file", str(env)], cwd=ROOT, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_port(port, 20, proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
        conn.close()
        assert 'muzo_queue_jobs{status="PENDING_DUE",type="MOCKUP"} 0.0' in body
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert out.startswith(f"serving queue metrics on http://127.0.0.1:{port}/metrics")
    finally:
        stop_pid(proc)


def test_a_scrape_against_a_frozen_server_is_bounded(tmp_path: Path) -> None:
    """Issue 15.6: the server frozen (SIGSTOP) mid-life: the scrape ends up=0 within the
    documented 10 s (it took 16 s)."""
    import time

    from muzo_ops.queue.admin import connect_from_values

    server = Secantus(tmp_path / "frozen-data")
    server.start()
    try:
        store = connect_from_values({"DATABASE_URL": server.url("frozen", serverSelectionTimeoutMS="30000")},
                                    exporter_module.DB_TIMEOUT_S)
        store.jobs.insert_one(prisma_job("MOCKUP"))
        exporter = QueueExporter(store.jobs, cache_s=0.0)
        assert scrape(exporter)[("muzo_queue_up", ())] == 1.0
        os.kill(server.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            started = time.monotonic()
            got = scrape(exporter)
            took = time.monotonic() - started
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        assert got[("muzo_queue_up", ())] == 0.0
        assert took < 10.0, took
        store.jobs.database.client.close()
    finally:
        server.stop()
