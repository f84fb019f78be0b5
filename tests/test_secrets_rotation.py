"""Rotation with a grace period, retire, rollback, keep-N, the lock, and crash safety (real signals)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muzo_ops.env import dotenvx
from muzo_ops.env.envfile import format_line
from muzo_ops.errors import EnvFileError, SchemaError
from muzo_ops.files import backups
from muzo_ops.files import lock as filelock
from muzo_ops.secrets import audit, encryption, rotation
from muzo_ops.secrets.rotation import RotationRefused
from tests.envdata import FULL

OLD_SECRET = FULL["NEXTAUTH_SECRET"]
ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, values: dict[str, str], mode: int = 0o600) -> Path:
    path.write_text("# muzo\n" + "".join(format_line(k, v) for k, v in values.items()), encoding="utf-8")
    path.chmod(mode)
    return path


def read(path: Path | str) -> dict[str, str]:
    return {k: v or "" for k, v in dotenv_values(stream=io.StringIO(Path(path).read_text())).items()}


def all_text(folder: Path, skip_env: bool = True) -> str:
    """Every file in the folder but the env file and its backups."""
    return "".join(p.read_text(errors="replace") for p in folder.iterdir()
                   if p.is_file() and not (skip_env and p.name.startswith(".env")))


@contextlib.contextmanager
def held_elsewhere(path: Path) -> Iterator[None]:
    """The lock of ``path`` held by another thread (this thread's own lock is re-entrant)."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with filelock.locked(str(path)):
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join()


def test_rotate_keeps_the_old_secret_as_previous(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    seen: list[str] = []
    result = rotation.rotate(str(env), ["NEXTAUTH_SECRET"], on_values=seen.extend)
    values = read(env)
    assert values["NEXTAUTH_SECRET_PREVIOUS"] == OLD_SECRET
    assert values["NEXTAUTH_SECRET"] != OLD_SECRET and len(values["NEXTAUTH_SECRET"]) == 43
    assert {k: v for k, v in values.items() if not k.startswith("NEXTAUTH_SECRET")} == {
        k: v for k, v in FULL.items() if k != "NEXTAUTH_SECRET"}
    assert env.stat().st_mode & 0o777 == 0o600
    assert result.backup == f"{env}.1.bak" and Path(result.backup).stat().st_mode & 0o777 == 0o600
    assert read(Path(result.backup)) == FULL
    assert set(seen) == {OLD_SECRET, values["NEXTAUTH_SECRET"]}
    # the audit record: names and fingerprints, no value anywhere but the env file and backups
    (record,) = audit.read(str(env))
    assert record.variables == ["NEXTAUTH_SECRET_PREVIOUS", "NEXTAUTH_SECRET"]
    fp = audit.Fingerprinter(str(env))
    assert record.fingerprints["NEXTAUTH_SECRET"] == {"old": fp(OLD_SECRET), "new": fp(values["NEXTAUTH_SECRET"])}
    assert record.fingerprints["NEXTAUTH_SECRET_PREVIOUS"] == {"old": None, "new": fp(OLD_SECRET)}
    assert record.extra["backup"] == ".env.1.bak"
    text = all_text(tmp_path) + json.dumps(result.to_json())
    assert OLD_SECRET not in text and values["NEXTAUTH_SECRET"] not in text


def test_a_second_rotation_inside_the_session_lifetime_is_refused(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    rotation.rotate(str(env), now=t0)
    before = env.read_bytes()
    with pytest.raises(RotationRefused, match="NEXTAUTH_SECRET_PREVIOUS still holds the secret replaced 3 days ago"):
        rotation.rotate(str(env), now=t0 + dt.timedelta(days=3))
    assert env.read_bytes() == before and len(backups.numbered(str(env))) == 1
    # after the lifetime it goes through, and --force goes through at once
    rotation.rotate(str(env), now=t0 + dt.timedelta(days=31))
    rotation.rotate(str(env), now=t0 + dt.timedelta(days=32), force=True)
    assert len(audit.read(str(env))) == 3
    # a previous value with no audit record is of unknown age: refused too
    other = write(tmp_path / ".env.staging", {**FULL, "NEXTAUTH_SECRET_PREVIOUS": "p" * 43})
    with pytest.raises(RotationRefused, match="unknown time"):
        rotation.rotate(str(other))


def test_unknown_or_ungenerated_names_are_refused(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    for name in ("NEXTAUTH_SECRT", "STRIPE_SECRET_KEY"):
        with pytest.raises(SchemaError, match="not a generated secret"):
            rotation.rotate(str(env), [name])
    with pytest.raises(EnvFileError, match="no such file"):
        rotation.rotate(str(tmp_path / "missing.env"))


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    before = env.read_bytes()
    result = rotation.rotate(str(env), ["NEXTAUTH_SECRET"], dry_run=True)
    assert env.read_bytes() == before and backups.numbered(str(env)) == [] and audit.read(str(env)) == []
    assert [(c.name, c.action) for c in result.changes] == [
        ("NEXTAUTH_SECRET_PREVIOUS", "moved from NEXTAUTH_SECRET"), ("NEXTAUTH_SECRET", "rotated")]
    assert result.changes[1].old == audit.fingerprint(str(env), OLD_SECRET) and result.changes[1].new is None


def test_retire_empties_the_previous_secret(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    rotation.rotate(str(env))
    result = rotation.retire(str(env), "NEXTAUTH_SECRET")
    assert read(env)["NEXTAUTH_SECRET_PREVIOUS"] == ""
    assert any("sign in again" in w for w in result.warnings)
    assert audit.read(str(env))[-1].command == "retire"
    again = rotation.retire(str(env), "NEXTAUTH_SECRET_PREVIOUS")
    assert again.backup is None and "already empty" in again.warnings[0]
    with pytest.raises(Exception, match="no previous value"):
        rotation.retire(str(env), "STRIPE_SECRET_KEY")
    # with the previous secret retired, rotating again needs no --force
    rotation.rotate(str(env))


def test_rollback_undoes_changes_one_at_a_time(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    original = env.read_bytes()
    rotation.rotate(str(env))
    after_first = env.read_bytes()
    rotation.retire(str(env), "NEXTAUTH_SECRET")
    first = rotation.rollback(str(env))
    assert env.read_bytes() == after_first
    assert first.undid is not None and first.undid["command"] == "retire"
    second = rotation.rollback(str(env))
    assert env.read_bytes() == original
    assert second.undid is not None and second.undid["command"] == "rotate"
    assert env.stat().st_mode & 0o777 == 0o600
    with pytest.raises(EnvFileError, match="no backup left"):
        rotation.rollback(str(env))
    assert env.read_bytes() == original
    assert [r.command for r in audit.read(str(env))] == ["rotate", "retire", "rollback", "rollback"]


def test_only_the_last_keep_backups_stay(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    for _ in range(7):
        rotation.rotate(str(env), force=True, keep=3)
    assert [n for n, _p in backups.numbered(str(env))] == [5, 6, 7]
    with pytest.raises(Exception, match="at least 1"):
        rotation.rotate(str(env), force=True, keep=0)


def test_a_locked_file_fails_with_one_line_and_stays_unchanged(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    before = env.read_bytes()
    with held_elsewhere(env):
        started = time.monotonic()
        with pytest.raises(filelock.LockedError) as info:
            rotation.rotate(str(env), lock_timeout_s=0.3)
        assert 0.3 <= time.monotonic() - started < 5
    assert "\n" not in str(info.value) and "locked by another muzo-ops command" in str(info.value)
    assert env.read_bytes() == before
    rotation.rotate(str(env), lock_timeout_s=0.3)  # released


DRIVER = textwrap.dedent("""
    import sys
    from muzo_ops.secrets import rotation
    path, count = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    for _ in range(count):
        rotation.rotate(path, ["NEXTAUTH_SECRET"], force=True, keep=int(sys.argv[3]), lock_timeout_s=60)
""")


def test_concurrent_rotations_never_lose_an_update(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, str(env), "5", "100"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    chain = [read(p) for _n, p in backups.numbered(str(env))] + [read(env)]
    assert len(chain) == 21  # the original and 20 rotations, each backed up
    for before, after in itertools.pairwise(chain):
        assert after["NEXTAUTH_SECRET_PREVIOUS"] == before["NEXTAUTH_SECRET"]
    assert len({c["NEXTAUTH_SECRET"] for c in chain}) == 21
    assert len(audit.read(str(env))) == 20


def test_killed_at_any_point_the_file_is_complete_old_or_new(tmp_path: Path) -> None:
    """SIGKILL / SIGTERM / SIGINT at random moments of rotations: never a torn or open file."""
    env = write(tmp_path / ".env", FULL)
    rng = random.Random(20261130)
    signals = [signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGINT]
    kills = 0
    for attempt in range(40):
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(env), "1000", "3"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.12))
        if proc.poll() is None:
            proc.send_signal(signals[attempt % len(signals)])
            kills += 1
        proc.wait(30)
        assert env.stat().st_mode & 0o777 == 0o600
        current = read(env)
        newest = read(backups.numbered(str(env))[-1][1]) if backups.numbered(str(env)) else FULL
        complete_old = current == newest
        complete_new = (current.get("NEXTAUTH_SECRET_PREVIOUS") == newest["NEXTAUTH_SECRET"]
                        and len(current["NEXTAUTH_SECRET"]) == 43
                        and {k: v for k, v in current.items() if not k.startswith("NEXTAUTH_SECRET")}
                        == {k: v for k, v in FULL.items() if k != "NEXTAUTH_SECRET"})
        assert complete_old or complete_new, f"torn file after signal {attempt}"
        for _n, backup in backups.numbered(str(env)):
            assert Path(backup).stat().st_mode & 0o777 == 0o600
            assert read(Path(backup))["NEXTAUTH_SECRET"]
        for leftover in tmp_path.glob(".*.tmp"):
            assert leftover.stat().st_mode & 0o777 == 0o600
    assert kills >= 30
    # the next run takes the lock at once (the kernel released it) and clears what the killed ones left
    rotation.rotate(str(env), force=True, keep=3, lock_timeout_s=1)
    assert list(tmp_path.glob(".*.tmp")) == []


def previous_problems(path: Path, values: dict[str, str], now: dt.datetime) -> set[tuple[str, str, str]]:
    """check-env's previous-secret findings, with the audit log's rotation times (as the CLI wires them)."""
    from muzo_ops.env import checks

    report = checks.check(values, secret_age=lambda name: audit.previous_secret_age(str(path), name, now))
    return {(p.variable, p.code, p.severity.value) for p in report.problems if p.code.startswith("previous-")}


def test_the_audit_log_tells_check_env_when_a_previous_secret_is_too_old(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    rotation.rotate(str(env), ["NEXTAUTH_SECRET"], now=t0)
    values = read(env)
    assert previous_problems(env, values, t0 + dt.timedelta(days=10)) == set()
    assert previous_problems(env, values, t0 + dt.timedelta(days=40)) == {
        ("NEXTAUTH_SECRET_PREVIOUS", "previous-secret-old", "warning")}


# ----- encrypted files ----------------------------------------------------------------------


NODE_DIR = Path(__file__).parent / "node"


def dotenvx_get(folder: Path, filename: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOTENV_")}
    proc = subprocess.run([str(NODE_DIR / "node_modules" / ".bin" / "dotenvx"), "get", "-f", filename, "--strict"],
                          cwd=folder, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-500:]
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def test_encrypt_rotate_rollback_decrypt_an_encrypted_file(tmp_path: Path) -> None:
    env = write(tmp_path / ".env.production", FULL)
    enc = encryption.encrypt_file(str(env), environ={})
    assert enc.created_key and (tmp_path / ".env.keys").stat().st_mode & 0o777 == 0o600
    assert "NEXTAUTH_SECRET" in enc.names and "DATABASE_URL" in enc.names and "NODE_ENV" not in enc.names
    text = env.read_text()
    assert OLD_SECRET not in text and "NODE_ENV=production" in text
    assert dotenvx_get(tmp_path, ".env.production")["NEXTAUTH_SECRET"] == OLD_SECRET

    # rotation needs only the public key: hide the private one
    (tmp_path / ".env.keys").rename(tmp_path / "keys.saved")
    result = rotation.rotate(str(env), ["NEXTAUTH_SECRET"], environ={})
    assert result.encrypted and any("fingerprint is not recorded" in w for w in result.warnings)
    raw = read(env)
    assert dotenvx.is_encrypted(raw["NEXTAUTH_SECRET"]) and dotenvx.is_encrypted(raw["NEXTAUTH_SECRET_PREVIOUS"])
    (tmp_path / "keys.saved").rename(tmp_path / ".env.keys")
    got = dotenvx_get(tmp_path, ".env.production")
    assert got["NEXTAUTH_SECRET_PREVIOUS"] == OLD_SECRET and len(got["NEXTAUTH_SECRET"]) == 43

    rekeyed = encryption.rekey_file(str(env), environ={})
    assert sorted(rekeyed.names) == sorted([*enc.names, "NEXTAUTH_SECRET_PREVIOUS"])
    assert dotenvx_get(tmp_path, ".env.production") == {**got, "DOTENV_PUBLIC_KEY_PRODUCTION":
                                                        dotenvx_get(tmp_path, ".env.production")[
                                                            "DOTENV_PUBLIC_KEY_PRODUCTION"]}

    plain = encryption.decrypt_file(str(env), environ={})
    values = read(env)
    assert values["NEXTAUTH_SECRET_PREVIOUS"] == OLD_SECRET and values["NEXTAUTH_SECRET"] == got["NEXTAUTH_SECRET"]
    assert sorted(plain.names) == sorted(rekeyed.names)
    assert env.stat().st_mode & 0o777 == 0o600
    # no value outside the env file, its backups and .env.keys
    assert OLD_SECRET not in "".join(p.read_text() for p in tmp_path.iterdir()
                                     if p.is_file() and not p.name.startswith(".env"))


def test_a_wrong_key_writes_nothing(tmp_path: Path) -> None:
    env = write(tmp_path / ".env", FULL)
    encryption.encrypt_file(str(env), environ={})
    before = env.read_bytes()
    wrong = {"DOTENV_PRIVATE_KEY": dotenvx.KeyPair.generate().private_hex}
    for action in (lambda: encryption.decrypt_file(str(env), environ=wrong),
                   lambda: encryption.rekey_file(str(env), environ=wrong)):
        with pytest.raises(dotenvx.DecryptionError, match="wrong private key"):
            action()
        assert env.read_bytes() == before
    assert len(backups.numbered(str(env))) == 1  # only the one encrypt made


def test_rotate_keeps_export_indent_comments_and_other_lines(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("A=1\n\n  export NEXTAUTH_SECRET='old-secret-value-that-is-long-enough-0001'  # signs sessions\n"
                   "# previous one\nexport NEXTAUTH_SECRET_PREVIOUS='' # kept for 30 days\nexport B=2 # b")
    env.chmod(0o600)
    rotation.rotate(str(env))
    lines = env.read_text().split("\n")
    assert lines[0] == "A=1" and lines[1] == "" and lines[3] == "# previous one" and lines[5] == "export B=2 # b"
    assert lines[2].startswith("  export NEXTAUTH_SECRET=") and lines[2].endswith("  # signs sessions")
    assert lines[4] == ("export NEXTAUTH_SECRET_PREVIOUS=old-secret-value-that-is-long-enough-0001"
                        " # kept for 30 days")
    values = read(env)
    assert len(values["NEXTAUTH_SECRET"]) == 43 and values["NEXTAUTH_SECRET"] in lines[2]
    # encrypted, the same frame stays around the encrypted value
    encryption.encrypt_file(str(env), environ={})
    rotation.rotate(str(env), force=True, environ={})
    text = env.read_text()
    assert "  export NEXTAUTH_SECRET='encrypted:" in text and "'  # signs sessions\n" in text
    assert "export NEXTAUTH_SECRET_PREVIOUS='encrypted:" in text and "' # kept for 30 days\n" in text


REKEY_DRIVER = textwrap.dedent("""
    import sys
    from muzo_ops.secrets import encryption
    print("ready", flush=True)
    for _ in range(1000):
        encryption.rekey_file(sys.argv[1], keep=2, lock_timeout_s=60, environ={})
""")


def test_rekey_killed_at_any_point_leaves_a_file_the_keys_open(tmp_path: Path) -> None:
    env = write(tmp_path / ".env.production", FULL)
    encryption.encrypt_file(str(env), environ={})
    rng = random.Random(7)
    for attempt in range(60):
        proc = subprocess.Popen([sys.executable, "-c", REKEY_DRIVER, str(env)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL if attempt % 3 else signal.SIGTERM)
        proc.wait(30)
        text = env.read_text()
        _name, keys = dotenvx.private_keys_for(str(env), text, environ={})
        plain = dotenvx.decrypt_text(text, str(env), keys)  # raises if the keys do not open the file
        assert read(env).keys() == {*FULL, "DOTENV_PUBLIC_KEY_PRODUCTION"}
        assert {k: v for k, v in dotenv_values(stream=io.StringIO(plain.text)).items() if k in FULL} == FULL
        assert (tmp_path / ".env.keys").stat().st_mode & 0o777 == 0o600


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(others=st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True).filter(
           lambda n: not n.startswith("NEXTAUTH")),
           st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r$'\\\""), max_size=12),
           max_size=6),
       comment=st.sampled_from(["", "# top\n", "\n\n# auth\n"]), export=st.booleans())
def test_rotation_changes_only_its_two_lines(tmp_path_factory: pytest.TempPathFactory, others: dict[str, str],
                                            comment: str, export: bool) -> None:
    folder = tmp_path_factory.mktemp("rot")
    prefix = "export " if export else ""
    lines = [format_line(k, v) for k, v in others.items()]
    text = comment + "".join(lines[:3]) + f"{prefix}NEXTAUTH_SECRET={OLD_SECRET} # s\n" + "".join(lines[3:])
    env = folder / ".env"
    env.write_text(text)
    env.chmod(0o600)
    rotation.rotate(str(env), environ={})
    after = env.read_text()
    values = read(env)
    assert {k: values[k] for k in others} == {k: dotenv_values(stream=io.StringIO(text))[k] or "" for k in others}
    assert values["NEXTAUTH_SECRET_PREVIOUS"] == OLD_SECRET
    kept = [line for line in text.splitlines(keepends=True) if "NEXTAUTH_SECRET" not in line]
    assert [line for line in after.splitlines(keepends=True) if "NEXTAUTH_SECRET" not in line
            and not line.startswith("# The secret before the last rotation")][:len(kept)] == kept
    assert f"{prefix}NEXTAUTH_SECRET={values['NEXTAUTH_SECRET']} # s\n" in after


# ----- the handler signing secret: grace period from the schema ----------------------------------------


def test_the_handler_signing_secret_rotates_with_a_grace_period_like_nextauth(tmp_path: Path) -> None:
    old = "h" * 43
    env = write(tmp_path / ".env", {**FULL, "MUZO_HANDLER_SIGNING_SECRET": old})
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    result = rotation.rotate(str(env), ["MUZO_HANDLER_SIGNING_SECRET"], now=t0)
    values = read(env)
    assert values["MUZO_HANDLER_SIGNING_SECRET_PREVIOUS"] == old
    assert values["MUZO_HANDLER_SIGNING_SECRET"] != old and len(values["MUZO_HANDLER_SIGNING_SECRET"]) == 43
    assert [(c.name, c.action) for c in result.changes] == [
        ("MUZO_HANDLER_SIGNING_SECRET_PREVIOUS", "moved from MUZO_HANDLER_SIGNING_SECRET"),
        ("MUZO_HANDLER_SIGNING_SECRET", "rotated")]
    with pytest.raises(RotationRefused, match="MUZO_HANDLER_SIGNING_SECRET_PREVIOUS still holds"):
        rotation.rotate(str(env), ["MUZO_HANDLER_SIGNING_SECRET"], now=t0 + dt.timedelta(days=2))
    assert ("MUZO_HANDLER_SIGNING_SECRET_PREVIOUS", "previous-secret-old", "warning") in previous_problems(
        env, read(env), t0 + dt.timedelta(days=40))
    rotation.retire(str(env), "MUZO_HANDLER_SIGNING_SECRET_PREVIOUS", now=t0 + dt.timedelta(days=3))
    assert read(env)["MUZO_HANDLER_SIGNING_SECRET_PREVIOUS"] == ""
    rolled = rotation.rollback(str(env))
    assert rolled.undid is not None and rolled.undid["command"] == "retire"
    assert read(env)["MUZO_HANDLER_SIGNING_SECRET_PREVIOUS"] == old
    assert [r.command for r in audit.read(str(env))] == ["rotate", "retire", "rollback"]
    assert audit.read(str(env))[0].variables == ["MUZO_HANDLER_SIGNING_SECRET_PREVIOUS",
                                                 "MUZO_HANDLER_SIGNING_SECRET"]
    assert old not in all_text(tmp_path)


# ----- issue 15, items 18 and 19: one audit trail per real file; rekey can be rolled back ---------------


def test_a_symlink_and_its_target_share_one_audit_trail(tmp_path: Path) -> None:
    real = write(tmp_path / "muzo.env", FULL)
    link = tmp_path / ".env"
    link.symlink_to(real.name)
    rotation.rotate(str(link), ["NEXTAUTH_SECRET"])
    assert [r.command for r in audit.read(str(real))] == ["rotate"]
    rolled = rotation.rollback(str(real))  # through the other path
    assert rolled.undid is not None and rolled.undid["command"] == "rotate"
    assert read(real) == FULL and link.is_symlink()
    assert [r.command for r in audit.read(str(link))] == ["rotate", "rollback"]


def test_rekey_then_rollback_then_decrypt(tmp_path: Path) -> None:
    env = write(tmp_path / ".env.production", FULL)
    encryption.encrypt_file(str(env), environ={})
    encrypted = env.read_bytes()
    encryption.rekey_file(str(env), environ={})
    rolled = rotation.rollback(str(env), environ={})
    assert rolled.undid is not None and rolled.undid["command"] == "rekey"
    assert env.read_bytes() == encrypted
    encryption.decrypt_file(str(env), environ={})  # with the key rollback put back
    assert {k: v for k, v in read(env).items() if not k.startswith("DOTENV_")} == FULL
    # the old key was kept by rekey in a numbered 0600 backup of the keys file
    assert sorted(p.name for p in tmp_path.glob(".env.keys*.bak")) == [".env.keys.1.bak", ".env.keys.2.bak"]
    assert {p.stat().st_mode & 0o777 for p in tmp_path.glob(".env.keys*")} == {0o600}


def test_rollback_refuses_a_backup_no_key_at_hand_opens(tmp_path: Path) -> None:
    env = write(tmp_path / ".env.production", FULL)
    encryption.encrypt_file(str(env), environ={})
    encryption.decrypt_file(str(env), environ={})
    (tmp_path / ".env.keys").unlink()  # the key of the encrypted backup is gone
    before = env.read_bytes()
    with pytest.raises(RotationRefused, match="no longer at hand"):
        rotation.rollback(str(env), environ={})
    assert env.read_bytes() == before
    # the undone rekey whose kept key is gone is refused as well
    env = write(tmp_path / ".env.staging", FULL)
    encryption.encrypt_file(str(env), environ={})
    encryption.rekey_file(str(env), environ={})
    for kept in tmp_path.glob(".env.keys.*.bak"):
        kept.unlink()
    before = env.read_bytes()
    with pytest.raises(RotationRefused, match="nothing changed"):
        rotation.rollback(str(env), environ={})
    assert env.read_bytes() == before
