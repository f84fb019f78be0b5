"""`secrets rotate`, `rekey`, `rollback` and `rotate DATABASE_URL` stopped at EVERY step boundary.

Each operation's steps are named in ``muzo_ops.faults`` (a test-only hook,
inert unless ``MUZO_OPS_TEST_STOP_AT`` is set): the CLI runs in a real
process that sends itself SIGKILL, SIGTERM or SIGINT right after one step;
then the invariant is checked, the command is run again (or the recovery it
names), and the invariant and the finished operation are checked again.

Invariants:
- rotate: after any interruption the env file is either the old or the new
  one, whole, mode 0600, and a rerun completes the rotation (audited once).
- rekey: at every instant the keys at hand open the env file, and a rerun
  leaves it encrypted for the one key in ``.env.keys``.
- rollback: a rollback restores exactly the backup's contents (or leaves the
  file as it was, and a rerun restores them); the keys at hand open it.
- rotate DATABASE_URL: some password in the env or pending file always works
  (on a real SecantusDB with auth), and rerun plus ``secrets confirm`` end
  with the env file's password working and no pending file.

SIGTERM and SIGINT end the command with one ``error: interrupted`` line
(exit 130; a DATABASE_URL rotation stopped while its pending file exists
names the file and ``secrets confirm``, which the test then follows), no
traceback and no secret; SIGKILL leaves what the kernel leaves, which the
rerun clears.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values

from muzo_ops import faults
from muzo_ops.env import dotenvx, schema
from muzo_ops.env.envfile import format_line
from muzo_ops.files import backups
from muzo_ops.secrets import audit, encryption, mongo_password, rotation
from tests.envdata import FULL, SECRETS
from tests.helpers import assert_no_secret
from tests.servers import Secantus
from tests.test_secrets_cli import (
    ADMIN_PASSWORD,
    APP_PASSWORD,
    admin_uri,
    app_url,
    authenticates,
    mongo_auth,
    reset_app_password,
)

__all__ = ["mongo_auth"]  # the fixture, imported

ROOT = Path(__file__).resolve().parent.parent
NO_KEYS = {"DOTENV_PRIVATE_KEY": "", "DOTENV_PRIVATE_KEY_PRODUCTION": "", "MUZO_MONGO_ADMIN_URI": ""}
SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT")

# The boundaries of each operation, in order (test_the_boundary_lists_are_every_step_reached checks them).
# commit: the audit intent file written (3 steps); the env file backed up and renamed; backups pruned; audited
COMMIT = ("temp-written#1", "renamed#1", "folder-synced#1", "temp-written#2", "backup-linked#1", "renamed#2",
          "folder-synced#2", "backups-pruned#1", "audit-appended#1")
ROTATE = COMMIT


def shifted(steps: tuple[str, ...], by: int) -> tuple[str, ...]:
    """``steps`` with the occurrences of the atomic writer's steps moved on by ``by`` writes."""
    counted = {"temp-written", "renamed", "folder-synced"}
    return tuple(f"{n}#{int(k) + by}" if n in counted else f"{n}#{k}" for n, _h, k in (s.partition("#") for s in steps))


# rekey: .env.keys kept as a backup; .env.keys holds new+old (3 steps); commit; .env.keys holds the new key only
KEYS_WRITE = ("temp-written#1", "renamed#1", "folder-synced#1")
REKEY = ("backup-made#1", *KEYS_WRITE, *shifted(COMMIT, 1), *shifted(KEYS_WRITE, 3), "backups-pruned#2")
# rollback of a rekey: .env.keys backed up; .env.keys holds old+new; commit; .env.keys holds the old key only
ROLLBACK = REKEY[:-1]
# rotate DATABASE_URL: the pending file (3 steps); updateUser answered; the new password logs in; commit; the
# pending file removed
MONGO = (*KEYS_WRITE, "password-changed#1", "password-checked#1", *shifted(COMMIT, 1), "pending-removed#1")


def cases(boundaries: tuple[str, ...]) -> list[pytest.param]:  # type: ignore[valid-type]
    return [pytest.param(b, s, id=f"{b}-{s}") for b in boundaries for s in SIGNALS]


def write(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(format_line(k, v) for k, v in values.items()), encoding="utf-8")
    path.chmod(0o600)
    return path


def values_of(text: str) -> dict[str, str]:
    return {k: v or "" for k, v in dotenv_values(stream=io.StringIO(text)).items()}


