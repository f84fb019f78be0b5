"""What the leak scan looks for: credential shapes, the env file's values (needles), placeholders.

A rule finds a secret part in text; a placeholder (``<password>``,
``${PW}``, ``.env.example``'s values) is not one. A finding's identity is
its fingerprint: a slow salted hash of the rule and the secret, so a
baseline can name accepted findings without holding any value.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from muzo_ops.constants import MASK

MIN_VALUE_CHARS = 8  # shorter values would match ordinary text
FINGERPRINT_ITERATIONS = 10_000  # PBKDF2-SHA256: a guessed value costs this many hashes to check
_FINGERPRINT_SALT = b"muzo-ops secrets scan fingerprint v1\0"

_PLACEHOLDER = re.compile(
    r"""^(?:<[^>]*>|\[[^\]]*\]|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|\{\{[^}]*\}\}|%[A-Za-z_]+%|[*x.•]+
         |pass|passwd|password|pwd|secret|token|key
         |(?:your|my|the|some|example|sample|dummy|fake|placeholder|changeme|change-me|replace|redacted)(?:[-_][-_a-z0-9]*)?
         |.*(?:example|placeholder|changeme|replace-me|your[-_]).*)$""",
    re.IGNORECASE | re.VERBOSE,
)
_CAPS_WORD = re.compile(r"[A-Z][A-Z0-9_]*\Z")  # PASSWORD, DB_PASS: a name, not a value
# In code and docs a password is often a template: f"{password}", %(pw)s, ${PW}, $PW, …
_TEMPLATE = re.compile(r"\{[^{}]*\}|%\(?\w*\)?[sd]|\$\{?\w+\}?|…|\.\.\.")


@dataclass(frozen=True)
class Rule:
    """A credential shape: ``regex``'s group ``group`` is the secret (shown masked).

    ``identity_group`` (when set) is what tells two secrets of this shape
    apart, e.g. a private key's body rather than its header.
    ``names_too``: a variable name or a template is a placeholder as well.
    ``cues``: text without any of these literals cannot match (a fast test first).
    """

    name: str
    regex: re.Pattern[str]
    group: int = 1
    identity_group: int | None = None
    names_too: bool = False
    cues: tuple[str, ...] = ()

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        """The matches in ``text``."""
        if self.cues and not any(cue in text for cue in self.cues):
            return iter(())
        return self.regex.finditer(text)


SHAPES: tuple[Rule, ...] = (
    # user:password before the host; a password's / ? # [ ] are percent-encoded (connection-string spec)
    Rule("mongodb-url-password",
         re.compile(r"mongodb(?:\+srv)?://[^:/?#@\s'\"\[\]]+:([^@/?#\s'\"\[\]]+)@"), names_too=True,
         cues=("mongodb",)),
    Rule("stripe-live-secret-key", re.compile(r"\b(sk_live_[0-9A-Za-z]{10,})"), cues=("sk_live_",)),
    Rule("stripe-live-restricted-key", re.compile(r"\b(rk_live_[0-9A-Za-z]{10,})"), cues=("rk_live_",)),
    Rule("stripe-webhook-secret", re.compile(r"\b(whsec_[0-9A-Za-z+/=]{10,})"), cues=("whsec_",)),
    Rule("aws-access-key-id", re.compile(r"\b((?:AKIA|ASIA)[0-9A-Z]{16})\b"), cues=("AKIA", "ASIA")),
    Rule("private-key-block",
         re.compile(r"(-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)([A-Za-z0-9+/=\s]{0,4096})"),
         identity_group=2, cues=("PRIVATE KEY",)),
    Rule("dotenvx-private-key", re.compile(r"DOTENV_PRIVATE_KEY\w*\s*=\s*['\"]?([0-9a-fA-F]{64})\b"),
         cues=("DOTENV_PRIVATE_KEY",)),
    # curl -u user:password / --user=user:password (on a line that runs curl)
    Rule("curl-user-password",
         re.compile(r"\bcurl\b[^\n]*?\s(?:-u|--user)(?:[ \t]*|=)['\"]?[^\s'\":`]*:([^\s'\"`]+)"), names_too=True,
         cues=("curl",)),
)
# `Authorization: Basic <base64 of user:password>`: the password, once decoded
BASIC_AUTH = Rule("basic-auth-password", re.compile(r"\b[Bb]asic[ \t]+([A-Za-z0-9+/]{6,}={0,2})(?![A-Za-z0-9+/=])"),
                  names_too=True, cues=("Basic", "basic"))


def mask(value: str) -> str:
    """``***`` plus the last 4 characters when the value has at least 16, else ``***``."""
    return MASK + value[-4:] if len(value) >= 16 else MASK


@functools.lru_cache(maxsize=4096)  # the same fixture recurs in many files and commits
def fingerprint(rule: str, secret: str) -> str:
    """The identity of a finding: PBKDF2-SHA256 of the rule and the secret (no value can be read back)."""
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8", "surrogateescape"),
                                 _FINGERPRINT_SALT + rule.encode(), FINGERPRINT_ITERATIONS)
    return digest[:16].hex()


def is_placeholder(text: str, placeholders: Iterable[str] = (), names_too: bool = False) -> bool:
    """Whether ``text`` stands for a value instead of being one.

    ``names_too`` (URL and curl passwords): a variable name (``PASSWORD``) or
    a template (``{password}``, ``%(pw)s``, ``${PW}``, ``…``) as well.
    """
    if text in set(placeholders) or _PLACEHOLDER.match(text):
        return True
    return names_too and bool(_CAPS_WORD.match(text) or _TEMPLATE.search(text))


@dataclass(frozen=True)
class Needle:
    """One string to look for: a variable's value in one encoding."""

    text: str
    what: str
    original: str


def needles(values: Mapping[str, str]) -> list[Needle]:
    """Every form of every sensitive value to look for (as is, percent-encoded, base64)."""
    from muzo_ops.env import schema
    from muzo_ops.redact.redactor import secret_values, url_passwords

    out: dict[str, Needle] = {}
    sensitive = set(secret_values(values))
    for name, value in values.items():
        if not value or value.startswith("encrypted:"):
            continue
        forms: list[tuple[str, str]] = []
        var = schema.BY_NAME.get(name)
        if value in sensitive and not (var is not None and var.kind in (schema.Kind.MONGO_URL, schema.Kind.REDIS_URL)):
            forms.append((name, value))
        for password in url_passwords(value):
            if password in sensitive:
                forms.append((f"{name} password", password))
        for label, secret in forms:
            if len(secret) < MIN_VALUE_CHARS:
                continue
            raw = secret.encode("utf-8")
            for suffix, text in (("", secret), (" percent-encoded", quote(secret, safe="")),
                                 (" percent-encoded", quote_plus(secret, safe="")),
                                 (" base64", base64.b64encode(raw).decode().rstrip("=")),
                                 (" base64url", base64.urlsafe_b64encode(raw).decode().rstrip("="))):
                out.setdefault(text, Needle(text, label + suffix, secret))
    return sorted(out.values(), key=lambda n: len(n.text), reverse=True)


def placeholders_for(path: str) -> frozenset[str]:
    """The values that are placeholders in ``path``: the schema's examples in ``.env.example`` and the like."""
    name = path.rsplit("/", 1)[-1]
    if not (name.startswith(".env.example") or name.startswith(".env.template") or name.endswith(".example")):
        return frozenset()
    from muzo_ops.env import schema

    return frozenset(v.example for v in schema.VARIABLES)
