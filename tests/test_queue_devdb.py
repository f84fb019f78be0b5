"""Issue 7, the first run and the local server: dev-db stops its server whatever stops it,
and writes its URL into .env."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from tests.helpers import descendants
from tests.servers import free_port


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_dev_db(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "muzo_ops", "dev-db", "--port", str(port),
                             "--data", str(tmp_path / "dev"), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("DATABASE_URL="):
            return proc, lines
    proc.kill()
    raise AssertionError(f"dev-db did not print its URL: {lines}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_whatever_stops_dev_db_stops_its_server(tmp_path: Path, sig: signal.Signals) -> None:
    proc, _ = start_dev_db(tmp_path)
    servers = sorted(descendants(proc.pid))
    assert servers, "dev-db started no server process"
    os.kill(proc.pid, sig)
    proc.wait(30)
    deadline = time.monotonic() + 20
    while any(alive(p) for p in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in servers if alive(p)]
    for pid in left:  # do not leak it even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"SecantusDB left running after {sig.name} to dev-db"
    if sig is not signal.SIGKILL:
        assert proc.returncode == 0


def test_write_env_puts_a_url_that_reaches_the_server_into_env(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# mine\nNODE_ENV=development\nDATABASE_URL=mongodb://127.0.0.1:27017/muzo?replicaSet=rs0\n")
    env.chmod(0o600)
    proc, lines = start_dev_db(tmp_path, "--write-env")
    try:
        url = lines[-1].split("=", 1)[1]
        assert "replicaSet" not in url and "directConnection" not in url
        assert any(line.startswith("Wrote DATABASE_URL into .env") for line in lines), lines
        text = env.read_text()
        assert f"DATABASE_URL={url}" in text or f"DATABASE_URL='{url}'" in text or f'DATABASE_URL="{url}"' in text
        assert text.startswith("# mine\nNODE_ENV=development\n")
        client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=10000)
        hello = client.admin.command("hello")
        assert hello.get("setName") == "secantus"  # a replica-set member: transactions stay on
        client.close()
    finally:
        proc.terminate()
        proc.wait(30)