def run(args: list[str], env_file: Path, stop: str | None = None,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **NO_KEYS, **(extra_env or {})}
    env.pop(faults.STOP_AT_VARIABLE, None)
    if stop:
        env[faults.STOP_AT_VARIABLE] = stop
    return subprocess.run([sys.executable, "-m", "muzo_ops", "secrets", *args, "--env-file", str(env_file)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def secret_values(folder: Path) -> list[str]:
    """Every sensitive value in every env file, backup, pending file and keys file of ``folder``."""
    found = {*SECRETS, APP_PASSWORD, ADMIN_PASSWORD}
    for path in folder.iterdir():
        if not path.is_file() or not path.name.startswith(".env") or path.name.endswith(".lock"):
            continue
        for name, value in values_of(path.read_text(errors="replace")).items():
            if value and (name.startswith("DOTENV_PRIVATE_KEY") or schema.is_sensitive(name)):
                found.update(v for v in value.split(",") if len(v) >= 8)
                if "://" in value and "@" in value:
                    found.add(value.split("@")[0].rsplit(":", 1)[-1])
    return sorted(found)


def assert_interrupted(proc: subprocess.CompletedProcess[str], sig: str, folder: Path) -> None:
    """SIGKILL: killed. SIGTERM, SIGINT: exit 130, one error line, no traceback, no temporary file left."""
    output = proc.stdout + proc.stderr
    if sig == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-500:])
    else:
        assert proc.returncode == 130, (proc.returncode, proc.stderr[-800:])
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: interrupted"), proc.stderr[-800:]
        assert not proc.stdout.strip(), proc.stdout
        assert list(folder.glob(".*.muzo-ops-*.tmp")) == []  # the writer's cleanup ran
    assert "Traceback" not in output
    assert_no_secret(output, secret_values(folder))


def assert_private(folder: Path) -> None:
    for path in folder.iterdir():
        if path.name.startswith(".env") and not path.name.endswith(".lock"):
            assert path.stat().st_mode & 0o777 == 0o600, path.name


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """A fresh folder in memory when the machine has one (/dev/shm): these tests kill processes, they
    do not cut the power, so the writers' fsyncs (slow on a busy disk) only cost time here."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    made = Path(tempfile.mkdtemp(prefix="muzo-boundaries-", dir="/dev/shm"))
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


@pytest.fixture
def env_file(folder: Path) -> Path:
    return write(folder / ".env", FULL)


@pytest.fixture(scope="module")
def start_states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders made once and copied for each case: "encrypted" (encrypt) and "rekeyed" (encrypt, rekey)."""
    states = {}
    for name, steps in (("encrypted", 1), ("rekeyed", 2)):
        made = tmp_path_factory.mktemp(name)
        env = write(made / ".env", FULL)
        encryption.encrypt_file(str(env), environ={})
        if steps == 2:
            encryption.rekey_file(str(env), environ={})
        states[name] = made
    return states


def copied(state: Path, folder: Path) -> Path:
    for path in state.iterdir():
        shutil.copy2(path, folder / path.name)
    return folder / ".env"


def steps_reached(tmp_path: Path, args: list[str], env_file: Path,
                  extra_env: dict[str, str] | None = None) -> list[str]:
    log = tmp_path / "steps.log"
    proc = run(args, env_file, extra_env={**(extra_env or {}), faults.STEPS_VARIABLE: str(log)})
    assert proc.returncode == 0, proc.stderr[-800:]
    return log.read_text().split()


def test_the_boundary_lists_are_every_step_reached(tmp_path: Path) -> None:
    """The parametrized lists below cover every step each command reaches, in order, and only named steps."""
    env = write(tmp_path / ".env", FULL)
    assert steps_reached(tmp_path, ["rotate", "NEXTAUTH_SECRET"], env) == list(ROTATE)
    encryption.encrypt_file(str(env), environ={})
    (tmp_path / "steps.log").unlink()
    assert steps_reached(tmp_path, ["rekey"], env) == list(REKEY)
    (tmp_path / "steps.log").unlink()
    assert steps_reached(tmp_path, ["rollback"], env) == list(ROLLBACK)
    assert {s.partition("#")[0] for s in (*ROTATE, *REKEY, *ROLLBACK, *MONGO)} <= set(faults.STEPS)


# ----- rotate -------------------------------------------------------------------------------


