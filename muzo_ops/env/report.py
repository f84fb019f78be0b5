"""Formatting a ``checks.Report``: the operators' text shape and stable JSON."""

from __future__ import annotations

from typing import Any

from muzo_ops.env import schema
from muzo_ops.env.problems import Problem, Report, Severity

OK, ERROR, WARNING, UNSET, WAIVED = "✅", "❌", "⚠️ ", "⚪", "☑️ "


def failed(report: Report, strict: bool = False) -> bool:
    """Whether check-env exits 1: errors, or warnings under ``--strict``."""
    return not report.ok or (strict and bool(report.warnings))


def to_json(report: Report, extra: dict[str, Any] | None = None, strict: bool = False) -> str:
    """The stable JSON shape of ``check-env --format json``.

    ``ok`` is false exactly when the exit code is 1 (errors, or warnings
    with ``strict``).
    """
    import json

    data: dict[str, Any] = {
        "ok": not failed(report, strict),
        "problems": [
            {"variable": p.variable, "severity": p.severity.value, "code": p.code,
             "message": p.message, "waived": p.waived, "reason": p.reason}
            for p in report.problems
        ],
        "variables": [
            {"name": v.name, "required": v.required, "present": v.present, "valid": v.valid,
             "value": v.value}
            for v in report.variables
        ],
    }
    if any(v.source for v in report.variables):  # --include-environ: where each value came from
        for entry, status in zip(data["variables"], report.variables, strict=True):
            entry["source"] = status.source
    if report.connections is not None:
        data["connections"] = [{"ok": ok, "message": m} for ok, m in report.connections]
    if extra:
        data.update(extra)
    return json.dumps(data, ensure_ascii=False, indent=2)


def to_text(report: Report, source: str, connections: list[tuple[bool, str]] | None = None,
            strict: bool = False) -> str:
    """The text report: a line per variable, Special Checks, Summary.

    With values layered from the environment each value says where it came
    from; with ``strict`` the last line says when warnings made it fail.
    """
    if connections is None:
        connections = report.connections
    width = max(len(v.name) for v in report.variables) + 2 if report.variables else 30
    by_var: dict[str, list[Any]] = {}
    for p in report.problems:
        if p.variable and not p.waived:
            by_var.setdefault(p.variable, []).append(p)
    lines = [f"📋 Environment Variables Check ({source})", ""]
    statuses = {v.name: v for v in report.variables}
    for group, variables in schema.grouped():
        shown = [v for v in variables if v.name in statuses]
        if not shown:
            continue
        lines.append(f"{group.value}")
        for var in shown:
            status = statuses[var.name]
            tag = "[REQUIRED]" if var.required else "[OPTIONAL]"
            problems = by_var.get(var.name, [])
            errors = [p for p in problems if p.severity is Severity.ERROR]
            if errors:
                icon = ERROR
            elif problems:
                icon = WARNING
            elif not status.present:
                icon = UNSET if not var.required else ERROR
            else:
                icon = OK
            hidden = any(p.code == "environ-empty-override" for p in problems)
            if hidden:
                shown_value = "(empty in the environment, hiding the file's value)"
            else:
                shown_value = f"= {status.value}" if status.present else "(not set)"
                if status.present and status.source:
                    shown_value += f"  (from the {status.source})"
            line = f"{icon} {var.name:<{width}} {tag} {shown_value}"
            own = [p for p in problems if not p.special]
            if own:
                line += f"  — {own[0].message}"
            elif problems:
                line += "  — see Special Checks"
            lines.append(line)
        lines.append("")
    others = [p for p in report.problems if p.variable not in statuses and not p.special and not p.waived]
    if others:
        lines.append("📄 The file and other variables")
        lines.extend(f"{_icon(p.severity)} {p.message}" for p in others)
        lines.append("")
    special = [p for p in report.problems if p.special and not p.waived]
    lines.append("🔍 Special Checks")
    lines.append("")
    lines.extend(f"{OK} {n.message}" for n in report.notes)
    lines.extend(f"{_icon(p.severity)} {p.message}" for p in special)
    if not report.notes and not special:
        lines.append(f"{UNSET} nothing to check")
    lines.append("")
    if report.waived:
        lines.append("☑️  Waived (accepted on record; they do not fail the check)")
        lines.append("")
        lines.extend(_waived_line(p) for p in report.waived)
        lines.append("")
    if connections is not None:
        lines.append("🔌 Connections")
        lines.append("")
        lines.extend(f"{OK if good else ERROR} {message}" for good, message in connections)
        lines.append("")
    required = [v for v in report.variables if v.required]
    optional = [v for v in report.variables if not v.required]
    lines.append("📊 Summary:")
    lines.append(f"   Required: {sum(v.valid for v in required)}/{len(required)} configured")
    lines.append(f"   Optional: {sum(v.present for v in optional)}/{len(optional)} configured")
    lines.append(f"   Errors: {len(report.errors)}, warnings: {len(report.warnings)}"
                 + (f", waived: {len(report.waived)}" if report.waived else ""))
    lines.append("")
    if report.errors:
        lines.append(f"{ERROR} {len(report.errors)} error(s): fix them before starting the apps")
    elif report.warnings and strict:
        lines.append(f"{ERROR} No errors, but {len(report.warnings)} warning(s), and --strict turns "
                     "warnings into a failure (exit 1)")
    elif report.warnings:
        lines.append(f"{WARNING} No errors, {len(report.warnings)} warning(s) to look at")
    else:
        lines.append(f"{OK} All checks passed! Your environment is properly configured")
    return "\n".join(lines) + "\n"


def _icon(severity: Severity) -> str:
    return ERROR if severity is Severity.ERROR else WARNING


def _waived_line(problem: Problem) -> str:
    return f"{WAIVED}{problem.severity.value} {problem.code} waived ({problem.reason}): {problem.message}"
