"""The parts of a URL as the connecting clients split them (no imports beyond the standard library).

One rule for "where does the user information end": the authority runs
from after ``scheme://`` to the first delimiter (``/``, ``?``, ``#`` for
URLs read by Python's ``urlsplit`` and Node's WHATWG ``URL``; only ``/`` and
``?`` for MongoDB, as pymongo reads them), and the user information is
everything before the LAST ``@`` of the authority. Schemes compare
case-insensitively (RFC 3986 3.1).
"""

from __future__ import annotations

from typing import NamedTuple

WEB_DELIMITERS = "/?#"  # urlsplit and WHATWG URL (which also ends a special URL's authority at "\")
MONGODB_DELIMITERS = "/?"  # pymongo: '#' belongs to the authority


class Authority(NamedTuple):
    """``scheme://[userinfo@]hosts`` and what follows, each as written."""

    scheme: str  # lower-cased
    userinfo: str | None  # "user[:password]", still percent-encoded; None without '@'
    hosts: str  # "host[:port][,host[:port]]"
    rest: str  # path, query and fragment, from the first delimiter on

    @property
    def password(self) -> str | None:
        """The password as written (percent-encoded), None when there is no ``:``."""
        if self.userinfo is None or ":" not in self.userinfo:
            return None
        return self.userinfo.split(":", 1)[1]


def scheme_of(url: str) -> str | None:
    """The URL's scheme, lower-cased, or None when ``url`` has no ``scheme://``."""
    head, sep, _ = url.partition("://")
    if not sep or not head or not head[0].isascii() or not head[0].isalpha():
        return None
    if not all(c.isascii() and (c.isalnum() or c in "+-.") for c in head):
        return None
    return head.lower()


def authority(url: str, delimiters: str = WEB_DELIMITERS) -> Authority | None:
    """``url`` split at the end of its authority; None without ``scheme://``.

    >>> authority("mongodb://u:p@h:1/db?appName=ops@muzo", MONGODB_DELIMITERS).userinfo
    'u:p'
    """
    scheme = scheme_of(url)
    if scheme is None:
        return None
    rest = url.partition("://")[2]
    end = min((i for i in (rest.find(d) for d in delimiters) if i >= 0), default=len(rest))
    auth, tail = rest[:end], rest[end:]
    userinfo, at, hosts = auth.rpartition("@")
    return Authority(scheme, userinfo if at else None, hosts, tail)
