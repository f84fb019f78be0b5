"""Redaction: every known secret value becomes ``***`` before text leaves the process.

One ``Redactor`` per command, built from the env values it reads and handed
explicitly to whatever writes: the CLI's output and the worker's logger.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus, unquote, urlsplit

from muzo_ops.constants import MASK

_SECRET_WORDS = ("SECRET", "PASSWORD", "KEY", "TOKEN")
MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words

# Text with a secret's shape, masked wherever it appears (in a variable not
# meant for it, pasted on a line of its own, inside a URL option). Each
# pattern's group "s" is the secret; text around it stays readable. Short
# prefixes must start a token (not follow `-` or `_`), so a random base64url
# value does not look like one by chance.
SECRET_SHAPES: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in (
    r"(?<![A-Za-z0-9])(?P<s>(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{6,})",  # Stripe secret / restricted
    r"(?<![A-Za-z0-9])(?P<s>whsec_[A-Za-z0-9]{10,})",  # Stripe webhook signing secret
    r"(?<![A-Za-z0-9_-])(?P<s>sk-(?:proj|svcacct|admin|ant-api03|ant-admin01)-[A-Za-z0-9_-]{20,})",  # OpenAI, Anthropic
    r"(?<![A-Za-z0-9_-])(?P<s>sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})",  # OpenAI, older keys
    r"(?<![A-Za-z0-9])(?P<s>(?:AKIA|ASIA)[0-9A-Z]{16})(?![0-9A-Z])",  # AWS access key id
    r"(?<![A-Za-z0-9_-])(?P<s>gh[pousr]_[A-Za-z0-9]{30,})",  # GitHub
    r"(?<![A-Za-z0-9_-])(?P<s>github_pat_[A-Za-z0-9_]{30,})",
    r"(?<![A-Za-z0-9_-])(?P<s>glpat-[A-Za-z0-9_-]{16,})",  # GitLab
    r"(?<![A-Za-z0-9_-])(?P<s>xox[abposr]-[A-Za-z0-9-]{10,})",  # Slack
    r"(?<![A-Za-z0-9_-])(?P<s>AIza[0-9A-Za-z_-]{35})",  # Google API key
    r"(?<![A-Za-z0-9])(?P<s>GOCSPX-[A-Za-z0-9_-]{10,})",  # Google OAuth client secret
    r"(?<![A-Za-z0-9_-])(?P<s>rpa_[A-Za-z0-9]{16,})",  # RunPod
    r"(?<![A-Za-z0-9_-])(?P<s>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",  # JWT
    r"(?P<s>-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z))",
    # the password of a URL's user:password@ part (any scheme)
    r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:\"']*:(?P<s>[^\s@/\"']+)@",
    # credentials inside URL options and key:value lists (MongoDB authMechanismProperties)
    r"(?i:AWS_SESSION_TOKEN|AWS_SECRET_ACCESS_KEY|SESSION_TOKEN)(?::|%3A)(?P<s>[^,&\s\"']+)",
    r"[?&;](?i:password|passwd|pwd|secret|token|api_?key|access_?token|auth_?token|sig|signature|"
    r"X-Amz-Signature|X-Amz-Security-Token|tlsCertificateKeyFilePassword|sslClientCertificateKeyPassword)"
    r"=(?P<s>[^&#\s\"']+)",
))
# One pass that tells whether any shape is there at all (most text has none).
_ANY_SHAPE = re.compile("|".join(p.pattern.replace("(?P<s>", "(?:") for p in SECRET_SHAPES))

def shaped_secrets(text: str) -> list[str]:
    """Every substring of ``text`` that has a secret's shape."""
    found: list[str] = []
    if not _ANY_SHAPE.search(text):
        return found
    for pattern in SECRET_SHAPES:
        found.extend(m.group("s") for m in pattern.finditer(text))
    return found


def mask_shapes(text: str) -> str:
    """``text`` with everything that has a secret's shape replaced by ``***``."""
    if not _ANY_SHAPE.search(text):
        return text
    for pattern in SECRET_SHAPES:
        if pattern.search(text):
            text = pattern.sub(lambda m: m.group(0)[: m.start("s") - m.start()] + MASK
                               + m.group(0)[m.end("s") - m.start():], text)
    return text


