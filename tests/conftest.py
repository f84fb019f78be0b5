"""Fixtures: real servers (SecantusDB, redis-server) started here and stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import MONGO_APP_PASSWORD
from tests.servers import Redis, Secantus


@pytest.fixture(scope="session")
def secantus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secantus]:
    """One SecantusDB server for the session (advertises replica set `secantus`)."""
    server = Secantus(tmp_path_factory.mktemp("secantus") / "data")
    server.start()
    yield server
    server.stop()


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
