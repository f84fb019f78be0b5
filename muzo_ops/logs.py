"""pino-compatible JSON log lines on stdout.

Each line: ``level`` (10 trace … 60 fatal), ``time`` (ms since epoch),
``pid``, ``hostname``, ``name``, ``msg``, extra fields, errors under
``err`` {type, message, stack}. Known secret values are replaced by ``***``
in every string of the record before it is encoded, so a secret holding
``"`` or ``\\`` is hidden too.
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
# One encoder for every line (json.dumps with options builds a new one per call).
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":"))


class Logger:
    """A pino-style logger; ``child(name)`` shares level, stream and redaction."""

    def __init__(self, name: str, level: str = "info", stream: TextIO | None = None,
                 redactor: Redactor | None = None, _lock: threading.Lock | None = None) -> None:
        self.name = name
        self.level = LEVELS.get(level, 30)
        self.stream = stream or sys.stdout
        self.redactor = redactor if redactor is not None else Redactor()
        self._lock = _lock or threading.Lock()
        self._base = {"pid": os.getpid(), "hostname": socket.gethostname()}

    def child(self, name: str) -> Logger:
        child = Logger(name, "info", self.stream, self.redactor, self._lock)
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
        line = _ENCODER.encode(_redacted(record, self.redactor))
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
