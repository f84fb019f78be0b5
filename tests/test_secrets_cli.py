"""The ``secrets`` commands in real processes: exit codes, one-line errors, and never a value printed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values

from muzo_ops.env import dotenvx
from muzo_ops.env.envfile import format_line
from muzo_ops.files import lock as filelock
from muzo_ops.secrets import audit
from tests.envdata import FULL, SECRETS
from tests.helpers import assert_no_secret, run_cli
from tests.servers import Secantus

NO_KEYS = {"DOTENV_PRIVATE_KEY": "", "DOTENV_PRIVATE_KEY_PRODUCTION": "", "MUZO_MONGO_ADMIN_URI": ""}


def write(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(format_line(k, v) for k, v in values.items()), encoding="utf-8")
    path.chmod(0o600)
    return path


def read(path: Path) -> dict[str, str]:
    return {k: v or "" for k, v in dotenv_values(stream=io.StringIO(path.read_text())).items()}


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={**NO_KEYS, **(env or {})}, cwd=cwd, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-800:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_secrets_command_keeps_values_out_of_its_output(tmp_path: Path) -> None:
    env = write(tmp_path / ".env.production", FULL)
    s = str(env)
    values_seen = list(SECRETS)
    outputs: list[str] = []

    def run(*args: str, code: int = 0, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = cli(*args, env=extra_env, cwd=tmp_path)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == code, (args, proc.returncode, proc.stderr[-800:])
        assert "Traceback" not in proc.stderr, args
        return proc

    dry = run("secrets", "rotate", "--env-file", s, "--dry-run", "--format", "json")
    assert json.loads(dry.stdout)["changes"][1]["name"] == "NEXTAUTH_SECRET"
    run("secrets", "rotate", "--env-file", s)
    values_seen.append(read(env)["NEXTAUTH_SECRET"])
    refused = run("secrets", "rotate", "NEXTAUTH_SECRET", "--env-file", s, code=2)
    assert_one_line_error(refused)
    run("secrets", "rotate", "NEXTAUTH_SECRET", "--env-file", s, "--force", "--format", "json")
    values_seen.append(read(env)["NEXTAUTH_SECRET"])
    run("secrets", "log", "--env-file", s)
    log = json.loads(run("secrets", "log", "--env-file", s, "--format", "json").stdout)
    assert [r["command"] for r in log] == ["rotate", "rotate"]
    run("secrets", "retire", "NEXTAUTH_SECRET_PREVIOUS", "--env-file", s)
    rolled = run("secrets", "rollback", "--env-file", s)
    assert "undid the retire of NEXTAUTH_SECRET_PREVIOUS" in rolled.stdout
    enc = run("secrets", "encrypt", "--env-file", s)
    assert ".env.keys" in enc.stdout
    run("secrets", "rekey", "--env-file", s, "--format", "json")
    wrong = run("secrets", "decrypt", "--env-file", s, code=2,
                extra_env={"DOTENV_PRIVATE_KEY_PRODUCTION": dotenvx.KeyPair.generate().private_hex})
    assert_one_line_error(wrong)
    assert "NEXTAUTH_SECRET" in wrong.stderr or "DATABASE_URL" in wrong.stderr
    run("secrets", "decrypt", "--env-file", s)
    assert read(env)["STRIPE_SECRET_KEY"] == FULL["STRIPE_SECRET_KEY"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "DEPLOY.md").write_text(f"password: {FULL['EMAIL_SERVER_PASSWORD']}\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "DEPLOY.md"], check=True)
    found = run("secrets", "scan", str(tmp_path), "--env-file", s, code=1)
    assert "DEPLOY.md:1: EMAIL_SERVER_PASSWORD (variable)" in found.stdout
    as_json = json.loads(run("secrets", "scan", str(tmp_path), "--env-file", s, "--format", "json", code=1).stdout)
    assert as_json["findings"][0]["path"] == "DEPLOY.md"
    run("secrets", "scan", str(tmp_path), "--env-file", s, "--history", code=1)
    assert_one_line_error(run("secrets", "rotate", "DATABASE_URL", "--env-file", s, code=2))
    assert_one_line_error(run("secrets", "rotate", "NOPE", "--env-file", s, code=2))
    assert_one_line_error(run("secrets", "rollback", "--env-file", str(tmp_path / "missing.env"), code=2))
    for text in outputs:
        assert_no_secret(text, values_seen)
    # nothing but the env file, its 0600 backups and .env.keys holds a value
    for path in tmp_path.iterdir():
        if path.is_file() and not path.name.startswith(".env") and path.name != "DEPLOY.md":
            assert_no_secret(path.read_text(errors="replace"), values_seen)
    for backup in tmp_path.glob(".env.production.*.bak"):
        assert backup.stat().st_mode & 0o777 == 0o600


def test_decrypt_stdout_prints_the_plain_file_and_writes_nothing(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    assert cli("secrets", "encrypt", "--env-file", str(env)).returncode == 0
    before = env.read_bytes()
    proc = cli("secrets", "decrypt", "--env-file", str(env), "--stdout")
    assert proc.returncode == 0, proc.stderr
    assert {k: v for k, v in dotenv_values(stream=io.StringIO(proc.stdout)).items() if k in FULL} == FULL
    assert env.read_bytes() == before


def test_a_locked_file_is_one_line_and_unchanged(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    before = env.read_bytes()
    with filelock.locked(str(env)):
        proc = cli("secrets", "rotate", "--env-file", str(env), "--lock-timeout", "0.3")
    assert_one_line_error(proc)
    assert "locked by another muzo-ops command" in proc.stderr
    assert env.read_bytes() == before


# ----- DATABASE_URL: the MongoDB user's password, on a real SecantusDB --auth -------------

ADMIN_PASSWORD = "Adm1n-Secantus-Pass-5521"
APP_PASSWORD = "0ld-App-Pass-For-Rotation-77"


@pytest.fixture(scope="module")
def mongo_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secantus]:
    """SecantusDB --auth with an admin (root) and muzo_app (readWrite on muzo), both in admin."""
    from pymongo import MongoClient

    server = Secantus(tmp_path_factory.mktemp("secantus-rotate") / "data")
    server.start()
    client: MongoClient[dict[str, object]] = MongoClient(server.uri)
    client.admin.command("createUser", "root", pwd=ADMIN_PASSWORD, roles=["root"])
    client.admin.command("createUser", "muzo_app", pwd=APP_PASSWORD, roles=[{"role": "readWrite", "db": "muzo"}])
    client.close()
    server.stop()
    server.auth = True
    server.start()
    yield server
    server.stop()


def app_url(server: Secantus, password: str) -> str:
    return (f"mongodb://muzo_app:{password}@127.0.0.1:{server.port}/muzo?authSource=admin"
            "&directConnection=true&serverSelectionTimeoutMS=3000")


def admin_uri(server: Secantus, password: str = ADMIN_PASSWORD) -> str:
    return f"mongodb://root:{password}@127.0.0.1:{server.port}/admin?directConnection=true&serverSelectionTimeoutMS=3000"


def authenticates(url: str) -> bool:
    from muzo_ops.secrets.mongo_password import authenticates as _authenticates

    return _authenticates(url)


def reset_app_password(server: Secantus, password: str) -> None:
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]] = MongoClient(admin_uri(server))
    client.admin.command("updateUser", "muzo_app", pwd=password)
    client.close()


def test_database_url_rotation_changes_the_users_password(tmp_path: Path, mongo_auth: Secantus) -> None:
    reset_app_password(mongo_auth, APP_PASSWORD)
    env = write(tmp_path / ".env", {**FULL, "DATABASE_URL": app_url(mongo_auth, APP_PASSWORD)})
    proc = cli("secrets", "rotate", "DATABASE_URL", "--env-file", str(env), "--yes",
               env={"MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth)})
    assert proc.returncode == 0, proc.stderr
    new_url = read(env)["DATABASE_URL"]
    new_password = new_url.split("muzo_app:", 1)[1].split("@", 1)[0]
    assert len(new_password) >= 32 and new_password != APP_PASSWORD
    assert authenticates(new_url) and not authenticates(app_url(mongo_auth, APP_PASSWORD))
    assert "does not use TLS" in proc.stderr  # the warning, on a plain connection
    assert "restart every app" in proc.stdout
    assert not (tmp_path / ".env.pending").exists()
    assert env.stat().st_mode & 0o777 == 0o600
    (record,) = audit.read(str(env))
    assert record.fingerprints["DATABASE_URL"]["new"] == audit.fingerprint(str(env), new_password)
    assert_no_secret(proc.stdout + proc.stderr, [APP_PASSWORD, new_password, ADMIN_PASSWORD])
    for path in tmp_path.iterdir():
        if not path.name.startswith(".env"):
            assert_no_secret(path.read_text(errors="replace"), [APP_PASSWORD, new_password, ADMIN_PASSWORD])


def test_database_url_rotation_failures_leave_the_file_unchanged(tmp_path: Path, mongo_auth: Secantus) -> None:
    reset_app_password(mongo_auth, APP_PASSWORD)
    env = write(tmp_path / ".env", {**FULL, "DATABASE_URL": app_url(mongo_auth, APP_PASSWORD)})
    before = env.read_bytes()
    cases = [
        ({"MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth, "wrong-admin-pass-000")}, ["--yes"],
         "old password still works"),
        ({"MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth).replace(str(mongo_auth.port), "1")}, ["--yes"],
         "old password still works"),
        ({}, ["--yes"], "MUZO_MONGO_ADMIN_URI"),
        ({"MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth)}, [], "--yes"),
    ]
    for extra_env, flags, expected in cases:
        proc = cli("secrets", "rotate", "DATABASE_URL", "--env-file", str(env), *flags, env=extra_env)
        assert_one_line_error(proc)
        assert expected in proc.stderr, proc.stderr
        assert_no_secret(proc.stderr + proc.stdout, [APP_PASSWORD, ADMIN_PASSWORD, "wrong-admin-pass-000"])
        assert env.read_bytes() == before
        assert not (tmp_path / ".env.pending").exists()
    assert authenticates(app_url(mongo_auth, APP_PASSWORD))


def test_atlas_is_refused_with_the_reason(tmp_path: Path) -> None:
    url = "mongodb+srv://muzo_app:AtlasPass-000111222@cluster0.ab1cd.mongodb.net/muzo?retryWrites=true"
    env = write(tmp_path / ".env", {**FULL, "DATABASE_URL": url})
    proc = cli("secrets", "rotate", "DATABASE_URL", "--env-file", str(env), "--yes")
    assert_one_line_error(proc)
    assert "Atlas" in proc.stderr and "updateUser" in proc.stderr
    assert_no_secret(proc.stderr, ["AtlasPass-000111222"])


def test_database_url_rotation_in_an_encrypted_file(tmp_path: Path, mongo_auth: Secantus) -> None:
    reset_app_password(mongo_auth, APP_PASSWORD)
    env = write(tmp_path / ".env.production", {**FULL, "DATABASE_URL": app_url(mongo_auth, APP_PASSWORD)})
    assert cli("secrets", "encrypt", "--env-file", str(env)).returncode == 0
    proc = cli("secrets", "rotate", "DATABASE_URL", "--env-file", str(env), "--yes",
               env={"MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth)})
    assert proc.returncode == 0, proc.stderr
    raw = read(env)["DATABASE_URL"]
    assert dotenvx.is_encrypted(raw)
    text = env.read_text()
    plain, _ = dotenvx.decrypted_values(read(env), str(env), text, environ={})
    assert authenticates(plain["DATABASE_URL"]) and not authenticates(app_url(mongo_auth, APP_PASSWORD))
    assert os.stat(env).st_mode & 0o777 == 0o600


def test_the_secrets_cli_imports_no_driver_at_parse_time() -> None:
    code = ("import sys, muzo_ops.cli.secrets, muzo_ops.cli; muzo_ops.cli.build_parser(); "
            "print(sorted(m for m in ('pymongo', 'redis', 'jinja2', 'pyinfra', 'ecies', 'coincurve') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def user_roles(server: Secantus, user: str) -> list[dict[str, str]] | None:
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]] = MongoClient(admin_uri(server))
    try:
        users = client.admin.command("usersInfo", {"user": user, "db": "admin"})["users"]
        return users[0]["roles"] if users else None
    finally:
        client.close()


def test_swap_users_never_leaves_a_running_app_with_a_dead_password(tmp_path: Path, mongo_auth: Secantus) -> None:
    reset_app_password(mongo_auth, APP_PASSWORD)
    old_url = app_url(mongo_auth, APP_PASSWORD)
    env = write(tmp_path / ".env", {**FULL, "DATABASE_URL": old_url})
    admin = {"MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth)}
    assert user_roles(mongo_auth, "muzo_app_b") is None
    proc = cli("secrets", "rotate", "DATABASE_URL", "--swap-users", "--env-file", str(env), env=admin)
    assert proc.returncode == 0, proc.stderr
    assert "secrets confirm" in proc.stdout and "muzo_app_b" in proc.stdout
    new_url = read(env)["DATABASE_URL"]
    assert new_url.startswith("mongodb://muzo_app_b:")
    assert user_roles(mongo_auth, "muzo_app_b") == user_roles(mongo_auth, "muzo_app")
    # both work: processes still on the old file keep running
    assert authenticates(new_url) and authenticates(old_url)
    state = (tmp_path / ".env.swap.json").read_text()
    assert APP_PASSWORD not in state and new_url not in state
    again = cli("secrets", "rotate", "DATABASE_URL", "--swap-users", "--env-file", str(env), env=admin)
    assert_one_line_error(again)
    assert "secrets confirm" in again.stderr
    # once every app runs with the new file
    done = cli("secrets", "confirm", "--env-file", str(env), env=admin)
    assert done.returncode == 0, done.stderr
    assert authenticates(new_url) and not authenticates(old_url)
    assert not (tmp_path / ".env.swap.json").exists()
    # the next swap goes to muzo_app_a, created the same way
    assert cli("secrets", "rotate", "DATABASE_URL", "--swap-users", "--env-file", str(env), env=admin).returncode == 0
    assert read(env)["DATABASE_URL"].startswith("mongodb://muzo_app_a:")
    assert authenticates(read(env)["DATABASE_URL"]) and authenticates(new_url)
    nothing = cli("secrets", "confirm", "--env-file", str(env), env=admin)
    assert nothing.returncode == 0
    assert_one_line_error(cli("secrets", "confirm", "--env-file", str(env), env=admin))
    for text in (proc.stdout + proc.stderr, again.stderr, done.stdout + done.stderr):
        assert_no_secret(text, [APP_PASSWORD, ADMIN_PASSWORD, new_url.split(":")[2].split("@")[0]])


def test_an_interrupted_rotation_never_loses_the_pending_password(tmp_path: Path, mongo_auth: Secantus) -> None:
    reset_app_password(mongo_auth, APP_PASSWORD)
    env = write(tmp_path / ".env", {**FULL, "DATABASE_URL": app_url(mongo_auth, APP_PASSWORD)})
    before = env.read_bytes()
    pending = tmp_path / ".env.pending"
    # killed after updateUser, before the env file was replaced: only the pending password works
    set_password = "Pending-Only-Working-Pass-0042"
    write(pending, {**FULL, "DATABASE_URL": app_url(mongo_auth, set_password)})
    reset_app_password(mongo_auth, set_password)
    admin = {"MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth)}
    proc = cli("secrets", "rotate", "DATABASE_URL", "--env-file", str(env), "--yes", env=admin)
    assert_one_line_error(proc)
    assert f"secrets confirm --env-file {env}" in proc.stderr
    assert env.read_bytes() == before and pending.exists()
    assert authenticates(app_url(mongo_auth, set_password))
    assert_no_secret(proc.stderr, [APP_PASSWORD, set_password, ADMIN_PASSWORD])
    # what the message says to do: confirm finds the live password and moves the pending file in
    confirmed = cli("secrets", "confirm", "--env-file", str(env))
    assert confirmed.returncode == 0, confirmed.stderr
    assert read(env)["DATABASE_URL"] == app_url(mongo_auth, set_password) and not pending.exists()
    assert_no_secret(confirmed.stdout + confirmed.stderr, [APP_PASSWORD, set_password, ADMIN_PASSWORD])
    # killed before updateUser: the env file's password still works, the pending file is stale
    env.write_bytes(before)
    write(pending, {**FULL, "DATABASE_URL": app_url(mongo_auth, set_password)})
    reset_app_password(mongo_auth, APP_PASSWORD)
    proc = cli("secrets", "rotate", "DATABASE_URL", "--env-file", str(env), "--yes", env=admin)
    assert proc.returncode == 0, proc.stderr
    assert "interrupted rotation" in proc.stderr and not pending.exists()
    assert authenticates(read(env)["DATABASE_URL"])


def test_killed_database_url_rotation_always_leaves_a_working_password_on_disk(
        tmp_path: Path, mongo_auth: Secantus) -> None:
    """SIGKILL at random moments of `rotate DATABASE_URL`: the env file's or the pending file's password works."""
    import random
    import signal
    import time

    from muzo_ops.secrets.mongo_password import _load

    reset_app_password(mongo_auth, APP_PASSWORD)
    env = write(tmp_path / ".env", {**FULL, "DATABASE_URL": app_url(mongo_auth, APP_PASSWORD)})
    pending = tmp_path / ".env.pending"
    full_env = {**os.environ, **NO_KEYS, "MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth)}
    rng = random.Random(11)
    outcomes = set()
    for _attempt in range(30):
        proc = subprocess.Popen([sys.executable, "-m", "muzo_ops", "secrets", "rotate", "DATABASE_URL",
                                 "--env-file", str(env), "--yes"], env=full_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.45))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        env_works = authenticates(_load(str(env), {}).url)
        pending_works = pending.exists() and authenticates(_load(str(pending), {}).url)
        assert env_works or pending_works, "the working password is in no file"
        assert env.stat().st_mode & 0o777 == 0o600
        outcomes.add((env_works, pending.exists()))
        if not env_works:  # what the error message tells the user to do
            os.replace(pending, env)
    print(f"\nkilled rotations: (env file works, pending file left) seen: {sorted(outcomes)}")
    assert len(outcomes) >= 2  # the kills landed in different steps


# ----- issue 15, items 13, 15, 16: DATABASE_URL rotation against the URL parser, a frozen server, rollback ----


def test_rotation_keeps_hosts_database_and_options_with_an_at_sign_in_them(
        tmp_path: Path, mongo_auth: Secantus) -> None:
    reset_app_password(mongo_auth, APP_PASSWORD)
    url = app_url(mongo_auth, APP_PASSWORD) + "&appName=ops@muzo"
    env = write(tmp_path / ".env", {**FULL, "DATABASE_URL": url})
    proc = cli("secrets", "rotate", "DATABASE_URL", "--env-file", str(env), "--yes",
               env={"MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth)})
    assert proc.returncode == 0, proc.stderr
    new_url = read(env)["DATABASE_URL"]
    new_password = new_url.split("muzo_app:", 1)[1].split("@", 1)[0]
    assert new_password != APP_PASSWORD
    assert new_url == url.replace(APP_PASSWORD, new_password)  # hosts, database and options byte for byte
    assert authenticates(new_url) and not authenticates(url)


class FreezingProxy:
    """A TCP proxy to the server. Once a command holding ``word`` went through it, either the whole
    server is SIGSTOPped (``stop_server``) or the connection that carried it never gets an answer."""

    def __init__(self, server: Secantus, word: bytes, stop_server: bool) -> None:
        import socket
        import threading

        self.server, self.word, self.stop_server = server, word, stop_server
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.server.port))
            muted = threading.Event()
            threading.Thread(target=self._pipe, args=(client, upstream, muted, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, muted, False), daemon=True).start()

    def _pipe(self, src: object, dst: object, muted: object, from_client: bool) -> None:
        import signal
        import socket
        import threading

        assert isinstance(src, socket.socket) and isinstance(dst, socket.socket)
        assert isinstance(muted, threading.Event)
        try:
            while data := src.recv(65536):
                if not from_client and muted.is_set():
                    continue  # the answer never comes
                dst.sendall(data)
                if from_client and self.word in data and not self.frozen.is_set():
                    if self.stop_server:
                        assert self.server.proc is not None
                        os.kill(self.server.proc.pid, signal.SIGSTOP)
                    muted.set()
                    self.frozen.set()
        except OSError:
            pass

    def thaw(self) -> None:
        import signal

        if self.stop_server and self.frozen.is_set() and self.server.proc is not None:
            os.kill(self.server.proc.pid, signal.SIGCONT)
        self.listener.close()


@pytest.mark.parametrize("stop_server", [True, False], ids=["server-sigstopped", "updateuser-never-answered"])
def test_a_server_that_stops_answering_updateuser_ends_the_rotation_with_a_way_out(
        tmp_path: Path, mongo_auth: Secantus, stop_server: bool) -> None:
    """Invariant: the rotation ends (the lock is released) and a password in the env or pending file works."""
    from muzo_ops.secrets.mongo_password import _load

    reset_app_password(mongo_auth, APP_PASSWORD)
    old_url = app_url(mongo_auth, APP_PASSWORD)
    env = write(tmp_path / ".env", {**FULL, "DATABASE_URL": old_url})
    pending = tmp_path / ".env.pending"
    proxy = FreezingProxy(mongo_auth, b"updateUser", stop_server)
    admin = f"mongodb://root:{ADMIN_PASSWORD}@127.0.0.1:{proxy.port}/admin?directConnection=true"
    try:
        proc = subprocess.run([sys.executable, "-m", "muzo_ops", "secrets", "rotate", "DATABASE_URL", "--env-file",
                               str(env), "--yes", "--lock-timeout", "1"], capture_output=True, text=True,
                              timeout=150, env={**os.environ, **NO_KEYS, "MUZO_MONGO_ADMIN_URI": admin})
    finally:
        proxy.thaw()
    assert proxy.frozen.is_set()
    assert_one_line_error(proc)
    assert "secrets confirm" in proc.stderr and str(pending) in proc.stderr
    assert_no_secret(proc.stdout + proc.stderr, [APP_PASSWORD, ADMIN_PASSWORD])
    assert authenticates(_load(str(env), {}).url) or authenticates(_load(str(pending), {}).url)
    # the lock was released; the server answers again: confirm keeps whichever password is live
    confirmed = cli("secrets", "confirm", "--env-file", str(env), "--lock-timeout", "1")
    assert confirmed.returncode == 0, confirmed.stderr
    assert authenticates(read(env)["DATABASE_URL"])
    assert not pending.exists()


def test_rollback_of_a_database_url_rotation_is_refused_when_the_old_password_is_dead(
        tmp_path: Path, mongo_auth: Secantus) -> None:
    reset_app_password(mongo_auth, APP_PASSWORD)
    env = write(tmp_path / ".env", {**FULL, "DATABASE_URL": app_url(mongo_auth, APP_PASSWORD)})
    assert cli("secrets", "rotate", "DATABASE_URL", "--env-file", str(env), "--yes",
               env={"MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth)}).returncode == 0
    rotated = env.read_bytes()
    proc = cli("secrets", "rollback", "--env-file", str(env))
    assert_one_line_error(proc)
    assert "DATABASE_URL" in proc.stderr and "Nothing changed" in proc.stderr
    assert env.read_bytes() == rotated and authenticates(read(env)["DATABASE_URL"])
    assert_no_secret(proc.stdout + proc.stderr, [APP_PASSWORD, read(env)["DATABASE_URL"]])
    # when the server takes the old password again, the rollback goes through
    reset_app_password(mongo_auth, APP_PASSWORD)
    assert cli("secrets", "rollback", "--env-file", str(env)).returncode == 0
    assert read(env)["DATABASE_URL"] == app_url(mongo_auth, APP_PASSWORD)


# ----- issue 15, item 17: exit 2 means nothing changed; files root makes belong to the env file's owner ----


def test_an_audit_failure_after_the_change_is_exit_1_with_one_line(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    audit.Fingerprinter(str(env))  # the key exists; the log cannot be opened
    (tmp_path / audit.LOG_NAME).mkdir()
    proc = cli("secrets", "rotate", "NEXTAUTH_SECRET", "--env-file", str(env))
    assert_one_line_error(proc, code=1)
    assert "audit log" in proc.stderr and "change above was made" in proc.stderr
    assert "Rotated NEXTAUTH_SECRET" in proc.stdout
    assert read(env)["NEXTAUTH_SECRET_PREVIOUS"] == FULL["NEXTAUTH_SECRET"]
    as_json = cli("secrets", "rotate", "NEXTAUTH_SECRET", "--env-file", str(env), "--force", "--format", "json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["audit_error"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_files_root_makes_beside_another_users_env_file_belong_to_that_user(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    env = write(tmp_path / ".env.production", FULL)
    os.chown(env, 65534, 65534)
    assert cli("secrets", "rotate", "NEXTAUTH_SECRET", "--env-file", str(env)).returncode == 0
    assert cli("secrets", "encrypt", "--env-file", str(env)).returncode == 0
    for name in (".env.production", ".env.keys", audit.LOG_NAME, audit.KEY_NAME):
        info = (tmp_path / name).stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (65534, 65534, 0o600), name
    for lock in tmp_path.glob("*.lock"):  # the owner can lock every file again
        assert (lock.stat().st_uid, lock.stat().st_gid) == (65534, 65534), lock.name


def test_database_url_rotation_of_a_hard_linked_env_file_is_refused_before_the_server_changes(
        tmp_path: Path, mongo_auth: Secantus) -> None:
    """The other hard link would keep the old password; refused before updateUser, so the old one still works."""
    reset_app_password(mongo_auth, APP_PASSWORD)
    env = write(tmp_path / ".env", {**FULL, "DATABASE_URL": app_url(mongo_auth, APP_PASSWORD)})
    other = tmp_path / "web.env"
    os.link(env, other)
    before = env.read_bytes()
    proc = cli("secrets", "rotate", "DATABASE_URL", "--env-file", str(env), "--yes",
               env={"MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth)})
    assert_one_line_error(proc)
    assert "other hard link" in proc.stderr and "nothing was changed" in proc.stderr
    assert_no_secret(proc.stdout + proc.stderr, [APP_PASSWORD, ADMIN_PASSWORD])
    assert env.read_bytes() == other.read_bytes() == before
    assert authenticates(app_url(mongo_auth, APP_PASSWORD)) and not (tmp_path / ".env.pending").exists()


def test_a_keys_file_others_can_read_is_warned_about_in_one_line(tmp_path: Path) -> None:
    """.env.keys at 0644 was read without a word; every command that reads it now warns (stderr, one line)."""
    env = write(tmp_path / ".env.production", FULL)
    assert cli("secrets", "encrypt", "--env-file", str(env), cwd=tmp_path).returncode == 0
    keys = tmp_path / ".env.keys"
    private = dotenvx.read_keys_file(str(keys))["DOTENV_PRIVATE_KEY_PRODUCTION"]
    secrets = [*SECRETS, private]
    warning = (f"warning: {keys} is readable by its group or others (mode 0644) and holds the private key of "
               f"{env}: run `chmod 600 {keys}`")

    def warnings(proc: subprocess.CompletedProcess[str], plain_stdout: bool = False) -> list[str]:
        assert proc.returncode == 0, proc.stderr[-800:]
        assert "Traceback" not in proc.stderr
        assert_no_secret(proc.stderr if plain_stdout else proc.stdout + proc.stderr, secrets)
        return [line for line in proc.stderr.splitlines() if "readable by its group" in line]

    keys.chmod(0o644)
    shown = cli("secrets", "decrypt", "--env-file", str(env), "--stdout", cwd=tmp_path)
    # the plain file goes to stdout (asked for), the warning to stderr
    assert [w[:len(warning)] for w in warnings(shown, plain_stdout=True) if w.startswith(warning)] == [warning]
    assert read_text(shown.stdout)["NEXTAUTH_SECRET"] == FULL["NEXTAUTH_SECRET"]
    rotated = cli("secrets", "rotate", "NEXTAUTH_SECRET", "--env-file", str(env), cwd=tmp_path)
    assert len(warnings(rotated)) == 1
    # rekey rewrites the keys file 0600: the warning says it was readable
    rekeyed = cli("secrets", "rekey", "--env-file", str(env), cwd=tmp_path)
    secrets.append(dotenvx.read_keys_file(str(keys))["DOTENV_PRIVATE_KEY_PRODUCTION"])
    (line,) = warnings(rekeyed)
    assert line.startswith(f"warning: {keys} was readable by its group or others (mode 0644) until this command "
                           "rewrote it 0600")
    assert keys.stat().st_mode & 0o777 == 0o600
    # a private keys file: no warning
    assert warnings(cli("secrets", "decrypt", "--env-file", str(env), cwd=tmp_path)) == []
    keys.chmod(0o640)
    rolled = cli("secrets", "rollback", "--env-file", str(env), cwd=tmp_path)
    assert [w for w in warnings(rolled) if "(mode 0640)" in w and f"chmod 600 {keys}" in w]


def read_text(text: str) -> dict[str, str]:
    return {k: v or "" for k, v in dotenv_values(stream=io.StringIO(text)).items()}
