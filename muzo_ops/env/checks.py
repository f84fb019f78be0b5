"""``check-env``: what is wrong with an environment, and how to fix it.

``check(values, ...)`` takes the resolved values (from the file alone, or
with the process environment on top) and returns a ``Report``. Nothing here
prints; ``muzo_ops.env.report`` formats. No message contains a value of a
sensitive variable.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from muzo_ops.constants import (
    MASK,
    MASK_VISIBLE_TAIL,
    MIN_SERVER_SELECTION_TIMEOUT_MS,
    RECOMMENDED_SERVER_SELECTION_TIMEOUT_MS,
)
from muzo_ops.env import schema
from muzo_ops.env.schema import App, Kind, Variable
from muzo_ops.mongo import url as mongourl


class Severity(enum.StrEnum):
    """How bad a problem is."""

    ERROR = "error"  # the app will not work; exit 1
    WARNING = "warning"  # likely wrong; exit 1 only with --strict


@dataclass(frozen=True)
class Problem:
    """One thing wrong, with a stable ``code`` for scripts."""

    variable: str | None  # the variable concerned, None for the whole file
    severity: Severity
    code: str  # short stable id, e.g. "missing", "mongo-direct-and-replicaset"
    message: str  # what is wrong and the fix; never a secret value
    special: bool = False  # shown under "Special Checks" in text output


@dataclass(frozen=True)
class VariableStatus:
    """One schema variable as found in the environment."""

    name: str
    required: bool
    present: bool  # set and non-empty
    valid: bool  # present and no error about it
    value: str | None  # masked for display; None when absent
    source: str | None = None  # "file" or "environment" (with --include-environ), None when unknown


@dataclass(frozen=True)
class Note:
    """A special check that passed, shown with ✅."""

    message: str


@dataclass
class Report:
    """Everything ``check-env`` found."""

    variables: list[VariableStatus] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    connections: list[tuple[bool, str]] | None = None  # --connect: (ok, line) per server

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, variable: str | None, severity: Severity, code: str, message: str,
            special: bool = False) -> None:
        """Record a problem; ``code`` is one of ``RULES`` (the docs page lists them)."""
        self.problems.append(Problem(variable, severity, code, message, special))


# ---------------------------------------------------------------- the rules

@dataclass(frozen=True)
class Rule:
    """One problem code check-env can report: the docs page lists exactly these."""

    code: str
    severity: str  # "error", "warning", or how it depends ("error in production, else warning")
    rule: str  # what triggers it


_RULE_LIST: tuple[Rule, ...] = (
    Rule("missing", "error", "A required variable is unset or empty."),
    Rule("placeholder", "error", "A value still equals its .env.example placeholder or looks like "
         "one (your-…, …-your-…, replace-me, change-me, xxx, <…>)."),
    Rule("invalid", "error", "A value breaks its variable's rule (URL scheme, host and port 1-65535, "
         "boolean, port, number range in ASCII digits, choice, e-mail, Stripe key prefix, "
         "TYPE=module:function handler list, minimum length; an SRV DATABASE_URL with a port or "
         "several hosts; a Redis database that is not a number) or holds a control character."),
    Rule("encrypted-not-checkable", "warning", "A value is encrypted (dotenvx format) and no private "
         "key was found in the environment (DOTENV_PRIVATE_KEY…) or in .env.keys beside the file."),
    Rule("previous-secret-equal", "error", "NEXTAUTH_SECRET_PREVIOUS equals NEXTAUTH_SECRET (it must "
         "hold the secret before the last rotation)."),
    Rule("previous-secret-old", "warning", "NEXTAUTH_SECRET_PREVIOUS was replaced longer ago than the "
         "30-day session lifetime (the audit log says when): retire it."),
    Rule("deprecated", "warning", "A deprecated variable is set (GENERATION_WORKER_CONCURRENCY: use "
         "WORKER_CONCURRENCY, which wins when both are set)."),
    Rule("environ-empty-override", "error if required, else warning", "With --include-environ: a "
         "variable set but empty in the process environment hides the file's value."),
    Rule("mongo-direct-and-replicaset", "error", "DATABASE_URL sets directConnection=true and replicaSet=."),
    Rule("mongo-timeout-missing", "warning", "DATABASE_URL has no serverSelectionTimeoutMS (use 30000)."),
    Rule("mongo-timeout-invalid", "error", "serverSelectionTimeoutMS is not a whole number of milliseconds."),
    Rule("mongo-timeout-low", "warning", "serverSelectionTimeoutMS is under 10000."),
    Rule("mongo-tls-insecure", "error in production, else warning", "DATABASE_URL sets "
         "tlsAllowInvalidCertificates, tlsInsecure or tlsAllowInvalidHostnames to true."),
    Rule("mongo-password-encoding", "error", "The MongoDB user or password has @ : / ? # [ ] or a "
         "bare % that must be percent-encoded."),
    Rule("production-localhost", "error", "In production (NODE_ENV=production or --environment "
         "production): a URL or host variable names localhost or a loopback address."),
    Rule("production-mongo-no-tls", "error", "In production: DATABASE_URL is neither mongodb+srv:// "
         "nor tls=true/ssl=true."),
    Rule("nextauth-url-not-https", "error", "In production: NEXTAUTH_URL is not https://."),
    Rule("s3-endpoint-not-https", "error", "In production: S3_ENDPOINT is plain http://."),
    Rule("production-handler-http", "error", "In production: MUZO_WORKER_HANDLERS posts jobs over plain "
         "http:// to a host other than localhost or a loopback address."),
    Rule("stripe-test-in-production", "warning", "In production: Stripe test keys (sk_test_/pk_test_)."),
    Rule("secret-in-public", "error", "A Stripe secret key (sk_…/rk_…) in a NEXT_PUBLIC_* variable."),
    Rule("stripe-mode-mixed", "error", "Stripe test and live keys mixed."),
    Rule("stripe-publishable-differ", "warning", "The two publishable keys differ."),
    Rule("unknown-variable-typo", "warning", "An unknown variable close to a known name."),
    Rule("duplicate", "warning", "A variable set twice (the last one wins)."),
    Rule("no-equals", "warning", "A line without '=' (ignored by both loaders); reported by line "
         "number only, since it may be a pasted secret."),
    Rule("dollar-expansion", "warning", "A `$name` in a value: Next.js expands it, python-dotenv does not."),
    Rule("file-permissions", "warning", "The env file is readable by group or others (not 0600)."),
    Rule("mongo-unreachable", "error", "With --connect: MongoDB did not answer within --timeout."),
    Rule("mongo-auth-failed", "error", "With --connect: MongoDB refused the DATABASE_URL credentials."),
    Rule("mongo-unauthorized", "error", "With --connect: the DATABASE_URL user may not read the app's database."),
    Rule("mongo-command-failed", "error", "With --connect: MongoDB answered a check command with an error."),
    Rule("mongo-url-refused", "error", "With --connect: the driver refuses DATABASE_URL (for example "
         "tlsInsecure with tlsAllowInvalidCertificates); the rest of the report is kept."),
    Rule("mongo-url-ignored", "warning", "With --connect: the driver ignores an option of DATABASE_URL "
         "(unknown name or invalid value)."),
    Rule("redis-unreachable", "error", "With --connect: Redis did not answer within --timeout."),
    Rule("redis-auth-failed", "error", "With --connect: Redis refused the REDIS_URL credentials."),
    Rule("redis-url-invalid", "error", "With --connect: the Redis client cannot use REDIS_URL."),
)

RULES: dict[str, Rule] = {r.code: r for r in _RULE_LIST}


# ---------------------------------------------------------------- masking

def mask(var: Variable | None, value: str) -> str:
    """``value`` as it may be shown: secrets, URL passwords and secret shapes hidden."""
    from muzo_ops.redact.redactor import mask_shapes, shaped_secrets

    if var is None:
        return MASK
    if var.kind is Kind.MONGO_URL:
        return mask_shapes(mongourl.redacted(value))
    if var.kind is Kind.REDIS_URL:
        return mask_shapes(_redact_url_password(value))
    if var.sensitive or shaped_secrets(value):
        if len(value) >= 16 and not shaped_secrets(value[-MASK_VISIBLE_TAIL:]):
            return MASK + _printable(value[-MASK_VISIBLE_TAIL:])
        return MASK
    value = _printable(value)
    return value if len(value) <= 80 else value[:77] + "..."


def _printable(value: str) -> str:
    """``value`` with line breaks and other control characters escaped (``\\n``, ``\\x1b``)."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def _redact_url_password(value: str) -> str:
    from muzo_ops.redact.redactor import url_passwords

    try:
        parts = urlsplit(value)
    except ValueError:
        return MASK
    if parts.password is None:
        for secret in sorted(url_passwords(value), key=len, reverse=True):
            value = value.replace(secret, MASK)
        return value
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return value.replace(netloc[0] + "@", f"{user}:{MASK}@", 1)


