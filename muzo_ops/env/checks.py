"""``check-env``: what is wrong with an environment, and how to fix it.

``check(values, ...)`` takes the resolved values (from the file alone, or
with the process environment on top) and returns a ``Report``. Nothing here
prints; ``muzo_ops.env.report`` formats. No message contains a value of a
sensitive variable. The rules live by concern: ``rules`` (the codes and
waivers), ``values`` (one value's format), ``urlrules`` (URLs, hosts and
production), ``crossrules`` (between variables); masking is
``muzo_ops.redact``'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from muzo_ops.constants import MASK
from muzo_ops.env import crossrules, rules, schema, urlrules
from muzo_ops.env.crossrules import SecretAge
from muzo_ops.env.problems import Note, Problem, Report, Severity, VariableStatus
from muzo_ops.env.rules import RULES, Rule
from muzo_ops.env.schema import App, Kind, Variable
from muzo_ops.env.urlrules import hosts_of, is_local_host
from muzo_ops.env.values import handlers_error, is_placeholder, number_error, value_error
from muzo_ops.mongo import url as mongourl

__all__ = ["RULES", "Note", "Problem", "Report", "Rule", "Severity", "VariableStatus", "check",
           "check_file_mode", "handlers_error", "hosts_of", "is_local_host", "is_placeholder", "mask",
           "number_error", "value_error"]


def mask(var: Variable | None, value: str) -> str:
    """``value`` as it may be shown: secrets, URL passwords and secret shapes hidden."""
    from muzo_ops.redact.masking import mask_value

    if var is None:
        return MASK
    if var.kind is Kind.MONGO_URL:
        return mask_value(mongourl.redacted(value), sensitive=False, url=True)
    return mask_value(value, sensitive=var.sensitive, url=var.kind is Kind.REDIS_URL)


_NEXT_EXPANDS = re.compile(r"(?<!\\)\$(?:\{?[A-Za-z0-9_]+)")


def check(
    values: Mapping[str, str],
    app: App | None = None,
    bare_keys: tuple[str, ...] = (),
    duplicates: tuple[str, ...] = (),
    raw: Mapping[str, str] | None = None,
    bare_lines: tuple[int, ...] = (),
    production: bool | None = None,
    environ_empty: tuple[str, ...] = (),
    sources: Mapping[str, str] | None = None,
    encrypted: tuple[str, ...] = (),
    waivers: Mapping[str, str] | None = None,
    secret_age: SecretAge | None = None,
) -> Report:
    """Check ``values`` against the schema and the cross-variable rules.

    ``raw`` (the file's values before expansion) enables the check for
    ``$name`` text that Next.js would expand but python-dotenv would not.
    ``bare_lines`` are the lines holding text without ``=`` (reported by
    number only: such a line may be a pasted secret); ``bare_keys`` is the
    older form, reported without the text. ``production`` (None: from
    NODE_ENV) turns on the production rules. ``environ_empty`` names the
    variables an empty process-environment value hides; ``sources`` says
    where each value came from ("file" or "environment"). ``encrypted``
    names values still encrypted (dotenvx format, no private key found):
    they count as set, and their content is not checked. ``waivers`` (code
    → reason) accept problems on record, on top of the file's own
    ``MUZO_CHECK_WAIVERS`` (UsageError, exit 2, for an unknown code or no
    reason). ``secret_age`` tells when a current secret was rotated (the
    secrets' audit log; None: that rule is skipped).
    """
    report = Report()
    report.waive({**rules.file_waivers(values), **rules.checked_waivers(waivers or {}, "waivers")})
    in_scope = schema.for_app(app)
    empty_override = set(environ_empty)
    sealed = set(encrypted)
    if sealed:
        values = {name: "" if name in sealed else value for name, value in values.items()}
    for var in in_scope:
        if var.name in sealed:
            report.add(var.name, Severity.WARNING, "encrypted-not-checkable",
                       f"{var.name} is encrypted and no private key was found (DOTENV_PRIVATE_KEY… in "
                       "the environment, or .env.keys beside the file): its value is not checked")
            continue
        if var.name in empty_override:
            severity = Severity.ERROR if var.required else Severity.WARNING
            report.add(var.name, severity, "environ-empty-override",
                       f"{var.name} is set but empty in the process environment, which hides the "
                       f"file's value: unset it (unset {var.name}) or give it a value")
            continue
        _check_variable(report, var, values.get(var.name, ""))
    if production is None:
        production = values.get("NODE_ENV", "") == "production"
        why = "NODE_ENV=production"
    else:
        why = "--environment production"
    names = {v.name for v in in_scope}
    if "DATABASE_URL" in names:
        urlrules.check_database_url(report, values.get("DATABASE_URL", ""), production)
    if "NEXTAUTH_URL" in names:
        urlrules.check_nextauth_url(report, values.get("NEXTAUTH_URL", ""), production)
    if production:
        urlrules.check_production(report, values, names, why)
    crossrules.check_public_secrets(report, values)
    if names & {"STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY"}:
        crossrules.check_stripe(report, values, names)
    crossrules.check_unknown(report, values)
    crossrules.check_previous_secrets(report, values, secret_age)
    for key, value in (raw or {}).items():
        known = schema.BY_NAME.get(key)
        if (known is None or known.needed_by(app)) and "${" not in value and _NEXT_EXPANDS.search(value):
            report.add(key, Severity.WARNING, "dollar-expansion",
                       f"{key} has `$` before a name, which Next.js expands as a variable (and "
                       "python-dotenv does not): the apps would read different values; remove it "
                       "or, inside a URL, percent-encode `$` as %24")
    for key in duplicates:
        report.add(key, Severity.WARNING, "duplicate",
                   f"{key} is set more than once; the last one wins: delete the others")
    for line in bare_lines:
        report.add(None, Severity.WARNING, "no-equals",
                   f"line {line} has no '=' and is ignored (its text is not shown: it may be a "
                   "pasted secret): write NAME=value, or delete the line")
    if bare_keys:
        report.add(None, Severity.WARNING, "no-equals",
                   f"{len(bare_keys)} line(s) have no '=' and are ignored (not shown: they may be "
                   "pasted secrets): write NAME=value, or delete them")
    errored = {p.variable for p in report.errors}
    report.variables = [
        VariableStatus(
            name=var.name,
            required=var.required,
            present=bool(values.get(var.name, "")) or var.name in sealed,
            valid=bool(values.get(var.name, "")) and var.name not in errored,
            value="(encrypted)" if var.name in sealed else (
                mask(var, values[var.name]) if values.get(var.name, "") else None),
            source=(sources or {}).get(var.name),
        )
        for var in in_scope
    ]
    return report


def check_file_mode(report: Report, path: str, mode: int) -> None:
    """Warn when an env file holding secrets is open to group or others."""
    if mode & 0o077:
        report.add(None, Severity.WARNING, "file-permissions",
                   f"{path} is readable by others (mode {mode & 0o777:04o}): run chmod 600 {path}")


def _check_variable(report: Report, var: Variable, value: str) -> None:
    if value == "":
        if var.required:
            how = " (generate it: muzo-ops init-env)" if var.generator else ""
            report.add(var.name, Severity.ERROR, "missing",
                       f"{var.name} is required by {var.apps_label} but not set{how}")
        return
    if is_placeholder(var, value):
        report.add(var.name, Severity.ERROR, "placeholder",
                   f"{var.name} is still a placeholder: put the real value in")
        return
    problem = value_error(var, value)
    if problem:
        report.add(var.name, Severity.ERROR, "invalid", f"{var.name} {problem}")
    if var.deprecated_by:
        report.add(var.name, Severity.WARNING, "deprecated",
                   f"{var.name} is deprecated: rename it {var.deprecated_by} "
                   f"({var.deprecated_by} wins when both are set)")
