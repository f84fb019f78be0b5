"""check-env knows what production means; --strict, --include-environ and the rule registry keep their word."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from muzo_ops.env import checks, envfile, initenv, schema
from tests.envdata import FULL, write_env
from tests.helpers import ROOT, run_cli

TEST_SECRETS = {
    "S3_ACCESS_KEY_ID": "AKIAPRODTESTKEY00001", "S3_SECRET_ACCESS_KEY": "prod-s3-secret-test-0001",
    "EMAIL_SERVER_USER": "mailer", "EMAIL_SERVER_PASSWORD": "smtp-pass-test-0001",
    "STRIPE_SECRET_KEY": "sk_test_51Hprodtest00000000000a", "STRIPE_PUBLISHABLE_KEY": "pk_test_51Hprodtest0000000000b",
    "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY": "pk_test_51Hprodtest0000000000b", "RUNPOD_API_KEY": "runpod-test-key-0001",
    "OPENAI_API_KEY": "openai-test-key-0001", "CLOUDPRINTER_API_KEY": "cloudprinter-test-key-0001",
}


def problems(stdout: str) -> dict[tuple[str | None, str], dict[str, str]]:
    return {(p["variable"], p["code"]): p for p in json.loads(stdout)["problems"]}


def development_file_made_production(folder: Path) -> Path:
    """The issue's reproduction: a development .env forced to production, test keys, localhost."""
    assert run_cli("init-env", "--non-interactive", cwd=folder).returncode == 0
    proc = run_cli("init-env", "--non-interactive", "--environment", "production", "--force", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    values = envfile.read(str(folder / ".env")).values()
    values.update(TEST_SECRETS, NODE_ENV="production", NEXTAUTH_URL="https://localhost:3000")
    return write_env(folder / ".env", values)


def test_a_production_file_full_of_development_values_fails_check_env(tmp_path: Path) -> None:
    env = development_file_made_production(tmp_path)
    proc = run_cli("check-env", "--env-file", str(env), "--strict", "--format", "json")
    assert proc.returncode == 1
    found = problems(proc.stdout)
    for name in ("DATABASE_URL", "REDIS_URL", "S3_ENDPOINT", "NEXTAUTH_URL", "EMAIL_FROM", "EMAIL_SERVER_HOST"):
        assert found[(name, "production-localhost")]["severity"] == "error", name
    assert found[("DATABASE_URL", "production-mongo-no-tls")]["severity"] == "error"
    assert found[("S3_ENDPOINT", "s3-endpoint-not-https")]["severity"] == "error"
    assert found[("STRIPE_SECRET_KEY", "stripe-test-in-production")]["severity"] == "warning"
    for (_, code), problem in found.items():
        if code.startswith(("production-", "s3-endpoint", "stripe-test")):
            assert "production expects" in problem["message"], problem
    assert json.loads(proc.stdout)["ok"] is False
    text = run_cli("check-env", "--env-file", str(env)).stdout
    assert "All checks passed" not in text and "production expects" in text


def test_the_production_rules_one_by_one() -> None:
    prod = {**FULL}
    assert checks.check(prod).problems == []
    cases = [
        ("DATABASE_URL", "mongodb://muzo_app:pw-1234@[::1]:27017/muzo?directConnection=true&tls=true"
         "&serverSelectionTimeoutMS=30000", "production-localhost"),
        ("DATABASE_URL", "mongodb://muzo_app:pw-1234@db.internal:27017/muzo?directConnection=true"
         "&serverSelectionTimeoutMS=30000", "production-mongo-no-tls"),
        ("REDIS_URL", "rediss://default:pw@localhost:6379", "production-localhost"),
        ("S3_ENDPOINT", "http://s3.internal:9000", "s3-endpoint-not-https"),
        ("S3_ENDPOINT", "https://127.0.0.2:9000", "production-localhost"),
        ("NEXTAUTH_URL", "http://muzo.app", "nextauth-url-not-https"),
        ("EMAIL_SERVER_HOST", "0.0.0.0", "production-localhost"),
        ("EMAIL_FROM", "muzo <noreply@app.localhost>", "production-localhost"),
        ("UPSTASH_REDIS_REST_URL", "https://localhost:8080", "production-localhost"),
    ]
    for name, value, code in cases:
        report = checks.check({**prod, name: value})
        assert (name, code) in {(p.variable, p.code) for p in report.errors}, (name, value)
        # the same values are fine in development
        dev = checks.check({**prod, "NODE_ENV": "development", name: value})
        assert code not in {p.code for p in dev.problems}, (name, value)
    # srv and ssl=true are TLS too; the metrics bind address is not a remote host
    for url in ("mongodb+srv://muzo_app:pw-1234@cluster0.example.net/muzo?serverSelectionTimeoutMS=30000",
                "mongodb://muzo_app:pw-1234@db.internal:27017/muzo?directConnection=true&ssl=true"
                "&serverSelectionTimeoutMS=30000"):
        assert checks.check({**prod, "DATABASE_URL": url}).problems == []
    assert checks.check({**prod, "WORKER_METRICS_HOST": "127.0.0.1"}).problems == []
    stripe = checks.check({**prod, "STRIPE_SECRET_KEY": "sk_test_51Habc000000000000000x",
                           "STRIPE_PUBLISHABLE_KEY": "pk_test_51Habc00000000000000y",
                           "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY": "pk_test_51Habc00000000000000y"})
    assert [(p.code, p.severity.value) for p in stripe.problems] == [("stripe-test-in-production", "warning")]


def test_environment_production_applies_the_rules_whatever_node_env_says(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", {**FULL, "NODE_ENV": "development",
                                       "S3_ENDPOINT": "http://127.0.0.1:9000"})
    assert run_cli("check-env", "--env-file", str(env)).returncode == 0
    proc = run_cli("check-env", "--env-file", str(env), "--environment", "production", "--format", "json")
    assert proc.returncode == 1
    found = problems(proc.stdout)
    assert ("S3_ENDPOINT", "production-localhost") in found and ("S3_ENDPOINT", "s3-endpoint-not-https") in found
    assert "--environment production" in found[("S3_ENDPOINT", "s3-endpoint-not-https")]["message"]


