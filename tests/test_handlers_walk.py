"""The newcomer's walk: --version, readable logs on a terminal, --burst's exit code and last line."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from muzo_ops.constants import VERSION
from muzo_ops.logs import Logger, default_format
from muzo_ops.redact.redactor import Redactor

ROOT = Path(__file__).resolve().parent.parent


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "muzo_ops", "--version"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0 and done.stdout == f"muzo-ops {VERSION}\n"


def test_pretty_lines_are_readable_and_redacted() -> None:
    stream = io.StringIO()
    log = Logger("muzo-worker", "info", stream, Redactor(["topsecretvalue"]), log_format="pretty")
    log.info("Job finished", job="abc", type="MOCKUP", duration=0.25, note="has topsecretvalue in it")
    try:
        raise ValueError("bad topsecretvalue")
    except ValueError as exc:
        log.child("muzo-queue-init").log("error", "Job failed", err=exc)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith('INFO  muzo-worker: Job finished  job=abc type=MOCKUP duration=0.25 '
                             'note="has *** in it"')
    assert "ERROR muzo-queue-init: Job failed" in lines[1] and lines[2] == "  ValueError: bad ***"
    assert "topsecretvalue" not in stream.getvalue()


def test_default_format_pretty_on_a_terminal_json_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_format(io.StringIO()) == "json"
    main, secondary = pty.openpty()
    try:
        with open(secondary, "w", closefd=False) as terminal:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
            assert default_format(terminal) == "pretty"
            monkeypatch.setenv("JOURNAL_STREAM", "8:1234")  # systemd's journal
            assert default_format(terminal) == "json"
    finally:
        os.close(main)
        os.close(secondary)
    stream = io.StringIO()
    Logger("x", "info", stream).info("hello")
    assert json.loads(stream.getvalue())["msg"] == "hello"
