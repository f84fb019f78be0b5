"""Helpers the tests share: run the CLI in a real process, look for secrets in output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MONGO_APP_PASSWORD = "Str0ng-Mongo-App-Pass-77"


def run_cli(*args: str, cwd: Path | None = None, stdin: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m muzo_ops ARGS`` in a real process; output captured."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "muzo_ops", *args], cwd=cwd, input=stdin, text=True,
        capture_output=True, env=full_env, timeout=timeout,
    )


def assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, "a secret value appeared in the output"


def copy_checkout(dest: Path) -> Path:
    """A frozen copy of what the wheel is built from (other edits in the tree do not change a release)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("muzo_ops", "templates", "deploy"):  # every folder pyproject.toml puts in the wheel
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def wait_until(predicate: Callable[[], Any], timeout: float = 60, what: str = "",
               detail: Callable[[], str] | None = None) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` (and ``detail()``) at ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out: {what}" + (f"\n{detail()}" if detail is not None else ""))


def process_table() -> dict[int, tuple[int, int, int]]:
    """Every live (not zombie) process: pid -> (parent pid, process group, start time in clock ticks)."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[19]))
    return table


def descendants(pid: int, table: dict[int, tuple[int, int, int]] | None = None) -> set[int]:
    """Every live descendant of ``pid``."""
    table = process_table() if table is None else table
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, (pp, _g, _s) in table.items() if pp == parent and p not in found]
        found.update(kids)
        frontier += kids
    return found
