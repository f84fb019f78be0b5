"""Env-file writes under stress: concurrent writers, owners, symlinks, full and read-only disks, kills.

Everything is real: separate processes, a tmpfs of 64 KiB for a full disk,
a read-only bind mount, a root process without CAP_CHOWN (setpriv), and
processes killed by strace's fault injection at the syscalls of a write.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from muzo_ops.env import envfile
from muzo_ops.files import lock as filelock
from tests.envdata import FULL, SECRETS, write_env
from tests.helpers import assert_no_secret, run_cli


def rotate(path: str) -> str | None:
    """``secrets rotate NEXTAUTH_SECRET --force`` as a library call; the backup's path."""
    from muzo_ops.secrets import rotation

    return rotation.rotate(path, ["NEXTAUTH_SECRET"], force=True, keep=100).backup


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "unexpected" not in lines[0] and "Traceback" not in stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".bak")))


# Mounts, chown and setpriv need root (the suite runs as root; elsewhere these skip).
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, chown, setpriv)")


@pytest.fixture
def mounts() -> Iterator[list[str]]:
    """Mount points to unmount at the end of the test (lazily: a test may fail half-way)."""
    points: list[str] = []
    yield points
    for point in reversed(points):
        subprocess.run(["umount", "-l", point], check=False)


# ---------------------------------------------------------------- concurrent writers

WRITER = textwrap.dedent("""
    import sys
    from muzo_ops.env import initenv
    path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(count):
        initenv.init_env(path, supplied={name: f"{name.lower()}-{i}"}, write_example=False,
                         lock_timeout_s=60)
""")


