"""init-env: a working .env from nothing, merges that keep everything, no secret printed."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from muzo_ops.env import envfile
from tests.envdata import FULL, SECRETS, write_env
from tests.helpers import assert_no_secret, run_cli

PERSON_MUST_SUPPLY = {
    "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "EMAIL_SERVER_USER", "EMAIL_SERVER_PASSWORD",
    "STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY", "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY",
    "RUNPOD_API_KEY", "OPENAI_API_KEY", "CLOUDPRINTER_API_KEY",
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_empty_folder_gives_a_0600_env_with_a_32_byte_secret(tmp_path: Path) -> None:
    proc = run_cli("init-env", "--non-interactive", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    env = tmp_path / ".env"
    assert mode(env) == 0o600
    values = envfile.read(str(env)).values()
    secret = values["NEXTAUTH_SECRET"]
    assert len(secret) >= 43
    assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) == 32
    assert secret not in proc.stdout + proc.stderr
    assert (tmp_path / ".env.example").exists()
    # two runs never give the same secret
    other = tmp_path / "other"
    other.mkdir()
    run_cli("init-env", "--non-interactive", cwd=other)
    assert envfile.read(str(other / ".env")).values()["NEXTAUTH_SECRET"] != secret
    # the listing names exactly what a person must still supply
    for name in PERSON_MUST_SUPPLY:
        assert name in proc.stdout


def test_check_env_on_a_fresh_file_reports_only_what_a_person_supplies(tmp_path: Path) -> None:
    import json

    run_cli("init-env", "--non-interactive", cwd=tmp_path)
    proc = run_cli("check-env", "--format", "json", cwd=tmp_path)
    data = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert {p["variable"] for p in data["problems"]} == PERSON_MUST_SUPPLY
    assert {p["code"] for p in data["problems"]} == {"missing"}


def test_production_has_no_localhost_defaults(tmp_path: Path) -> None:
    run_cli("init-env", "--non-interactive", "--environment", "production", cwd=tmp_path)
    values = envfile.read(str(tmp_path / ".env")).values()
    assert values["NODE_ENV"] == "production"
    assert values["DATABASE_URL"] == "" and values["NEXTAUTH_URL"] == ""
    # no value names this machine (a comment may say where a port binds)
    assert not [v for v in values.values() if "127.0.0.1" in v or "localhost" in v]


def test_existing_file_is_merged_not_clobbered(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    original = (
        "# my notes: keep me\n"
        "S3_BUCKET=my-own-bucket\n"
        "\n"
        "MY_OWN_SETTING=keep-this  # and this comment\n"
        "NEXTAUTH_SECRET=an-existing-secret-that-is-long-enough-1234\n"
    )
    env.write_text(original)
    env.chmod(0o600)
    proc = run_cli("init-env", "--non-interactive", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = env.read_text()
    assert text.startswith(original)  # existing lines, comments and order kept byte for byte
    values = envfile.read(str(env)).values()
    assert values["S3_BUCKET"] == "my-own-bucket"
    assert values["NEXTAUTH_SECRET"] == "an-existing-secret-that-is-long-enough-1234"
    assert values["MY_OWN_SETTING"] == "keep-this"
    assert values["S3_REGION"] == "us-east-1"  # a missing key was added
    backups = list(tmp_path.glob(".env.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == original and mode(backups[0]) == 0o600
    # a second run changes nothing
    proc = run_cli("init-env", "--non-interactive", cwd=tmp_path)
    assert "nothing changed" in proc.stdout
    assert env.read_text() == text


def test_set_and_force_change_values(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("S3_REGION=eu-west-3\nNEXTAUTH_SECRET=an-existing-secret-that-is-long-enough-1234\n")
    run_cli("init-env", "--non-interactive", "--set", "S3_REGION=ap-south-1", cwd=tmp_path)
    values = envfile.read(str(env)).values()
    assert values["S3_REGION"] == "ap-south-1"
    assert values["NEXTAUTH_SECRET"] == "an-existing-secret-that-is-long-enough-1234"
    run_cli("init-env", "--non-interactive", "--force", cwd=tmp_path)
    values = envfile.read(str(env)).values()
    assert values["S3_REGION"] == "us-east-1"
    assert values["NEXTAUTH_SECRET"] != "an-existing-secret-that-is-long-enough-1234"


def test_secrets_are_refused_on_the_command_line_and_taken_from_stdin(tmp_path: Path) -> None:
    proc = run_cli("init-env", "--non-interactive", "--set", "OPENAI_API_KEY=sk-proj-abcdef123456",
                   cwd=tmp_path)
    assert proc.returncode == 2 and "--set-stdin OPENAI_API_KEY" in proc.stderr
    assert "sk-proj-abcdef123456" not in proc.stderr
    assert not (tmp_path / ".env").exists()
    proc = run_cli("init-env", "--non-interactive", "--set-stdin", "OPENAI_API_KEY",
                   cwd=tmp_path, stdin="sk-proj-abcdef123456\n")
    assert proc.returncode == 0
    assert "sk-proj-abcdef123456" not in proc.stdout + proc.stderr
    assert envfile.read(str(tmp_path / ".env")).values()["OPENAI_API_KEY"] == "sk-proj-abcdef123456"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "S3_REGOIN=x"], "S3_REGOIN is not a muzo variable: did you mean S3_REGION?"),
        (["--set", "EMAIL_SERVER_PORT=smtp"], "EMAIL_SERVER_PORT must be a port number"),
        (["--set", "S3_REGION"], "is not KEY=VALUE"),
        (["--environment", "staging"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path: Path, args: list[str],
                                                           message: str) -> None:
    proc = run_cli("init-env", "--non-interactive", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / ".env").exists()


def test_malformed_existing_file_is_left_alone(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text('A=1\nB="open\n')
    proc = run_cli("init-env", "--non-interactive", cwd=tmp_path)
    assert proc.returncode == 2 and "line 2: unterminated quote in B" in proc.stderr
    assert env.read_text() == 'A=1\nB="open\n'


def test_example_never_holds_a_real_value(tmp_path: Path) -> None:
    """Render from an environment full of real secrets: none reaches .env.example."""
    real = write_env(tmp_path / ".env", FULL)
    environ = {k: v for k, v in FULL.items()}
    proc = run_cli("init-env", "--non-interactive", "--env-file", str(real), env=environ)
    assert proc.returncode == 0
    example = (tmp_path / ".env.example").read_text()
    for value in [*SECRETS, FULL["DATABASE_URL"], FULL["REDIS_URL"], FULL["S3_BUCKET"]]:
        assert value not in example
    assert_no_secret(proc.stdout + proc.stderr, SECRETS)


def test_prompts_on_a_terminal_with_hidden_input_for_secrets(tmp_path: Path) -> None:
    """A real pseudo-terminal: required values are asked for, secrets not echoed."""
    import fcntl
    import pty
    import select
    import subprocess
    import sys
    import termios
    import time

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "muzo_ops", "init-env"], cwd=tmp_path,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            preexec_fn=controlling_tty)
    os.close(slave)
    seen = b""
    answers = {b"S3_ACCESS_KEY_ID": b"AKIAPROMPTED0001", b"S3_SECRET_ACCESS_KEY": b"prompted-secret-xyz-1"}
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        seen += chunk
        last = seen.split(b"\n")[-1]
        if not last.endswith(b": "):
            continue
        for key, answer in list(answers.items()):
            if last.startswith(key + b" ("):
                os.write(master, answer + b"\n")
                break
        else:
            os.write(master, b"\n")
    proc.wait(10)
    os.close(master)
    assert proc.returncode == 0, seen.decode(errors="replace")
    assert b"prompted-secret-xyz-1" not in seen  # hidden input, never echoed
    values = envfile.read(str(tmp_path / ".env")).values()
    assert values["S3_ACCESS_KEY_ID"] == "AKIAPROMPTED0001"
    assert values["S3_SECRET_ACCESS_KEY"] == "prompted-secret-xyz-1"


def test_secrets_generate_and_rotate(tmp_path: Path) -> None:
    proc = run_cli("secrets", "generate")
    assert proc.returncode == 0 and len(proc.stdout.strip()) == 43
    assert run_cli("secrets", "generate", "OPENAI_API_KEY").returncode == 2
    env = write_env(tmp_path / ".env", FULL)
    before = env.read_text()
    proc = run_cli("secrets", "rotate", "NEXTAUTH_SECRET", "--env-file", str(env))
    assert proc.returncode == 0, proc.stderr
    after = envfile.read(str(env)).values()
    assert after["NEXTAUTH_SECRET"] != FULL["NEXTAUTH_SECRET"]
    rotated = {"NEXTAUTH_SECRET", "NEXTAUTH_SECRET_PREVIOUS"}  # the previous one keeps sessions valid
    assert {k: v for k, v in after.items() if k not in rotated} == {
        k: v for k, v in FULL.items() if k not in rotated}
    assert mode(env) == 0o600
    backup = next(tmp_path.glob(".env.*.bak"))
    assert backup.read_text() == before and mode(backup) == 0o600
    assert_no_secret(proc.stdout + proc.stderr, [*SECRETS, after["NEXTAUTH_SECRET"]])
