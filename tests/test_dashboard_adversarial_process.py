"""Attacks on the served dashboard process: event streams that must not leak, a database stopped shorter and
longer than the timeouts (docs/DASHBOARD.md)."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo.collection import Collection

from tests.dashboard_helpers import basic, env_values, fresh_jobs
from tests.helpers import assert_no_secret
from tests.servers import Secantus
from tests.test_dashboard_adversarial import ALL_SECRETS, HEADERS, ODD_SECRET
from tests.workers import prisma_job

Doc = dict[str, Any]


# ---------------------------------------------------------------- invariant 5: a real server process


def _threads_and_fds(pid: int) -> tuple[int, int]:
    import os

    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def _open_events(port: int, count: int) -> list[Any]:
    """``count`` /events streams, each read until its ``hello``."""
    import socket

    request = (f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {basic()}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        sock.sendall(request)
        socks.append(sock)
    for sock in socks:
        seen = b""
        while b"event: hello" not in seen:
            chunk = sock.recv(4096)
            assert chunk, seen[:200]
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
        head = seen.split(b"\r\n\r\n", 1)[0].lower()  # security headers on the event stream too
        assert all(name.encode() in head for name in HEADERS), head
    return socks


def _hears_change(port: int, jobs: Collection[Doc]) -> bool:
    """Whether a new /events stream is sent ``change`` after a job is enqueued (within 20 s)."""
    import time

    (sock,) = _open_events(port, 1)
    sock.settimeout(0.5)
    heard = b""
    start = time.monotonic()
    inserted = False
    while b"event: change" not in heard and time.monotonic() < start + 20:
        if not inserted and time.monotonic() > start + 1.0:
            jobs.insert_one(prisma_job("MOCKUP"))
            inserted = True
        try:
            heard += sock.recv(4096)
        except TimeoutError:
            continue
    sock.close()
    return b"event: change" in heard


def test_served_process_sse_leak_and_frozen_database(tmp_path: Any, secantus: Secantus) -> None:
    """200 /events streams opened and closed: threads and descriptors come back to the baseline. The database
    stopped shorter and longer than the timeouts: /healthz answers, pages 503 in one line, back after SIGCONT."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from tests.servers import free_port, stop_pid, wait_port
    from tests.test_dashboard_cli import write_env

    assert secantus.proc is not None
    with fresh_jobs(secantus) as (jobs, _commands, url):
        jobs.insert_one(prisma_job("MOCKUP", status="FAILED"))
        env = write_env(tmp_path / ".env", {**env_values(url), "EMAIL_SERVER_PASSWORD": ODD_SECRET})
        port = free_port()
        out = tmp_path / "dashboard.out"
        with open(out, "wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "muzo_ops", "dashboard", "--env-file", str(env),
                                     "--host", "127.0.0.1", "--port", str(port)], stdout=sink,
                                    stderr=subprocess.STDOUT, env={**os.environ})
        try:
            wait_port(port, 30, proc)  # type: ignore[arg-type]
            base, auth = f"http://127.0.0.1:{port}", {"Authorization": basic()}
            assert httpx.get(f"{base}/", headers=auth, timeout=30).status_code == 200
            for sock in _open_events(port, 2):
                sock.close()
            time.sleep(1.5)
            baseline = _threads_and_fds(proc.pid)
            socks = _open_events(port, 200)
            during = _threads_and_fds(proc.pid)
            assert during[1] >= baseline[1] + 200  # the measure sees the 200 streams
            for sock in socks:
                sock.close()
            deadline = time.monotonic() + 20
            now_ = _threads_and_fds(proc.pid)
            while (now_[0] > baseline[0] or now_[1] > baseline[1] + 2) and time.monotonic() < deadline:
                time.sleep(0.5)
                now_ = _threads_and_fds(proc.pid)
            assert now_[0] <= baseline[0] and now_[1] <= baseline[1] + 2, (baseline, during, now_)
            assert httpx.get(f"{base}/jobs", headers=auth, timeout=30).status_code == 200
            assert _hears_change(port, jobs)  # live before the database stops

            # shorter than the timeouts: the page waits and answers
            os.kill(secantus.proc.pid, signal.SIGSTOP)
            try:
                time.sleep(1.0)
            finally:
                os.kill(secantus.proc.pid, signal.SIGCONT)
            assert httpx.get(f"{base}/jobs", headers=auth, timeout=30).status_code == 200

            # longer than the timeouts: one-line 503s, /healthz and the event streams still answer
            os.kill(secantus.proc.pid, signal.SIGSTOP)
            try:
                health = httpx.get(f"{base}/healthz", timeout=10)
                pages = [httpx.get(f"{base}{path}", headers=auth, timeout=60)
                         for path in ("/jobs?status=FAILED", f"/jobs/{ObjectId()}", "/api/overview")]
                health_during = httpx.get(f"{base}/healthz", timeout=10)
            finally:
                os.kill(secantus.proc.pid, signal.SIGCONT)
            assert health.status_code == 200 and health_during.status_code == 200
            assert [p.status_code for p in pages] == [503, 503, 503], [(p.status_code, p.text[:200]) for p in pages]
            assert "MongoDB" in pages[0].text and pages[2].json()["up"] is False
            deadline = time.monotonic() + 30
            back = httpx.get(f"{base}/jobs", headers=auth, timeout=30)
            while back.status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
                back = httpx.get(f"{base}/jobs", headers=auth, timeout=30)
            assert back.status_code == 200
            # live updates came back too: a stream opened now hears of a job enqueued now
            assert _hears_change(port, jobs)
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(15) == 0
        finally:
            stop_pid(proc)  # type: ignore[arg-type]
        text = out.read_text()
        assert_no_secret(text, ALL_SECRETS)
