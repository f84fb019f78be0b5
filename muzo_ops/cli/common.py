"""Argument parsing shared by every command: the house error format and typed values."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from muzo_ops.constants import DEFAULT_ENV_FILE, DEFAULT_LOCK_TIMEOUT_S, EXIT_USAGE

SubParsers = "argparse._SubParsersAction[Parser]"


class Parser(argparse.ArgumentParser):
    """argparse with the house error format: one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see: {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def help_kwargs(description: str, example: str) -> dict[str, Any]:
    """``description``, an example epilog, and a formatter that keeps both as written."""
    return {
        "description": description,
        "epilog": f"example:\n  {example}",
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def positive(text: str) -> float:
    """argparse type: a finite number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (ASCII digits)."""
    if not re.fullmatch(r"[0-9]{1,18}", text.strip()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of at least 1")
    return int(text)


def add_env_file(parser: argparse.ArgumentParser) -> None:
    """The ``--env-file PATH`` option every env-reading command takes."""
    parser.add_argument("--env-file", default=DEFAULT_ENV_FILE, metavar="PATH",
                        help="env file to use (default: ./.env)")


def add_format(parser: argparse.ArgumentParser) -> None:
    """``--format text|json`` for read-only commands."""
    parser.add_argument("--format", choices=["text", "json"], default="text")


def int_range(low: int, high: int) -> Callable[[str], int]:
    """argparse type: a whole number from ``low`` to ``high`` (ASCII digits)."""
    def parse(text: str) -> int:
        digits = text.strip()
        if not re.fullmatch(r"[0-9]{1,19}", digits) or not low <= int(digits) <= high:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} must be a whole number from {low} to {high}")
        return int(digits)
    parse.__name__ = "int_range"
    return parse


def port(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    return int_range(1, 65535)(text)


def add_lock_timeout(parser: argparse.ArgumentParser) -> None:
    """``--lock-timeout SECONDS`` for every command that writes an env file (one declaration)."""
    parser.add_argument("--lock-timeout", type=positive, default=DEFAULT_LOCK_TIMEOUT_S, metavar="SECONDS",
                        help="wait this long for another muzo-ops command writing the same file "
                        f"(default {DEFAULT_LOCK_TIMEOUT_S:g})")


def waiver(text: str) -> tuple[str, str]:
    """argparse type: ``CODE:REASON``, a check-env code accepted on record with a reason."""
    from muzo_ops.env.rules import parse_waiver
    from muzo_ops.errors import UsageError

    try:
        return parse_waiver(text, "--allow")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--allow: ")) from None


def add_allow(parser: argparse.ArgumentParser) -> None:
    """``--allow CODE:REASON`` (repeatable): waive a check-env problem code, with the reason on record."""
    parser.add_argument("--allow", type=waiver, action="append", default=[], metavar="CODE:REASON",
                        help="accept the problems of this code on record (repeatable); they still show, "
                        "marked waived, and do not fail the check; the env file's MUZO_CHECK_WAIVERS "
                        "(code:reason;code:reason) does the same")