# ---------------------------------------------------------------- values

_PLACEHOLDER_RE = re.compile(
    r"^(your[-_].*|.*[-_]your[-_].*|replace[-_ ]?me.*|change[-_ ]?me.*|x{3,}|<.*>|todo|tbd|changeme|"
    r".*\bPASSWORD@HOST\b.*|.*\bUSER:PASSWORD\b.*)$",
    re.IGNORECASE,
)
_EMAIL_RE = re.compile(r"^(?:[^<>@\s][^<>]*<)?[^@\s<>]+@[^@\s<>]+(?:>)?$")
_STRIPE_SECRET_RE = re.compile(r"^(sk|rk)_(test|live)_[A-Za-z0-9_]+$")
_STRIPE_PUBLISHABLE_RE = re.compile(r"^pk_(test|live)_[A-Za-z0-9_]+$")


def is_placeholder(var: Variable | None, value: str) -> bool:
    """Whether ``value`` is still a placeholder rather than a real value."""
    if var is not None and var.example and value == var.example and var.kind not in (
        Kind.CHOICE, Kind.BOOL, Kind.PORT, Kind.POSITIVE_INT, Kind.CHOICE_LIST, Kind.AUTO_BOOL,
        Kind.NUMBER, Kind.HANDLERS,
    ):
        return True
    return bool(_PLACEHOLDER_RE.match(value.strip()))


