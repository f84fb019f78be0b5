"""What check-env reports: problems (waived or not), variable statuses, notes."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NamedTuple


class Severity(enum.StrEnum):
    """How bad a problem is."""

    ERROR = "error"  # the app will not work; exit 1
    WARNING = "warning"  # likely wrong; exit 1 only with --strict


class Problem(NamedTuple):
    """One thing wrong, with a stable ``code`` for scripts."""

    variable: str | None  # the variable concerned, None for the whole file
    severity: Severity
    code: str  # short stable id, e.g. "missing", "mongo-direct-and-replicaset"
    message: str  # what is wrong and the fix; never a secret value
    special: bool = False  # shown under "Special Checks" in text output
    waived: bool = False  # accepted on record (--allow, MUZO_CHECK_WAIVERS): shown, never fails
    reason: str | None = None  # why it was waived


class VariableStatus(NamedTuple):
    """One schema variable as found in the environment."""

    name: str
    required: bool
    present: bool  # set and non-empty
    valid: bool  # present and no error about it
    value: str | None  # masked for display; None when absent
    source: str | None = None  # "file" or "environment" (with --include-environ), None when unknown


class Note(NamedTuple):
    """A special check that passed, shown with ✅."""

    message: str


class Report:
    """Everything ``check-env`` found. Waived problems are listed but are neither errors nor warnings."""

    def __init__(self, variables: list[VariableStatus] | None = None, problems: list[Problem] | None = None,
                 notes: list[Note] | None = None, connections: list[tuple[bool, str]] | None = None,
                 waivers: dict[str, str] | None = None) -> None:
        self.variables = variables if variables is not None else []
        self.problems = problems if problems is not None else []
        self.notes = notes if notes is not None else []
        self.connections = connections  # --connect: (ok, line) per server
        self.waivers = waivers if waivers is not None else {}  # code -> reason, applied to every add

    def __repr__(self) -> str:
        return f"Report({len(self.problems)} problems, {len(self.variables)} variables)"

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR and not p.waived]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.WARNING and not p.waived]

    @property
    def waived(self) -> list[Problem]:
        return [p for p in self.problems if p.waived]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, variable: str | None, severity: Severity, code: str, message: str,
            special: bool = False) -> None:
        """Record a problem; ``code`` is one of ``RULES`` (the docs page lists them)."""
        reason = self.waivers.get(code)
        self.problems.append(Problem(variable, severity, code, message, special,
                                     waived=reason is not None, reason=reason))

    def waive(self, waivers: Mapping[str, str]) -> None:
        """Waive ``waivers``' codes (code → reason): problems found so far and from now on."""
        self.waivers.update(waivers)
        self.problems = [p._replace(waived=True, reason=self.waivers[p.code]) if p.code in self.waivers
                         else p for p in self.problems]
