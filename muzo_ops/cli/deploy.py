"""``muzo-ops deploy``: the worker onto systemd hosts with pyinfra (the ``deploy`` extra).

Parsing and printing only; ``muzo_ops.deploy`` (which imports pyinfra) is
imported inside the command.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from muzo_ops.cli.common import Parser, add_allow, add_format, help_kwargs, positive_int
from muzo_ops.constants import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from muzo_ops.errors import UsageError

if TYPE_CHECKING:
    from muzo_ops.cli.output import Output

EXAMPLE = ("muzo-ops deploy --inventory deploy/inventories/production.py --env-file .env.production "
           "--serial 2 -y")


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Register ``deploy``."""
    p = sub.add_parser("deploy", help="deploy the worker to systemd hosts (pyinfra)", **help_kwargs(
        "Deploy the queue worker to the hosts of a pyinfra inventory as hardened systemd services "
        "(muzo-worker@QUEUE; optionally muzo-jobs-metrics and muzo-dashboard). Phase 1 takes each host's "
        "deploy lease and stages the release, env file and units on all hosts in parallel; phase 2, SERIAL "
        "hosts at a time, restarts what runs something else than asked, gates it, rolls a failing host back "
        "to what ran healthy before and stops the rollout (exit 1). A rerun after any interruption "
        "finishes the job; nothing is restarted when what runs is what is asked. "
        "Needs the 'deploy' extra: pip install 'muzo-ops[deploy]'.",
        EXAMPLE))
    p.add_argument("--inventory", required=True, metavar="PATH", help="pyinfra inventory file")
    p.add_argument("--env-file", required=True, metavar="PATH",
                   help="env file with the worker's values (checked before any host is touched)")
    p.add_argument("--dry", action="store_true", help="print what would change on each host; change nothing")
    p.add_argument("--serial", type=positive_int, default=1, metavar="N",
                   help="hosts switched and restarted per batch (default 1)")
    p.add_argument("--limit", action="append", default=[], metavar="HOST",
                   help="only this inventory host (repeatable)")
    p.add_argument("--rollback", action="store_true",
                   help="switch the hosts back to what ran before their last deploy (its gate failing: "
                        "back to what ran before the rollback)")
    p.add_argument("--lock", metavar="PATH",
                   help="dependency lock (default: muzo-worker.lock beside the inventory)")
    p.add_argument("--source", metavar="PATH",
                   help="muzo_ops checkout to ship (default: the one running this command)")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before changing hosts")
    p.add_argument("-v", "--verbose", action="store_true", help="show pyinfra's progress lines")
    add_allow(p)
    add_format(p)
    p.set_defaults(func=cmd_deploy)


def _line(name: str, r: object) -> str:
    from muzo_ops.deploy import driver

    assert isinstance(r, driver.HostResult)
    if r.status == "dry":
        return f"{name}: would change {r.changed} (release {r.desired_release}): {r.detail}"
    health = {True: "healthy", False: "NOT healthy", None: "health unknown"}[r.healthy]
    extra = f", {r.detail}" if r.detail and (not r.healthy or r.status not in driver.OK_STATUSES) else ""
    rolled = ", rolled back" if r.rolled_back else ""
    return f"{name}: {r.status}, {r.changed} changed, runs {r.release or '(nothing)'}, {health}{rolled}{extra}"


def cmd_deploy(args: argparse.Namespace, out: Output) -> int:
    try:
        from muzo_ops.deploy import driver
        from muzo_ops.deploy.plan import read_env_file
    except ImportError as exc:
        raise UsageError(f"deploy needs pyinfra ({exc.name} is missing): "
                         "pip install 'muzo-ops[deploy]'") from None
    from pathlib import Path

    from muzo_ops.redact.redactor import secret_values

    out.redactor.add(secret_values(read_env_file(args.env_file)))
    if not args.yes and not args.dry and not sys.stdin.isatty():
        raise UsageError("deploy: not confirmed and standard input is not a terminal; add -y (or --dry)")
    as_json = args.format == "json"
    progress = (lambda line: out.err(line)) if not as_json else (lambda _line: None)
    if args.dry and args.rollback:
        raise UsageError("--dry and --rollback together: choose one")
    if args.rollback:
        if not args.yes and not _confirm(out, "roll back the chosen hosts"):
            return EXIT_USAGE
        result = driver.rollback(args.inventory, args.env_file, serial=args.serial, limit=args.limit,
                                 progress=progress, verbose=args.verbose, waivers=dict(args.allow))
    else:
        if not args.dry and not args.yes:
            preview = driver.deploy(args.inventory, args.env_file, dry=True, limit=args.limit,
                                    lock=Path(args.lock) if args.lock else None,
                                    source=Path(args.source) if args.source else None, progress=progress,
                                    waivers=dict(args.allow))
            for name, r in preview.hosts.items():
                out.err(_line(name, r))
            if not _confirm(out, "deploy"):
                return EXIT_USAGE
        result = driver.deploy(args.inventory, args.env_file, dry=args.dry, serial=args.serial,
                               limit=args.limit, lock=Path(args.lock) if args.lock else None,
                               source=Path(args.source) if args.source else None, progress=progress,
                               verbose=args.verbose, waivers=dict(args.allow))
    if as_json:
        out.json(result.to_json())
    else:
        for name, r in result.hosts.items():
            out.out(_line(name, r))
        out.out(f"{'ok' if result.ok else 'FAILED'} in {result.seconds:.1f} s")
    return EXIT_OK if result.ok else EXIT_PROBLEMS


def _confirm(out: Output, what: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError(f"{what}: not confirmed and standard input is not a terminal; add -y")
    out.err(f"{what}? [y/N] ")
    return sys.stdin.readline().strip().lower() in ("y", "yes")
