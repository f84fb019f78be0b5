"""DATABASE_URL read as pymongo reads it: parts, options, the transaction decision.

Pure string work (no pymongo import) so ``check-env`` stays fast; the tests
hold every rule here against ``pymongo.uri_parser.parse_uri``:

- the user information ends at the last ``@`` before the first ``/`` (or
  ``?``) after the scheme;
- options are ``name=value`` pairs split by ``&`` or ``;`` (never both);
  names are case-insensitive and NOT percent-decoded (``tl%73`` is not
  ``tls``), values are ``unquote_plus``-decoded (``authMechanismProperties``
  excepted); the last of a repeated option wins;
- boolean options take exactly ``true`` or ``false``: anything else (``1``,
  ``yes``, ``TRUE``) is ignored by the driver with a warning on stderr.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import quote, unquote_plus

from muzo_ops.redact import masking
from muzo_ops.redact.sensitivity import SECRET_URL_OPTIONS

# Characters the MongoDB connection-string spec requires percent-encoded in
# the user name and password.
RESERVED_USERINFO = "@:/?#[]"
# First reading: the user information holds no `/` or `?`, so an `@` in the
# path or an option (`appName=ops@muzo`) is not taken for a password's end.
_STRICT_URL_RE = re.compile(
    r"(?P<scheme>mongodb(?:\+srv)?)://(?:(?P<userinfo>[^/?]*)@)?(?P<hosts>[^/?@]+)"
    r"(?P<path>/[^?]*)?(?:\?(?P<query>.*))?\Z",
    re.DOTALL,
)
# Second reading, for a password with an unencoded `/` or `?` (reported as
# an encoding problem): everything up to the last `@` before the hosts.
_URL_RE = (  # compiled only when the first reading fails (re caches it)
    r"(?s)(?P<scheme>mongodb(?:\+srv)?)://(?:(?P<userinfo>.*)@)?(?P<hosts>[^/?@]+)"
    r"(?P<path>/[^?]*)?(?:\?(?P<query>.*))?\Z"
)
_LAZY_URL_RE = _URL_RE.replace("(?P<userinfo>.*)", "(?P<userinfo>.*?)")
_HOST_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(?P<port>[^:]*))?\Z")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class MongoUrl(NamedTuple):
    """The parts of a MongoDB connection string that muzo_ops checks."""

    scheme: str  # "mongodb" or "mongodb+srv"
    userinfo: str | None  # raw "user:password", still percent-encoded
    hosts: str  # "host:port[,host:port]"
    database: str  # from the path, may be empty
    options: dict[str, str]  # lower-cased names, values decoded
    raw_options: dict[str, str]  # lower-cased names, values as written
    written_names: dict[str, str]  # lower-cased name -> as written

    @property
    def srv(self) -> bool:
        return self.scheme == "mongodb+srv"

    @property
    def uses_tls(self) -> bool:
        """Whether the driver connects over TLS: an SRV URL does unless tls/ssl=false says
        otherwise (pymongo defaults tls to true only when neither option is given)."""
        if self.srv:
            return self.flag("tls") is not False and self.flag("ssl") is not False
        return bool(self.flag("tls") or self.flag("ssl"))

    @property
    def password(self) -> str | None:
        """The password as the driver decodes it (``unquote_plus``: ``+`` is a space), or None."""
        if not self.userinfo or ":" not in self.userinfo:
            return None
        return unquote_plus(self.userinfo.split(":", 1)[1])

    def option(self, name: str) -> str | None:
        return self.options.get(name.lower())

    def flag(self, name: str) -> bool | None:
        """A boolean option as the driver reads it: True for ``true``, False for ``false``,
        None when absent or anything else (the driver ignores it). tlsInsecure stands for the
        options it implies (tlsAllowInvalidCertificates, tlsAllowInvalidHostnames, …)."""
        key = name.lower()
        if key in _IMPLIED_BY_TLSINSECURE and key not in self.options and "tlsinsecure" in self.options:
            key = "tlsinsecure"  # the driver sets these from tlsInsecure
        value = self.options.get(key)
        return True if value == "true" else False if value == "false" else None


# The options pymongo validates as booleans (``validate_boolean_or_string``: "true"/"false" only).
BOOLEAN_OPTIONS = frozenset({
    "connect", "directconnection", "enableoverloadretargeting", "fsync", "journal", "loadbalanced",
    "retryreads", "retrywrites", "ssl", "tls", "tlsallowinvalidcertificates",
    "tlsallowinvalidhostnames", "tlsdisableocspendpointcheck", "tlsinsecure", "tz_aware",
})
# Options that tlsInsecure sets; naming one beside it makes the driver refuse the URL.
_IMPLIED_BY_TLSINSECURE = ("tlsallowinvalidcertificates", "tlsallowinvalidhostnames",
                           "tlsdisableocspendpointcheck")
# Credential options (their values are never shown), from the one list of them.
SECRET_OPTIONS = SECRET_URL_OPTIONS


def _split_options(query: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Options as pymongo's ``split_options`` reads them: (decoded, as written, written names),
    keyed by lower-cased name. ValueError where the driver refuses the URL."""
    if not query:
        return {}, {}, {}
    if "&" in query and ";" in query:
        raise ValueError("mixes '&' and ';' between options: the driver refuses it; use '&'")
    delimiter = "&" if "&" in query else ";" if ";" in query else None
    decoded: dict[str, str] = {}
    raw: dict[str, str] = {}
    names: dict[str, str] = {}
    for pair in query.split(delimiter):
        parts = pair.split("=")
        if len(parts) != 2:
            raise ValueError("has an option that is not one name=value pair (an empty option, or "
                             "'=' in a value: percent-encode it as %3D): the driver refuses it")
        name, value = parts
        key = name.lower()
        raw[key] = value
        decoded[key] = value if key == "authmechanismproperties" else unquote_plus(value)
        names[key] = name
    if "tlsinsecure" in decoded:
        for implied in _IMPLIED_BY_TLSINSECURE:
            if implied in decoded:
                raise ValueError(f"sets {names['tlsinsecure']} and {names[implied]} together: "
                                 "the driver refuses it; keep one")
    if "ssl" in decoded and "tls" in decoded and decoded["ssl"] != decoded["tls"]:
        raise ValueError("sets ssl and tls to different values: the driver refuses it; keep tls=")
    return decoded, raw, names


