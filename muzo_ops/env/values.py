"""Value rules: whether one variable's value has its kind's format (no cross-variable rules here).

URL schemes compare case-insensitively (``HTTPS://`` is https), as the
clients read them; a MongoDB URL is read as the driver reads it
(``muzo_ops.mongo.url``).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from muzo_ops import urls
from muzo_ops.constants import FALSE_WORDS, TRUE_WORDS
from muzo_ops.env.schema import Kind, Variable
from muzo_ops.mongo import url as mongourl

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


# The pattern of a less common kind: compiled on first use (re caches it), not at start-up.
_NUMBER = r"[0-9]{1,12}(\.[0-9]{1,9})?|\.[0-9]{1,9}"


def _digits(value: str) -> bool:
    """1 to 18 ASCII digits (``str.isdigit()`` alone accepts superscripts and other scripts)."""
    return 1 <= len(value) <= 18 and value.isascii() and value.isdigit()


def number_error(var: Variable, value: str) -> str | None:
    """Why ``value`` is not a decimal number within ``var``'s range, or None."""
    low, high = var.minimum, var.maximum
    span = f" from {low:g} to {high:g}" if low is not None and high is not None else ""
    if not re.fullmatch(_NUMBER, value.strip()):
        return f"must be a number{span} (plain digits, e.g. {var.example or '30'})"
    number = float(value)
    if (low is not None and number < low) or (high is not None and number > high):
        return f"must be a number{span}"
    return None


def handlers_error(value: str) -> str | None:
    """Why ``value`` is not a ``MUZO_WORKER_HANDLERS`` list (the worker's own grammar), or None."""
    from muzo_ops.env import handlerspec

    return handlerspec.list_error(value)


# Control characters no muzo variable takes (a tab is allowed). A set, not a regex: a character
# class reaching past Latin-1 costs milliseconds to compile, on every start.
_CONTROLS = frozenset([*map(chr, range(0x00, 0x09)), *map(chr, range(0x0A, 0x20)),
                       *map(chr, range(0x7F, 0xA0)), "\u2028", "\u2029"])


def has_control(value: str) -> bool:
    """Whether ``value`` holds a control character (all of them are non-printable: the fast path)."""
    return not value.isprintable() and not _CONTROLS.isdisjoint(value)


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
    if has_control(value):
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
        if urls.scheme_of(value) not in ("redis", "rediss"):
            return "must start with redis:// or rediss://"
        problem = _host_port_error(value)
        if problem:
            return problem
        database = urlsplit(value).path.strip("/")
        if database and not re.fullmatch(r"[0-9]{1,5}", database):
            return "names a database that is not a number (redis://host:6379/0)"
    elif kind is Kind.BOOL:
        if value.strip().lower() not in TRUE_WORDS | FALSE_WORDS:
            return "must be a boolean: true/false, 1/0, yes/no or on/off"
    elif kind is Kind.AUTO_BOOL:
        if value.strip().lower() not in TRUE_WORDS | FALSE_WORDS:
            return "must be on/off, true/false or 1/0 (leave unset to auto-detect)"
    elif kind is Kind.PORT:
        if not _digits(value) or not 1 <= int(value) <= 65535:
            return "must be a port number from 1 to 65535"
    elif kind is Kind.POSITIVE_INT:
        if not _digits(value) or int(value) < 1:
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
