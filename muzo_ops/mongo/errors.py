"""MongoDB errors, classified in one place.

``classify(exc)`` says what a driver error means for muzo: the server is
out of reach (retry later), the credentials were refused, the user lacks a
privilege, or something else. ``error_line`` turns one into a single line
that never repeats the driver's text (which can carry a connection string).
"""

from __future__ import annotations

import enum
import re

# MongoDB server error codes muzo reacts to.
UNAUTHORIZED = 13  # the user lacks a privilege for the command
AUTHENTICATION_FAILED = 18  # wrong user or password
# Codes the server returns when a change stream cannot be opened here.
CHANGE_STREAMS_UNSUPPORTED = frozenset({40573, 40324, 115, 20})  # not a replica set / unknown stage / unsupported

# Messages the old worker matched; pymongo's ConnectionFailure family is matched by type.
_OUTAGE_TEXT = re.compile(
    r"Server selection timeout|No available servers|MongoDB connection unavailable|ECONNREFUSED|"
    r"connection refused|connection reset|timed out",
    re.IGNORECASE,
)
_OUTAGE_TYPES = ("ServerSelectionTimeoutError", "AutoReconnect", "NetworkTimeout", "ConnectionFailure",
                 "NotPrimaryError", "WaitQueueTimeoutError")


class Failure(enum.StrEnum):
    """What a MongoDB error means for the caller."""

    OUTAGE = "outage"  # the server is out of reach or stepping down: retry later
    AUTH_FAILED = "authentication-failed"  # user or password refused
    NOT_AUTHORIZED = "not-authorized"  # the user lacks a privilege
    OTHER = "other"  # a command the server refused for another reason, or not a driver error


def classify(exc: BaseException) -> Failure:
    """The kind of failure ``exc`` is."""
    from pymongo.errors import ConnectionFailure, OperationFailure

    if isinstance(exc, ConnectionFailure) or type(exc).__name__ in _OUTAGE_TYPES:
        return Failure.OUTAGE
    if isinstance(exc, OperationFailure):
        if exc.code == AUTHENTICATION_FAILED:
            return Failure.AUTH_FAILED
        if exc.code == UNAUTHORIZED:
            return Failure.NOT_AUTHORIZED
    if "Authentication" in type(exc).__name__:
        return Failure.AUTH_FAILED
    if _OUTAGE_TEXT.search(str(exc)):
        return Failure.OUTAGE
    return Failure.OTHER


def is_outage(exc: BaseException) -> bool:
    """A MongoDB outage (retry later), as opposed to a bad command."""
    return classify(exc) is Failure.OUTAGE


def reason(exc: BaseException) -> str:
    """A short cause for an outage, from the driver's text, never quoting it."""
    text = str(exc)
    for pattern, why in (
        (r"Connection refused|ECONNREFUSED|Connect call failed|Errno 111", "connection refused"),
        (r"timed out|Timeout", "timed out"),
        (r"Name or service not known|nodename nor servname|getaddrinfo", "host name not found"),
        (r"SSL|TLS|certificate", "TLS handshake failed"),
        (r"Authentication|auth", "authentication failed"),
    ):
        if re.search(pattern, text, re.IGNORECASE):
            return why
    return type(exc).__name__


def error_line(exc: BaseException) -> str:
    """One line for a pymongo error, without the driver's (possibly secret-bearing) text."""
    kind = classify(exc)
    if kind is Failure.AUTH_FAILED:
        return "MongoDB authentication failed: check the user and password in DATABASE_URL"
    if kind is Failure.NOT_AUTHORIZED:
        return ("MongoDB refused the command: the DATABASE_URL user lacks a privilege "
                "(readWrite on the database is needed)")
    if kind is Failure.OUTAGE:
        return (f"MongoDB unreachable ({reason(exc)}): check DATABASE_URL and that the server runs "
                "(muzo-ops check-env --connect)")
    code = getattr(exc, "code", None)
    return f"MongoDB command failed ({type(exc).__name__}{f', code {code}' if code is not None else ''})"
