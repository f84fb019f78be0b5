"""What a command prints: stdout and stderr through one ``Redactor``."""

from __future__ import annotations

import sys
from typing import TextIO

from muzo_ops.secrets.redact import Redactor


class Output:
    """Writes lines to stdout/stderr with every known secret hidden."""

    def __init__(self, redactor: Redactor | None = None, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        self.redactor = redactor if redactor is not None else Redactor()
        self._stdout = stdout
        self._stderr = stderr

    def _write(self, stream: TextIO, text: str) -> None:
        text = self.redactor(text)
        stream.write(text + ("" if text.endswith("\n") else "\n"))

    def out(self, text: str = "") -> None:
        """A line on standard output."""
        self._write(self._stdout or sys.stdout, text)

    def err(self, text: str) -> None:
        """A line on standard error."""
        self._write(self._stderr or sys.stderr, text)

    def json(self, data: object) -> None:
        """``data`` as indented JSON on standard output."""
        import json

        self.out(json.dumps(data, indent=2, default=str))