def secret_values(values: Mapping[str, str]) -> list[str]:
    """Every secret in ``values``: sensitive values, URL passwords and credential options,
    and whatever has a secret's shape (a secret key in a variable not meant for it)."""
    from muzo_ops.env import schema
    from muzo_ops.env.schema import Kind

    found: list[str] = []
    for name, value in values.items():
        var = schema.BY_NAME.get(name)
        if not value:
            continue
        url_kind = var is not None and var.kind in (Kind.MONGO_URL, Kind.REDIS_URL)
        if not url_kind and ((var is None and any(w in name for w in _SECRET_WORDS))
                             or (var is not None and var.sensitive)):
            found.append(value)
        found.extend(url_passwords(value))
        found.extend(shaped_secrets(value))
    return [s for s in found if len(s) >= MIN_SECRET_CHARS]


def _userinfo_password(value: str) -> str | None:
    """The text between the first ``:`` and the last ``@`` of a URL-like value's last path-free
    segment, even in a malformed URL (``rediss//:pw@host``, ``:pw@host``); None when absent."""
    head = value.rpartition("@")[0]
    userinfo = head.rsplit("/", 1)[-1]
    if ":" not in userinfo:
        return None
    return userinfo.split(":", 1)[1] or None


def url_passwords(value: str) -> list[str]:
    """The password of a URL, as written and decoded (empty when there is none).

    A malformed URL (a mistyped scheme, no scheme) still gives up what sits
    where a password would: a typo must not reveal it.
    """
    if "@" not in value:
        return []
    if "://" not in value:
        loose = _userinfo_password(value)
        return [loose, unquote(loose)] if loose else []
    try:
        if value.startswith("mongodb"):
            from muzo_ops.mongo import url as mongourl

            mongo = mongourl.parse(value)
            found: list[str] = []
            if mongo.userinfo and ":" in mongo.userinfo:
                raw = mongo.userinfo.split(":", 1)[1]
                found += [raw, mongo.password or raw]
            for option in mongourl.SECRET_OPTIONS:
                secret = mongo.raw_options.get(option)
                if secret:
                    found += [secret, unquote(secret)]
            return found
        parts = urlsplit(value)
        return [parts.password] if parts.password else []
    except ValueError:
        return []


class Redactor:
    """Replaces every known secret value in text by ``***``.

    Log records repeat the same short strings (field names, messages, logger
    names): their redacted form is remembered until a secret is added.
    """

    CACHE_SIZE = 2048  # strings remembered at most; the cache starts over when full
    CACHE_MAX_CHARS = 200  # longer strings (tracebacks, results) are not remembered

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._ordered: list[str] = []
        self._cache: dict[str, str] = {}
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Hide these values from now on, and their URL-encoded forms (a secret in a query string or a
        worker id): values under 4 characters are ignored."""
        given = {s for s in secrets if len(s) >= MIN_SECRET_CHARS}
        fresh = given | {quote(s, safe="") for s in given} | {quote_plus(s, safe="") for s in given}
        fresh -= self._secrets
        if fresh:
            self._secrets |= fresh
            self._ordered = sorted(self._secrets, key=len, reverse=True)
            self._cache = {}

    def add_values(self, values: Mapping[str, str]) -> None:
        """Hide the secrets among env ``values`` (sensitive variables, URL passwords)."""
        self.add(secret_values(values))

    def __contains__(self, value: str) -> bool:
        return value in self._secrets

    def __call__(self, text: str) -> str:
        cache = self._cache
        done = cache.get(text)
        if done is not None:
            return done
        redacted = text
        for secret in self._ordered:
            if secret in redacted:
                redacted = redacted.replace(secret, MASK)
        redacted = mask_shapes(redacted)
        if len(text) <= self.CACHE_MAX_CHARS:
            if len(cache) >= self.CACHE_SIZE:
                cache.clear()
            cache[text] = redacted
        return redacted
