"""Bad input and unreachable servers end in one `error:` line with the right exit code, across commands:
a deploy inventory that raises, ports and folders out of range, worker settings that contradict each
other, a missing log file, a burst run against a database that is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.envdata import write_env
from tests.helpers import run_cli


@pytest.mark.parametrize("body", [
    'hosts = [\n',
    'hosts = ["@local"]\nraise ValueError("db sk_live_Planted0123456789")\n',
    'hosts = ["@local"]\nfoo = undefined_sk_live_Planted0123456789\n',
])
def test_an_inventory_that_fails_to_load_is_one_line_without_its_text(tmp_path: Path, body: str) -> None:
    inventory = tmp_path / "inv.py"
    inventory.write_text(body)
    env = write_env(tmp_path / ".env", {"NODE_ENV": "development",
                                        "DATABASE_URL": "mongodb://127.0.0.1:27017/muzo?serverSelectionTimeoutMS=30000"})
    proc = run_cli("deploy", "--inventory", str(inventory), "--env-file", str(env), "--dry")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: inventory {inventory} line ")
    assert "Planted" not in proc.stderr and "unexpected" not in proc.stderr and "Traceback" not in proc.stderr


def test_ports_and_roots_out_of_range_are_usage_errors(tmp_path: Path) -> None:
    proc = run_cli("jobs", "metrics", "--port", "99999")
    assert proc.returncode == 2 and "from 1 to 65535" in proc.stderr and "unexpected" not in proc.stderr
    missing = tmp_path / "no-such-root"
    for extra in ((), ("--check",)):
        proc = run_cli("render", *extra, "--root", str(missing))
        assert proc.returncode == 2 and "no such folder" in proc.stderr
    assert not missing.exists()


def test_a_burst_run_gives_up_on_an_unreachable_database(tmp_path: Path) -> None:
    from tests.servers import free_port

    env = tmp_path / "w.env"
    env.write_text(f"DATABASE_URL=mongodb://127.0.0.1:{free_port()}/muzo?serverSelectionTimeoutMS=1000\n")
    proc = run_cli("worker", "--env-file", str(env), "--burst", "--handler",
                   "GENERATION=muzo_ops.queue.handlers.demo:echo", timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ("error: MongoDB unreachable (connection refused): check DATABASE_URL and that the "
                           "server runs (muzo-ops check-env --connect)\n")
    assert "MongoDB connection error in worker loop" in proc.stdout


def test_a_retry_base_longer_than_the_cap_and_a_missing_log_file_are_usage_errors(tmp_path: Path) -> None:
    from muzo_ops.errors import ConfigError
    from muzo_ops.queue.worker import WorkerSettings

    with pytest.raises(ConfigError, match="retry base"):
        WorkerSettings.from_values({"DATABASE_URL": "mongodb://h/muzo"}, retry_base_s=10, retry_cap_s=1)
    with pytest.raises(ConfigError, match="retry base"):
        WorkerSettings.from_values({"DATABASE_URL": "mongodb://h/muzo", "WORKER_RETRY_BASE_SECONDS": "400"})
    proc = run_cli("secrets", "log", "--env-file", str(tmp_path / "nope"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "no such env file" in proc.stderr
