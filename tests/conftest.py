"""Fixtures: real servers (SecantusDB, redis-server) started here and stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from tests.helpers import MONGO_APP_PASSWORD, descendants, process_table
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


@pytest.fixture
def dbname() -> str:
    """A fresh database name per test (dropped by ``jobs``)."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def jobs(secantus: Secantus, dbname: str) -> Iterator[Any]:
    """The ``Job`` collection of a fresh database on the session's SecantusDB."""
    client: MongoClient[dict[str, Any]] = MongoClient(secantus.uri, serverSelectionTimeoutMS=10000)
    yield client[dbname]["Job"]
    client.drop_database(dbname)
    client.close()


@pytest.fixture
def db(dbname: str, jobs: Any) -> tuple[str, Any]:
    """(database name, its ``Job`` collection)."""
    return dbname, jobs


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = Redis(tmp_path_factory.mktemp("redis"), password="r3dis-test-pass-991")
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------- nothing outlives the suite

SESSION_MARKER = "MUZO_OPS_TEST_SESSION"  # inherited by every process a test starts


XDIST_WORKER = "PYTEST_XDIST_WORKER"  # set by pytest-xdist in each of its worker processes
NSPAWN_FILES = ("test_deploy.py", "test_deploy_converge.py", "test_deploy_faults.py", "test_secrets_deploy.py")


def _inherited_marker() -> bool:
    """An xdist worker that got the run's marker from the controller: the controller checks at the end."""
    return bool(os.environ.get(XDIST_WORKER)) and bool(os.environ.get(SESSION_MARKER))


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _inherited_marker():
        os.environ[SESSION_MARKER] = uuid.uuid4().hex


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: without xdist it is never called
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``-n N``: a file's tests run on one worker, in order (module fixtures start once, and
    some files' tests build on each other), and the nspawn files share one worker (their hosts
    share this machine's network). Grouping by file path, not xdist_group marks, whose node-id
    suffix newer pytest versions drop."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "nspawn" if path.rsplit("/", 1)[-1] in NSPAWN_FILES else path

    return FileScheduling(config, log)


def _marked_processes(marker: str) -> list[tuple[int, str]]:
    """Live processes (not this one) whose environment carries ``marker``: the suite started them."""
    needle = f"{SESSION_MARKER}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if needle not in environ.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                found.append((int(entry), cmdline.read().replace(b"\0", b" ").decode(errors="replace")[:160]))
        except OSError:
            continue
    return found


def _descendants_and_group() -> list[tuple[int, str]]:
    """Live descendants of this process, and orphans in its process group (a child orphaned by its
    parent's death is reparented to init but stays in the group it was started in) started after
    this process: this catches what a test started with an environment of its own, without the
    session marker, and leaves alone what shares the group from outside (``pytest | tail``)."""
    table = process_table()
    me, group = os.getpid(), os.getpgid(0)
    started = table[me][2] if me in table else 0
    ancestors, pid = set(), me
    while pid in table and pid > 1:
        ancestors.add(pid)
        pid = table[pid][0]
    found = descendants(me, table)
    found |= {p for p, (pp, g, s) in table.items() if g == group and pp in (0, 1) and s >= started}
    left = []
    for pid in sorted(found - ancestors - {me}):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                left.append((pid, cmdline.read().replace(b"\0", b" ").decode(errors="replace")[:160]))
        except OSError:
            continue
    return left


def _left_running(marker: str) -> list[tuple[int, str]]:
    return sorted(set(_marked_processes(marker)) | set(_descendants_and_group()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a process a test started is still running once every fixture stopped;
    kill it so that nothing outlives the suite either way."""
    marker = os.environ.get(SESSION_MARKER)
    if not marker or _inherited_marker():
        return  # an xdist worker: its processes carry the controller's marker, checked there at the end
    deadline = time.monotonic() + 10
    left = _left_running(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _left_running(marker)
    if not left:
        return
    for pid, _cmd in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = "\n".join(f"  {pid} {cmd}" for pid, cmd in left)
    message = f"processes started by the tests were still running at the end (now killed):\n{lines}"
    if reporter is not None:
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
