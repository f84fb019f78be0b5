"""Redaction: every known secret value becomes ``***`` before text leaves the process.

One ``Redactor`` per command, built from the env values it reads and handed
explicitly to whatever writes: the CLI's output and the worker's logger.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from muzo_ops.constants import MASK

_SECRET_WORDS = ("SECRET", "PASSWORD", "KEY", "TOKEN")
MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words


def secret_values(values: Mapping[str, str]) -> list[str]:
    """Every secret in ``values``: sensitive values and URL passwords."""
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
    return [s for s in found if len(s) >= MIN_SECRET_CHARS]


def url_passwords(value: str) -> list[str]:
    """The password of a URL, as written and decoded (empty when there is none)."""
    if "://" not in value or "@" not in value:
        return []
    try:
        if value.startswith("mongodb"):
            from muzo_ops.env import mongourl

            mongo = mongourl.parse(value)
            if mongo.userinfo and ":" in mongo.userinfo:
                raw = mongo.userinfo.split(":", 1)[1]
                return [raw, mongo.password or raw]
            return []
        parts = urlsplit(value)
        return [parts.password] if parts.password else []
    except ValueError:
        return []


class Redactor:
    """Replaces every known secret value in text by ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._ordered: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Hide these values from now on (values under 4 characters are ignored)."""
        fresh = {s for s in secrets if len(s) >= MIN_SECRET_CHARS} - self._secrets
        if fresh:
            self._secrets |= fresh
            self._ordered = sorted(self._secrets, key=len, reverse=True)

    def add_values(self, values: Mapping[str, str]) -> None:
        """Hide the secrets among env ``values`` (sensitive variables, URL passwords)."""
        self.add(secret_values(values))

    def __contains__(self, value: str) -> bool:
        return value in self._secrets

    def __call__(self, text: str) -> str:
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, MASK)
        return text
