"""The problem codes check-env reports (the docs page lists exactly these) and waivers of them.

A waiver accepts one code on record, with a reason: ``check-env --allow
CODE:REASON`` (repeatable), ``waivers=`` of ``check_values`` (the deploy's),
or the env file's ``MUZO_CHECK_WAIVERS=code:reason;code:reason``. A waived problem still
shows in the report (``"waived": true`` and the reason in JSON) and never
makes the exit code 1. A waiver of an unknown code or without a reason is a
usage error (exit 2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from muzo_ops.constants import MASK
from muzo_ops.errors import UsageError
from muzo_ops.redact.shapes import hides_shaped_secret

WAIVERS_VARIABLE = "MUZO_CHECK_WAIVERS"
MAX_REASON_CHARS = 300
# Codes no waiver accepts: the problem exposes a secret (a Stripe secret key in a NEXT_PUBLIC_*
# variable ships to every browser), so accepting it on record would hide a leak, not a risk.
UNWAIVABLE: dict[str, str] = {
    "secret-in-public": "a secret key in a NEXT_PUBLIC_* variable ships to every browser: move it "
                        "and rotate the key",
}
# What an unknown code is echoed as: only text shaped like a code (letters and '-'); anything
# else may be a secret pasted in the wrong place and is not shown.
_CODE_SHAPED = re.compile(r"[A-Za-z-]{1,40}")

class Rule(NamedTuple):
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
         "several hosts; a Redis database that is not a number; a DATABASE_URL the driver refuses: "
         "an upper-case scheme, '&' and ';' mixed, an option that is not one name=value pair, "
         "tlsInsecure beside an option it implies, ssl and tls differing) or holds a control character."),
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
    Rule("mongo-option-ignored", "error in production, else warning", "DATABASE_URL gives an option a "
         "value the driver ignores (it only warns on stderr and connects without it): a boolean other "
         "than lower-case true or false (tls=1, ssl=yes, tls=TRUE)."),
    Rule("production-localhost", "error", "In production (NODE_ENV=production or --environment "
         "production): a URL or host variable names this machine, as the connecting client reads it: "
         "localhost and the names distributions map to loopback (localhost.localdomain, ip6-localhost, "
         "*.localhost), loopback or unspecified addresses in any numeric form the C library accepts "
         "(127.1, 2130706433, 0x7f.1, 0), IPv6 forms (::1, ::, ::ffff:127.0.0.1), percent-encoded or "
         "Unicode spellings, a Unix socket path, or a host that Node's URL parser reads where Python's "
         "does not (http://127.0.0.1\\@muzo.app)."),
    Rule("production-mongo-no-tls", "error", "In production: DATABASE_URL does not connect over TLS: "
         "neither mongodb+srv:// (without tls=false or ssl=false) nor tls=true/ssl=true."),
    Rule("nextauth-url-not-https", "error", "In production: NEXTAUTH_URL is not https:// (the "
         "scheme in any case: HTTPS:// is https)."),
    Rule("s3-endpoint-not-https", "error", "In production: S3_ENDPOINT is plain http://."),
    Rule("production-handler-http", "error", "In production: MUZO_WORKER_HANDLERS posts jobs over plain "
         "http:// to a host other than this machine."),
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


def parse_waiver(text: str, where: str) -> tuple[str, str]:
    """``CODE:REASON`` as ``(code, reason)``; UsageError (exit 2) for an unknown code or no reason."""
    code, _, reason = text.partition(":")
    code, reason = code.strip(), " ".join(reason.split())
    if code not in RULES:
        named = repr(code) if _CODE_SHAPED.fullmatch(code) else "the text before ':' (not shown)"
        raise UsageError(f"{where}: cannot waive {named}: not a check-env code (the codes are listed "
                         "in docs/ENVIRONMENT_VARIABLES.md; e.g. mongo-tls-insecure)")
    if code in UNWAIVABLE:
        raise UsageError(f"{where}: {code} cannot be waived: {UNWAIVABLE[code]}")
    if not reason:
        raise UsageError(f"{where}: the waiver of {code} has no reason: write {code}:why it is accepted")
    if hides_shaped_secret(reason):
        reason = MASK  # a key cut by quotes or spaces, or percent-encoded: not shown as a reason
    if len(reason) > MAX_REASON_CHARS:
        raise UsageError(f"{where}: the reason for waiving {code} is over {MAX_REASON_CHARS} characters")
    return code, reason


def parse_waivers(texts: list[str] | tuple[str, ...], where: str) -> dict[str, str]:
    """Waivers from ``CODE:REASON`` texts (code → reason; a later one for the same code wins)."""
    return dict(parse_waiver(text, where) for text in texts)


def file_waivers(values: Mapping[str, str]) -> dict[str, str]:
    """The waivers an env file records in ``MUZO_CHECK_WAIVERS`` (``code:reason;code:reason``; a
    reason may hold ``;`` when what follows does not start with a known code and ``:``)."""
    text = values.get(WAIVERS_VARIABLE, "")
    items: list[str] = []
    for piece in text.split(";"):
        if items and piece.partition(":")[0].strip() not in RULES:
            items[-1] += ";" + piece  # a ';' inside a reason: the piece does not start a known code
        else:
            items.append(piece)
    return parse_waivers([t for t in items if t.strip()], WAIVERS_VARIABLE)


def checked_waivers(waivers: Mapping[str, str], where: str) -> dict[str, str]:
    """``waivers`` (code → reason) given by a caller, held to the same rules as written ones."""
    return parse_waivers([f"{code}:{reason}" for code, reason in waivers.items()], where)
