"""Masking inside documents (job payloads, results, errors) shown to operators.

Two rules, always on: the value of a key whose name looks secret
(``password``, ``token``, ``secret``, ``apiKey``, ``authorization``…) is
replaced whole by ``***`` whatever its type, and every string anywhere
(keys too) goes through the ``Redactor`` (known secret values of the env
file, secret shapes).
"""

from __future__ import annotations

import re
from typing import Any

from muzo_ops.constants import MASK
from muzo_ops.redact.redactor import Redactor

# Key names (any case, camelCase or snake_case, as a word inside a longer name)
# whose values are secret. "key" alone is too common (cacheKey, sortKey):
# only the secret kinds of key.
SECRET_KEY_NAME = re.compile(
    r"(?i)(password|passwd|passphrase|^pass$|^pwd$|secret|(?<!max)(?<!max_)token(?!s$|_?count$)|api[_-]?key|private[_-]?key|access[_-]?key|"
    r"signing[_-]?key|client[_-]?key|authoriz|^auth$|cookie|credential|session[_-]?id|signature|^sig$|"
    r"^otp$|^pin$|^cvv$|^cvc$|card[_-]?number|^iban$|^ssn$)")


_PLAIN_INPUT = re.compile(r"[A-Za-z0-9_.:-]{0,24}")


def echo_input(text: str) -> str:
    """``text`` quoted for an error line when it is short and plain, else only its length.

    Never a cut or an escaped form: ``'nextauth-secret-va…'`` or a repr's doubled
    backslashes are no longer the secret the Redactor knows, and would show most of it.
    """
    return repr(text) if _PLAIN_INPUT.fullmatch(text) else f"of {len(text)} characters"


def secret_key(name: str) -> bool:
    """Whether the value under key ``name`` is a secret by its name."""
    return bool(SECRET_KEY_NAME.search(name))


def mask_document(value: Any, redactor: Redactor, depth: int = 0) -> Any:
    """``value`` (JSON-able: dicts, lists, strings, numbers…) with secret keys' values and known secrets masked."""
    if depth > 200:  # BSON nests at most 100 levels; a cycle cannot come from a document
        return MASK
    if isinstance(value, str):
        return redactor(str(value))
    if isinstance(value, dict):
        return {redactor(str(k)): (MASK if secret_key(str(k)) and v is not None else
                                   mask_document(v, redactor, depth + 1)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_document(v, redactor, depth + 1) for v in value]
    return value


__all__ = ["SECRET_KEY_NAME", "echo_input", "mask_document", "secret_key"]
