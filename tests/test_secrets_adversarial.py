"""Adversarial tests of the secrets commands and the one file writer, in real processes.

Each test attacks one promise of docs/SECRETS.md (an interruption, a full
disk, a hostile folder, a race, hostile bytes) and then checks the promise:
the env file whole and 0600, exit 2 only when nothing changed, no secret
anywhere but the env file, ``.env.keys`` and their 0600 backups, and no
write through a link nobody trusted.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from muzo_ops.env.envfile import format_line
from tests.envdata import FULL, SECRETS
from tests.helpers import run_cli

NO_KEYS = {"DOTENV_PRIVATE_KEY": "", "DOTENV_PRIVATE_KEY_PRODUCTION": "", "MUZO_MONGO_ADMIN_URI": ""}
OTHER_UID = 1234
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown to another user, mount)")


def write(path: Path, values: dict[str, str]) -> Path:
    path.write_bytes("".join(format_line(k, v) for k, v in values.items()).encode("utf-8"))
    path.chmod(0o600)
    return path


def read(path: Path) -> dict[str, str]:
    return {k: v or "" for k, v in dotenv_values(stream=io.StringIO(path.read_bytes().decode("utf-8"))).items()}


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={**NO_KEYS, **(env or {})}, cwd=cwd, timeout=120)


def chown_tree(folder: Path, uid: int) -> None:
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)
    os.chown(folder, uid, uid)


# --- links nobody trusted -------------------------------------------------------------------------


@needs_root
def test_rollback_never_installs_a_backup_that_is_a_symlink(tmp_path: Path) -> None:
    """User 1234 plants ``.env.9.bak -> a root-only file``; root's rollback must not copy that file
    into the env file 1234 owns (it was: exit 0, the root-only value in 1234's file)."""
    folder = tmp_path / "app"
    folder.mkdir()
    env = write(folder / ".env", FULL)
    root_only = tmp_path / "root-only"
    root_only.write_text("NODE_ENV=production\nROOT_ONLY=root-only-value-7f3a9c\n")
    root_only.chmod(0o600)
    chown_tree(folder, OTHER_UID)
    planted = folder / ".env.9.bak"
    planted.symlink_to(root_only)
    os.chown(planted, OTHER_UID, OTHER_UID, follow_symlinks=False)
    before = env.read_bytes()

    proc = cli("secrets", "rollback", "--env-file", str(env))

    assert "root-only-value-7f3a9c" not in env.read_text()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert env.read_bytes() == before
    assert "Traceback" not in proc.stderr


@needs_root
@pytest.mark.parametrize("name", [".env.keys", ".env"])
def test_a_symlink_another_user_planted_is_not_followed_to_write_roots_file(tmp_path: Path, name: str) -> None:
    """A symlink owned by user 1234 leading to a root file: root's ``encrypt`` must not rewrite (nor
    chmod) that file; it did, appending a private key to it."""
    folder = tmp_path / "app"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("root: do not touch\n")
    victim.chmod(0o644)
    if name == ".env":
        write(victim, FULL)
        victim.chmod(0o644)
        env = folder / ".env"
    else:
        env = write(folder / ".env", FULL)
    chown_tree(folder, OTHER_UID)
    link = folder / name
    link.symlink_to(victim)
    os.chown(link, OTHER_UID, OTHER_UID, follow_symlinks=False)
    before = victim.read_bytes()

    proc = cli("secrets", "encrypt", "--env-file", str(env))

    assert victim.read_bytes() == before
    assert victim.stat().st_mode & 0o777 == 0o644
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: ") and "symlink" in proc.stderr, proc.stderr


def test_a_symlink_root_made_to_another_users_file_is_still_written_through(tmp_path: Path) -> None:
    """The documented case stays: a link owned by the one running the command is followed."""
    real = write(tmp_path / "real.env", FULL)
    (tmp_path / "l1").symlink_to(real.name)
    (tmp_path / "l2").symlink_to("l1")
    proc = cli("secrets", "rotate", "--env-file", str(tmp_path / "l2"))
    assert proc.returncode == 0, proc.stderr
    assert read(real)["NEXTAUTH_SECRET_PREVIOUS"] == FULL["NEXTAUTH_SECRET"]
    assert (tmp_path / "l2").is_symlink() and (tmp_path / "real.env.1.bak").is_file()


@pytest.mark.parametrize("kind", ["symlink-to-file", "directory", "loop"])
def test_a_hostile_lock_file_is_refused_and_never_written(tmp_path: Path, kind: str) -> None:
    env = write(tmp_path / ".env", FULL)
    victim = tmp_path / "victim"
    victim.write_text("victim\n")
    lock = tmp_path / ".env.lock"
    if kind == "symlink-to-file":
        lock.symlink_to(victim)
    elif kind == "directory":
        lock.mkdir()
    else:
        lock.symlink_to(".env.lock")
    before = env.read_bytes()
    proc = cli("secrets", "rotate", "--env-file", str(env))
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
    assert env.read_bytes() == before and victim.read_text() == "victim\n"
    assert not list(tmp_path.glob(".env.*.bak"))


def test_an_env_file_that_is_a_symlink_loop_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    for args in (("rotate",), ("encrypt",), ("rollback",), ("rekey",)):
        proc = cli("secrets", *args, "--env-file", str(tmp_path / "a"))
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["a", "b"]


# --- exit codes and messages ----------------------------------------------------------------------


def test_an_audit_failure_after_a_change_never_says_nothing_changed(tmp_path: Path) -> None:
    """The audit log is a symlink (refused): the change stands, exit 1, and the one error line must
    not claim ``nothing was changed`` (it did, next to ``the change above was made``)."""
    env = write(tmp_path / ".env", FULL)
    (tmp_path / ".muzo-secrets-audit.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    proc = cli("secrets", "rotate", "--env-file", str(env))
    assert proc.returncode == 1, proc.stderr
    assert read(env)["NEXTAUTH_SECRET_PREVIOUS"] == FULL["NEXTAUTH_SECRET"]
    assert "Rotated NEXTAUTH_SECRET" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "nothing was changed" not in lines[0], lines[0]
    assert "change above was made" in lines[0]


@needs_root
def test_a_full_disk_at_every_free_page_count(tmp_path: Path) -> None:
    """A 64 KiB tmpfs filled to leave 0..7 free pages: exit 2 leaves the file byte for byte, exit 0
    or 1 changed it; a backup is the whole old file; no temporary file stays."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode()[:200]}")
    try:
        original = "".join(format_line(k, v) for k, v in FULL.items()).encode()
        seen: set[int] = set()
        for pages in range(8):
            for leftover in mnt.iterdir():
                leftover.unlink()
            env = mnt / ".env"
            env.write_bytes(original)
            env.chmod(0o600)
            used = sum(4096 * ((p.stat().st_size + 4095) // 4096) for p in mnt.iterdir())
            free = 64 * 1024 - used - pages * 4096
            if free > 0:
                (mnt / "fill").write_bytes(b"x" * free)
            proc = cli("secrets", "rotate", "--env-file", str(env))
            seen.add(proc.returncode)
            assert "Traceback" not in proc.stderr
            now = env.read_bytes()
            if proc.returncode == 2:
                assert now == original, pages
                assert "Rotated" not in proc.stdout
            else:
                assert proc.returncode in (0, 1), (pages, proc.stderr)
                assert read(env)["NEXTAUTH_SECRET_PREVIOUS"] == FULL["NEXTAUTH_SECRET"]
                assert "Rotated NEXTAUTH_SECRET" in proc.stdout
            assert env.stat().st_mode & 0o777 == 0o600
            for backup in mnt.glob(".env.*.bak"):
                assert backup.read_bytes() == original and backup.stat().st_mode & 0o777 == 0o600
            assert not [p for p in mnt.iterdir() if p.name.endswith(".tmp")], pages
        assert 2 in seen and 0 in seen, seen
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# --- the audit log --------------------------------------------------------------------------------


def test_an_audit_log_cut_mid_line_keeps_every_later_record_whole(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    assert cli("secrets", "rotate", "--env-file", str(env)).returncode == 0
    log = tmp_path / ".muzo-secrets-audit.jsonl"
    with log.open("a") as handle:
        handle.write('{"time": "2026-')
    assert cli("secrets", "rotate", "--env-file", str(env), "--force").returncode == 0
    records = []
    for line in log.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            assert line == '{"time": "2026-'
    assert [r["command"] for r in records] == ["rotate", "rotate"]
    shown = cli("secrets", "log", "--env-file", str(env), "--format", "json")
    assert shown.returncode == 0, shown.stderr
    proc = cli("secrets", "rollback", "--env-file", str(env))
    assert proc.returncode == 0 and "undid the rotate" in proc.stdout, proc.stdout + proc.stderr


# --- hostile bytes --------------------------------------------------------------------------------


HOSTILE = {
    "STRIPE_SECRET_KEY": 'ab"c$(touch PWNED)',
    "OPENAI_API_KEY": "back\\slash\\n'q",
    "RUNPOD_API_KEY": "cr\rhere",
    "CLOUDPRINTER_API_KEY": "ls\u2028sep\u2029p\x85n",
    "GOOGLE_CLIENT_SECRET": "`touch PWNED2`",
    "EMAIL_SERVER_PASSWORD": "multi\nline x",
    "UPSTASH_REDIS_REST_TOKEN": "tab\there #no",
}


def test_hostile_values_survive_rotate_encrypt_rekey_decrypt_rollback(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", {**FULL, **HOSTILE})
    start = read(env)
    assert {k: start[k] for k in HOSTILE} == HOSTILE
    outputs = []
    for args in (("rotate",), ("encrypt",), ("rotate", "--force"), ("rekey",), ("decrypt",)):
        proc = cli("secrets", *args, "--env-file", str(env), "--keep", "20", cwd=tmp_path)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, (args, proc.stderr)
    got = read(env)
    assert {k: got[k] for k in HOSTILE} == HOSTILE
    assert got["NEXTAUTH_SECRET"] != FULL["NEXTAUTH_SECRET"]
    for _ in range(5):
        proc = cli("secrets", "rollback", "--env-file", str(env), "--keep", "20", cwd=tmp_path)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stderr
    assert env.read_bytes() == (tmp_path / ".env.1.bak").read_bytes()
    assert read(env) == start
    assert not list(tmp_path.glob("PWNED*"))
    text = "\n".join(outputs)
    for value in [*HOSTILE.values(), *SECRETS]:
        assert value not in text
    for path in tmp_path.iterdir():
        if path.is_file() and not path.name.startswith(".env"):
            body = path.read_text(errors="replace")
            assert not any(v in body for v in [*HOSTILE.values(), *SECRETS]), path.name


# --- races ----------------------------------------------------------------------------------------


def test_rotate_and_two_encrypts_in_one_folder_race_without_losing_anything(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "muzo_ops", "secrets"]
    envvars = {**os.environ, **NO_KEYS}
    for round_ in range(6):
        folder = tmp_path / f"r{round_}"
        folder.mkdir()
        env = write(folder / ".env", FULL)
        prod = write(folder / ".env.production", FULL)
        procs = [subprocess.Popen([*base, *args], cwd=folder, env=envvars, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for args in (("rotate", "--env-file", str(env)), ("encrypt", "--env-file", str(env)),
                              ("encrypt", "--env-file", str(prod)))]
        for proc in procs:
            _out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        for path in (env, prod):
            assert "encrypted:" in path.read_text()
            shown = cli("secrets", "decrypt", "--env-file", str(path), "--stdout", cwd=folder)
            assert shown.returncode == 0, (round_, path.name, shown.stderr)
        plain = {k: v or "" for k, v in dotenv_values(stream=io.StringIO(shown.stdout)).items()}
        assert plain["STRIPE_SECRET_KEY"] == FULL["STRIPE_SECRET_KEY"]
        decrypted = cli("secrets", "decrypt", "--env-file", str(env), "--stdout", cwd=folder).stdout
        plain_env = {k: v or "" for k, v in dotenv_values(stream=io.StringIO(decrypted)).items()}
        assert plain_env["NEXTAUTH_SECRET_PREVIOUS"] == FULL["NEXTAUTH_SECRET"], round_
        assert (folder / ".env.keys").stat().st_mode & 0o777 == 0o600


# --- kill -9 at each step boundary ----------------------------------------------------------------

PAUSER = '''
import os, time


def _pause(args):  # kill -9 lands here: the Nth call has not run yet
    with open(os.environ["MUZO_TEST_PAUSE_MARK"], "w") as mark:
        mark.write(repr(args))
    time.sleep(60)


def _interrupt(args):  # as a SIGINT arriving right after the Nth call returned
    raise KeyboardInterrupt


def _hook(variable, action, before):
    spec = os.environ.get(variable)
    if not spec:
        return
    name, nth = spec.split(":")
    count = [0]
    orig = getattr(os, name)
    def hooked(*a, **k):
        count[0] += 1
        hit = count[0] == int(nth)
        if hit and before:
            action(a)
        result = orig(*a, **k)
        if hit and not before:
            action(a)
        return result
    setattr(os, name, hooked)


_hook("MUZO_TEST_PAUSE_AT", _pause, True)
_hook("MUZO_TEST_INTERRUPT_AFTER", _interrupt, False)
'''


def killed_at(step: str, folder: Path, args: list[str], hooks: Path) -> bool:
    """Run ``secrets ARGS`` paused at the Nth call of ``os.<name>`` and kill -9 it there; whether it got there."""
    mark = hooks / "mark"
    mark.unlink(missing_ok=True)
    env = {**os.environ, **NO_KEYS, "MUZO_TEST_PAUSE_AT": step, "MUZO_TEST_PAUSE_MARK": str(mark),
           "PYTHONPATH": f"{hooks}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "muzo_ops", "secrets", *args], cwd=folder, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import time
    deadline = time.monotonic() + 20
    while proc.poll() is None and not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    reached = mark.exists()
    proc.kill()
    proc.wait()
    return reached


def test_killed_at_every_rename_link_and_fsync_a_rerun_leaves_no_secret_temp_file(tmp_path: Path) -> None:
    """kill -9 at each os.replace / os.link / os.fsync of ``encrypt`` (keys file, audit key, backup,
    env file, audit log): the env file is whole (old or new), and a rerun completes and leaves no
    temporary file behind (a killed audit-key creation left its key in a temp file for good)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(PAUSER)
    original = "".join(format_line(k, v) for k, v in FULL.items()).encode()
    reached_any = 0
    for step in ["replace:1", "replace:2", "link:1", "link:2", "fsync:1", "fsync:2", "fsync:3", "fsync:4",
                 "fsync:5", "fsync:6"]:
        folder = tmp_path / step.replace(":", "-")
        folder.mkdir()
        env = folder / ".env"
        env.write_bytes(original)
        env.chmod(0o600)
        reached_any += killed_at(step, folder, ["encrypt", "--env-file", str(env)], hooks)
        now = env.read_bytes()
        assert now == original or b"encrypted:" in now, step
        assert env.stat().st_mode & 0o777 == 0o600
        rerun = cli("secrets", "encrypt", "--env-file", str(env), cwd=folder)
        assert rerun.returncode == 0, (step, rerun.stderr)
        assert cli("secrets", "decrypt", "--env-file", str(env), "--stdout", cwd=folder).returncode == 0, step
        left = sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))
        assert left == [], (step, left)
        for backup in folder.glob(".env.*.bak"):
            assert backup.stat().st_mode & 0o777 == 0o600
    assert reached_any >= 8


