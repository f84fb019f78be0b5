"""DATABASE_URL: parsing, the rules muzo relies on, and the transaction decision.

Pure string work (no pymongo import) so ``check-env`` stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from muzo_ops.env.schema import FALSE_WORDS, TRUE_WORDS

# Characters the MongoDB connection-string spec requires percent-encoded in
# the user name and password.
RESERVED_USERINFO = "@:/?#[]"
_URL_RE = re.compile(
    r"(?P<scheme>mongodb(?:\+srv)?)://(?:(?P<userinfo>.*)@)?(?P<hosts>[^/?@]+)"
    r"(?P<path>/[^?]*)?(?:\?(?P<query>.*))?\Z",
    re.DOTALL,
)
_LAZY_URL_RE = re.compile(_URL_RE.pattern.replace("(?P<userinfo>.*)", "(?P<userinfo>.*?)"), re.DOTALL)
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class MongoUrl:
    """The parts of a MongoDB connection string that muzo_ops checks."""

    scheme: str  # "mongodb" or "mongodb+srv"
    userinfo: str | None  # raw "user:password", still percent-encoded
    hosts: str  # "host:port[,host:port]"
    database: str  # from the path, may be empty
    options: dict[str, str] = field(default_factory=dict)  # lower-cased names

    @property
    def srv(self) -> bool:
        return self.scheme == "mongodb+srv"

    @property
    def password(self) -> str | None:
        """The decoded password, or None."""
        if not self.userinfo or ":" not in self.userinfo:
            return None
        return unquote(self.userinfo.split(":", 1)[1])

    def option(self, name: str) -> str | None:
        return self.options.get(name.lower())

    def flag(self, name: str) -> bool | None:
        """A boolean option: True/False, or None when absent or not a boolean."""
        raw = self.option(name)
        if raw is None:
            return None
        word = raw.strip().lower()
        return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


def parse(url: str) -> MongoUrl:
    """Split ``url``; ValueError (without the URL in it) when it is not one."""
    match = _URL_RE.match(url) or _LAZY_URL_RE.match(url)
    if not match:
        if not url.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        raise ValueError("is not a MongoDB connection string (mongodb://[user:pass@]host[:port]/db)")
    options = {k.lower(): v for k, v in parse_qsl(match.group("query") or "", keep_blank_values=True)}
    return MongoUrl(
        scheme=match.group("scheme"),
        userinfo=match.group("userinfo"),
        hosts=match.group("hosts"),
        database=(match.group("path") or "/")[1:],
        options=options,
    )


def userinfo_encoding_problem(mongo: MongoUrl) -> str | None:
    """How to fix a user name or password that is not percent-encoded, or None."""
    if not mongo.userinfo:
        return None
    user, _, password = mongo.userinfo.partition(":")
    bad = sorted({c for c in user + password if c in RESERVED_USERINFO})
    if _BAD_PERCENT.search(mongo.userinfo):
        bad.append("%")
    if not bad:
        return None
    mapping = ", ".join(f"{c} → %{ord(c):02X}" for c in bad)
    return (
        "the password (or user name) has characters that must be percent-encoded: "
        f"{mapping} (or run: python -c \"import urllib.parse,getpass; "
        "print(urllib.parse.quote(getpass.getpass(), safe=''))\")"
    )


def transactions_from_url(mongo: MongoUrl) -> bool | None:
    """The reference's URL rule: off for directConnection=true, on for replicaSet= or SRV.

    None means the URL does not say; ask the server (``hello``).
    """
    if mongo.flag("directConnection"):
        return False
    if mongo.option("replicaSet") or mongo.srv:
        return True
    return None


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for display)."""
    try:
        mongo = parse(url)
    except ValueError:
        return "***"
    if not mongo.userinfo:
        return url
    user = mongo.userinfo.partition(":")[0]
    return url.replace(mongo.userinfo + "@", f"{user}:***@", 1)
