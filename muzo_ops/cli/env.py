"""``init-env``, ``check-env`` and ``render``: parse, make one library call, print."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from muzo_ops.cli.common import Parser, add_allow, add_env_file, add_format, add_lock_timeout, help_kwargs, positive
from muzo_ops.cli.output import Output
from muzo_ops.constants import EXIT_OK, EXIT_PROBLEMS

if TYPE_CHECKING:
    import datetime as dt

    from muzo_ops.env.schema import Variable


def cmd_check_env(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops import env
    from muzo_ops.env import report
    from muzo_ops.env.schema import App

    progress = out.err if sys.stderr.isatty() else None
    production = True if args.environment == "production" else None
    result = env.check_file(args.env_file, App(args.app) if args.app else None,
                            include_environ=args.include_environ, connect=args.connect,
                            timeout_s=args.timeout, progress=progress, redactor=out.redactor,
                            production=production, waivers=dict(args.allow), secret_ages=_secret_ages)
    if args.format == "json":
        out.out(report.to_json(result, strict=args.strict))
    else:
        out.out(report.to_text(result, args.env_file, strict=args.strict))
    return EXIT_PROBLEMS if report.failed(result, args.strict) else EXIT_OK


def _secret_ages(path: str) -> Callable[[str], dt.timedelta | None]:
    """When each current secret of the env file at ``path`` was rotated: the secrets' audit log."""
    def age(current: str) -> dt.timedelta | None:
        from muzo_ops.secrets import audit

        return audit.previous_secret_age(path, current)
    return age


def cmd_init_env(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.env import initenv
    from muzo_ops.env.schema import Environment
    from muzo_ops.errors import UsageError

    supplied = initenv.parse_sets(args.set or [])
    for name in args.set_stdin or []:
        var = initenv.known_variable(name)
        value = sys.stdin.readline().rstrip("\r\n")
        if not value.strip():
            raise UsageError(f"--set-stdin {var.name}: standard input gave an empty value (a failed "
                             "pipe?): nothing was written; pipe the value in, one line per name")
        supplied[var.name] = value
    out.redactor.add_values(supplied)
    interactive = not args.non_interactive and sys.stdin.isatty()

    def prompt(var: Variable) -> str:
        return _prompt(var, out)

    result = initenv.init_env(
        args.env_file,
        Environment(args.environment) if args.environment else None,
        supplied, force=args.force, prompt=prompt if interactive else None,
        lock_timeout_s=args.lock_timeout,
    )
    if result.tightened:
        out.out(f"  {result.path} was readable by others: mode set to 0600")
    if result.created:
        out.out(f"Created {result.path} (mode 0600): {len(result.added)} variables")
    elif result.written:
        out.out(f"Updated {result.path} (mode 0600): {len(result.added)} added, "
                f"{len(result.changed)} changed; existing values, comments and order kept")
    else:
        out.out(f"{result.path} already has every variable: nothing changed")
    if result.added and not result.created:
        out.out("  added: " + ", ".join(result.added))
    if result.changed:
        out.out("  changed: " + ", ".join(result.changed))
    if result.generated:
        out.out("  generated: " + ", ".join(result.generated) + " (32 random bytes each)")
    if result.backup:
        out.out(f"  backup of the previous file: {result.backup} (mode 0600)")
    if result.example:
        out.out(f"  wrote {result.example}")
    if result.missing:
        out.out(f"Still to fill in ({len(result.missing)}): " + ", ".join(result.missing))
    if result.development_values:
        out.out(f"Still development values, to change for production ({len(result.development_values)}): "
                + ", ".join(result.development_values) + " (init-env --set NAME=VALUE, or edit the file)")
    if result.missing or result.development_values:
        out.out(f"Then run: muzo-ops check-env --env-file {result.path}")
    else:
        out.out(f"Next: muzo-ops check-env --env-file {result.path}")
    return EXIT_OK


def _prompt(var: Variable, out: Output) -> str:
    """Ask for ``var`` on the terminal (hidden for secrets), three tries."""
    import getpass

    from muzo_ops.env import checks

    label = f"{var.name} ({var.description}) [{var.apps_label}]: "
    for _ in range(3):
        if var.sensitive:
            value = getpass.getpass(label, stream=sys.stderr)
        else:
            sys.stderr.write(label)
            sys.stderr.flush()
            value = sys.stdin.readline().rstrip("\r\n")
        if value == "":
            out.err("  (left empty: fill it in later)")
            return ""
        problem = checks.value_error(var, value)
        if problem is None:
            if var.sensitive:
                out.redactor.add([value])
            return value
        out.err(f"  {var.name} {problem}; try again")
    return ""


def _connect_timeout(text: str) -> float:
    """argparse type: a finite number of seconds above 0 and at most 300."""
    value = positive(text)
    if value > 300:
        raise argparse.ArgumentTypeError(f"{text!r} is over 300 seconds: use at most 300")
    return value


def cmd_render(args: argparse.Namespace, out: Output) -> int:
    import os

    from muzo_ops.env import render

    root = args.root
    if args.check:
        drift = render.drifted(root)
        if args.format == "json":
            import json

            out.out(json.dumps({"ok": not drift, "drifted": drift}))
        else:
            for name in drift:
                out.out(f"❌ {name} differs from the schema: run `muzo-ops render` and commit it")
            if not drift:
                out.out(f"✅ {len(render.RENDERED_FILES)} rendered files match the schema")
        return EXIT_PROBLEMS if drift else EXIT_OK
    for name in render.write_all(root):
        out.out(f"wrote {os.path.join(root, name)}")
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[Parser], only: str | None = None) -> None:
    """Register ``init-env``, ``check-env`` and ``render`` (or only the command ``only`` names)."""
    if only in (None, "init-env"):
        _add_init_env(sub)
    if only in (None, "check-env"):
        _add_check_env(sub)
    if only in (None, "render"):
        _add_render(sub)