def test_init_env_production_over_development_lists_every_development_value(tmp_path: Path) -> None:
    assert run_cli("init-env", "--non-interactive", cwd=tmp_path).returncode == 0
    proc = run_cli("init-env", "--non-interactive", "--environment", "production", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("Still development values"))
    listed = set(line.split(": ", 1)[1].split(" (")[0].split(", "))
    expected = {v.name for v in schema.VARIABLES if v.dev_default and v.dev_default != v.prod_default}
    assert expected <= listed and "DATABASE_URL" in listed and "NODE_ENV" in listed
    result = initenv.init_env(str(tmp_path / ".env"), schema.Environment.PRODUCTION, write_example=False)
    assert set(result.development_values) == listed


def test_set_node_env_production_on_a_new_file_is_production(tmp_path: Path) -> None:
    proc = run_cli("init-env", "--non-interactive", "--set", "NODE_ENV=production", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    values = envfile.read(str(tmp_path / ".env")).values()
    assert values["NODE_ENV"] == "production" and values["DATABASE_URL"] == ""
    assert values["S3_FORCE_PATH_STYLE"] == "false" and values["EMAIL_SERVER_PORT"] == "587"
    assigned = "".join(line for line in (tmp_path / ".env").read_text().splitlines(keepends=True)
                       if not line.lstrip().startswith("#"))  # comments may name the dashboard's bind address
    assert "127.0.0.1" not in assigned and "localhost" not in assigned


def test_strict_failure_says_so_in_json_and_text(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", {**FULL, "DATABASE_URL": FULL["DATABASE_URL"].replace(
        "&serverSelectionTimeoutMS=30000", "")})  # only a warning: mongo-timeout-missing
    plain = run_cli("check-env", "--env-file", str(env), "--format", "json")
    assert plain.returncode == 0 and json.loads(plain.stdout)["ok"] is True
    strict = run_cli("check-env", "--env-file", str(env), "--format", "json", "--strict")
    assert strict.returncode == 1 and json.loads(strict.stdout)["ok"] is False
    text = run_cli("check-env", "--env-file", str(env), "--strict")
    assert text.returncode == 1 and "--strict turns warnings into a failure" in text.stdout.splitlines()[-1]
    assert "--strict" not in run_cli("check-env", "--env-file", str(env)).stdout


