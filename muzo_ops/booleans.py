"""Booleans as every muzo app must read them: "false" is False (the old system's defect)."""

from __future__ import annotations

from muzo_ops.constants import FALSE_WORDS, TRUE_WORDS


def parse_bool(text: str) -> bool:
    """Parse a boolean the way every muzo app must: "false" is False.

    >>> parse_bool("false"), parse_bool("ON")
    (False, True)
    """
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"not a boolean: use one of {', '.join(sorted(TRUE_WORDS | FALSE_WORDS))}")
