"""MetricsServer over real HTTP on 127.0.0.1, and attach() as a worker start-up calls it."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from muzo_ops.errors import ConfigError
from muzo_ops.metrics import attach
from muzo_ops.metrics.health import HealthState
from muzo_ops.metrics.observer import PrometheusObserver
from muzo_ops.metrics.server import MetricsServer, port_for
from muzo_ops.queue.events import JobInfo, Observer, Observers, Outcome, WorkerInfo
from muzo_ops.queue.jobs import JobType

INFO = WorkerInfo(worker_id="h:1:aaaaaa", version="0.1.0", queues=(JobType.MOCKUP,), concurrency=2,
                  transactions=False, change_streams=True)


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def test_port_for_offsets() -> None:
    assert port_for(9464, [JobType.GENERATION]) == 9464
    assert port_for(9464, ["mockup"]) == 9465
    assert port_for(9464, [JobType.FULFILLMENT, JobType.FULFILLMENT]) == 9466
    assert port_for(9464, [JobType.GENERATION, JobType.MOCKUP]) == 9464
    assert port_for(9464, []) == 9464


def test_serves_metrics_health_and_ready() -> None:
    metrics, health = PrometheusObserver(), HealthState()
    with MetricsServer(metrics.registry, health) as server:
        assert server.host == "127.0.0.1" and server.port > 0
        assert server._server is not None and server._server.server_address[0] == "127.0.0.1"  # loopback only
        code, _ctype, body = get(server.port, "/readyz")
        assert code == 503 and json.loads(body)["status"] == "starting"
        metrics.worker_ready(INFO)
        health.worker_ready(INFO)
        job = JobInfo("0" * 24, JobType.MOCKUP, 1, 3)
        metrics.job_started(job, 0.1)
        metrics.job_finished(job, Outcome.DONE, 0.3, None)
        code, ctype, body = get(server.port, "/metrics")
        assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        done = [s for s in families["muzo_worker_jobs"].samples
                if s.name == "muzo_worker_jobs_total" and s.labels["outcome"] == "done"]
        assert [(s.labels["queue"], s.value) for s in done] == [("mockup", 1.0)]
        code, ctype, body = get(server.port, "/healthz")
        assert (code, ctype) == (200, "application/json") and json.loads(body)["status"] == "ok"
        assert get(server.port, "/readyz")[0] == 200
        assert get(server.port, "/metrics?x=1")[0] == 200
        code, _ctype, body = get(server.port, "/healthz", "HEAD")
        assert (code, body) == (200, "")
        assert get(server.port, "/nope")[0] == 404
        health.worker_stopping()
        assert get(server.port, "/readyz")[0] == 503
        port = server.port
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_without_probe_health_paths_are_404() -> None:
    with MetricsServer(PrometheusObserver().registry) as server:
        assert get(server.port, "/healthz")[0] == 404
        assert get(server.port, "/metrics")[0] == 200


def test_busy_port_is_one_line_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            MetricsServer(PrometheusObserver().registry, port=port).start()
    assert f"cannot serve metrics on 127.0.0.1:{port}:" in str(err.value)
    assert "\n" not in str(err.value)


def test_stop_is_idempotent_and_start_twice_is_one_server() -> None:
    server = MetricsServer(PrometheusObserver().registry)
    server.start()
    port = server.port
    assert server.start().port == port
    server.stop()
    server.stop()


def test_attach_adds_observers_and_serves_them() -> None:
    observers: list[Observer] = []
    server = attach(observers, "127.0.0.1", 0)
    try:
        assert [type(o) for o in observers] == [PrometheusObserver, HealthState]
        fan = Observers(observers)
        assert get(server.port, "/readyz")[0] == 503
        fan.worker_ready(INFO)
        fan.claim_tick()
        assert get(server.port, "/readyz")[0] == 200
        assert get(server.port, "/healthz")[0] == 200
        body = get(server.port, "/metrics")[2]
        assert 'muzo_worker_info{change_streams="true",transactions="false",version="0.1.0",' \
               'worker_id="h:1:aaaaaa"} 1.0' in body
    finally:
        server.stop()


def test_metrics_port_whose_queue_offset_overflows_is_a_usage_error(tmp_path: Path) -> None:
    """Issue 15.7: --metrics-port 65535 on the mockup queue (65535 + 1): exit 2, one line."""
    from tests.helpers import run_cli

    env_file = tmp_path / ".env"
    env_file.write_text("DATABASE_URL=mongodb://127.0.0.1:1/muzo?serverSelectionTimeoutMS=500\n")
    done = run_cli("worker", "--env-file", str(env_file), "--queues", "mockup", "--metrics-port", "65535")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "65535" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "OverflowError" not in done.stderr


def test_half_open_connections_hold_a_bounded_number_of_threads() -> None:
    """Issue 15.5: 400 connections that never send a request hold at most the pool's threads
    (a thread each before), and once they are gone a scrape is answered again."""
    import threading
    import time

    metrics, health = PrometheusObserver(), HealthState()
    with MetricsServer(metrics.registry, health) as server:
        before = threading.active_count()
        opened = []
        try:
            for _ in range(400):
                opened.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            time.sleep(1.0)  # the server accepts them all meanwhile
            during = threading.active_count()
        finally:
            for sock in opened:
                sock.close()
        assert during - before <= 16, (before, during)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert get(server.port, "/healthz")[0] in (200, 503)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
