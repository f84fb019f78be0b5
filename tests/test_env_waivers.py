"""Waivers: a problem accepted on record, with a reason, still shows and no longer fails the check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from muzo_ops import env
from muzo_ops.errors import UsageError
from tests.envdata import FULL, MONGO_PASSWORD, SECRETS, write_env
from tests.helpers import assert_no_secret, run_cli

# muzo's own production DATABASE_URL: TLS to a server with a self-signed certificate.
MUZO_URL = (f"mongodb://muzo_app:{MONGO_PASSWORD}@db.internal:27017/muzo?directConnection=true&tls=true"
            "&tlsAllowInvalidCertificates=true&serverSelectionTimeoutMS=30000")
REASON = "self-signed server certificate on a private network; reviewed by ops 2026-12"


def test_muzos_real_configuration_fails_until_waived_on_the_command_line(tmp_path: Path) -> None:
    envfile = write_env(tmp_path / ".env", {**FULL, "DATABASE_URL": MUZO_URL})
    before = run_cli("check-env", "--env-file", str(envfile), "--format", "json")
    assert before.returncode == 1
    (problem,) = json.loads(before.stdout)["problems"]
    assert (problem["code"], problem["severity"], problem["waived"]) == ("mongo-tls-insecure", "error", False)

    proc = run_cli("check-env", "--env-file", str(envfile), "--format", "json", "--strict",
                   "--allow", f"mongo-tls-insecure:{REASON}")
    assert proc.returncode == 0, proc.stdout
    data = json.loads(proc.stdout)
    assert data["ok"] is True
    (problem,) = data["problems"]
    assert problem["code"] == "mongo-tls-insecure" and problem["severity"] == "error"
    assert problem["waived"] is True and problem["reason"] == REASON
    assert next(v for v in data["variables"] if v["name"] == "DATABASE_URL")["valid"] is True

    text = run_cli("check-env", "--env-file", str(envfile), "--allow", f"mongo-tls-insecure:{REASON}")
    assert text.returncode == 0
    assert "Waived" in text.stdout and REASON in text.stdout and "mongo-tls-insecure" in text.stdout
    assert "Errors: 0, warnings: 0, waived: 1" in text.stdout
    assert_no_secret(text.stdout + text.stderr + proc.stdout, SECRETS)


def test_the_env_file_records_its_waivers(tmp_path: Path) -> None:
    values = {**FULL, "DATABASE_URL": MUZO_URL, "MUZO_CHECK_WAIVERS": f"mongo-tls-insecure:{REASON};"
              "stripe-test-in-production:staging keys on the pre-production host"}
    envfile = write_env(tmp_path / ".env", values)
    proc = run_cli("check-env", "--env-file", str(envfile), "--format", "json")
    assert proc.returncode == 0, proc.stdout
    (problem,) = json.loads(proc.stdout)["problems"]
    assert problem["waived"] is True and problem["reason"] == REASON
    # the library calls the deploy makes apply the file's waivers, and the caller's on top
    assert env.check_values(values).ok
    assert env.check_file(str(envfile)).ok
    plain = {**FULL, "DATABASE_URL": MUZO_URL}
    assert not env.check_values(plain).ok
    report = env.check_values(plain, waivers={"mongo-tls-insecure": "accepted for the deploy"})
    assert report.ok and [p.reason for p in report.waived] == ["accepted for the deploy"]
    assert report.errors == [] and len(report.problems) == 1


@pytest.mark.parametrize("allow", ["mongo-tls-insecure", "mongo-tls-insecure:", "mongo-tls-insecure:   ",
                                   "no-such-code:a reason", ":a reason"])
def test_a_waiver_without_a_reason_or_for_an_unknown_code_is_a_usage_error(tmp_path: Path, allow: str) -> None:
    envfile = write_env(tmp_path / ".env", {**FULL, "DATABASE_URL": MUZO_URL})
    proc = run_cli("check-env", "--env-file", str(envfile), "--allow", allow)
    assert proc.returncode == 2
    assert proc.stdout == "" and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    written = write_env(tmp_path / "w.env", {**FULL, "DATABASE_URL": MUZO_URL, "MUZO_CHECK_WAIVERS": allow})
    proc = run_cli("check-env", "--env-file", str(written))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: MUZO_CHECK_WAIVERS: ") and proc.stderr.count("\n") == 1
    code, _, reason = allow.partition(":")
    with pytest.raises(UsageError):
        env.check_values({**FULL, "DATABASE_URL": MUZO_URL}, waivers={code: reason})


def test_waived_warnings_do_not_fail_strict_and_other_problems_still_do(tmp_path: Path) -> None:
    values = {**FULL, "DATABASE_URL": MUZO_URL.replace("&serverSelectionTimeoutMS=30000", ""),
              "MUZO_CHECK_WAIVERS": "mongo-timeout-missing:the driver default is fine here"}
    envfile = write_env(tmp_path / ".env", values)
    proc = run_cli("check-env", "--env-file", str(envfile), "--strict", "--format", "json")
    assert proc.returncode == 1  # mongo-tls-insecure is not waived
    found = {p["code"]: p["waived"] for p in json.loads(proc.stdout)["problems"]}
    assert found == {"mongo-timeout-missing": True, "mongo-tls-insecure": False}
    proc = run_cli("check-env", "--env-file", str(envfile), "--strict", "--allow", f"mongo-tls-insecure:{REASON}")
    assert proc.returncode == 0, proc.stdout
