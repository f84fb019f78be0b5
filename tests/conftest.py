"""Fixtures: real servers (SecantusDB, redis-server) started here and stopped by PID."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import Redis, Secantus

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def secantus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secantus]:
    """One SecantusDB server for the session (advertises replica set `secantus`)."""
    server = Secantus(tmp_path_factory.mktemp("secantus") / "data")
    server.start()
    yield server
    server.stop()


MONGO_APP_PASSWORD = "Str0ng-Mongo-App-Pass-77"


@pytest.fixture(scope="module")
def secantus_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secantus]:
    """A SecantusDB with --auth and a user muzo_app (readWrite on muzo)."""
    from pymongo import MongoClient

    server = Secantus(tmp_path_factory.mktemp("secantus-auth") / "data")
    server.start()
    client: MongoClient[dict[str, object]] = MongoClient(server.uri)
    client.admin.command("createUser", "muzo_app", pwd=MONGO_APP_PASSWORD,
                         roles=[{"role": "readWrite", "db": "muzo"}])
    client.close()
    server.stop()
    server.auth = True
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = Redis(tmp_path_factory.mktemp("redis"), password="r3dis-test-pass-991")
    server.start()
    yield server
    server.stop()


def run_cli(*args: str, cwd: Path | None = None, stdin: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m muzo_ops ARGS`` in a real process; output captured."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "muzo_ops", *args], cwd=cwd, input=stdin, text=True,
        capture_output=True, env=full_env, timeout=timeout,
    )


def assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, "a secret value appeared in the output"