_DIGITS_RE = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() accepts superscripts
_NUMBER_RE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?|\.[0-9]{1,9}")


def number_error(var: Variable, value: str) -> str | None:
    """Why ``value`` is not a decimal number within ``var``'s range, or None."""
    low, high = var.minimum, var.maximum
    span = f" from {low:g} to {high:g}" if low is not None and high is not None else ""
    if not _NUMBER_RE.fullmatch(value.strip()):
        return f"must be a number{span} (plain digits, e.g. {var.example or '30'})"
    number = float(value)
    if (low is not None and number < low) or (high is not None and number > high):
        return f"must be a number{span}"
    return None


def handlers_error(value: str) -> str | None:
    """Why ``value`` is not a ``MUZO_WORKER_HANDLERS`` list (the worker's own grammar), or None."""
    from muzo_ops.env import handlerspec

    return handlerspec.list_error(value)


_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _host_port_error(url: str) -> str | None:
    """Why ``url`` has no usable host or port, or None (urlsplit already accepted it)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError when out of range or not a number)
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    if not parts.hostname:
        return "has no host name"
    if parts.port == 0:
        return "has a port that is not a number from 1 to 65535"
    return None


def value_error(var: Variable, value: str) -> str | None:
    """Why ``value`` breaks ``var``'s format rule, or None. Never quotes a secret."""
    if _CONTROL_RE.search(value):
        return ("has a control character (a line break, escape or NUL; shown escaped): no muzo "
                "variable takes one, remove it")
    kind = var.kind
    if kind in (Kind.URL, Kind.HTTPS_URL):
        try:
            parts = urlsplit(value)
        except ValueError:
            return "is not a valid URL"
        allowed = ("https",) if kind is Kind.HTTPS_URL else ("http", "https")
        if parts.scheme not in allowed or not parts.netloc:
            return f"must be an {' or '.join(allowed)} URL (e.g. {var.example})"
        return _host_port_error(value)
    elif kind is Kind.MONGO_URL:
        try:
            mongourl.parse(value)
        except ValueError as exc:
            return str(exc)
    elif kind is Kind.REDIS_URL:
        if not value.startswith(("redis://", "rediss://")):
            return "must start with redis:// or rediss://"
        problem = _host_port_error(value)
        if problem:
            return problem
        database = urlsplit(value).path.strip("/")
        if database and not re.fullmatch(r"[0-9]{1,5}", database):
            return "names a database that is not a number (redis://host:6379/0)"
    elif kind is Kind.BOOL:
        if value.strip().lower() not in schema.TRUE_WORDS | schema.FALSE_WORDS:
            return "must be a boolean: true/false, 1/0, yes/no or on/off"
    elif kind is Kind.AUTO_BOOL:
        if value.strip().lower() not in schema.TRUE_WORDS | schema.FALSE_WORDS:
            return "must be on/off, true/false or 1/0 (leave unset to auto-detect)"
    elif kind is Kind.PORT:
        if not _DIGITS_RE.fullmatch(value) or not 1 <= int(value) <= 65535:
            return "must be a port number from 1 to 65535"
    elif kind is Kind.POSITIVE_INT:
        if not _DIGITS_RE.fullmatch(value) or int(value) < 1:
            return "must be a whole number of at least 1"
        if var.maximum is not None and int(value) > var.maximum:
            return f"must be a whole number from 1 to {var.maximum:g}"
    elif kind is Kind.NUMBER:
        return number_error(var, value)
    elif kind is Kind.HANDLERS:
        return handlers_error(value)
    elif kind is Kind.CHOICE:
        if value not in var.choices:
            return f"must be one of {', '.join(var.choices)}"
    elif kind is Kind.CHOICE_LIST:
        items = [item.strip() for item in value.split(",")]
        if not items or any(item not in var.choices for item in items):
            return f"must be a comma list of {', '.join(var.choices)}"
    elif kind is Kind.EMAIL:
        if not _EMAIL_RE.match(value):
            return "must be an e-mail address, or Name <address>"
    elif kind is Kind.STRIPE_SECRET:
        if not _STRIPE_SECRET_RE.match(value):
            return "must be a Stripe secret key (sk_test_… or sk_live_…)"
    elif kind is Kind.STRIPE_PUBLISHABLE and not _STRIPE_PUBLISHABLE_RE.match(value):
        return "must be a Stripe publishable key (pk_test_… or pk_live_…)"
    if var.min_length and len(value) < var.min_length:
        return (f"is {len(value)} characters; it needs at least {var.min_length} "
                "(generate one: muzo-ops secrets generate)")
    return None


