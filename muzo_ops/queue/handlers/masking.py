"""Secrets out of what a handler said, before it becomes an error message.

A command's stderr tail and an HTTP answer's head are cut to a size: a cut
through a secret would keep a piece of it that no later redaction
recognises, and a child may print a secret percent-encoded (in a URL) or
JSON-escaped. ``OutputMask`` masks every such form, then cuts.

A result (a command's stdout, an answer's body) has them masked in its
strings after parsing, so it stays JSON.

Invariant: no secret of the worker's values, nor its percent-encoded or
JSON-escaped form, nor a piece of one at a cut, is in the text it returns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

from muzo_ops.constants import MASK
from muzo_ops.redact.redactor import MIN_SECRET_CHARS, secret_values


def _forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), quote_plus(secret, safe=""),
            json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}


class OutputMask:
    """Masks the secrets among ``values`` (and their encoded forms) in a handler's output."""

    def __init__(self, values: Mapping[str, str] | Iterable[str]) -> None:
        secrets = secret_values(values) if isinstance(values, Mapping) else list(values)
        forms = {form for secret in secrets for form in _forms(secret) if len(form) >= MIN_SECRET_CHARS}
        self._forms = sorted(forms, key=len, reverse=True)
        # the longest form in bytes: how much text at a cut may hold a piece of a secret
        self.reach = max((len(form.encode()) for form in self._forms), default=0)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def value(self, value: Any) -> Any:
        """A parsed JSON result with the secrets masked in every string (keys included).

        Iterative: a result nested as deep as the JSON parser allows must not overflow the stack here.
        """
        if isinstance(value, str):
            return self(value)
        if not isinstance(value, list | dict):
            return value
        root: list[Any] = [value]
        # (container read, its masked copy) pairs still to fill
        pending: list[tuple[Any, Any]] = [(root, root_copy := [None])]
        while pending:
            source, copy = pending.pop()
            items = source.items() if isinstance(source, dict) else enumerate(source)
            for key, item in items:
                slot = self(key) if isinstance(key, str) else key
                if isinstance(item, str):
                    copy[slot] = self(item)
                elif isinstance(item, list):
                    copy[slot] = [None] * len(item)
                    pending.append((item, copy[slot]))
                elif isinstance(item, dict):
                    copy[slot] = {}
                    pending.append((item, copy[slot]))
                else:
                    copy[slot] = item
        return root_copy[0]

    def tail(self, data: bytes, cut: bool, size: int) -> str:
        """The last ``size`` characters of ``data`` masked; ``cut``: ``data`` starts mid-stream, so its first
        ``reach`` bytes (where a secret's remainder may be) are dropped after masking."""
        text = self(data.decode("utf-8", errors="replace"))
        if cut:
            text = text[self.reach:] if self.reach else text
            return "…" + text[-size:].strip()
        return text[-size:].strip()

    def head(self, text: str, size: int) -> str:
        """The first ``size`` characters of ``text`` masked, a secret cut at the end dropped whole."""
        window = self(text[: size + self.reach])
        if len(text) > size + self.reach:  # the window's end may hold the start of a secret
            window = window[: max(0, len(window) - self.reach)]
        return window[:size]
