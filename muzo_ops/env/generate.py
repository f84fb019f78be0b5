"""Generating secrets nobody has to type (``secrets generate``, ``init-env``, rotation)."""

from __future__ import annotations

from muzo_ops.constants import NEXTAUTH_SECRET_BYTES
from muzo_ops.env import schema
from muzo_ops.env.schema import Generator
from muzo_ops.errors import SchemaError


def generate(generator: Generator) -> str:
    """A fresh value from ``generator``, from the OS's cryptographic random source.

    >>> len(generate(Generator.TOKEN_URLSAFE_32))
    43
    """
    import secrets

    if generator is Generator.TOKEN_URLSAFE_32:
        return secrets.token_urlsafe(NEXTAUTH_SECRET_BYTES)
    raise SchemaError(f"unknown generator {generator}")


def generated_variables() -> list[schema.Variable]:
    """Every variable that has a generator."""
    return [v for v in schema.VARIABLES if v.generator is not None]


def generator_for(name: str) -> Generator:
    """The generator of variable ``name``; SchemaError names the choices."""
    var = schema.BY_NAME.get(name)
    if var is None or var.generator is None:
        choices = ", ".join(v.name for v in generated_variables())
        raise SchemaError(f"{name} is not a generated secret: choose one of {choices}")
    return var.generator
