"""The ONE rule for "is this variable sensitive" (its value is a secret).

A name is sensitive when the caller declares it so (the env schema passes
its declared names in: ``muzo_ops.env.schema.SENSITIVITY``), and otherwise
by its shape: it holds SECRET, PASSWORD, PASSWD, TOKEN or KEY in any case
(``db_password`` is as secret as ``DB_PASSWORD``: env names are case
sensitive, secrets are not), unless it names a public key
(``DOTENV_PUBLIC_KEY…``, ``…PUBLISHABLE_KEY``, ``…PUBLIC_KEY``). Declared
public names are never sensitive, whatever their shape.
"""

from __future__ import annotations

from typing import NamedTuple

SECRET_WORDS = ("SECRET", "PASSWORD", "PASSWD", "TOKEN", "KEY")
# Words that make a "…KEY" name a public one (a public half of a key pair, a publishable key).
PUBLIC_KEY_WORDS = ("PUBLIC_KEY", "PUBLISHABLE_KEY")
# URL options whose values are credentials (lower-cased names; MongoDB and generic ones).
SECRET_URL_OPTIONS = ("authmechanismproperties", "tlscertificatekeyfilepassword",
                      "sslclientcertificatekeypassword", "sslpemkeypassword")


def sensitive_by_shape(name: str) -> bool:
    """Whether ``name`` looks like a secret's name (the rule for names nobody declared)."""
    upper = name.upper()
    if any(word in upper for word in ("SECRET", "PASSWORD", "PASSWD", "TOKEN")):
        return True
    return "KEY" in upper and not any(word in upper for word in PUBLIC_KEY_WORDS)


class Sensitivity(NamedTuple):
    """Names declared sensitive or public by their owner; the shape rule for the rest.

    ``urls`` are sensitive names whose value is a URL: its secrets are the
    password and credential options in it, not the whole text (so hosts stay
    readable in messages).
    """

    sensitive: frozenset[str] = frozenset()
    public: frozenset[str] = frozenset()
    urls: frozenset[str] = frozenset()

    def __call__(self, name: str) -> bool:
        """Whether the value of ``name`` is a secret."""
        if name in self.sensitive:
            return True
        if name in self.public:
            return False
        return sensitive_by_shape(name)

    def whole_value_secret(self, name: str) -> bool:
        """Whether the whole value of ``name`` is a secret (a sensitive URL's is not: only its parts)."""
        return name not in self.urls and self(name)


BY_SHAPE = Sensitivity()  # nothing declared: the shape rule alone


def is_sensitive(name: str, declared: Sensitivity = BY_SHAPE) -> bool:
    """Whether the value of ``name`` is a secret; ``declared`` carries the schema's names."""
    return declared(name)