def test_concurrent_init_env_writers_lose_no_update_and_backups_never_collide(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    count = 15
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(env), name, str(count)],
                              stderr=subprocess.PIPE, text=True)
             for name in ("S3_BUCKET", "S3_REGION", "EMAIL_SERVER_USER")]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    values = envfile.read(str(env)).values()
    assert values["S3_BUCKET"] == f"s3_bucket-{count - 1}"
    assert values["S3_REGION"] == f"s3_region-{count - 1}"
    assert values["EMAIL_SERVER_USER"] == f"email_server_user-{count - 1}"
    backups = sorted(tmp_path.glob(".env.*.bak"))
    assert len(backups) == 3 * count  # every write kept the file before it, under its own name
    for backup in backups:
        assert mode(backup) == 0o600
        envfile.read(str(backup))  # each one complete
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rotate_and_init_env_together_keep_both_changes(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    rotator = textwrap.dedent("""
        import sys
        from muzo_ops.secrets import rotation
        for _ in range(15):
            rotation.rotate(sys.argv[1], ["NEXTAUTH_SECRET"], force=True, keep=100, lock_timeout_s=60)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", rotator, str(env)]),
             subprocess.Popen([sys.executable, "-c", WRITER, str(env), "S3_BUCKET", "15"])]
    assert [p.wait(120) for p in procs] == [0, 0]
    values = envfile.read(str(env)).values()
    assert values["S3_BUCKET"] == "s3_bucket-14"
    assert values["NEXTAUTH_SECRET"] != FULL["NEXTAUTH_SECRET"]
    # the newest backup is the file just before the last write: one step from the final file
    backups = sorted(tmp_path.glob(".env.*.bak"), key=lambda p: int(p.name.split(".")[2]))
    assert len(backups) == 30


def test_backup_from_many_processes_never_picks_a_taken_name(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    code = ("import sys\nfrom muzo_ops.files import backups\n"
            "for _ in range(25): backups.make(sys.argv[1], lock_timeout_s=60)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(env)], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    names = {p.name for p in tmp_path.glob(".env.*.bak")}
    assert names == {f".env.{n}.bak" for n in range(1, 76)}
    assert all((tmp_path / n).read_bytes() == env.read_bytes() for n in names)


def test_a_second_writer_waits_a_bounded_time_then_fails_with_one_line(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    before = env.read_bytes()
    with filelock.locked(str(env)):
        started = time.monotonic()
        proc = run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set",
                       "S3_BUCKET=other", "--lock-timeout", "0.5")
        waited = time.monotonic() - started
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "locked by another muzo-ops command" in line and str(env) in line
    assert waited >= 0.5
    assert env.read_bytes() == before
    assert run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set",
                   "S3_BUCKET=other").returncode == 0


def test_the_lock_is_reentrant_in_its_thread_and_excludes_other_threads(tmp_path: Path) -> None:
    """Every writer in files/ takes the lock of what it writes: a command holding it already keeps it,
    while any other holder (thread or process) still waits."""
    import threading

    env = write_env(tmp_path / ".env", FULL)
    outcome: list[str] = []

    def other() -> None:
        try:
            with filelock.locked(str(env), timeout_s=0.2):
                outcome.append("got it")
        except filelock.LockedError:
            outcome.append("waited, then refused")

    with filelock.locked(str(env)):
        with filelock.locked(str(env), timeout_s=0):  # the same thread: no wait
            assert filelock.held(str(env))
        assert filelock.held(str(env))
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert not filelock.held(str(env))
    assert outcome == ["waited, then refused"]
    other()
    assert outcome[-1] == "got it"


# ---------------------------------------------------------------- owner, mode, symlinks

@needs_root
def test_a_rewrite_keeps_owner_and_group_and_never_loosens_the_mode(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    os.chown(env, 65534, 65534)
    env.chmod(0o640)
    proc = run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set", "S3_BUCKET=other")
    assert proc.returncode == 0, proc.stderr
    info = env.stat()
    assert (info.st_uid, info.st_gid, mode(env)) == (65534, 65534, 0o600)
    assert envfile.read(str(env)).values()["S3_BUCKET"] == "other"
    lock = tmp_path / ".env.lock"  # the owner can still lock their own file
    assert (lock.stat().st_uid, lock.stat().st_gid) == (65534, 65534)
    backup = next(tmp_path.glob(".env.*.bak"))
    assert (backup.stat().st_uid, mode(backup)) == (65534, 0o600)
    # a tighter mode stays as tight
    env.chmod(0o400)
    rotate(str(env))
    assert (env.stat().st_uid, env.stat().st_gid, mode(env)) == (65534, 65534, 0o400)
    # "nothing to change" narrows the mode without changing the owner
    env.chmod(0o644)
    proc = run_cli("init-env", "--env-file", str(env), "--non-interactive")
    assert proc.returncode == 0 and "nothing changed" in proc.stdout, proc.stderr
    assert (env.stat().st_uid, env.stat().st_gid, mode(env)) == (65534, 65534, 0o600)


@needs_root
def test_a_writer_that_cannot_keep_the_owner_refuses_with_one_line(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    os.chown(env, 65534, 65534)
    before = env.read_bytes()
    # root without CAP_CHOWN: can write the folder, cannot give the new file its owner
    proc = subprocess.run(
        ["setpriv", "--bounding-set", "-chown", "--inh-caps", "-chown", sys.executable, "-m", "muzo_ops",
         "init-env", "--env-file", str(env), "--non-interactive", "--set", "S3_BUCKET=other"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc.stderr)
    assert "owned by nobody" in line and "run as nobody" in line
    assert env.read_bytes() == before and env.stat().st_uid == 65534
    assert leftovers(tmp_path) == []


@needs_root
def test_a_symlink_is_written_through_in_the_target_folder(tmp_path: Path, mounts: list[str]) -> None:
    shared, app = tmp_path / "shared", tmp_path / "app"
    shared.mkdir()
    app.mkdir()
    real = write_env(shared / "muzo.env", FULL)
    link = app / ".env"
    link.symlink_to(real)
    proc = run_cli("init-env", "--env-file", str(link), "--non-interactive", "--set", "S3_BUCKET=shared-b")
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert envfile.read(str(real)).values()["S3_BUCKET"] == "shared-b"
    assert leftovers(app) == [] and leftovers(shared) == ["muzo.env.1.bak"]
    # the link's folder read-only: the write happens in the target's folder all the same
    subprocess.run(["mount", "--bind", str(app), str(app)], check=True)
    mounts.append(str(app))
    subprocess.run(["mount", "-o", "remount,bind,ro", str(app)], check=True)
    old = envfile.read(str(real)).values()["NEXTAUTH_SECRET"]
    assert rotate(str(link)) == str(shared / "muzo.env.2.bak")
    assert link.is_symlink() and envfile.read(str(real)).values()["NEXTAUTH_SECRET"] != old


# ---------------------------------------------------------------- bad input, bad disks

def test_empty_set_stdin_is_an_error_and_the_file_is_unchanged(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    before = env.read_bytes()
    for stdin in ("", "\n", "  \n"):
        proc = run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set-stdin",
                       "STRIPE_SECRET_KEY", stdin=stdin)
        assert proc.returncode == 2
        assert "--set-stdin STRIPE_SECRET_KEY" in one_error_line(proc.stderr)
        assert env.read_bytes() == before
    assert leftovers(tmp_path) == []


@needs_root
def test_a_read_only_folder_is_one_line_naming_the_file_exit_2(tmp_path: Path, mounts: list[str]) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    env = write_env(folder / ".env", FULL)
    assert run_cli("init-env", "--env-file", str(env), "--non-interactive").returncode == 0
    (folder / ".env.lock").unlink()
    for backup in folder.glob(".env.*.bak"):
        backup.unlink()
    before = env.read_bytes()
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    mounts.append(str(folder))
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
    for args in (("init-env", "--set", "S3_BUCKET=other"), ("init-env", "--force")):
        proc = run_cli(*args, "--env-file", str(env), "--non-interactive")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        line = one_error_line(proc.stderr)
        assert str(env) in line and "read-only" in line.lower()
        assert_no_secret(proc.stdout + proc.stderr, SECRETS)
    assert env.read_bytes() == before
    # nothing to change: nothing to write, so a read-only folder is fine
    proc = run_cli("init-env", "--env-file", str(env), "--non-interactive")
    assert proc.returncode == 0 and "nothing changed" in proc.stdout, proc.stderr


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (4096, 1):
            try:
                while os.write(fd, b"x" * chunk):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


@needs_root
def test_a_full_disk_is_one_line_and_leaves_no_backup_or_temp(tmp_path: Path, mounts: list[str]) -> None:
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=True)
    mounts.append(str(folder))
    env = write_env(folder / ".env", FULL)
    run_cli("init-env", "--env-file", str(env), "--non-interactive")  # complete it, lock file made
    before = env.read_bytes()
    for name in list(folder.iterdir()):
        if name.name.endswith(".bak"):
            name.unlink()
    fill(folder)
    proc = run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set", "S3_BUCKET=other")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc.stderr)
    assert str(env) in line and "disk is full" in line
    assert env.read_bytes() == before
    assert leftovers(folder) == []
    with pytest.raises(Exception, match="disk is full"):
        rotate(str(env))
    assert env.read_bytes() == before and leftovers(folder) == []
    (folder / "filler").unlink()
    assert run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set",
                   "S3_BUCKET=other").returncode == 0


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_killed_at_any_write_step_the_file_is_old_or_new_never_half(tmp_path: Path) -> None:
    env = write_env(tmp_path / ".env", FULL)
    old = env.read_bytes()
    points = [("write", n) for n in (1, 2, 3, 4)] + [("fsync", n) for n in (1, 2, 3)] + [
        ("link", 1), ("linkat", 1), ("fchown", 1), ("fchmod", 1), ("fchmod", 2), ("rename", 1)]
    killed = 0
    for syscall, nth in points:
        proc = subprocess.run(
            ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
             "-e", f"inject={syscall}:signal=KILL:when={nth}",
             sys.executable, "-m", "muzo_ops", "init-env", "--env-file", str(env), "--non-interactive",
             "--set", "S3_BUCKET=after-kill"],
            capture_output=True, text=True, timeout=60)
        killed += proc.returncode != 0
        now = env.read_bytes()
        if now != old:  # the kill came after the rename: the new file, whole
            assert envfile.read(str(env)).values()["S3_BUCKET"] == "after-kill"
            env.write_bytes(old)
        for backup in tmp_path.glob(".env.*.bak"):
            assert backup.read_bytes() == old  # a backup is whole or absent
    assert killed >= 8
    # the next writer cleans what the killed ones left, and succeeds
    proc = run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set", "S3_BUCKET=last")
    assert proc.returncode == 0, proc.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- lines kept

def test_rotate_keeps_export_indent_and_trailing_comment(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("A=1\n\n  export NEXTAUTH_SECRET='old-secret-value-that-is-long-enough-0001'  # signs sessions\n"
                   "export B=2 # b\n")
    env.chmod(0o600)
    rotate(str(env))
    lines = env.read_text().splitlines()
    assert lines[0] == "A=1" and lines[1] == "" and lines[3] == "export B=2 # b"
    assert lines[2].startswith("  export NEXTAUTH_SECRET=") and lines[2].endswith("  # signs sessions")
    value = envfile.read(str(env)).values()["NEXTAUTH_SECRET"]
    assert len(value) == 43 and value in lines[2]
    parsed = envfile.parse_text('export K="a b" # c\nL=plain # d\nM="x\ny" # e\n')
    changed = envfile.with_lines(parsed, envfile.value_lines({"K": "new", "L": "two words", "M": "z"}))
    assert changed == "export K=new # c\nL=two words # d\nM=z # e\n"
    assert envfile.parse_text(changed).values() == {"K": "new", "L": "two words", "M": "z"}


# ---------------------------------------------------------------- the writer, killed at each step

WRITE_DRIVER = textwrap.dedent("""
    import sys
    from muzo_ops.files import atomic
    atomic.write(sys.argv[1], sys.argv[2], keep_backup=True)
""")
TRACED = "openat,fsync,rename,renameat,renameat2,link,linkat"


def _steps(env: Path) -> dict[str, tuple[str, int]]:
    """Each step boundary of one ``atomic.write`` as (syscall, n): strace kills on the n-th call's entry."""
    trace = env.parent / "trace.txt"
    subprocess.run(["strace", "-qq", "-o", str(trace), "-e", f"trace={TRACED}", sys.executable, "-c",
                    WRITE_DRIVER, str(env), env.read_text()], check=True, timeout=60)
    counts: dict[str, int] = {}
    calls: list[tuple[str, int, str]] = []
    for line in trace.read_text().splitlines():
        name = line.split("(", 1)[0].strip()
        if name in TRACED.split(","):
            counts[name] = counts.get(name, 0) + 1
            calls.append((name, counts[name], line))
    renamed = next(i for i, (name, _n, _l) in enumerate(calls) if name.startswith("rename"))
    link = next((name, n) for name, n, _l in calls if name in ("link", "linkat"))
    folder_open = next((name, n) for name, n, line in calls[renamed + 1:] if "O_DIRECTORY" in line)
    folder_fsync = next((name, n) for name, n, _l in calls[renamed + 1:] if name == "fsync")
    return {"temporary files complete, before the backup link": link,
            "backup linked, before the rename": calls[renamed][:2],
            "after the rename": folder_open,
            "after the rename, before the folder fsync": folder_fsync}


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_the_writer_killed_at_each_step_leaves_old_or_new_and_a_rerun_completes(tmp_path: Path) -> None:
    """Invariant of files.atomic.write: the file is the whole old or the whole new content, a backup is
    the whole old content, and a rerun after the kill completes and leaves no temporary file."""
    env = write_env(tmp_path / ".env", FULL)
    old = env.read_bytes()
    subprocess.run([sys.executable, "-c", WRITE_DRIVER, str(env), old.decode()], check=True)  # warm caches
    for backup in tmp_path.glob(".env.*.bak"):
        backup.unlink()
    steps = _steps(env)
    for backup in tmp_path.glob(".env.*.bak"):
        backup.unlink()
    new = old.decode().replace(FULL["S3_BUCKET"], "after-the-kill")
    seen = set()
    for step, (syscall, nth) in steps.items():
        proc = subprocess.run(["strace", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
                               "-e", f"inject={syscall}:signal=KILL:when={nth}",
                               sys.executable, "-c", WRITE_DRIVER, str(env), new],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0, f"{step}: not killed"
        now = env.read_bytes()
        assert now in (old, new.encode()), step
        seen.add(now == old)
        assert mode(env) == 0o600
        for backup in tmp_path.glob(".env.*.bak"):
            assert backup.read_bytes() == old and mode(backup) == 0o600, step
        for leftover in tmp_path.glob("..env.*.tmp"):
            assert mode(leftover) == 0o600, step
        # the rerun (the next writer, under the lock) completes and cleans up
        rerun = run_cli("init-env", "--env-file", str(env), "--non-interactive", "--set", "S3_BUCKET=rerun")
        assert rerun.returncode == 0, rerun.stderr
        assert envfile.read(str(env)).values()["S3_BUCKET"] == "rerun"
        newest = max(tmp_path.glob(".env.*.bak"), key=lambda p: int(p.name.split(".")[2]))
        assert newest.read_bytes() == now, step  # the newest backup is the file before the rerun
        assert not list(tmp_path.glob("*.tmp")), step
        env.write_bytes(old)
        for backup in tmp_path.glob(".env.*.bak"):
            backup.unlink()
    assert seen == {True, False}  # kills landed before and after the rename
