"""No command prints a secret: every output searched for every known secret value."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from muzo_ops.logs import Logger
from muzo_ops.redact.redactor import Redactor
from tests.envdata import FULL, MONGO_PASSWORD, REDIS_PASSWORD, SECRETS, write_env
from tests.helpers import assert_no_secret, run_cli
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


SHAPED = {
    "stripe_live": "sk_live_51HshapeSecretLive00000000xyz",
    "restricted": "rk_live_51HshapeRestricted000000abc",
    "session_token": "FwoGZXIvYXdzEBaaShapeSessionToken0000xyz",
    "pasted": "sk_live_51HpastedOnItsOwnLine0000000qq",
    "github": "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
}


def test_secret_shapes_are_masked_wherever_they_sit(tmp_path: Path) -> None:
    import json

    values = dict(FULL)
    values["STRIPE_PUBLISHABLE_KEY"] = SHAPED["stripe_live"]  # a secret key in the wrong variable
    values["NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY"] = SHAPED["restricted"]
    values["DATABASE_URL"] = (
        "mongodb://db.internal:27017/muzo?tls=true&serverSelectionTimeoutMS=30000&authMechanism=MONGODB-AWS"
        f"&authMechanismProperties=AWS_SESSION_TOKEN:{SHAPED['session_token']}")
    values["GOOGLE_CLIENT_ID"] = SHAPED["github"]
    env = write_env(tmp_path / ".env", values, extra=f"{SHAPED['pasted']}\n")
    secrets = [*SECRETS, *SHAPED.values()]
    text = run_cli("check-env", "--env-file", str(env))
    data = run_cli("check-env", "--env-file", str(env), "--format", "json")
    for proc in (text, data):
        assert proc.returncode == 1, proc.stderr
        assert_no_secret(proc.stdout + proc.stderr, secrets)
    report = json.loads(data.stdout)
    bare = [p for p in report["problems"] if p["code"] == "no-equals"]
    assert bare == [{"variable": None, "severity": "warning", "code": "no-equals",
                     "message": bare[0]["message"], "waived": False, "reason": None}]
    assert bare[0]["message"].startswith(f"line {len(values) + 1} has no '='")
    assert "authMechanismProperties=***" in text.stdout
    shown = {v["name"]: v["value"] for v in report["variables"]}
    assert "***" in shown["STRIPE_PUBLISHABLE_KEY"] and "***" in shown["GOOGLE_CLIENT_ID"]


def test_values_that_are_not_secrets_are_not_masked(tmp_path: Path) -> None:
    folder = tmp_path / "production-site"
    folder.mkdir()
    proc = run_cli("init-env", "--non-interactive", "--set", "NODE_ENV=production", "--set",
                   "S3_BUCKET=production-assets", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert "***" not in proc.stdout and str(folder / ".env.example") in proc.stdout
    check = run_cli("check-env", "--env-file", str(folder / ".env"))
    assert "= production-assets" in check.stdout and str(folder) in check.stdout


def test_control_characters_in_values_are_printed_escaped(tmp_path: Path) -> None:
    import json

    values = {**FULL, "S3_BUCKET": "bucket\x1b[2K\x1b[1Ahidden", "S3_REGION": "eu\x07west\x9b"}
    env = write_env(tmp_path / ".env", values)
    text = run_cli("check-env", "--env-file", str(env))
    data = run_cli("check-env", "--env-file", str(env), "--format", "json")
    for proc in (text, data):
        out = proc.stdout + proc.stderr
        assert not any(c in out for c in "\x1b\x07\x9b"), out
    assert "bucket\\u001b[2K\\u001b[1Ahidden" in text.stdout or "bucket\\x1b[2K" in text.stdout
    shown = {v["name"]: v["value"] for v in json.loads(data.stdout)["variables"]}
    assert "\x1b" not in shown["S3_BUCKET"] and shown["S3_BUCKET"].startswith("bucket")


def test_a_line_that_cannot_be_parsed_is_named_by_number_only(tmp_path: Path) -> None:
    pasted = "Zq8vPastedSecretWithoutShape77 copied from the vault"
    env = write_env(tmp_path / ".env", FULL, extra=f"{pasted}\n")
    for args in (("check-env",), ("init-env", "--non-interactive")):
        proc = run_cli(*args, "--env-file", str(env))
        assert proc.returncode == 2
        assert proc.stderr == (f"error: {env} line {len(FULL) + 1}: cannot parse this line (its text is not "
                               "shown: it may be a pasted secret): expected NAME=VALUE, a # comment or a "
                               "blank line\n")


def test_secret_shapes_mask_secrets_and_leave_ordinary_text() -> None:
    from muzo_ops.redact.redactor import Redactor, mask_shapes

    secrets = ["sk_live_51HabcDEF0123456789", "rk_test_51HabcDEF0123456789", "whsec_abcdef0123456789",
               "sk-proj-abcdefghijklmnopqrstuvwxyz012345", "AKIAIOSFODNN7EXAMPLE", "ASIAIOSFODNN7EXAMPLE",
               "ghp_" + "a" * 36, "xoxb-1234567890-abcdefghij", "AIza" + "B" * 35, "GOCSPX-abcdefghij12",
               "rpa_ABCDEFGHIJKLMNOPQRST", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijklmnop"]
    for secret in secrets:
        for text in (secret, f"value={secret}", f'"{secret}"', f"{secret}\n"):
            assert secret not in mask_shapes(text), secret
            assert secret not in Redactor()(text), secret
    assert mask_shapes("mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:FwoGZXIvYXdz") == (
        "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:***")
    assert mask_shapes("https://s3/x?X-Amz-Signature=abc123&a=1") == "https://s3/x?X-Amz-Signature=***&a=1"
    ordinary = ["pk_live_51Hpublishable000000", "/srv/production/muzo", "NODE_ENV=production",
                "muzo-prod-assets", "sk_live_", "task-scheduler-keeper", "generation,mockup",
                "mongodb://127.0.0.1:27017/muzo?serverSelectionTimeoutMS=30000&appName=ops@muzo"]
    for text in ordinary:
        assert mask_shapes(text) == text


def test_one_sensitivity_rule_declared_names_then_the_name_shape() -> None:
    """One rule (muzo_ops.redact.sensitivity): the schema's declarations, else the name's shape,
    in any case. Before: encryption upper-cased the name and redaction did not."""
    from muzo_ops.env import schema
    from muzo_ops.redact.redactor import Redactor, secret_values
    from muzo_ops.redact.sensitivity import BY_SHAPE, is_sensitive

    for var in schema.VARIABLES:
        assert schema.is_sensitive(var.name) is var.sensitive, var.name
        assert is_sensitive(var.name, schema.SENSITIVITY) is var.sensitive, var.name
        if var.kind not in (schema.Kind.MONGO_URL, schema.Kind.REDIS_URL):
            # the shape alone agrees with every declaration but the URLs (whose secrets are parts)
            assert is_sensitive(var.name) is var.sensitive, var.name
    for name in ("db_password", "Api_Key", "github_token", "MY_PASSWD", "client-secret",
                 "DOTENV_PRIVATE_KEY_PRODUCTION"):
        assert is_sensitive(name) and BY_SHAPE(name), name
    for name in ("DOTENV_PUBLIC_KEY", "DOTENV_PUBLIC_KEY_PRODUCTION", "MY_PUBLISHABLE_KEY", "dotenv_public_key",
                 "NODE_ENV", "S3_ENDPOINT"):
        assert not is_sensitive(name), name
    # a lower-case secret name's value is hidden by every Redactor, schema or not
    assert "hunter2-lower" in secret_values({"db_password": "hunter2-lower"})
    assert Redactor(sensitivity=schema.SENSITIVITY)(f"x {'hunter2-lower'} y") == "x hunter2-lower y"
    redactor = Redactor(sensitivity=schema.SENSITIVITY)
    redactor.add_values({"db_password": "hunter2-lower", "DATABASE_URL": "mongodb://u:pw-1234@db:27017/muzo",
                         "STRIPE_PUBLISHABLE_KEY": "pk_live_visible0000"})
    assert redactor("db_password=hunter2-lower db mongodb://u:pw-1234@db:27017/muzo pk_live_visible0000") == (
        "db_password=*** db mongodb://u:***@db:27017/muzo pk_live_visible0000")


def test_url_secrets_are_split_where_the_clients_split_them() -> None:
    """The user information ends at the last '@' before the first '/' (or '?'); an '@' in an option
    is not a password's end, and credential options are hidden."""
    from muzo_ops.redact.masking import redacted_url, url_passwords

    url = "mongodb://u:p%40ss-1234@h1:27017,h2/muzo?appName=ops@muzo&authMechanismProperties=AWS_SESSION_TOKEN:tok-5678"
    assert redacted_url(url) == "mongodb://u:***@h1:27017,h2/muzo?appName=ops@muzo&authMechanismProperties=***"
    assert {"p%40ss-1234", "p@ss-1234", "AWS_SESSION_TOKEN:tok-5678"} <= set(url_passwords(url))
    assert redacted_url("REDISS://default:pw-9999@cache:6379/0") == "REDISS://default:***@cache:6379/0"
    assert "pw-9999" in url_passwords("rediss//default:pw-9999@cache:6379")  # a typo keeps the password hidden
    assert redacted_url("https://muzo.app/a@b") == "https://muzo.app/a@b"


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