def _add_init_env(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("init-env", help="create or complete .env (secrets generated)", **help_kwargs(
        "Create .env (mode 0600) and .env.example beside it. Secrets are generated, "
        "development defaults filled in; on a terminal you are asked for required values "
        "(hidden input for secrets). An existing file is merged: missing variables are "
        "added, existing values, comments and order kept; a value changes only with --set "
        "or --force (the old file is backed up, mode 0600; owner, group and mode kept; a "
        "symlink written through). With --environment production (or --set "
        "NODE_ENV=production on a new file) it lists every value still at a development "
        "default. The file is locked while it is rewritten: a second writer waits "
        "--lock-timeout seconds, then fails.",
        "muzo-ops init-env --environment production --non-interactive --set S3_REGION=eu-west-3"))
    add_env_file(p)
    p.add_argument("--environment", choices=["development", "production"],
                   help="defaults to use (default: the file's NODE_ENV, else development)")
    p.add_argument("--non-interactive", action="store_true",
                   help="never prompt; list what is still missing")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set a non-secret value (repeatable)")
    p.add_argument("--set-stdin", action="append", metavar="NAME",
                   help="read NAME's value from a line of standard input (for secrets)")
    p.add_argument("--force", action="store_true",
                   help="also replace existing values with defaults and fresh secrets")
    add_lock_timeout(p)
    p.set_defaults(func=cmd_init_env)


def _add_check_env(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("check-env", help="validate an env file", **help_kwargs(
        "Check every variable the muzo apps read: presence, format, and the rules between "
        "them. Values come from the file alone so a check is repeatable; "
        "--include-environ layers the process environment on top the way the apps see it "
        "(a set variable wins) and the report says where each value came from. With "
        "NODE_ENV=production or --environment production, the production rules apply too: "
        "no localhost or loopback hosts, TLS to MongoDB, https:// for S3 and NEXTAUTH_URL, "
        "live Stripe keys. Secret values and anything shaped like a secret are masked. Exit 0 "
        "ok, 1 errors (or warnings with --strict; the JSON then says \"ok\": false), 2 "
        "unreadable, malformed or oversized (over 1 MiB) file.",
        "muzo-ops check-env --app worker --connect --format json"))
    add_env_file(p)
    p.add_argument("--app", choices=["web", "worker"], help="check only what this app needs")
    add_format(p)
    p.add_argument("--strict", action="store_true",
                   help="exit 1 on warnings too (the JSON then says \"ok\": false)")
    p.add_argument("--environment", choices=["production"],
                   help="apply the production rules whatever NODE_ENV says (no localhost, TLS to "
                   "MongoDB, https, live Stripe keys); NODE_ENV=production applies them too")
    p.add_argument("--connect", action="store_true",
                   help="also connect to MongoDB and Redis (short timeout)")
    p.add_argument("--timeout", type=_connect_timeout, default=5.0, metavar="SECONDS",
                   help="per-connection timeout for --connect (default 5, at most 300)")
    add_allow(p)
    p.add_argument("--include-environ", action="store_true",
                   help="layer the process environment over the file (it wins); the report says "
                   "where each value came from")
    p.set_defaults(func=cmd_check_env)


def _add_render(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("render", help="render .env.example, .env.template and the docs page", **help_kwargs(
        "Render the committed files from the schema; --check only compares and exits 1 "
        "when one drifted.", "muzo-ops render --check"))
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    p.add_argument("--root", default=".", metavar="DIR", help="repository root (default: .)")
    add_format(p)
    p.set_defaults(func=cmd_render)
