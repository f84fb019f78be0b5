"""Redaction: every known secret value becomes ``***`` before text leaves the process.

One ``Redactor`` per command, built from the env values it reads and handed
explicitly to whatever writes: the CLI's output and the worker's logger.
Which names hold secrets is ``sensitivity``'s rule; the env schema passes
its declared names in (``Redactor(sensitivity=schema.SENSITIVITY)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus

from muzo_ops.constants import MASK
from muzo_ops.redact.masking import url_passwords
from muzo_ops.redact.sensitivity import BY_SHAPE, Sensitivity
from muzo_ops.redact.shapes import mask_shapes, shaped_secrets

__all__ = ["MIN_SECRET_CHARS", "Redactor", "mask_shapes", "secret_values",
           "shaped_secrets", "url_passwords"]

MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words


def secret_values(values: Mapping[str, str], sensitivity: Sensitivity = BY_SHAPE) -> list[str]:
    """Every secret in ``values``: sensitive values, URL passwords and credential options,
    and whatever has a secret's shape (a secret key in a variable not meant for it)."""
    found: list[str] = []
    for name, value in values.items():
        if not value:
            continue
        if sensitivity.whole_value_secret(name):
            found.append(value)  # its secret-shaped parts are hidden with it, and by shape anywhere
            continue
        found.extend(url_passwords(value))
        found.extend(shaped_secrets(value))
    return [s for s in found if len(s) >= MIN_SECRET_CHARS]


class Redactor:
    """Replaces every known secret value in text by ``***``.

    Log records repeat the same short strings (field names, messages, logger
    names): their redacted form is remembered until a secret is added.
    """

    CACHE_SIZE = 2048  # strings remembered at most; the cache starts over when full
    CACHE_MAX_CHARS = 200  # longer strings (tracebacks, results) are not remembered

    def __init__(self, secrets: Iterable[str] = (), sensitivity: Sensitivity = BY_SHAPE) -> None:
        self.sensitivity = sensitivity
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
        self.add(secret_values(values, self.sensitivity))

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