@pytest.mark.parametrize(("boundary", "sig"), cases(ROTATE))
def test_rotate_stopped_at_each_boundary(env_file: Path, boundary: str, sig: str) -> None:
    """Invariant: after any interruption the env file is either the old or the new one, whole, mode
    0600, and a rerun completes the rotation (audited once)."""
    folder = env_file.parent
    old = env_file.read_text()
    proc = run(["rotate", "NEXTAUTH_SECRET"], env_file, f"{boundary}:{sig}")
    assert_interrupted(proc, sig, folder)
    assert_private(folder)
    now = values_of(env_file.read_text())
    renamed = now != FULL
    if renamed:  # the whole new file: only the two lines changed
        assert now["NEXTAUTH_SECRET_PREVIOUS"] == FULL["NEXTAUTH_SECRET"] and len(now["NEXTAUTH_SECRET"]) == 43
        assert {k: v for k, v in now.items() if not k.startswith("NEXTAUTH_SECRET")} == {
            k: v for k, v in FULL.items() if k != "NEXTAUTH_SECRET"}
    else:
        assert env_file.read_text() == old
    # the rerun: rotates the old file; the new one it leaves (the rotation is done, inside its grace period)
    if renamed:
        with pytest.raises(rotation.RotationRefused, match="replaced 0 days ago"):
            rotation.rotate(str(env_file), ["NEXTAUTH_SECRET"], environ={})
        assert values_of(env_file.read_text()) == now
    else:
        rotation.rotate(str(env_file), ["NEXTAUTH_SECRET"], environ={})
    final = values_of(env_file.read_text())
    assert final["NEXTAUTH_SECRET_PREVIOUS"] == FULL["NEXTAUTH_SECRET"] and len(final["NEXTAUTH_SECRET"]) == 43
    records = audit.read(str(env_file))
    assert [r.command for r in records] == ["rotate"]  # the change is audited, once
    fingerprint = audit.Fingerprinter(str(env_file))
    assert records[0].fingerprints["NEXTAUTH_SECRET"] == {"old": fingerprint(FULL["NEXTAUTH_SECRET"]),
                                                          "new": fingerprint(final["NEXTAUTH_SECRET"])}
    assert values_of(Path(backups.numbered(str(env_file))[-1][1]).read_text()) == FULL
    assert list(folder.glob(".*.tmp")) == []
    assert_private(folder)


# ----- rekey and rollback -------------------------------------------------------------------


def opened(env_file: Path) -> dict[str, str]:
    """The env file decrypted with the keys at hand (raises when they do not open it)."""
    text = env_file.read_text()
    _name, keys = dotenvx.private_keys_for(str(env_file), text, environ={})
    plain = dotenvx.decrypt_text(text, str(env_file), keys)
    return {k: v for k, v in values_of(plain.text).items() if not k.startswith("DOTENV_")}


def assert_one_key_opens(env_file: Path) -> None:
    text = env_file.read_text()
    keys = dotenvx.read_keys_file(dotenvx.keys_path(str(env_file)))
    (private,) = [v for k, v in keys.items() if k.startswith("DOTENV_PRIVATE_KEY")]
    found = dotenvx.file_public_key(text)
    assert found is not None and "," not in private
    assert dotenvx.public_key_of(private, "DOTENV_PRIVATE_KEY") == found[1]


@pytest.mark.parametrize(("boundary", "sig"), cases(REKEY))
def test_rekey_stopped_at_each_boundary(folder: Path, start_states: dict[str, Path], boundary: str,
                                       sig: str) -> None:
    """Invariant: at every instant the keys at hand open the env file; a rerun leaves it encrypted for
    the one key in .env.keys, and rollback still returns to the file before the rekey."""
    env_file = copied(start_states["encrypted"], folder)
    encrypted = env_file.read_bytes()
    proc = run(["rekey"], env_file, f"{boundary}:{sig}")
    assert_interrupted(proc, sig, folder)
    assert opened(env_file) == FULL
    assert_private(folder)
    encryption.rekey_file(str(env_file), environ={})
    assert opened(env_file) == FULL
    assert_one_key_opens(env_file)
    assert [r.command for r in audit.read(str(env_file))][-1] == "rekey"
    assert_private(folder)
    # rolling back every rekey that was recorded reaches the encrypted file the keys still open
    while env_file.read_bytes() != encrypted:
        rotation.rollback(str(env_file), environ={})
        assert opened(env_file) == FULL


