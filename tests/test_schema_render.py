"""The one schema, and the files rendered from it."""

from __future__ import annotations

import shutil
from pathlib import Path

from muzo_ops.env import render, schema
from tests.helpers import ROOT, run_cli

# The variables of the reference (muzo-system.md), copied here so the test
# does not depend on ../shared.
REFERENCE = {
    "NODE_ENV": False, "LOG_LEVEL": False, "DATABASE_URL": True, "REDIS_URL": True,
    "UPSTASH_REDIS_REST_URL": False, "UPSTASH_REDIS_REST_TOKEN": False, "S3_ENDPOINT": True,
    "S3_ACCESS_KEY_ID": True, "S3_SECRET_ACCESS_KEY": True, "S3_BUCKET": True, "S3_REGION": True,
    "S3_FORCE_PATH_STYLE": False, "NEXTAUTH_SECRET": True, "NEXTAUTH_URL": True,
    "GOOGLE_CLIENT_ID": False, "GOOGLE_CLIENT_SECRET": False, "EMAIL_FROM": True,
    "EMAIL_SERVER_HOST": True, "EMAIL_SERVER_PORT": True, "EMAIL_SERVER_USER": True,
    "EMAIL_SERVER_PASSWORD": True, "STRIPE_SECRET_KEY": True, "STRIPE_PUBLISHABLE_KEY": True,
    "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY": True, "RUNPOD_API_KEY": True, "OPENAI_API_KEY": True,
    "CLOUDPRINTER_API_KEY": True, "WORKER_QUEUES": False, "QUEUE_TRANSACTIONS": False,
    "GENERATION_WORKER_CONCURRENCY": False,
}
# muzo_ops's own: every worker setting (flags are overrides), the grace-period
# secret, per-type job timeouts, the metrics endpoint, the HTTP handlers' signing key and the
# dashboard's credentials. All optional.
MUZO_OPS = {
    "WORKER_CONCURRENCY", "WORKER_LOCK_SECONDS", "WORKER_POLL_SECONDS", "WORKER_DRAIN_TIMEOUT_SECONDS",
    "WORKER_RETRY_BASE_SECONDS", "WORKER_RETRY_CAP_SECONDS", "WORKER_CHANGE_STREAMS",
    "MUZO_WORKER_HANDLERS", "NEXTAUTH_SECRET_PREVIOUS", "JOB_TIMEOUT_GENERATION_SECONDS",
    "JOB_TIMEOUT_MOCKUP_SECONDS", "JOB_TIMEOUT_FULFILLMENT_SECONDS", "WORKER_METRICS_PORT",
    "WORKER_METRICS_HOST", "MUZO_HANDLER_SIGNING_SECRET", "MUZO_HANDLER_SIGNING_SECRET_PREVIOUS",
    "DASHBOARD_USER", "DASHBOARD_PASSWORD",
}
SECRET = {"UPSTASH_REDIS_REST_TOKEN", "S3_SECRET_ACCESS_KEY", "NEXTAUTH_SECRET",
          "GOOGLE_CLIENT_SECRET", "EMAIL_SERVER_PASSWORD", "STRIPE_SECRET_KEY", "RUNPOD_API_KEY",
          "OPENAI_API_KEY", "CLOUDPRINTER_API_KEY"}


def test_schema_is_the_union_of_the_reference() -> None:
    assert {v.name: v.required for v in schema.VARIABLES} == {**REFERENCE, **dict.fromkeys(MUZO_OPS, False)}
    assert schema.get("NEXTAUTH_SECRET_PREVIOUS").sensitive
    for name in SECRET:
        assert schema.get(name).sensitive, name
    assert not schema.get("NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY").sensitive
    for name in ("EMAIL_FROM", "EMAIL_SERVER_HOST", "EMAIL_SERVER_PORT", "EMAIL_SERVER_USER",
                 "EMAIL_SERVER_PASSWORD"):
        assert schema.get(name).required and schema.App.WEB in schema.get(name).apps
    assert schema.get("NEXTAUTH_SECRET").generator is schema.Generator.TOKEN_URLSAFE_32


def test_committed_files_match_the_renderer() -> None:
    proc = run_cli("render", "--check", "--root", str(ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_render_check_catches_drift(tmp_path: Path) -> None:
    for name in render.RENDERED_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    assert run_cli("render", "--check", "--root", str(tmp_path)).returncode == 0
    example = tmp_path / ".env.example"
    example.write_text(example.read_text().replace("S3_REGION=", "S3_REGOIN="))
    proc = run_cli("render", "--check", "--root", str(tmp_path), "--format", "json")
    assert proc.returncode == 1
    assert '"drifted": [".env.example"]' in proc.stdout
    assert run_cli("render", "--root", str(tmp_path)).returncode == 0
    assert run_cli("render", "--check", "--root", str(tmp_path)).returncode == 0


def test_every_variable_is_in_every_rendered_file() -> None:
    docs = (ROOT / "docs" / "ENVIRONMENT_VARIABLES.md").read_text()
    example = (ROOT / ".env.example").read_text()
    template = (ROOT / ".env.template").read_text()
    for var in schema.VARIABLES:
        assert f"| `{var.name}` |" in docs
        assert f"{var.name}=" in example
        assert f"{var.name}=" in template
    for code, _, _ in render.RULES:
        assert f"`{code}`" in docs


def test_example_values_are_all_placeholders() -> None:
    """Each .env.example value is what check-env calls a placeholder (or a harmless default)."""
    from muzo_ops.env import checks
    from muzo_ops.env.envfile import read

    values = read(str(ROOT / ".env.example")).values()
    for var in schema.VARIABLES:
        if not var.example:  # optional and empty by default: rendered as a comment
            assert f"# {var.name}=" in (ROOT / ".env.example").read_text(), var.name
            continue
        if var.sensitive or var.kind in (schema.Kind.URL, schema.Kind.HTTPS_URL, schema.Kind.STRING,
                                          schema.Kind.MONGO_URL, schema.Kind.REDIS_URL):
            assert checks.is_placeholder(var, values[var.name]), var.name


def test_every_command_has_help_with_an_example() -> None:
    for command in (["init-env"], ["check-env"], ["render"], ["secrets", "generate"],
                    ["secrets", "rotate"], ["worker"], ["jobs"], ["jobs", "status"], ["jobs", "enqueue"],
                    ["jobs", "retry-failed"], ["jobs", "clear-failed"], ["dev-db"], []):
        proc = run_cli(*command, "--help")
        assert proc.returncode == 0 and "example:" in proc.stdout, command
