"""``muzo-ops dashboard`` as a real process (uvicorn, SSE, SIGTERM); ``muzo-ops jobs list|show|cancel|retry|delete``."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

from muzo_ops.dashboard import create_app
from muzo_ops.logs import Logger
from muzo_ops.queue.store import CODEC_OPTIONS
from tests.dashboard_helpers import (
    DASHBOARD_PASSWORD,
    NEXTAUTH_SECRET,
    SECRETS,
    basic,
    env_values,
    fresh_jobs,
    secret_payload,
)
from tests.helpers import assert_no_secret, run_cli
from tests.servers import Secantus, free_port, stop_pid, wait_port
from tests.workers import prisma_job

Doc = dict[str, Any]


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return path


def test_bind_refused_without_password(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", env_values("mongodb://127.0.0.1:1/muzo", password=None))
    proc = run_cli("dashboard", "--env-file", str(env), "--host", "0.0.0.0", "--port", str(free_port()))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --host 0.0.0.0: without DASHBOARD_PASSWORD the dashboard binds "
                                  "127.0.0.1 only") and proc.stderr.count("\n") == 1
    assert run_cli("dashboard", "--help").stdout.count("example:") == 1


def test_served_process_auth_sse_and_sigterm(tmp_path: Path, secantus: Secantus) -> None:
    with fresh_jobs(secantus) as (jobs, _commands, url):
        jobs.insert_one(prisma_job("MOCKUP", secret_payload(), status="FAILED"))
        env = write_env(tmp_path / ".env", env_values(url))
        port = free_port()
        out = tmp_path / "dashboard.out"
        with open(out, "wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "muzo_ops", "dashboard", "--env-file", str(env),
                                     "--host", "127.0.0.1", "--port", str(port), "--allow-actions"],
                                    stdout=sink, stderr=subprocess.STDOUT, env={**os.environ})
        try:
            wait_port(port, 30, proc)  # type: ignore[arg-type]
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/healthz").text == "ok\n"
            assert httpx.get(f"{base}/").status_code == 401
            auth = {"Authorization": basic()}
            bodies = [httpx.get(f"{base}{path}", headers=auth) for path in ("/", "/jobs", "/api/overview")]
            assert [b.status_code for b in bodies] == [200, 200, 200]
            job_id = json.loads(run_cli("jobs", "list", "--env-file", str(env), "--format", "json").stdout)[
                "jobs"][0]["id"]
            bodies.append(httpx.get(f"{base}/jobs/{job_id}", headers=auth))
            events: list[str] = []
            with httpx.stream("GET", f"{base}/events", headers=auth, timeout=20) as stream:
                lines = stream.iter_lines()
                deadline = time.monotonic() + 20
                inserted = False
                for line in lines:
                    events.append(line)
                    if line.startswith("event: hello") and not inserted:
                        time.sleep(1.0)  # the feed's stream is open once the server has answered a request
                        jobs.insert_one(prisma_job("MOCKUP"))
                        inserted = True
                    if line == "event: change" or time.monotonic() > deadline:
                        break
            assert "event: change" in events, events
            for body in bodies:
                assert_no_secret(body.text, SECRETS)
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(15) == 0
        finally:
            stop_pid(proc)  # type: ignore[arg-type]
        text = out.read_text()
        assert "serving the job dashboard on http://127.0.0.1:" in text
        assert_no_secret(text, SECRETS)
        logged = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert any(x["msg"] == "dashboard live updates from a change stream" for x in logged), text


def test_polling_where_the_server_has_no_change_streams(tmp_path: Path) -> None:
    """A standalone server (no change streams): the feed falls back to polling by itself."""
    server = Secantus(tmp_path / "standalone", standalone=True)
    server.start()
    try:
        client: MongoClient[Doc] = MongoClient(server.uri)
        jobs = client["solo"].get_collection("Job", codec_options=CODEC_OPTIONS)
        log = io.StringIO()
        app = create_app(env_values(server.uri), jobs=jobs, poll_s=0.2,
                         logger=Logger("muzo-dashboard", stream=log))
        dash = app.app.state.dashboard  # type: ignore[attr-defined]
        dash.ready()
        deadline = time.monotonic() + 15
        while (dash.feed.mode != "polling" or dash.feed.version < 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        dash.feed.stop()
        assert dash.feed.mode == "polling" and dash.feed.version >= 2
        assert "change streams unavailable; dashboard polls" in log.getvalue()
        client.close()
    finally:
        server.stop()


def test_jobs_commands_share_the_dashboards_operations(tmp_path: Path, secantus: Secantus) -> None:
    with fresh_jobs(secantus) as (jobs, _commands, url):
        env = write_env(tmp_path / ".env", env_values(url))
        failed = prisma_job("MOCKUP", secret_payload(), status="FAILED", attempts=3,
                            lastError={"name": "E", "message": f"saw {NEXTAUTH_SECRET}", "stack": None})
        pending = prisma_job("MOCKUP")
        done = prisma_job("GENERATION", {}, status="DONE")
        running = prisma_job("MOCKUP", status="RUNNING", lockedBy="w1", attempts=1)
        jobs.insert_many([failed, pending, done, running] + [prisma_job("MOCKUP") for _ in range(5)])
        outputs: list[str] = []

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            proc = run_cli("jobs", *args, "--env-file", str(env))
            outputs.extend([proc.stdout, proc.stderr])
            return proc

        page = json.loads(cli("list", "--status", "pending", "--limit", "3", "--format", "json").stdout)
        assert len(page["jobs"]) == 3 and page["nextAfter"] == page["jobs"][-1]["id"]
        rest = json.loads(cli("list", "--status", "PENDING", "--after", page["nextAfter"], "--format", "json").stdout)
        assert len(rest["jobs"]) == 3 and rest["nextAfter"] is None
        assert str(failed["_id"]) in cli("list", "--status", "FAILED").stdout
        shown = json.loads(cli("show", str(failed["_id"]), "--format", "json").stdout)
        assert shown["payload"]["password"] == "***" and shown["lastError"]["message"] == "saw ***"
        assert "***" in cli("show", str(failed["_id"])).stdout

        proc = cli("retry", str(running["_id"]))
        assert proc.returncode == 1 and "RUNNING: a running job is never touched" in proc.stderr
        assert jobs.find_one({"_id": running["_id"]})["status"] == "RUNNING"
        assert cli("retry", str(failed["_id"])).returncode == 0
        assert jobs.find_one({"_id": failed["_id"]})["status"] == "PENDING"
        assert cli("cancel", str(pending["_id"])).returncode == 0
        assert jobs.find_one({"_id": pending["_id"]})["lastError"]["message"].startswith("cancelled by ")
        proc = cli("delete", str(running["_id"]))
        assert proc.returncode == 1
        assert cli("delete", str(done["_id"])).returncode == 0 and jobs.find_one({"_id": done["_id"]}) is None
        assert cli("delete", str(done["_id"])).returncode == 1  # gone: no such job
        bad = cli("show", "nope")
        assert bad.returncode == 2 and bad.stderr.startswith("error: job id 'nope': expected 24 hexadecimal")
        assert cli("list", "--status", "LATER").returncode == 2
        assert_no_secret("\n".join(outputs), [*SECRETS, DASHBOARD_PASSWORD])


def test_the_wheel_carries_templates_and_static_files(tmp_path: Path) -> None:
    from tests.helpers import copy_checkout

    source = copy_checkout(tmp_path / "src")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import zipfile

    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("static/htmx.min.js", "static/htmx.LICENSE.txt", "static/dashboard.js", "static/dashboard.css",
                 "static/favicon.svg", "templates/base.html", "templates/overview.html", "templates/list.html",
                 "templates/job.html", "templates/error.html"):
        assert f"muzo_ops/dashboard/{name}" in names, name