def test_include_environ_says_where_each_value_came_from(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    override = {"S3_BUCKET": "from-the-environment", "S3_REGION": "", "WORKER_POLL_SECONDS": ""}
    proc = run_cli("check-env", "--env-file", str(env), "--include-environ", "--format", "json", env=override)
    data = json.loads(proc.stdout)
    source = {v["name"]: v["source"] for v in data["variables"]}
    assert source["S3_BUCKET"] == "environment" and source["S3_ENDPOINT"] == "file"
    assert source["S3_REGION"] == "environment"
    found = problems(proc.stdout)
    assert found[("S3_REGION", "environ-empty-override")]["severity"] == "error"
    assert ("S3_REGION", "missing") not in found
    assert ("WORKER_POLL_SECONDS", "environ-empty-override") not in found  # the file has no value to hide
    text = run_cli("check-env", "--env-file", str(env), "--include-environ", env=override).stdout
    region = next(x for x in text.splitlines() if " S3_REGION " in x)
    assert "empty in the environment" in region and "not set" not in region
    bucket = next(x for x in text.splitlines() if " S3_BUCKET " in x)
    assert bucket.endswith("(from the environment)")
    assert "source" not in json.loads(run_cli("check-env", "--env-file", str(env), "--format", "json")
                                      .stdout)["variables"][0]


# ---------------------------------------------------------------- the registry

def _emitted_codes() -> set[str]:
    """Every problem code a literal in muzo_ops/env passes to Report.add, ConnectionResult or Problem."""
    found: set[str] = set()
    for path in (ROOT / "muzo_ops" / "env").glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            index = {"add": 2, "ConnectionResult": 2, "Problem": 2}.get(name)
            if index is None or len(node.args) <= index:
                continue
            arg = node.args[index]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value:
                found.add(arg.value)
    return found


def test_every_code_emitted_anywhere_is_in_the_registry_and_the_docs() -> None:
    emitted = _emitted_codes()
    assert len(emitted) >= 25 and {"no-equals", "mongo-command-failed", "redis-url-invalid"} <= emitted
    assert emitted <= set(checks.RULES), emitted - set(checks.RULES)
    assert set(checks.RULES) <= emitted, set(checks.RULES) - emitted  # nothing documented that never happens
    docs = (ROOT / "docs" / "ENVIRONMENT_VARIABLES.md").read_text()
    for code in checks.RULES:
        assert f"| `{code}` |" in docs, code
    assert "tlsAllowInvalidHostnames" in docs
    assert run_cli("render", "--check", "--root", str(ROOT)).returncode == 0


# ---------------------------------------------------------------- MUZO_WORKER_HANDLERS

@pytest.mark.parametrize("value,ok", [
    ("GENERATION=myapp.jobs:generate", True),
    ("GENERATION=myapp.jobs:generate, MOCKUP=myapp.mockups:make,FULFILLMENT=pkg:Cls.method", True),
    ("generation=myapp.jobs:generate", True),
    ("GENERATION=.relative:generate", False),
    ("GENERATION=myapp.jobs", False),
    ("GENERATION:myapp.jobs:generate", False),
    ("PRINTING=myapp.jobs:printing", False),
    ("GENERATION=my-app.jobs:generate", False),
    ("GENERATION=myapp.jobs:1generate", False),
])
def test_worker_handlers_are_checked(tmp_path: Path, value: str, ok: bool) -> None:
    report = checks.check({**FULL, "MUZO_WORKER_HANDLERS": value})
    assert (("MUZO_WORKER_HANDLERS", "invalid") not in {(p.variable, p.code) for p in report.problems}) is ok
    if not ok:
        env = write_env(tmp_path / ".env", {**FULL, "MUZO_WORKER_HANDLERS": value})
        proc = run_cli("check-env", "--env-file", str(env), "--app", "worker")
        assert proc.returncode == 1 and "MUZO_WORKER_HANDLERS" in proc.stdout
        bad = run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set",
                      f"MUZO_WORKER_HANDLERS={value}")
        assert bad.returncode == 2 and bad.stderr.startswith("error: MUZO_WORKER_HANDLERS ")
    assert schema.get("MUZO_WORKER_HANDLERS").kind is schema.Kind.HANDLERS
    assert schema.get("MUZO_WORKER_HANDLERS").needed_by(schema.App.WORKER)