# ---------------------------------------------------------------- the check

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
    they count as set, and their content is not checked.
    """
    report = Report()
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
        _check_database_url(report, values.get("DATABASE_URL", ""), production)
    if "NEXTAUTH_URL" in names:
        _check_nextauth_url(report, values.get("NEXTAUTH_URL", ""), production)
    if production:
        _check_production(report, values, names, why)
    _check_public_secrets(report, values)
    if names & {"STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY"}:
        _check_stripe(report, values, names)
    _check_unknown(report, values)
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


def _check_database_url(report: Report, url: str, production: bool) -> None:
    if not url:
        return
    try:
        mongo = mongourl.parse(url)
    except ValueError:
        return  # already reported as invalid
    name = "DATABASE_URL"
    add = report.add
    direct = mongo.flag("directConnection")
    replica_set = mongo.option("replicaSet")
    if direct and replica_set:
        add(name, Severity.ERROR, "mongo-direct-and-replicaset",
            f"{name} sets both directConnection=true and replicaSet={replica_set}: keep "
            "directConnection=true for one server (no transactions) or replicaSet= for a "
            "replica set, not both", special=True)
    elif direct:
        report.notes.append(Note(f"{name}: Direct connection mode (no transactions)"))
    elif replica_set:
        report.notes.append(Note(f"{name}: Replica set {replica_set} (transactions available)"))
    elif mongo.srv:
        report.notes.append(Note(f"{name}: mongodb+srv cluster (transactions available)"))
    else:
        report.notes.append(Note(f"{name}: topology not set in the URL (the worker asks the server)"))
    timeout = mongo.option("serverSelectionTimeoutMS")
    if timeout is None:
        add(name, Severity.WARNING, "mongo-timeout-missing",
            f"{name} has no serverSelectionTimeoutMS: add "
            f"serverSelectionTimeoutMS={RECOMMENDED_SERVER_SELECTION_TIMEOUT_MS}", special=True)
    elif not timeout.isdigit():
        add(name, Severity.ERROR, "mongo-timeout-invalid",
            f"{name} serverSelectionTimeoutMS must be a number of milliseconds", special=True)
    elif int(timeout) < MIN_SERVER_SELECTION_TIMEOUT_MS:
        add(name, Severity.WARNING, "mongo-timeout-low",
            f"{name} serverSelectionTimeoutMS = {timeout}ms is under "
            f"{MIN_SERVER_SELECTION_TIMEOUT_MS}ms: use "
            f"{RECOMMENDED_SERVER_SELECTION_TIMEOUT_MS}", special=True)
    else:
        report.notes.append(Note(f"{name}: serverSelectionTimeoutMS = {timeout}ms"))
    for option in ("tlsAllowInvalidCertificates", "tlsInsecure", "tlsAllowInvalidHostnames"):
        if mongo.flag(option):
            if production:
                add(name, Severity.ERROR, "mongo-tls-insecure",
                    f"{name} sets {option}=true in production: production expects a verified "
                    "certificate: remove it and trust the server's CA (tlsCAFile=) instead", special=True)
            else:
                add(name, Severity.WARNING, "mongo-tls-insecure",
                    f"{name} sets {option}=true: acceptable only for local development",
                    special=True)
    problem = mongourl.userinfo_encoding_problem(mongo)
    if problem:
        add(name, Severity.ERROR, "mongo-password-encoding", f"{name}: {problem}", special=True)


def _check_nextauth_url(report: Report, url: str, production: bool) -> None:
    if url and production and not url.startswith("https://"):
        report.add("NEXTAUTH_URL", Severity.ERROR, "nextauth-url-not-https",
                   "NEXTAUTH_URL must be https:// in production: production expects the site's "
                   "public https:// address (e.g. https://muzo.app)", special=True)


# Variables that name a host to reach (not an address to bind, like WORKER_METRICS_HOST).
_REMOTE_HOST_VARIABLES = ("EMAIL_SERVER_HOST",)
_URL_KINDS = (Kind.URL, Kind.HTTPS_URL, Kind.MONGO_URL, Kind.REDIS_URL)


def is_local_host(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback/unspecified address."""
    import ipaddress

    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def hosts_of(var: Variable, value: str) -> list[str]:
    """The host names ``var``'s ``value`` points at (URL hosts, an e-mail's domain, the value)."""
    if var.kind is Kind.MONGO_URL:
        try:
            hosts = mongourl.parse(value).hosts
        except ValueError:
            return []
        return [re.sub(r":[0-9]*\Z", "", h) if not h.startswith("[") else h.partition("]")[0] + "]"
                for h in hosts.split(",")]
    if var.kind in _URL_KINDS:
        try:
            host = urlsplit(value).hostname
        except ValueError:
            return []
        return [host] if host else []
    if var.kind is Kind.EMAIL:
        address = value.rpartition("<")[2].rstrip(">")
        return [address.rpartition("@")[2]] if "@" in address else []
    return [value]


