"""A file with other hard links is never replaced: the atomic rename would leave the other names the old secrets.

``ln .env /srv/app/.env`` makes two names for one inode; ``os.replace``
gives ``.env`` a new inode and ``/srv/app/.env`` keeps the old content, so
the app reading it keeps the rotated-out secrets without a word. The one
writer (``files.atomic.write``) refuses such a file with one line naming it
and the fix, before anything changes; every writer of secrets gets it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from muzo_ops.env.envfile import format_line
from muzo_ops.errors import EnvFileError
from muzo_ops.files import atomic, links
from muzo_ops.secrets import audit
from tests.envdata import FULL, SECRETS
from tests.helpers import assert_no_secret

NO_KEYS = {"DOTENV_PRIVATE_KEY": "", "DOTENV_PRIVATE_KEY_PRODUCTION": "", "MUZO_MONGO_ADMIN_URI": ""}


def linked_env(folder: Path) -> tuple[Path, Path]:
    env = folder / ".env"
    env.write_text("".join(format_line(k, v) for k, v in FULL.items()), encoding="utf-8")
    env.chmod(0o600)
    other = folder / "app" / ".env"
    other.parent.mkdir()
    os.link(env, other)
    return env, other


def test_the_writer_refuses_a_hard_linked_file_and_changes_nothing(tmp_path: Path) -> None:
    env, other = linked_env(tmp_path)
    before = env.read_bytes()
    with pytest.raises(EnvFileError) as info:
        atomic.write(str(env), "NEW=1\n", keep_backup=True)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{env}: has 1 other hard link")
    assert f"find / -xdev -samefile {env}" in message and "ln -sf" in message and "nothing was changed" in message
    assert env.read_bytes() == other.read_bytes() == before
    assert os.stat(env).st_ino == os.stat(other).st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env", ".env.lock", "app"]  # no backup, no temp file
    # through a symlink, the file it leads to is checked
    link = tmp_path / "via-symlink.env"
    link.symlink_to(env.name)
    with pytest.raises(EnvFileError, match="other hard link"):
        atomic.write(str(link), "NEW=1\n")
    # once the other name is a symlink (the fix the message gives), the write goes through and both see it
    other.unlink()
    other.symlink_to(env)
    atomic.write(str(env), "NEW=1\n")
    assert other.read_text() == "NEW=1\n"


def test_a_single_link_or_a_missing_file_passes() -> None:
    links.refuse_hard_links("/nonexistent/.env")
    links.refuse_hard_links(__file__)


def test_secrets_rotate_refuses_a_hard_linked_env_file_with_one_line(tmp_path: Path) -> None:
    env, other = linked_env(tmp_path)
    before = env.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "muzo_ops", "secrets", "rotate", "--env-file", str(env)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **NO_KEYS})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {env}: has 1 other hard link"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert_no_secret(proc.stdout + proc.stderr, SECRETS)
    assert env.read_bytes() == other.read_bytes() == before
    assert audit.read(str(env)) == []
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".bak", ".tmp", ".audit-pending"))]


def test_rekey_refuses_a_hard_linked_keys_file_before_writing_anything(tmp_path: Path) -> None:
    """The other name of .env.keys would keep only the old key, which no longer opens the env file."""
    from muzo_ops.secrets import encryption

    env = tmp_path / ".env.production"
    env.write_text("".join(format_line(k, v) for k, v in FULL.items()), encoding="utf-8")
    env.chmod(0o600)
    encryption.encrypt_file(str(env), environ={})
    keys = tmp_path / ".env.keys"
    os.link(keys, tmp_path / "keys.copy")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.endswith(".lock")}
    with pytest.raises(EnvFileError, match=r"\.env\.keys: has 1 other hard link"):
        encryption.rekey_file(str(env), environ={})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.endswith(".lock")} == before


def test_undoing_a_rekey_of_a_hard_linked_env_file_changes_neither_file(tmp_path: Path) -> None:
    from muzo_ops.secrets import encryption, rotation

    env = tmp_path / ".env.production"
    env.write_text("".join(format_line(k, v) for k, v in FULL.items()), encoding="utf-8")
    env.chmod(0o600)
    encryption.encrypt_file(str(env), environ={})
    encryption.rekey_file(str(env), environ={})
    os.link(env, tmp_path / "web.env")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.endswith(".lock")}
    with pytest.raises(EnvFileError, match=r"\.env\.production: has 1 other hard link"):
        rotation.rollback(str(env), environ={})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.endswith(".lock")} == before