@pytest.mark.parametrize(("boundary", "sig"), cases(ROLLBACK))
def test_rollback_stopped_at_each_boundary(folder: Path, start_states: dict[str, Path], boundary: str,
                                          sig: str) -> None:
    """Invariant: a rollback restores exactly the backup's contents: interrupted, the env file is the
    one before the rollback or exactly the backup, the keys at hand open it, and a rerun ends on the
    backup's exact bytes (and never rolls back one change too many)."""
    env_file = copied(start_states["rekeyed"], folder)
    before = env_file.read_bytes()
    backup_path = Path(backups.numbered(str(env_file))[-1][1])
    backup = backup_path.read_bytes()  # the file before the rekey
    proc = run(["rollback"], env_file, f"{boundary}:{sig}")
    assert_interrupted(proc, sig, folder)
    assert env_file.read_bytes() in (before, backup)
    assert opened(env_file) == FULL
    assert_private(folder)
    if env_file.read_bytes() == before:
        rotation.rollback(str(env_file), environ={})
    else:  # the rollback was made; the next command (a dry run) finds it recorded, not undone
        rotation.rotate(str(env_file), dry_run=True, environ={})
    assert env_file.read_bytes() == backup
    assert opened(env_file) == FULL
    records = audit.read(str(env_file))
    assert [r.command for r in records] == ["encrypt", "rekey", "rollback"]
    assert records[-1].extra["restored"] == backup_path.name
    assert_private(folder)


# ----- rotate DATABASE_URL on a real SecantusDB with auth ----------------------------------


def password_in(path: Path) -> str:
    url = values_of(path.read_text())["DATABASE_URL"]
    return url.split("@")[0].rsplit(":", 1)[-1]


def test_the_database_url_boundary_list_is_every_step_reached(tmp_path: Path, mongo_auth: Secantus) -> None:
    reset_app_password(mongo_auth, APP_PASSWORD)
    env_file = write(tmp_path / ".env", {**FULL, "DATABASE_URL": app_url(mongo_auth, APP_PASSWORD)})
    assert steps_reached(tmp_path, ["rotate", "DATABASE_URL", "--yes"], env_file,
                         {"MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth)}) == list(MONGO)


@pytest.mark.parametrize(("boundary", "sig"), cases(MONGO))
def test_database_url_rotation_stopped_at_each_boundary(folder: Path, mongo_auth: Secantus, boundary: str,
                                                        sig: str) -> None:
    """Invariant: some password in the env or pending file always works; rerunning the rotation (and
    the `secrets confirm` its error names) ends with the env file's password working, no pending file."""
    reset_app_password(mongo_auth, APP_PASSWORD)
    env_file = write(folder / ".env", {**FULL, "DATABASE_URL": app_url(mongo_auth, APP_PASSWORD)})
    pending = folder / ".env.pending"
    admin = {"MUZO_MONGO_ADMIN_URI": admin_uri(mongo_auth)}
    proc = run(["rotate", "DATABASE_URL", "--yes"], env_file, f"{boundary}:{sig}", admin)
    assert_interrupted(proc, sig, folder)
    env_works = authenticates(values_of(env_file.read_text())["DATABASE_URL"])
    pending_works = pending.exists() and authenticates(values_of(pending.read_text())["DATABASE_URL"])
    assert env_works or pending_works, "no file holds the password MongoDB accepts"
    assert_private(folder)
    if sig != "SIGKILL" and pending.exists():  # the error line says where the new password is: follow it
        assert f"kept in {pending} (0600): run `muzo-ops secrets confirm --env-file {env_file}`" in proc.stderr
        mongo_password.confirm_swap(str(env_file), environ={})
    finished = env_works and pending.exists() and pending.read_bytes() == env_file.read_bytes()
    try:
        rerun = mongo_password.rotate(str(env_file), environ=admin)
        assert not finished or any("that rotation had finished" in w for w in rerun.warnings), rerun.warnings
    except mongo_password.MongoRotationError as exc:  # only the pending file's password works: the way out
        assert "secrets confirm" in str(exc) and not env_works and pending_works
        assert_no_secret(str(exc), secret_values(folder))
        mongo_password.confirm_swap(str(env_file), environ={})
    assert not pending.exists()
    assert authenticates(values_of(env_file.read_text())["DATABASE_URL"])
    assert password_in(env_file) != APP_PASSWORD
    # every change of the password is audited once, in order: the fingerprints chain from the first
    # password to the one that works now
    records = audit.read(str(env_file))
    assert records and {r.command for r in records} == {"rotate"}
    fingerprint = audit.Fingerprinter(str(env_file))
    chain = [fingerprint(APP_PASSWORD)] + [r.fingerprints["DATABASE_URL"]["new"] for r in records]
    assert [r.fingerprints["DATABASE_URL"]["old"] for r in records] == chain[:-1]
    assert all(old != new for old, new in itertools.pairwise(chain)), "a record of no change"
    assert chain[-1] == fingerprint(password_in(env_file))
    assert_private(folder)