def _limit_memory() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (200 << 20, 200 << 20))


def test_a_damaged_or_huge_audit_log_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """A non-UTF-8 line made ``secrets log`` and ``rollback`` fail ("unexpected UnicodeDecodeError",
    exit 1); a 120 MB line was read whole (over 200 MB of memory). Both are skipped like a torn line."""
    env = write(tmp_path / ".env", FULL)
    log = tmp_path / ".muzo-secrets-audit.jsonl"
    log.write_bytes(b"\xff\xfe not utf-8\n")
    assert cli("secrets", "rotate", "--env-file", str(env)).returncode == 0
    shown = cli("secrets", "log", "--env-file", str(env), "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert "rotate" in shown.stdout
    with log.open("ab") as handle:
        handle.write(b'{"x": "' + b"a" * 120_000_000 + b'"}\n')
    assert cli("secrets", "rotate", "--env-file", str(env), "--force").returncode == 0
    for args in (("log", "--format", "json"), ("rollback",)):
        proc = subprocess.run([sys.executable, "-m", "muzo_ops", "secrets", *args, "--env-file", str(env)],
                              capture_output=True, text=True, env={**os.environ, **NO_KEYS},
                              preexec_fn=_limit_memory, timeout=120)
        assert proc.returncode == 0, (args, proc.stderr[-500:])
    assert "undid the rotate" in proc.stdout
    assert read(env)["NEXTAUTH_SECRET_PREVIOUS"] == FULL["NEXTAUTH_SECRET"]


def test_sigint_right_after_the_rename_keeps_the_backup_of_the_old_file(tmp_path: Path) -> None:
    """A SIGINT landing between ``os.replace`` and the writer's bookkeeping deleted the backup of
    the file just replaced: the new file stood with no backup of the old one (rollback went one
    change too far; test_secrets_rotation's random kills saw it as "torn file after signal 7")."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(PAUSER)
    env = write(tmp_path / ".env", FULL)
    original = env.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "muzo_ops", "secrets", "rotate", "--env-file", str(env)],
                          capture_output=True, text=True, timeout=60,
                          # the first rename is the audit intent's (secrets.commit), the second the env file's
                          env={**os.environ, **NO_KEYS, "MUZO_TEST_INTERRUPT_AFTER": "replace:2",
                               "PYTHONPATH": f"{hooks}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert proc.returncode != 0
    assert read(env)["NEXTAUTH_SECRET_PREVIOUS"] == FULL["NEXTAUTH_SECRET"], "the rename was not the env file's"
    backup_files = sorted(tmp_path.glob(".env.*.bak"))
    assert [b.read_bytes() for b in backup_files] == [original]
    assert backup_files[0].stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob(".*.tmp"))
    undo = cli("secrets", "rollback", "--env-file", str(env))
    assert undo.returncode == 0, undo.stderr
    assert env.read_bytes() == original