def _check_production(report: Report, values: Mapping[str, str], names: set[str], why: str) -> None:
    """The rules of a production environment: no local hosts, TLS, https, live Stripe keys."""
    for var in schema.VARIABLES:
        value = values.get(var.name, "")
        if var.name not in names or not value:
            continue
        if var.kind not in (*_URL_KINDS, Kind.EMAIL) and var.name not in _REMOTE_HOST_VARIABLES:
            continue
        local = [h for h in hosts_of(var, value) if is_local_host(h)]
        if local:
            what = "a sender address at your domain" if var.kind is Kind.EMAIL else (
                "a host name or address the app servers reach over the network")
            report.add(var.name, Severity.ERROR, "production-localhost",
                       f"{var.name} names {local[0]} in production ({why}): production expects "
                       f"{what}, not this machine", special=True)
    url = values.get("DATABASE_URL", "")
    if "DATABASE_URL" in names and url:
        try:
            mongo = mongourl.parse(url)
        except ValueError:
            mongo = None
        if mongo is not None and not mongo.srv and not (mongo.flag("tls") or mongo.flag("ssl")):
            report.add("DATABASE_URL", Severity.ERROR, "production-mongo-no-tls",
                       f"DATABASE_URL has no TLS in production ({why}): production expects "
                       "mongodb+srv:// or tls=true (with tlsCAFile= for a private CA)", special=True)
    endpoint = values.get("S3_ENDPOINT", "")
    if "S3_ENDPOINT" in names and endpoint.lower().startswith("http://"):
        report.add("S3_ENDPOINT", Severity.ERROR, "s3-endpoint-not-https",
                   f"S3_ENDPOINT is plain http:// in production ({why}): production expects an "
                   "https:// endpoint", special=True)
    handler_list = values.get("MUZO_WORKER_HANDLERS", "")
    if "MUZO_WORKER_HANDLERS" in names and handler_list:
        from muzo_ops.env import handlerspec

        problem = handlerspec.production_error(handler_list)
        if problem:
            report.add("MUZO_WORKER_HANDLERS", Severity.ERROR, "production-handler-http",
                       f"MUZO_WORKER_HANDLERS: {problem} ({why})", special=True)
    test_keys = [n for n in ("STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY", "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY")
                 if n in names and _stripe_mode(values.get(n, "")) == "test"]
    if test_keys:
        report.add(test_keys[0], Severity.WARNING, "stripe-test-in-production",
                   f"Stripe test keys in production ({why}: {', '.join(test_keys)}): production "
                   "expects live keys (sk_live_…, pk_live_…); keep test keys for a staging server only",
                   special=True)


