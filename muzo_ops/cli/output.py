"""What a command prints: stdout and stderr through one ``Redactor``."""

from __future__ import annotations

import re
import sys
from typing import TextIO

from muzo_ops.redact.redactor import Redactor

# Control characters but line feed and tab (C0, DEL, C1): an escape sequence
# in a value could rewrite the terminal line that reports it.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """``text`` with control characters shown as ``\\u001b`` (also valid inside JSON strings)."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


class Output:
    """Writes lines to stdout/stderr: every known secret and secret shape hidden, control characters escaped."""

    def __init__(self, redactor: Redactor | None = None, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        self.redactor = redactor if redactor is not None else Redactor()
        self._stdout = stdout
        self._stderr = stderr

    def _write(self, stream: TextIO, text: str) -> None:
        text = escape_controls(self.redactor(text))
        stream.write(text + ("" if text.endswith("\n") else "\n"))

    def out(self, text: str = "") -> None:
        """A line on standard output."""
        self._write(self._stdout or sys.stdout, text)

    def value(self, text: str) -> None:
        """A value the user asked to see (``secrets generate``), on standard output as it is.

        Not redacted: a fresh random value can, by chance, look like a
        secret's shape, and masking part of it would hand out a broken secret.
        """
        stream = self._stdout or sys.stdout
        stream.write(text + "\n")

    def err(self, text: str) -> None:
        """A line on standard error."""
        self._write(self._stderr or sys.stderr, text)

    def json(self, data: object) -> None:
        """``data`` as indented JSON on standard output."""
        import json

        self.out(json.dumps(data, indent=2, default=str))