def ignored_options(mongo: MongoUrl) -> list[str]:
    """Options the driver would ignore (with only a warning on stderr), a phrase each.

    Never quotes a credential option's value.
    """
    found = []
    for key, value in mongo.options.items():
        if key in BOOLEAN_OPTIONS and value not in ("true", "false"):
            shown = masking.printable(value)[:20]
            found.append(f"{mongo.written_names.get(key, key)}={shown} is not a boolean the driver reads "
                         "(only lower-case true or false), so it ignores the option")
    return found


def _ports_ok(hosts: str) -> bool:
    for host in hosts.split(","):
        match = _HOST_RE.match(host)
        if not match:
            return False
        port = match.group("port")
        if port is not None and not re.fullmatch(r"[0-9]{1,5}", port):
            return False
    return True


def _match(url: str) -> re.Match[str]:
    match = _STRICT_URL_RE.match(url)
    if match and ("@" in (match.group("path") or "") or not _ports_ok(match.group("hosts"))):
        match = None  # the user information has a `/` or `?`: read up to the last `@`
    match = match or re.match(_URL_RE, url) or re.match(_LAZY_URL_RE, url)
    if not match:
        if not url.startswith(("mongodb://", "mongodb+srv://")):
            if url.partition("://")[0].lower() in ("mongodb", "mongodb+srv"):
                raise ValueError("must start with mongodb:// or mongodb+srv:// in lower case (the driver "
                                 "reads the scheme case-sensitively and refuses any other spelling)")
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        raise ValueError("is not a MongoDB connection string (mongodb://[user:pass@]host[:port]/db)")
    return match


def with_credentials(url: str, user_raw: str, password: str) -> str:
    """``url`` with its user information replaced by ``user_raw`` (as written) and ``password``
    (percent-encoded here); hosts, database and options are kept byte for byte, whatever they hold.

    >>> with_credentials("mongodb://u:old@h:27017/muzo?appName=ops@muzo", "u", "n/w")
    'mongodb://u:n%2Fw@h:27017/muzo?appName=ops@muzo'
    """
    match = _match(url)
    userinfo = f"{user_raw}:{quote(password, safe='')}@"
    if match.group("userinfo") is None:
        start = match.start("hosts")
        return url[:start] + userinfo + url[start:]
    return url[:match.start("userinfo")] + userinfo + url[match.end("userinfo") + 1:]


def parse(url: str) -> MongoUrl:
    """Split ``url``; ValueError (without the URL in it) when it is not one."""
    match = _match(url)
    query = match.group("query") or ""
    options, raw_options, written_names = _split_options(query)
    hosts = match.group("hosts")
    for host in hosts.split(","):
        found = _HOST_RE.match(host)
        port = found.group("port") if found else None
        if not found or not host:
            raise ValueError("has an empty or malformed host: write host[:port][,host[:port]]")
        if port is not None and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
            raise ValueError("has a port that is not a number from 1 to 65535")
    scheme = match.group("scheme")
    if scheme == "mongodb+srv" and ("," in hosts or ":" in hosts.rsplit("]", 1)[-1]):
        raise ValueError("is mongodb+srv:// with a port or several hosts: an SRV URL names one host "
                         "without a port (DNS gives the rest)")
    return MongoUrl(
        scheme=scheme,
        userinfo=match.group("userinfo"),
        hosts=hosts,
        database=(match.group("path") or "/")[1:],
        options=options,
        raw_options=raw_options,
        written_names=written_names,
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
    """``url`` with its password and credential options replaced by ``***`` (for display);
    ``***`` alone when it is not a MongoDB URL the driver could read."""
    try:
        parse(url)
    except ValueError:
        return "***"
    return masking.redacted_url(url)
