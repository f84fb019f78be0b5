"""Bad input and scale for the env commands: one clean line or a check-env problem, never "unexpected"."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from muzo_ops import env as env_lib
from muzo_ops.env import envfile, mongourl, probes, schema
from tests.envdata import FULL, write_env
from tests.helpers import run_cli
from tests.servers import Secantus, free_port


def assert_clean(proc_out: str) -> None:
    assert "unexpected" not in proc_out and "Traceback" not in proc_out, proc_out[-800:]


def codes(stdout: str) -> set[tuple[str | None, str]]:
    return {(p["variable"], p["code"]) for p in json.loads(stdout)["problems"]}


@pytest.mark.parametrize("name,value", [
    ("EMAIL_SERVER_PORT", "²⁵"), ("EMAIL_SERVER_PORT", "５８７"), ("WORKER_CONCURRENCY", "³"),
    ("WORKER_LOCK_SECONDS", "3⁰⁰"), ("WORKER_POLL_SECONDS", "١"),
])
def test_non_ascii_digits_are_invalid_not_unexpected(tmp_path: Path, name: str, value: str) -> None:
    env = write_env(tmp_path / ".env", {**FULL, name: value})
    proc = run_cli("check-env", "--env-file", str(env), "--format", "json")
    assert_clean(proc.stdout + proc.stderr)
    assert proc.returncode == 1
    assert (name, "invalid") in codes(proc.stdout)
    proc = run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set", f"{name}={value}")
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {name} ")
    assert_clean(proc.stdout + proc.stderr)


@pytest.mark.parametrize("timeout", ["inf", "-inf", "nan", "1e300", "0", "-1", "x", "1e-400"])
def test_check_env_timeout_out_of_range_is_one_usage_line(tmp_path: Path, timeout: str) -> None:
    env = write_env(tmp_path / ".env", FULL)
    proc = run_cli("check-env", "--env-file", str(env), "--connect", "--timeout", timeout)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: argument --timeout")
    assert_clean(proc.stderr)


def test_an_at_sign_in_a_url_option_is_not_a_password(tmp_path: Path) -> None:
    url = "mongodb://db.internal:27017/muzo?directConnection=true&tls=true&serverSelectionTimeoutMS=30000&appName=ops@muzo"
    parsed = mongourl.parse(url)
    assert parsed.userinfo is None and parsed.hosts == "db.internal:27017" and parsed.database == "muzo"
    assert parsed.option("appName") == "ops@muzo"
    env = write_env(tmp_path / ".env", {**FULL, "DATABASE_URL": url})
    proc = run_cli("check-env", "--env-file", str(env), "--format", "json")
    assert proc.returncode == 0, proc.stdout
    # a password with an unencoded @ is still read as a password, and reported
    with_at = "mongodb://muzo:p@ss@db.internal:27017/muzo?appName=ops@muzo"
    assert mongourl.parse(with_at).hosts == "db.internal:27017"
    assert mongourl.userinfo_encoding_problem(mongourl.parse(with_at)) is not None
    slash = mongourl.parse("mongodb://muzo:12/34@db.internal/muzo")
    assert slash.hosts == "db.internal" and slash.userinfo == "muzo:12/34"


@pytest.mark.parametrize("url,message", [
    ("mongodb://db.internal:99999/muzo", "port"),
    ("mongodb+srv://cluster.example.com:27017/muzo", "SRV"),
    ("mongodb://db.internal:/muzo", "port"),
])
def test_urls_pymongo_would_refuse_are_invalid_in_check_env(tmp_path: Path, url: str, message: str) -> None:
    env = write_env(tmp_path / ".env", {**FULL, "DATABASE_URL": url})
    proc = run_cli("check-env", "--env-file", str(env), "--format", "json")
    assert proc.returncode == 1 and ("DATABASE_URL", "invalid") in codes(proc.stdout)
    assert any(message in p["message"] for p in json.loads(proc.stdout)["problems"])


def test_connect_keeps_the_whole_report_when_the_driver_refuses_the_url(tmp_path: Path) -> None:
    port = free_port()
    refused = (f"mongodb://127.0.0.1:{port}/muzo?serverSelectionTimeoutMS=30000"
               "&tlsInsecure=true&tlsAllowInvalidCertificates=true")
    env = write_env(tmp_path / ".env", {**FULL, "NODE_ENV": "development", "DATABASE_URL": refused,
                                        "REDIS_URL": f"redis://127.0.0.1:{free_port()}"})
    for fmt in ("json", "text"):
        proc = run_cli("check-env", "--env-file", str(env), "--connect", "--timeout", "0.5", "--format", fmt)
        assert_clean(proc.stdout + proc.stderr)
        assert proc.returncode == 1 and proc.stderr == ""
        if fmt == "json":
            data = json.loads(proc.stdout)
            assert len(data["variables"]) == len(schema.VARIABLES)
            refusal = [p for p in data["problems"] if p["code"] == "mongo-url-refused"]
            assert len(refusal) == 1 and "\n" not in refusal[0]["message"]
            assert "tlsInsecure and tlsAllowInvalidCertificates" in refusal[0]["message"]
            assert {c["ok"] for c in data["connections"]} == {False}
        else:
            assert "the driver refuses DATABASE_URL" in proc.stdout and "📊 Summary:" in proc.stdout
    # options the driver ignores are warnings, not stderr noise
    ignored = f"mongodb://127.0.0.1:{port}/muzo?serverSelectionTimeoutMS=30000&readPreference=bogus"
    result = probes.check_mongo(ignored, 0.3)
    assert not result.ok and result.code == "mongo-unreachable"
    assert len(result.warnings) == 1 and "read preference" in result.warnings[0]


def test_files_over_1_mib_are_refused_with_one_line(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL, extra="# " + "x" * (1 << 20) + "\n")
    proc = run_cli("check-env", "--env-file", str(env))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "over the 1024 KiB" in proc.stderr and str(env) in proc.stderr


def _values_seconds(lines: int, environ: dict[str, str] | None) -> float:
    text = "".join(f"X{i}=v{i}\n" if i % 10 else f"X{i}=${{X{i - 1}}}-x\n" for i in range(1, lines + 1))
    parsed = envfile.parse_text(text)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        values = parsed.values(environ)
        best = min(best, time.perf_counter() - started)
    assert values["X10"] == "v9-x"
    return best


@pytest.mark.parametrize("environ", [None, {"PATH": "/bin", "X5": "from-env"}])
def test_resolving_values_is_linear_in_the_file(environ: dict[str, str] | None) -> None:
    small, big = _values_seconds(5000, environ), _values_seconds(20000, environ)
    assert big / small < 8, (small, big)  # 4x the lines: linear ~4x; a scope copy per line gave ~16x


def test_check_env_on_40k_lines_takes_seconds_not_minutes(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL, extra="".join(f"X{i}=v{i}\n" for i in range(40000)))
    started = time.perf_counter()
    report = env_lib.check_file(str(env))
    assert time.perf_counter() - started < 5  # 8 s before in-process (quadratic), about 1.5 s after
    assert report.ok


def test_the_development_database_url_reaches_dev_db(tmp_path: Path, secantus: Secantus) -> None:
    proc = run_cli("init-env", "--non-interactive", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    url = envfile.read(str(tmp_path / ".env")).values()["DATABASE_URL"]
    parsed = mongourl.parse(url)
    assert parsed.option("replicaSet") is None and parsed.option("directConnection") is None
    local = url.replace("127.0.0.1:27017", f"127.0.0.1:{secantus.port}")
    result = probes.check_mongo(local, 5)
    assert result.ok, result.message
    assert "replica set secantus" in result.message and "transactions available" in result.message
