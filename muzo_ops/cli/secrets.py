"""``secrets generate | rotate``: parse, make one library call, print."""

from __future__ import annotations

import argparse

from muzo_ops.cli.common import Parser, add_env_file, help_kwargs
from muzo_ops.cli.output import Output
from muzo_ops.constants import EXIT_OK


def cmd_secrets_generate(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.secrets import generate

    out.out(generate.generate(generate.generator_for(args.name)))
    return EXIT_OK


def cmd_secrets_rotate(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.env import initenv

    backup = initenv.rotate(args.env_file, args.name, redactor=out.redactor)
    out.out(f"Rotated {args.name} in {args.env_file} (mode 0600); previous file kept as {backup} "
            "(mode 0600). Restart the apps that read it; for NEXTAUTH_SECRET every session "
            "signs in again.")
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """Register ``secrets`` and its actions."""
    p = sub.add_parser("secrets", help="generate or rotate secrets",
                       **help_kwargs("Generate or rotate generated secrets.",
                                     "muzo-ops secrets rotate NEXTAUTH_SECRET"))
    ssub = p.add_subparsers(dest="secrets_command", metavar="ACTION", parser_class=Parser)
    ssub.required = True
    g = ssub.add_parser("generate", help="print a fresh value",
                        **help_kwargs("Print a fresh value for a generated secret.",
                                      "muzo-ops secrets generate NEXTAUTH_SECRET"))
    g.add_argument("name", nargs="?", default="NEXTAUTH_SECRET", metavar="NAME")
    g.set_defaults(func=cmd_secrets_generate)
    r = ssub.add_parser("rotate", help="replace a secret in the env file", **help_kwargs(
        "Replace a generated secret in the env file with a fresh one: backup (0600), "
        "atomic write (0600); the value is never printed.",
        "muzo-ops secrets rotate NEXTAUTH_SECRET --env-file /etc/muzo/.env"))
    r.add_argument("name", metavar="NAME")
    add_env_file(r)
    r.set_defaults(func=cmd_secrets_rotate)
