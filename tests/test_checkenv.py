"""check-env: every rule, the output shapes, exit codes, and no secret printed."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from muzo_ops.env import checks
from muzo_ops.env.schema import App
from tests.envdata import FULL, MONGO_PASSWORD, SECRETS, write_env
from tests.helpers import assert_no_secret, run_cli


def codes(values: dict[str, str], app: App | None = None) -> dict[str, tuple[str, str | None]]:
    report = checks.check(values, app)
    return {p.code: (p.severity.value, p.variable) for p in report.problems}


def test_full_environment_passes() -> None:
    report = checks.check(FULL)
    assert report.problems == []
    assert all(v.valid for v in report.variables if v.required)


URL = FULL["DATABASE_URL"]


@pytest.mark.parametrize(
    ("change", "code", "severity", "variable"),
    [
        ({"S3_BUCKET": ""}, "missing", "error", "S3_BUCKET"),
        ({"EMAIL_SERVER_HOST": None}, "missing", "error", "EMAIL_SERVER_HOST"),
        ({"DATABASE_URL": "postgres://x/y"}, "invalid", "error", "DATABASE_URL"),
        ({"REDIS_URL": "http://cache:6379"}, "invalid", "error", "REDIS_URL"),
        ({"S3_FORCE_PATH_STYLE": "nope"}, "invalid", "error", "S3_FORCE_PATH_STYLE"),
        ({"EMAIL_SERVER_PORT": "smtp"}, "invalid", "error", "EMAIL_SERVER_PORT"),
        ({"EMAIL_FROM": "not an address"}, "invalid", "error", "EMAIL_FROM"),
        ({"STRIPE_SECRET_KEY": "pk_test_abc"}, "invalid", "error", "STRIPE_SECRET_KEY"),
        ({"WORKER_QUEUES": "generation,printing"}, "invalid", "error", "WORKER_QUEUES"),
        ({"GENERATION_WORKER_CONCURRENCY": "0"}, "invalid", "error", "GENERATION_WORKER_CONCURRENCY"),
        ({"NODE_ENV": "staging"}, "invalid", "error", "NODE_ENV"),
        ({"NEXTAUTH_SECRET": "short-secret-123"}, "invalid", "error", "NEXTAUTH_SECRET"),
        ({"QUEUE_TRANSACTIONS": "maybe"}, "invalid", "error", "QUEUE_TRANSACTIONS"),
        ({"DATABASE_URL": URL + "&replicaSet=rs0"}, "mongo-direct-and-replicaset", "error", "DATABASE_URL"),
        ({"DATABASE_URL": URL.replace("&serverSelectionTimeoutMS=30000", "")},
         "mongo-timeout-missing", "warning", "DATABASE_URL"),
        ({"DATABASE_URL": URL.replace("30000", "5000")}, "mongo-timeout-low", "warning", "DATABASE_URL"),
        ({"DATABASE_URL": URL + "&tlsAllowInvalidCertificates=true"}, "mongo-tls-insecure", "error",
         "DATABASE_URL"),
        ({"DATABASE_URL": URL + "&tlsInsecure=true"}, "mongo-tls-insecure", "error", "DATABASE_URL"),
        ({"DATABASE_URL": URL.replace(MONGO_PASSWORD, "p@ss:w/rd")}, "mongo-password-encoding", "error",
         "DATABASE_URL"),
        ({"DATABASE_URL": URL.replace(MONGO_PASSWORD, "100%sure")}, "mongo-password-encoding", "error",
         "DATABASE_URL"),
        ({"NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY": FULL["STRIPE_SECRET_KEY"]}, "secret-in-public", "error",
         "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY"),
        ({"NEXT_PUBLIC_ANALYTICS": "rk_live_abcdef"}, "secret-in-public", "error", "NEXT_PUBLIC_ANALYTICS"),
        ({"STRIPE_SECRET_KEY": "sk_test_51Hreal0000000000abc"}, "stripe-mode-mixed", "error",
         "STRIPE_SECRET_KEY"),
        ({"NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY": "pk_live_51Hother00000000000pub"},
         "stripe-publishable-differ", "warning", "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY"),
        ({"NEXTAUTH_URL": "http://muzo.app"}, "nextauth-url-not-https", "error", "NEXTAUTH_URL"),
        ({"S3_BUCKET": "your-bucket-name"}, "placeholder", "error", "S3_BUCKET"),
        ({"RUNPOD_API_KEY": "replace-me"}, "placeholder", "error", "RUNPOD_API_KEY"),
        ({"OPENAI_API_KEY": "change-me"}, "placeholder", "error", "OPENAI_API_KEY"),
        ({"CLOUDPRINTER_API_KEY": "xxx"}, "placeholder", "error", "CLOUDPRINTER_API_KEY"),
        ({"EMAIL_SERVER_USER": "<smtp user>"}, "placeholder", "error", "EMAIL_SERVER_USER"),
        ({"S3_REGION": "eu-your-region"}, "placeholder", "error", "S3_REGION"),
        ({"DATABSE_URL": "mongodb://x"}, "unknown-variable-typo", "warning", "DATABSE_URL"),
    ],
)
def test_rule(change: dict[str, str | None], code: str, severity: str, variable: str) -> None:
    values = dict(FULL)
    for key, value in change.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    found = codes(values)
    assert found.get(code) == (severity, variable), found


def test_dollar_names_that_next_would_expand_are_flagged() -> None:
    raw = {**FULL, "EMAIL_SERVER_PASSWORD": "pa$word-real-42"}
    report = checks.check(raw, raw=raw)
    found = {p.code: (p.severity.value, p.variable) for p in report.problems}
    assert found == {"dollar-expansion": ("warning", "EMAIL_SERVER_PASSWORD")}
    message = report.problems[0].message
    assert "pa$word" not in message
    assert checks.check(FULL, raw={**FULL, "EMAIL_SERVER_PASSWORD": "cost-5$-ok"}).problems == []


def test_insecure_tls_is_only_a_warning_outside_production() -> None:
    values = {**FULL, "NODE_ENV": "development",
              "NEXTAUTH_URL": "http://localhost:3000",
              "DATABASE_URL": URL + "&tlsAllowInvalidCertificates=true"}
    assert codes(values)["mongo-tls-insecure"] == ("warning", "DATABASE_URL")


def test_typo_message_says_did_you_mean() -> None:
    report = checks.check({**FULL, "DATABSE_URL": "x"})
    assert "DATABSE_URL: did you mean DATABASE_URL?" in [p.message for p in report.problems]


def test_password_fix_names_the_encoding_not_the_password() -> None:
    report = checks.check({**FULL, "DATABASE_URL": URL.replace(MONGO_PASSWORD, "pa@ss")})
    message = next(p.message for p in report.problems if p.code == "mongo-password-encoding")
    assert "@ → %40" in message and "pa@ss" not in message


def test_app_filter_checks_only_that_app() -> None:
    values = {k: v for k, v in FULL.items() if k not in ("REDIS_URL", "RUNPOD_API_KEY")}
    worker = codes(values, App.WORKER)
    web = codes(values, App.WEB)
    assert worker == {"missing": ("error", "RUNPOD_API_KEY")}
    assert web == {"missing": ("error", "REDIS_URL")}


def test_false_means_false() -> None:
    from muzo_ops.env.schema import parse_bool

    assert [parse_bool(w) for w in ("false", "False", "0", "no", "OFF")] == [False] * 5
    assert [parse_bool(w) for w in ("true", "1", "YES", "on")] == [True] * 4
    with pytest.raises(ValueError):
        parse_bool("maybe")


# ------------------------------------------------------------- the command


def test_text_output_shape_and_exit_0(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    proc = run_cli("check-env", "--env-file", str(env))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "✅ DATABASE_URL" in out and "[REQUIRED]" in out and "[OPTIONAL]" in out
    assert "🔍 Special Checks" in out
    assert "DATABASE_URL: Direct connection mode (no transactions)" in out
    assert "Required: 20/20 configured" in out
    assert "Optional: 9/28 configured" in out  # 10 of the reference, 18 of muzo_ops
    assert "⚪ QUEUE_TRANSACTIONS" in out
    assert_no_secret(out + proc.stderr, SECRETS)


def test_json_shape_and_exit_1_on_errors(tmp_path: Path) -> None:
    values = {**FULL, "DATABASE_URL": URL + "&replicaSet=rs0"}
    values.pop("OPENAI_API_KEY")
    env = write_env(tmp_path / ".env", values)
    proc = run_cli("check-env", "--env-file", str(env), "--format", "json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert set(data) == {"ok", "problems", "variables"}
    assert data["ok"] is False
    assert {p["code"] for p in data["problems"]} == {"missing", "mongo-direct-and-replicaset"}
    for problem in data["problems"]:
        assert set(problem) == {"variable", "severity", "code", "message"}
    for var in data["variables"]:
        assert set(var) == {"name", "required", "present", "valid", "value"}
    openai = next(v for v in data["variables"] if v["name"] == "OPENAI_API_KEY")
    assert openai == {"name": "OPENAI_API_KEY", "required": True, "present": False, "valid": False,
                      "value": None}
    db = next(v for v in data["variables"] if v["name"] == "DATABASE_URL")
    assert db["value"].startswith("mongodb://muzo_app:***@db.internal")
    assert_no_secret(proc.stdout + proc.stderr, SECRETS)


def test_strict_turns_warnings_into_exit_1(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", {**FULL, "DATABASE_URL": URL.replace("30000", "3000")})
    assert run_cli("check-env", "--env-file", str(env)).returncode == 0
    assert run_cli("check-env", "--env-file", str(env), "--strict").returncode == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('A=1\nDATABASE_URL="mongodb://x\nB=2\n', 'line 2: unterminated quote in DATABASE_URL'),
        ("A=1\n\n=oops\n", "line 3: cannot parse this line"),
    ],
)
def test_malformed_file_is_exit_2_with_line(tmp_path: Path, text: str, message: str) -> None:
    env = tmp_path / ".env"
    env.write_text(text)
    proc = run_cli("check-env", "--env-file", str(env))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_line_does_not_echo_the_value(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("EMAIL_SERVER_PASSWORD='hunter2-very-secret\n")
    proc = run_cli("check-env", "--env-file", str(env))
    assert proc.returncode == 2 and "hunter2" not in proc.stderr


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    proc = run_cli("check-env", "--env-file", str(tmp_path / "nope.env"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    bad = tmp_path / "latin1.env"
    bad.write_bytes(b"A=1\nB=caf\xe9\n")
    proc = run_cli("check-env", "--env-file", str(bad))
    assert proc.returncode == 2 and "line 2: not UTF-8" in proc.stderr


def test_values_come_from_the_file_unless_include_environ(tmp_path: Path) -> None:
    values = dict(FULL)
    values.pop("S3_BUCKET")
    env = write_env(tmp_path / ".env", values)
    extra = {"S3_BUCKET": "from-environ"}
    assert run_cli("check-env", "--env-file", str(env), env=extra).returncode == 1
    proc = run_cli("check-env", "--env-file", str(env), "--include-environ", env=extra)
    assert proc.returncode == 0, proc.stdout
    # the process environment wins over the file
    proc = run_cli("check-env", "--env-file", str(env), "--include-environ",
                   env={"S3_BUCKET": "x", "NODE_ENV": "staging"})
    assert proc.returncode == 1 and "NODE_ENV must be one of" in proc.stdout


def test_env_file_open_to_others_is_a_warning(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    env.chmod(0o644)
    proc = run_cli("check-env", "--env-file", str(env), "--format", "json")
    problems = json.loads(proc.stdout)["problems"]
    assert [(p["code"], p["severity"], p["variable"]) for p in problems] == [("file-permissions", "warning", None)]
    assert "chmod 600" in problems[0]["message"]
    assert run_cli("check-env", "--env-file", str(env), "--strict").returncode == 1
    proc = run_cli("init-env", "--env-file", str(env), "--non-interactive")
    assert "0600" in proc.stdout and env.stat().st_mode & 0o777 == 0o600  # fixed (with or without additions)


def test_debug_shows_traceback_only_with_flag(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text('A="x\n')
    assert "Traceback" in run_cli("--debug", "check-env", "--env-file", str(env)).stderr


# ------------------------------------------------------------- --connect


def test_connect_ok_against_real_servers(tmp_path: Path, secantus, redis_server) -> None:  # type: ignore[no-untyped-def]
    values = {**FULL, "NODE_ENV": "development",  # local servers: not production
              "DATABASE_URL": secantus.url("muzo", directConnection="true",
                                           serverSelectionTimeoutMS="30000"),
              "REDIS_URL": redis_server.url}
    env = write_env(tmp_path / ".env", values)
    proc = run_cli("check-env", "--env-file", str(env), "--connect")
    assert proc.returncode == 0, proc.stdout
    assert "MongoDB 127.0.0.1:" in proc.stdout and "ping ok, server" in proc.stdout
    assert "no transactions" in proc.stdout  # directConnection=true: the URL rule decides
    assert "Redis 127.0.0.1:" in proc.stdout and "PING ok" in proc.stdout
    assert_no_secret(proc.stdout + proc.stderr, [*SECRETS, redis_server.password])
    # replica-set URL: the server's hello says so
    values["DATABASE_URL"] = secantus.url("muzo", serverSelectionTimeoutMS="30000")
    env = write_env(tmp_path / ".env", values)
    proc = run_cli("check-env", "--env-file", str(env), "--connect", "--format", "json")
    data = json.loads(proc.stdout)
    assert data["connections"][0]["ok"] is True
    assert "replica set secantus, transactions available" in data["connections"][0]["message"]


def test_connect_unreachable_is_an_error_line_within_timeout(tmp_path: Path, redis_server) -> None:  # type: ignore[no-untyped-def]
    from tests.servers import free_port

    port = free_port()
    values = {**FULL,
              "DATABASE_URL": f"mongodb://muzo_app:{MONGO_PASSWORD}@127.0.0.1:{port}/muzo"
                              "?directConnection=true&serverSelectionTimeoutMS=30000",
              "REDIS_URL": redis_server.url.replace(redis_server.password, "wrong-password-1")}
    env = write_env(tmp_path / ".env", values)
    start = time.monotonic()
    proc = run_cli("check-env", "--env-file", str(env), "--connect", "--timeout", "1")
    assert time.monotonic() - start < 20
    assert proc.returncode == 1
    assert f"MongoDB 127.0.0.1:{port}: unreachable within 1s" in proc.stdout
    assert "Redis 127.0.0.1" in proc.stdout and "authentication failed" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert_no_secret(proc.stdout + proc.stderr, [*SECRETS, "wrong-password-1"])


def test_plain_check_env_does_not_import_heavy_modules(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    code = ("import sys; from muzo_ops.cli import main; rc = main(['check-env', '--env-file', "
            f"{str(env)!r}]); heavy = [m for m in ('pymongo', 'pyinfra', 'jinja2', 'redis') "
            "if m in sys.modules]; print('HEAVY', heavy)")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout[-300:]


def test_connect_checks_authentication_and_privileges(tmp_path: Path, secantus_auth) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import MONGO_APP_PASSWORD

    def run(userinfo: str) -> subprocess.CompletedProcess[str]:
        url = (f"mongodb://{userinfo}127.0.0.1:{secantus_auth.port}/muzo?directConnection=true"
               "&authSource=admin&serverSelectionTimeoutMS=30000")
        env = write_env(tmp_path / ".env", {**FULL, "NODE_ENV": "development", "DATABASE_URL": url})
        return run_cli("check-env", "--env-file", str(env), "--connect", "--app", "worker", "--timeout", "3")

    good = run(f"muzo_app:{MONGO_APP_PASSWORD}@")
    assert good.returncode == 0, good.stdout
    assert "authenticated as muzo_app" in good.stdout and "database muzo: 0 Job document(s)" in good.stdout
    bad = run("muzo_app:not-the-password-1@")
    assert bad.returncode == 1 and "authentication failed: check the user and password" in bad.stdout
    anonymous = run("")
    assert anonymous.returncode == 1 and "not allowed to read the database" in anonymous.stdout
    for proc in (good, bad, anonymous):
        assert_no_secret(proc.stdout + proc.stderr, [MONGO_APP_PASSWORD, "not-the-password-1"])


def test_text_marks_a_variable_with_a_special_check_error(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", {**FULL, "DATABASE_URL": URL + "&replicaSet=rs0"})
    out = run_cli("check-env", "--env-file", str(env)).stdout
    line = next(x for x in out.splitlines() if " DATABASE_URL " in x and "[REQUIRED]" in x)
    assert line.startswith("❌") and line.endswith("— see Special Checks")
    assert "Required: 19/20 configured" in out
