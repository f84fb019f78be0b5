"""No command prints a secret: every output searched for every known secret value."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import assert_no_secret, run_cli
from tests.envdata import FULL, MONGO_PASSWORD, SECRETS, write_env
from tests.servers import free_port


def test_every_command_keeps_secrets_out_of_its_output(tmp_path: Path) -> None:
    unreachable = dict(FULL)
    unreachable["DATABASE_URL"] = (f"mongodb://muzo_app:{MONGO_PASSWORD}@127.0.0.1:{free_port()}/muzo"
                                   "?directConnection=true&serverSelectionTimeoutMS=500")
    unreachable["REDIS_URL"] = f"redis://default:{FULL['REDIS_URL'].split(':')[2].split('@')[0]}@127.0.0.1:{free_port()}"
    env = write_env(tmp_path / ".env", unreachable)
    broken = tmp_path / "broken.env"
    broken.write_text(env.read_text() + f"EXTRA_SECRET_KEY=\"{FULL['OPENAI_API_KEY']}\n")
    typo = write_env(tmp_path / "typo.env", {**FULL, "NEXT_PUBLIC_KEY": FULL["STRIPE_SECRET_KEY"]},
                     extra=f"EMAIL_SERVER_PASSWORD={FULL['EMAIL_SERVER_PASSWORD']}$X\n")
    runs = [
        ("check-env", "--env-file", str(env)),
        ("check-env", "--env-file", str(env), "--format", "json", "--strict"),
        ("check-env", "--env-file", str(env), "--connect", "--timeout", "0.5"),
        ("check-env", "--env-file", str(env), "--connect", "--timeout", "0.5", "--format", "json"),
        ("--debug", "check-env", "--env-file", str(broken)),
        ("check-env", "--env-file", str(typo), "--include-environ"),
        ("init-env", "--env-file", str(env), "--non-interactive"),
        ("init-env", "--env-file", str(env), "--non-interactive", "--force"),
        ("secrets", "rotate", "NEXTAUTH_SECRET", "--env-file", str(env)),
        ("jobs", "status", "--env-file", str(env)),
        ("--debug", "jobs", "status", "--env-file", str(env), "--format", "json"),
        ("worker", "--env-file", str(env), "--queues", "printing"),
        ("worker", "--env-file", str(env), "--queues", "mockup"),
    ]
    for args in runs:
        proc = run_cli(*args, env={"MUZO_UNUSED": "1"}, timeout=90)
        assert_no_secret(proc.stdout + proc.stderr, SECRETS)
        assert "Traceback" not in proc.stderr or args[0] == "--debug", (args, proc.stderr[-500:])
    # nothing but the env file and its 0600 backups holds a secret
    for path in tmp_path.iterdir():
        if path.name.startswith((".env", "broken.env", "typo.env")):
            continue
        assert_no_secret(path.read_text(errors="replace"), SECRETS)
    for backup in tmp_path.glob(".env.*.bak"):
        assert backup.stat().st_mode & 0o777 == 0o600
