"""The ``muzo-ops`` / ``python -m muzo_ops`` command line.

Each command module (``env``, ``secrets``, ``queue``) parses arguments,
makes one library call and prints what comes back. This module assembles
the parser and turns errors into one ``error:`` line (a traceback only with
``--debug``). Exit codes: 0 ok, 1 the check or job found problems, 2
unusable input or usage. Everything printed passes through the command's
``Redactor``, so no secret value reaches the terminal. No pymongo, redis,
jinja2 or pyinfra is imported here: the library imports them when needed.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from muzo_ops.cli.common import Parser, help_kwargs
from muzo_ops.cli.output import Output
from muzo_ops.constants import EXIT_OK, EXIT_PROBLEMS, VERSION
from muzo_ops.errors import MuzoOpsError

__all__ = ["build_parser", "main"]


# Each command and the module of muzo_ops.cli that registers it (in --help order). Running one
# command builds and imports only its module's parsers (start-up stays light); an unknown word
# builds them all, so the usage error lists every command.
COMMANDS: dict[str, str] = {
    "init-env": "env", "check-env": "env", "render": "env", "secrets": "secrets",
    "worker": "queue", "jobs": "queue", "dev-db": "queue", "deploy": "deploy", "dashboard": "dashboard",
}


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (the first argument that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> Parser:
    """The command line: every command, or only ``command``'s module's when it is a known one."""
    parser = Parser(
        prog="muzo-ops",
        **help_kwargs("Operations toolkit for muzo: env files, checks, secrets, the queue worker.",
                      "muzo-ops init-env && muzo-ops check-env"),
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"muzo-ops {VERSION}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    wanted = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in wanted:
        module = importlib.import_module(f"muzo_ops.cli.{name}")
        if name == "env" and command is not None:
            module.add_parsers(sub, only=command)  # its three commands are built one at a time
            continue
        register = getattr(module, "add_parsers", None) or module.add_parser
        register(sub)
    return parser


def _traceback(out: Output) -> None:
    import traceback

    out.err(traceback.format_exc())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    out = Output()
    try:
        args = build_parser(_command_of(argv)).parse_args(argv)
        code: int = args.func(args, out)
        return code
    except MuzoOpsError as exc:
        if debug:
            _traceback(out)
        out.err(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM while a file lock is held (files.lock)
        out.err(f"error: interrupted: {exc}" if str(exc) else "error: interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # the last line of defence: one line unless --debug
        if debug:
            _traceback(out)
        if type(exc).__module__.startswith(("pymongo", "bson")):
            from muzo_ops.mongo.errors import error_line

            out.err(f"error: {error_line(exc)}")
            return EXIT_PROBLEMS
        out.err(f"error: unexpected {type(exc).__name__}: {exc} (run again with --debug and "
                "report it)")
        return EXIT_PROBLEMS