def _check_public_secrets(report: Report, values: Mapping[str, str]) -> None:
    for name, value in values.items():
        if name.startswith("NEXT_PUBLIC_") and re.search(r"\b(sk|rk)_(test|live)_", value):
            report.add(name, Severity.ERROR, "secret-in-public",
                       f"{name} holds a Stripe secret key, and NEXT_PUBLIC_* variables ship to "
                       "every browser: put the pk_… publishable key there and rotate the "
                       "secret key in the Stripe dashboard", special=True)


def _stripe_mode(value: str) -> str | None:
    match = re.match(r"^(?:sk|rk|pk)_(test|live)_", value)
    return match.group(1) if match else None


def _check_stripe(report: Report, values: Mapping[str, str], names: set[str]) -> None:
    keys = [n for n in ("STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY",
                        "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY") if n in names]
    modes = {n: _stripe_mode(values.get(n, "")) for n in keys}
    seen = {m for m in modes.values() if m}
    if len(seen) > 1:
        detail = ", ".join(f"{n} is {m}" for n, m in modes.items() if m)
        report.add("STRIPE_SECRET_KEY", Severity.ERROR, "stripe-mode-mixed",
                   f"Stripe test and live keys are mixed ({detail}): use keys of one mode",
                   special=True)
    elif seen:
        report.notes.append(Note(f"Stripe keys: all {seen.pop()} mode"))
    public = values.get("NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY", "")
    private = values.get("STRIPE_PUBLISHABLE_KEY", "")
    if public and private and public != private and "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY" in names:
        report.add("NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY", Severity.WARNING, "stripe-publishable-differ",
                   "NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY differs from STRIPE_PUBLISHABLE_KEY: "
                   "they should be the same key", special=True)


def _check_unknown(report: Report, values: Mapping[str, str]) -> None:
    unknown = [n for n in values if n not in schema.BY_NAME]
    if not unknown:
        return
    import difflib

    by_length: dict[int, list[str]] = {}  # a name 0.8 alike has a length within 2/3 of the other's
    for name in unknown:
        size = len(name)
        if size not in by_length:
            by_length[size] = [k for k in schema.BY_NAME
                               if 3 * min(len(k), size) >= 2 * max(len(k), size)]
        candidates = by_length[size]
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8) if candidates else []
        if close:
            report.add(name, Severity.WARNING, "unknown-variable-typo",
                       f"{name}: did you mean {close[0]}?")
