"""``dashboard``: parse, make one library call (serve), print."""

from __future__ import annotations

import argparse

from muzo_ops.cli.common import Parser, add_env_file, help_kwargs, port, positive
from muzo_ops.cli.output import Output
from muzo_ops.constants import DEFAULT_ENV_FILE


def cmd_dashboard(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops import dashboard
    from muzo_ops.env import worker_values

    values = worker_values(args.env_file, args.env_file != DEFAULT_ENV_FILE)
    out.redactor.add_values(values)
    return dashboard.serve(values, host=args.host, port=args.port, allow_actions=args.allow_actions,
                           redactor=out.redactor, on_ready=out.out, timeout_s=args.timeout)


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    """Register ``dashboard``."""
    p = sub.add_parser("dashboard", help="serve the job dashboard (a web page of the queue)", **help_kwargs(
        "Serve a web page to see and operate DATABASE_URL's Job collection until SIGTERM/SIGINT: counts per "
        "type and status (capped, cached a few seconds), the oldest due job, the last hour, dead workers' "
        "jobs, lists by status and type, each job with its payload (secrets always masked), live through "
        "server-sent events. HTTP basic auth with DASHBOARD_USER and DASHBOARD_PASSWORD; without a password "
        "it binds 127.0.0.1 only. Read-only unless --allow-actions (Retry, Cancel, Delete, Retry all failed: "
        "fenced, never a RUNNING job). Every request answers within --timeout (default 5 s) whatever MongoDB "
        "does: 503 in one line after it (an action's page then says its outcome is unknown: reload). GET "
        "/healthz (the process answers) and GET /readyz (MongoDB answers) need no credentials.",
        "muzo-ops dashboard --env-file .env --host 127.0.0.1 --port 8090 --allow-actions"))
    add_env_file(p)
    p.add_argument("--host", default="127.0.0.1", metavar="H",
                   help="address to bind (default 127.0.0.1; anything else needs DASHBOARD_PASSWORD)")
    p.add_argument("--port", type=port, default=8090, metavar="P", help="port (default 8090)")
    p.add_argument("--allow-actions", action="store_true",
                   help="offer Retry, Cancel, Delete and Retry all failed (POST, CSRF-checked, logged)")
    p.add_argument("--timeout", type=positive, default=5.0, metavar="SECONDS",
                   help="every request answers within this, whatever MongoDB does (default 5)")
    p.set_defaults(func=cmd_dashboard)
