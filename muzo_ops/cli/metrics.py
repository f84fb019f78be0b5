"""``jobs metrics``: parse, make one library call, print."""

from __future__ import annotations

import argparse

from muzo_ops.cli.common import Parser, add_env_file, help_kwargs, port, positive, positive_int
from muzo_ops.cli.output import Output
from muzo_ops.constants import DEFAULT_ENV_FILE


def cmd_jobs_metrics(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.env import worker_values
    from muzo_ops.metrics import exporter

    values = worker_values(args.env_file, args.env_file != DEFAULT_ENV_FILE)
    out.redactor.add_values(values)
    return exporter.serve(values, host=args.host, port=args.port, on_ready=out.out, cache_s=args.cache_seconds,
                          cap=args.cap)


def add_parser(jobs_subparsers: argparse._SubParsersAction[Parser]) -> None:
    """Register ``jobs metrics`` under ``jobs``."""
    q = jobs_subparsers.add_parser("metrics", help="serve the queue's state as Prometheus metrics", **help_kwargs(
        "Serve /metrics for DATABASE_URL's Job collection until SIGTERM/SIGINT: muzo_queue_jobs{type,status} "
        "(PENDING split into PENDING_DUE and PENDING_SCHEDULED), muzo_queue_oldest_due_age_seconds{type}, "
        "muzo_queue_count_capped{type,status}, muzo_queue_up. Run one per deployment, not per worker. "
        "Each scrape costs 18 database commands on the queue's indexes whatever the collection's size, "
        "none within --cache-seconds of the last one; counts stop at --cap.",
        "muzo-ops jobs metrics --port 9470"))
    add_env_file(q)
    q.add_argument("--port", type=port, required=True, metavar="N", help="port to serve on")
    q.add_argument("--host", default="127.0.0.1", metavar="H",
                   help="address to bind (default: 127.0.0.1, this host only)")
    q.add_argument("--cache-seconds", type=positive, default=5.0, metavar="S",
                   help="serve the last answer for this long without asking MongoDB (default 5)")
    q.add_argument("--cap", type=positive_int, default=100_000, metavar="N",
                   help="stop counting a (type, status) pair here (default 100000)")
    q.set_defaults(func=cmd_jobs_metrics)
