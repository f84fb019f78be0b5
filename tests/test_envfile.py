"""envfile: parsing with line numbers, lossless edits, atomic 0600 writes."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

import pytest

from muzo_ops.env import envfile
from muzo_ops.errors import EnvFileError
from muzo_ops.files import atomic, backups


def test_edits_keep_comments_order_and_unknown_keys() -> None:
    text = "# top\nA=1\n\n# about B\nB='two words'  # trailing\nC=3\nA=again\n"
    parsed = envfile.parse_text(text)
    assert parsed.duplicates() == ["A"]
    new = envfile.with_lines(parsed, envfile.value_lines({"A": "x y", "C": "4"}), ["D=5\n"])
    assert new == "# top\nA=1\n\n# about B\nB='two words'  # trailing\nC=4\nA=x y\n\nD=5\n"
    assert envfile.parse_text(new).values() == {"A": "x y", "B": "two words", "C": "4", "D": "5"}


def test_values_expand_from_the_file_only_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST_FROM_ENV", "env-host")
    parsed = envfile.parse_text("HOST=db\nURL=mongodb://${HOST}/x\nOTHER=${HOST_FROM_ENV}\n")
    assert parsed.values()["URL"] == "mongodb://db/x"
    assert parsed.values()["OTHER"] == ""
    layered = parsed.values({"HOST_FROM_ENV": "env-host", "HOST": "over"})
    assert layered["OTHER"] == "env-host" and layered["HOST"] == "over"


def test_error_line_numbers() -> None:
    with pytest.raises(EnvFileError) as info:
        envfile.parse_text("A=1\n# c\n\nDATABASE_URL='mongodb://x\n", ".env")
    assert str(info.value) == (".env line 4: unterminated quote in DATABASE_URL: add the "
                               "closing ' or escape it")


def test_atomic_write_is_0600_from_the_start_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    target.write_text("OLD=1\n")
    target.chmod(0o644)
    seen_modes: list[tuple[str, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for entry in os.scandir(tmp_path):
                with contextlib.suppress(FileNotFoundError):
                    seen_modes.append((entry.name, stat.S_IMODE(entry.stat().st_mode)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    for i in range(50):
        atomic.write(str(target), f"SECRET=value-{i}\n")
    stop.set()
    watcher.join()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == "SECRET=value-49\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env", ".env.lock"]  # every write is locked
    temp_modes = {m for name, m in seen_modes if name.endswith(".tmp")}
    assert temp_modes <= {0o600}


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    target.write_text("KEEP=1\n")

    with pytest.raises(TypeError):
        atomic.write(str(target), 12345)  # type: ignore[arg-type]
    assert target.read_text() == "KEEP=1\n"
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [".env"]


def test_backup_numbering_and_mode(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    target.write_text("A=1\n")
    first = backups.make(str(target))
    second = backups.make(str(target))
    assert first and first.endswith(".env.1.bak") and second and second.endswith(".env.2.bak")
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o600
