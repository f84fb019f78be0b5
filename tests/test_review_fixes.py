"""What an adversarial review of every command found, each now a test: secrets in malformed URLs and
exception text, --set taking secrets, deploy inventories that raise, ports and roots out of range."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from muzo_ops.logs import Logger
from muzo_ops.redact.redactor import Redactor
from tests.envdata import FULL, REDIS_PASSWORD, SECRETS, write_env
from tests.helpers import assert_no_secret, run_cli


@pytest.mark.parametrize("url", [f"rediss//:{REDIS_PASSWORD}@127.0.0.1", f"redis//:{REDIS_PASSWORD}@cache",
                                 f":{REDIS_PASSWORD}@127.0.0.1:6379"])
def test_a_mistyped_redis_url_never_shows_its_password(tmp_path: Path, url: str) -> None:
    path = write_env(tmp_path / ".env", {**FULL, "REDIS_URL": url})
    for fmt in ("text", "json"):
        proc = run_cli("check-env", "--env-file", str(path), "--format", fmt)
        assert proc.returncode == 1
        assert_no_secret(proc.stdout + proc.stderr, SECRETS)


def test_url_credentials_in_exception_text_are_masked_by_shape() -> None:
    stream = io.StringIO()
    log = Logger("muzo-worker", "info", stream, Redactor())
    try:
        raise RuntimeError("u=mongodb://bob:UnknownPw77@db.example.com/x r=redis://:UnknownRedisPw@r:6379")
    except RuntimeError as exc:
        log.log("error", "Job failed permanently", err=exc)
    text = stream.getvalue()
    assert "UnknownPw77" not in text and "UnknownRedisPw" not in text
    assert "mongodb://bob:***@db.example.com" in json.loads(text)["err"]["message"]


def test_set_never_echoes_a_pasted_secret_nor_takes_a_secret_shaped_value(tmp_path: Path) -> None:
    key = "sk_live_" + "PastedStripeKey0" * 2
    proc = run_cli("init-env", "--non-interactive", "--set", key, cwd=tmp_path)
    assert proc.returncode == 2 and key not in proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: --set argument 1 is not KEY=VALUE")
    proc = run_cli("init-env", "--non-interactive", "--set", f"S3_REGION={key}", cwd=tmp_path)
    assert proc.returncode == 2 and key not in proc.stdout + proc.stderr
    assert "looks like a secret key" in proc.stderr
    assert not (tmp_path / ".env").exists() or key not in (tmp_path / ".env").read_text()


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
