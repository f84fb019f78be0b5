"""A value as it may be shown (check-env's table, JSON reports): secrets hidden, the rest readable."""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus

from muzo_ops import urls
from muzo_ops.constants import MASK, MASK_VISIBLE_TAIL
from muzo_ops.redact.sensitivity import SECRET_URL_OPTIONS
from muzo_ops.redact.shapes import hides_shaped_secret, mask_shapes, shaped_secrets

MAX_SHOWN_CHARS = 80  # longer plain values are cut
MIN_CHARS_FOR_TAIL = 16  # a secret this long shows its last 4 characters


def printable(value: str) -> str:
    """``value`` with line breaks and other control characters escaped (``\\n``, ``\\x1b``)."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def delimiters_for(scheme: str | None) -> str:
    """Where the authority of a URL of ``scheme`` ends, as its client reads it."""
    return urls.MONGODB_DELIMITERS if scheme in ("mongodb", "mongodb+srv") else urls.WEB_DELIMITERS


def _loose_password(value: str) -> str | None:
    """What sits where a password would in a malformed URL (``rediss//:pw@host``, ``:pw@host``)."""
    head = value.rpartition("@")[0]
    userinfo = head.rsplit("/", 1)[-1]
    if ":" not in userinfo:
        return None
    return userinfo.split(":", 1)[1] or None


def secret_options(query: str) -> list[str]:
    """The values (as written) of credential options in a URL's query."""
    found = []
    for pair in re.split(r"[&;]", query):
        name, eq, value = pair.partition("=")
        if eq and value and name.lower() in SECRET_URL_OPTIONS:
            found.append(value)
    return found


def url_passwords(value: str) -> list[str]:
    """The password and credential options of a URL, as written and decoded.

    A malformed URL (a mistyped scheme, no scheme) still gives up what sits
    where a password would: a typo must not reveal it. Both readings of an
    unencoded ``/`` or ``?`` in a password are returned (more hidden is safe).
    """
    if "@" not in value and "?" not in value:
        return []
    found: list[str] = []
    auth = urls.authority(value, delimiters_for(urls.scheme_of(value)))
    if auth is None or "@" in auth.rest.partition("?")[0]:
        loose = _loose_password(value)
        if loose:
            found += [loose, unquote(loose)]
    if auth is not None:
        if auth.password:
            found += [auth.password, unquote_plus(auth.password), unquote(auth.password)]
        for secret in secret_options(auth.rest.partition("?")[2].partition("#")[0]):
            found += [secret, unquote_plus(secret)]
    return list(dict.fromkeys(s for s in found if s))


def redacted_url(value: str) -> str:
    """``value`` (a URL) with its password and credential options replaced by ``***``.

    The user name, hosts, database and other options stay as written.
    """
    auth = urls.authority(value, delimiters_for(urls.scheme_of(value)))
    if auth is None:
        shown = value
        for secret in sorted(url_passwords(value), key=len, reverse=True):
            shown = shown.replace(secret, MASK)
        return shown
    start = value.index("://") + 3
    head = value[:start]
    if auth.userinfo is not None:
        user, colon, _ = auth.userinfo.partition(":")
        head += f"{user}:{MASK}@" if colon else f"{user}@"
    tail = auth.rest
    if "?" in tail:
        before, _, query = tail.partition("?")
        parts = []
        for pair in re.split(r"([&;])", query):
            name, eq, option = pair.partition("=")
            if eq and option and name.lower() in SECRET_URL_OPTIONS:
                pair = f"{name}={MASK}"
            parts.append(pair)
        tail = before + "?" + "".join(parts)
    shown = head + auth.hosts + tail
    for secret in sorted(url_passwords(value), key=len, reverse=True):
        if len(secret) >= 4:
            shown = shown.replace(secret, MASK)
    return shown


def mask_value(value: str, *, sensitive: bool, url: bool = False) -> str:
    """``value`` as it may be shown: a URL's secrets hidden, a secret as ``***`` and its last 4
    characters (when long enough and not themselves secret-shaped), anything secret-shaped masked."""
    if url:
        return mask_shapes(printable(redacted_url(value)))
    if hides_shaped_secret(value):
        return MASK  # an encoded secret: no part of it shown
    if sensitive or shaped_secrets(value):
        if len(value) >= MIN_CHARS_FOR_TAIL and not shaped_secrets(value[-MASK_VISIBLE_TAIL:]):
            return MASK + printable(value[-MASK_VISIBLE_TAIL:])
        return MASK
    value = printable(value)
    return value if len(value) <= MAX_SHOWN_CHARS else value[:MAX_SHOWN_CHARS - 3] + "..."
