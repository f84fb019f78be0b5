"""Errors muzo_ops raises; the CLI turns each into one ``error:`` line.

Messages never contain a secret value: they name the variable, the file and
the line, and say what to do.
"""

from __future__ import annotations

from muzo_ops.constants import EXIT_USAGE


class MuzoOpsError(Exception):
    """Base class: a failure the user can act on, with the exit code to use."""

    exit_code = EXIT_USAGE


class UsageError(MuzoOpsError):
    """Bad command-line input."""


class EnvFileError(MuzoOpsError):
    """An env file that cannot be read, parsed or written."""

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path} line {line}" if line is not None else path
        super().__init__(f"{where}: {message}")


class UnrepresentableValueError(MuzoOpsError):
    """A value that no quoting makes both python-dotenv and Next.js read back."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        super().__init__(f"{name}: {reason}")


class SchemaError(MuzoOpsError):
    """A name or option that the variable schema does not know."""


class ConfigError(MuzoOpsError):
    """Settings that stop a command (the worker) from starting."""

