"""Readers of env files decrypt dotenvx-encrypted values: check-env, the worker's values, the deploy."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from muzo_ops import env
from muzo_ops.deploy.plan import read_env_file
from muzo_ops.errors import MuzoOpsError
from tests.envdata import FULL, SECRETS, write_env
from tests.helpers import assert_no_secret, run_cli

CLEAN = {k: v for k, v in os.environ.items() if not k.startswith("DOTENV_")}


def encrypted_env(tmp_path: Path, values: dict[str, str] | None = None) -> Path:
    path = write_env(tmp_path / ".env", values or FULL)
    proc = run_cli("secrets", "encrypt", "--env-file", str(path), env=CLEAN)
    assert proc.returncode == 0, proc.stderr
    text = path.read_text()
    assert "encrypted:" in text and FULL["NEXTAUTH_SECRET"] not in text
    assert (tmp_path / ".env.keys").is_file()
    return path


def test_check_env_decrypts_with_env_keys_beside_the_file(tmp_path: Path) -> None:
    path = encrypted_env(tmp_path)
    proc = run_cli("check-env", "--env-file", str(path), "--format", "json", env=CLEAN)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and not [p for p in report["problems"] if p["code"] == "encrypted-not-checkable"]
    assert_no_secret(proc.stdout + proc.stderr, SECRETS)


def test_without_a_key_encrypted_values_are_reported_not_checkable(tmp_path: Path) -> None:
    path = encrypted_env(tmp_path)
    shutil.move(str(tmp_path / ".env.keys"), str(tmp_path.parent / f"{tmp_path.name}.keys"))
    proc = run_cli("check-env", "--env-file", str(path), "--format", "json", env=CLEAN)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # warnings only
    report = json.loads(proc.stdout)
    sealed = {p["variable"] for p in report["problems"] if p["code"] == "encrypted-not-checkable"}
    assert {"NEXTAUTH_SECRET", "STRIPE_SECRET_KEY", "DATABASE_URL"} <= sealed
    assert all(p["severity"] == "warning" for p in report["problems"])
    by_name = {v["name"]: v for v in report["variables"]}
    assert by_name["NEXTAUTH_SECRET"]["present"] and by_name["NEXTAUTH_SECRET"]["value"] == "(encrypted)"
    assert run_cli("check-env", "--env-file", str(path), "--strict", env=CLEAN).returncode == 1
    with pytest.raises(MuzoOpsError, match="no private key"):
        read_env_file(str(path))


def test_a_wrong_key_is_one_line_exit_2(tmp_path: Path) -> None:
    path = encrypted_env(tmp_path)
    wrong = "11" * 32
    proc = run_cli("check-env", "--env-file", str(path), env={**CLEAN, "DOTENV_PRIVATE_KEY": wrong})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert_no_secret(proc.stdout + proc.stderr, [*SECRETS, wrong])


def test_worker_values_and_the_deploy_read_plain_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = encrypted_env(tmp_path)
    for name in [k for k in os.environ if k.startswith("DOTENV_")]:
        monkeypatch.delenv(name)
    assert env.worker_values(str(path), explicit=True)["NEXTAUTH_SECRET"] == FULL["NEXTAUTH_SECRET"]
    assert read_env_file(str(path))["STRIPE_SECRET_KEY"] == FULL["STRIPE_SECRET_KEY"]


def test_previous_secret_equal_to_the_current_one_is_an_error(tmp_path: Path) -> None:
    path = write_env(tmp_path / ".env", {**FULL, "NEXTAUTH_SECRET_PREVIOUS": FULL["NEXTAUTH_SECRET"]})
    proc = run_cli("check-env", "--env-file", str(path), "--format", "json")
    assert proc.returncode == 1
    codes = {(p["variable"], p["code"]) for p in json.loads(proc.stdout)["problems"]}
    assert ("NEXTAUTH_SECRET_PREVIOUS", "previous-secret-equal") in codes
    assert_no_secret(proc.stdout + proc.stderr, SECRETS)


def test_init_env_keeps_an_encrypted_file_encrypted(tmp_path: Path) -> None:
    path = encrypted_env(tmp_path)
    keys = tmp_path / ".env.keys"
    shutil.move(str(keys), str(tmp_path.parent / f"{tmp_path.name}-away.keys"))  # writers need no private key
    new_key = "sk_live_" + "N3wStr1peKey" * 3
    proc = run_cli("init-env", "--env-file", str(path), "--non-interactive", "--set-stdin", "STRIPE_SECRET_KEY",
                   stdin=new_key + "\n", env=CLEAN)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("init-env", "--env-file", str(path), "--non-interactive", "--force", env=CLEAN)
    assert proc.returncode == 0, proc.stderr
    text = path.read_text()
    assert new_key not in text
    assert_no_secret(text, SECRETS)
    shutil.move(str(tmp_path.parent / f"{tmp_path.name}-away.keys"), str(keys))
    values = env.worker_values(str(path), explicit=True)
    assert values["NEXTAUTH_SECRET"] != FULL["NEXTAUTH_SECRET"] and len(values["NEXTAUTH_SECRET"]) == 43
    for line in text.splitlines():
        name = line.partition("=")[0]
        if name in ("NEXTAUTH_SECRET", "DATABASE_URL", "STRIPE_SECRET_KEY"):
            assert line.startswith(f"{name}='encrypted:") or line.startswith(f'{name}="encrypted:') or \
                line.startswith(f"{name}=encrypted:"), line


def test_deprecated_concurrency_name_is_a_warning(tmp_path: Path) -> None:
    values = {**FULL}
    values.pop("WORKER_CONCURRENCY")
    path = write_env(tmp_path / ".env", {**values, "GENERATION_WORKER_CONCURRENCY": "2"})
    proc = run_cli("check-env", "--env-file", str(path), "--format", "json")
    assert proc.returncode == 0
    problems = json.loads(proc.stdout)["problems"]
    assert [(p["variable"], p["code"], p["severity"]) for p in problems] == [
        ("GENERATION_WORKER_CONCURRENCY", "deprecated", "warning")]
    assert "WORKER_CONCURRENCY" in problems[0]["message"]
    assert run_cli("check-env", "--env-file", str(path), "--strict").returncode == 1
