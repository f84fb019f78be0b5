"""pino-compatible JSON log lines on stdout, or readable lines on a terminal.

Each line: ``level`` (10 trace … 60 fatal), ``time`` (ms since epoch),
``pid``, ``hostname``, ``name``, ``msg``, extra fields, errors under
``err`` {type, message, stack}. Known secret values are replaced by ``***``
in every string of the record before it is encoded, so a secret holding
``"`` or ``\\`` is hidden too.

``log_format``: ``json`` (pino) or ``pretty`` (``12:00:01.234 INFO  muzo-worker:
Job finished job=… type=…``); by default pretty when the stream is a
terminal, JSON otherwise (systemd's journal, pipes, files).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import traceback
from typing import Any, TextIO

from muzo_ops.redact.redactor import Redactor

LEVELS: dict[str, int] = {"trace": 10, "debug": 20, "info": 30, "warn": 40, "error": 50, "fatal": 60}
LEVEL_NAMES = {number: name for name, number in LEVELS.items()}
LOG_FORMATS = ("json", "pretty")
# One encoder for every line (json.dumps with options builds a new one per call).
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":"))


def default_format(stream: TextIO) -> str:
    """``pretty`` on a terminal, ``json`` anywhere else (and always under systemd)."""
    if os.environ.get("JOURNAL_STREAM"):
        return "json"
    try:
        return "pretty" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def pretty_line(record: dict[str, Any]) -> str:
    """A record as one readable line (the error's stack on indented lines below it)."""
    moment = time.strftime("%H:%M:%S", time.localtime(record["time"] / 1000)) + f".{record['time'] % 1000:03d}"
    level = LEVEL_NAMES.get(record["level"], str(record["level"])).upper()
    skip = {"level", "time", "pid", "hostname", "name", "msg", "err"}
    fields = " ".join(f"{key}={_ENCODER.encode(value) if not isinstance(value, str) or ' ' in value else value}"
                      for key, value in record.items() if key not in skip)
    line = f"{moment} {level:<5} {record['name']}: {record['msg']}" + (f"  {fields}" if fields else "")
    err = record.get("err")
    if isinstance(err, dict):
        line += f"\n  {err.get('type')}: {err.get('message')}"
        if record["level"] >= LEVELS["error"] and err.get("stack"):
            line += "\n" + "\n".join("    " + part for part in str(err["stack"]).splitlines())
    return line


class Logger:
    """A pino-style logger; ``child(name)`` shares level, stream and redaction."""

    def __init__(self, name: str, level: str = "info", stream: TextIO | None = None,
                 redactor: Redactor | None = None, _lock: threading.Lock | None = None,
                 log_format: str | None = None) -> None:
        self.name = name
        self.level = LEVELS.get(level, 30)
        self.stream = stream or sys.stdout
        self.redactor = redactor if redactor is not None else Redactor()
        self._lock = _lock or threading.Lock()
        self._base = {"pid": os.getpid(), "hostname": socket.gethostname()}
        self.format = log_format if log_format in LOG_FORMATS else default_format(self.stream)

    def child(self, name: str) -> Logger:
        child = Logger(name, "info", self.stream, self.redactor, self._lock, self.format)
        child.level = self.level
        return child

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.level

    def log(self, level: str, msg: str, err: BaseException | None = None, **fields: Any) -> None:
        number = LEVELS[level]
        if number < self.level:
            return
        record: dict[str, Any] = {"level": number, "time": int(time.time() * 1000), **self._base,
                                  "name": self.name, "msg": msg}
        record.update(fields)
        if err is not None:
            record["err"] = {
                "type": type(err).__name__,
                "message": str(err),
                "stack": "".join(traceback.format_exception(err)).rstrip(),
            }
        clean = _redacted(record, self.redactor)
        line = pretty_line(clean) if self.format == "pretty" else _ENCODER.encode(clean)
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                pass

    def trace(self, msg: str, **fields: Any) -> None:
        self.log("trace", msg, **fields)

    def debug(self, msg: str, **fields: Any) -> None:
        self.log("debug", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log("info", msg, **fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self.log("warn", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log("error", msg, **fields)

    def fatal(self, msg: str, **fields: Any) -> None:
        self.log("fatal", msg, **fields)


def _redacted(value: Any, redactor: Redactor) -> Any:
    """``value`` with every string (keys too) passed through ``redactor``."""
    if isinstance(value, str):
        return redactor(value)
    if isinstance(value, dict):
        return {redactor(str(k)): _redacted(v, redactor) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v, redactor) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redactor(str(value))
