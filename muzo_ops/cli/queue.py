"""``worker``, ``jobs …`` and ``dev-db``: parse, make one library call, print."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from muzo_ops.cli import metrics as metrics_commands
from muzo_ops.cli.common import (
    Parser,
    add_env_file,
    add_format,
    help_kwargs,
    int_range,
    port,
    positive,
    positive_int,
)
from muzo_ops.cli.output import Output
from muzo_ops.constants import DEFAULT_ENV_FILE, EXIT_OK

if TYPE_CHECKING:
    from muzo_ops.queue.jobs import JobType
    from muzo_ops.queue.opsstore import AdminStore


def _values(args: argparse.Namespace, out: Output) -> dict[str, str]:
    from muzo_ops.env import worker_values

    values = worker_values(args.env_file, args.env_file != DEFAULT_ENV_FILE)
    out.redactor.add_values(values)
    return values


def cmd_worker(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.queue import worker
    from muzo_ops.queue.events import Observer

    values = _values(args, out)
    settings = worker.WorkerSettings.from_values(
        values, queues=args.queues, concurrency=args.concurrency, lock_s=args.lock_seconds,
        poll_s=args.poll_seconds, drain_timeout_s=args.drain_timeout, retry_base_s=args.retry_base,
        retry_cap_s=args.retry_cap, change_streams=False if args.no_change_streams else None,
        burst=args.burst, policies=args.policy or (), handler_cwd=args.handler_cwd,
        handler_grace_s=args.handler_grace, log_format=args.log_format)
    observers: list[Observer] = []
    server = None
    if args.metrics_port is not None or values.get("WORKER_METRICS_PORT"):
        from muzo_ops import metrics

        where = metrics.endpoint(values, args.metrics_port)
        if where is not None:
            server = metrics.attach(observers, where[0], where[1], queues=settings.queues)
    try:
        code, threads_alive = worker.run_process(settings, args.handler or [], values, out.redactor,
                                                 observers=observers)
    finally:
        if server is not None:
            server.stop()
    if threads_alive:
        sys.stdout.flush()
        os._exit(code)  # a plain-function handler still runs; its job was released
    return code


def _store(args: argparse.Namespace, out: Output) -> AdminStore:
    from muzo_ops.queue import admin

    return admin.connect_from_values(_values(args, out), getattr(args, "timeout", None))


def cmd_jobs_status(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.queue import admin

    st = admin.status(_store(args, out))
    if args.format == "json":
        out.json(st.to_dict())
        return EXIT_OK
    statuses = st.statuses()
    width = max([13, *(len(t) + 2 for t in st.counts)])
    out.out(f"{'type':<{width}}" + "".join(f"{s:>{max(9, len(s) + 2)}}" for s in statuses))
    for job_type, counts in st.counts.items():
        out.out(f"{job_type:<{width}}" + "".join(f"{counts.get(s, 0):>{max(9, len(s) + 2)}}" for s in statuses))
    age = "none due" if st.oldest_due_pending_s is None else f"{st.oldest_due_pending_s:.1f}s"
    out.out(f"oldest due PENDING job: {age}")
    out.out(f"PENDING due now: {st.due_pending}")
    out.out(f"PENDING scheduled (not yet due: --run-at or a retry waiting): {st.future_pending}")
    out.out(f"RUNNING past their lock (worker died or stalled): {st.stuck_running}")
    unknown = st.unknown_types()
    if st.unknown_type_pending or unknown:
        names = ", ".join(unknown) if unknown else "-"
        out.out(f"PENDING of a type no worker knows ({names}), never run: {st.unknown_type_pending}")
    return EXIT_OK


def _job_type(text: str | None) -> JobType | None:
    from muzo_ops.queue.jobs import JobType

    return None if text is None else JobType.parse(text)


def _result(args: argparse.Namespace, out: Output, data: dict[str, Any], text: str) -> int:
    if args.format == "json":
        out.json(data)
    else:
        out.out(text)
    return EXIT_OK


def cmd_jobs_enqueue(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.queue import admin
    from muzo_ops.queue.jobs import JobType

    job_type = JobType.parse(args.type)
    payload = admin.parse_payload(args.payload)
    run_at = admin.parse_run_at(args.run_at) if args.run_at else None
    job_id, due = admin.enqueue_job(_store(args, out), job_type, payload, run_at, args.max_attempts)
    when = admin.iso(due)
    return _result(args, out, {"id": job_id, "type": job_type.value, "availableAt": when},
                   f"enqueued {job_type.value} job {job_id}, due {when}")


def cmd_jobs_retry_failed(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.queue import admin

    count = admin.retry_failed(_store(args, out), _job_type(args.type))
    return _result(args, out, {"retried": count}, f"{count} FAILED job(s) back to PENDING")


def cmd_jobs_clear_failed(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.queue import admin

    age = admin.parse_duration(args.older_than)
    count = admin.clear_failed(_store(args, out), age, _job_type(args.type))
    return _result(args, out, {"deleted": count}, f"{count} FAILED job(s) older than {args.older_than} deleted")


def cmd_dev_db(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops import devdb

    return devdb.run(args.port, args.data, out.out, write_env=args.env_file if args.write_env else None)


def add_parsers(sub: argparse._SubParsersAction[Parser]) -> None:
    """Register ``worker``, ``jobs`` and ``dev-db``."""
    p = sub.add_parser("worker", help="run the queue worker", **help_kwargs(
        "Process the MongoDB Job collection: one atomic claim per job, a heartbeat while it "
        "runs, fenced writes, retries with back-off, change-stream wake-up (polling "
        "otherwise). Reads DATABASE_URL, WORKER_QUEUES, WORKER_CONCURRENCY, WORKER_LOCK_SECONDS, "
        "WORKER_POLL_SECONDS, WORKER_DRAIN_TIMEOUT_SECONDS, WORKER_RETRY_BASE_SECONDS, "
        "WORKER_RETRY_CAP_SECONDS, WORKER_CHANGE_STREAMS, MUZO_WORKER_HANDLERS, QUEUE_TRANSACTIONS, "
        "JOB_TIMEOUT_<TYPE>_SECONDS, WORKER_METRICS_PORT/HOST and LOG_LEVEL from the env file "
        "with the process environment on top; each flag below "
        "overrides its variable (and is held to its range). A job past its type's timeout is "
        "retried or failed; at 3 abandoned handler threads the worker drains and exits 1. "
        "SIGTERM/SIGINT drain running jobs, release the rest and exit 0. "
        "Logs go to stdout: pino JSON lines, or readable lines on a terminal (--log-format). Handlers in "
        "any language: exec commands and signed HTTP endpoints (docs/HANDLERS.md). Works with MongoDB 6.0-8.x.",
        "muzo-ops worker --queues generation,mockup --concurrency 4 "
        "--handler GENERATION=muzo_ops.queue.handlers.demo:echo "
        "--handler MOCKUP=muzo_ops.queue.handlers.demo:sleep"))
    add_env_file(p)
    p.add_argument("--queues", metavar="LIST", help="comma list of generation, mockup, fulfillment "
                   "(default: WORKER_QUEUES, else generation)")
    p.add_argument("--concurrency", type=positive_int, metavar="N",
                   help="jobs run at once (default: WORKER_CONCURRENCY, else 1)")
    p.add_argument("--handler", action="append", metavar="TYPE=SPEC",
                   help="handler for a job type (repeatable): TYPE=module:callable, TYPE=exec:COMMAND ARG... "
                   "(a command per job) or TYPE=https://URL (a signed POST per job); also MUZO_WORKER_HANDLERS "
                   "and entry points in group muzo_ops.handlers (see docs/HANDLERS.md)")
    p.add_argument("--handler-cwd", metavar="DIR",
                   help="working directory of exec handlers' commands (default: the current folder)")
    p.add_argument("--handler-grace", type=positive, metavar="SECONDS",
                   help="after SIGTERM (timeout, shutdown), seconds before an exec handler's process group "
                   "gets SIGKILL (default 10)")
    p.add_argument("--policy", action="append", metavar="TYPE:KEY=VALUE,...",
                   help="retry policy of one job type (repeatable): timeout, retry-base, retry-cap (seconds), "
                   "max-attempts (overrides the documents' maxAttempts), e.g. "
                   "GENERATION:timeout=1800,retry-base=10,retry-cap=600,max-attempts=5")
    p.add_argument("--log-format", choices=("json", "pretty"),
                   help="log lines: pino JSON, or one readable line (default: pretty on a terminal, "
                   "JSON otherwise and under systemd)")
    p.add_argument("--lock-seconds", type=positive,
                   help="lock duration, renewed by heartbeats (default: WORKER_LOCK_SECONDS, else 300); a job "
                   "whose lease is lost (taken over, or no renewal confirmed within it) has its exec, HTTP or "
                   "async run cancelled")
    p.add_argument("--poll-seconds", type=positive,
                   help="poll interval without change streams (default: WORKER_POLL_SECONDS, else 1)")
    p.add_argument("--drain-timeout", type=positive, help="seconds to let running jobs finish on stop "
                   "(default: WORKER_DRAIN_TIMEOUT_SECONDS, else 30)")
    p.add_argument("--retry-base", type=positive,
                   help="first retry delay in seconds (default: WORKER_RETRY_BASE_SECONDS, else 2)")
    p.add_argument("--retry-cap", type=positive,
                   help="longest retry delay in seconds (default: WORKER_RETRY_CAP_SECONDS, else 300)")
    p.add_argument("--no-change-streams", action="store_true",
                   help="poll only, even where the server offers change streams")
    p.add_argument("--burst", action="store_true",
                   help="process what is due, then exit once no job is due (for cron and tests): 0, or 1 when "
                   "a job failed for good; the last line counts the retries waiting and when the next is due")
    p.add_argument("--metrics-port", type=port, metavar="N",
                   help="serve /metrics, /healthz and /readyz on this base port (a single-queue process "
                   "adds its queue's offset: generation 0, mockup 1, fulfillment 2); default: "
                   "WORKER_METRICS_PORT, else off. Binds WORKER_METRICS_HOST, else 127.0.0.1")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("jobs", help="inspect and operate the queue", **help_kwargs(
        "Queue operations on DATABASE_URL's Job collection.", "muzo-ops jobs status --format json"))
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION", parser_class=Parser)
    jsub.required = True

    def common(q: argparse.ArgumentParser) -> None:
        add_env_file(q)
        add_format(q)
        q.add_argument("--timeout", type=positive, metavar="SECONDS",
                       help="how long to wait for MongoDB (server selection, connect, each reply); default: "
                       "the URL's serverSelectionTimeoutMS / connectTimeoutMS / socketTimeoutMS, else 10")

    q = jsub.add_parser("status", help="counts by type and status, oldest due job, stuck jobs", **help_kwargs(
        "Counts by type and every status present, the age of the oldest due PENDING job, due "
        "and scheduled PENDING jobs (a job without availableAt is due), RUNNING jobs past their "
        "lock, and PENDING jobs of a type no worker knows (apart: they never run).",
        "muzo-ops jobs status"))
    common(q)
    q.set_defaults(func=cmd_jobs_status)
    q = jsub.add_parser("enqueue", help="insert a job the way the web app does", **help_kwargs(
        "Validate the payload for its type and insert a PENDING job; prints its id and when "
        "it is due (ISO 8601, UTC).",
        "muzo-ops jobs enqueue MOCKUP --payload '{\"orderId\": \"o1\", \"outputAssetId\": \"a1\", "
        "\"productVariantId\": \"v1\"}' --run-at +30s"))
    common(q)
    q.add_argument("type", metavar="TYPE", help="GENERATION, MOCKUP or FULFILLMENT")
    q.add_argument("--payload", required=True, metavar="JSON")
    q.add_argument("--run-at", metavar="WHEN", help="ISO 8601 time or +30s / +5m / +2h / +1d")
    q.add_argument("--max-attempts", type=int_range(1, 1000), default=3, metavar="N",
                   help="runs before the job is FAILED, 1 to 1000 (default 3)")
    q.set_defaults(func=cmd_jobs_enqueue)
    q = jsub.add_parser("retry-failed", help="put FAILED jobs back to PENDING", **help_kwargs(
        "Put FAILED jobs back to PENDING, due now, with attempts reset to 0; their lastError "
        "stays until the next run ends (DONE clears it, a failure replaces it).",
        "muzo-ops jobs retry-failed --type GENERATION"))
    common(q)
    q.add_argument("--type", metavar="TYPE")
    q.set_defaults(func=cmd_jobs_retry_failed)
    q = jsub.add_parser("clear-failed", help="delete old FAILED jobs", **help_kwargs(
        "Delete FAILED jobs last updated longer ago than --older-than.",
        "muzo-ops jobs clear-failed --older-than 7d"))
    common(q)
    q.add_argument("--older-than", default="7d", metavar="AGE", help="e.g. 12h, 7d (default 7d)")
    q.add_argument("--type", metavar="TYPE")
    q.set_defaults(func=cmd_jobs_clear_failed)
    metrics_commands.add_parser(jsub)
    add_job_parsers(jsub)

    p = sub.add_parser("dev-db", help="run a local MongoDB-compatible server (SecantusDB)", **help_kwargs(
        "Start SecantusDB (optional extra, GPL-2.0: pip install 'muzo-ops[devdb]') in the "
        "foreground and print the DATABASE_URL for .env (--write-env writes it there). "
        "SIGTERM, SIGINT or SIGHUP stop the server with it.",
        "muzo-ops dev-db --port 27017 --data .muzo-dev-db --write-env"))
    p.add_argument("--port", type=port, default=27017, help="TCP port, 1 to 65535 (default 27017)")
    p.add_argument("--data", default=".muzo-dev-db", metavar="DIR",
                   help="folder for the server's data, created if missing (default: .muzo-dev-db)")
    p.add_argument("--write-env", action="store_true",
                   help="write DATABASE_URL into the env file (created with development defaults "
                   "when missing; the old one kept as a backup)")
    add_env_file(p)
    p.set_defaults(func=cmd_dev_db)


# ---------------------------------------------------------------- jobs list | show | cancel | retry | delete
# One job at a time, the same operations as the dashboard's (muzo_ops.queue.operators), masked and fenced alike.


def cmd_jobs_list(args: argparse.Namespace, out: Output) -> int:
    from muzo_ops.queue import operators

    filters = operators.ListFilter.parse(args.status, args.type, None, args.after)
    page = operators.list_jobs(_store(args, out).jobs, filters, out.redactor, size=args.limit)
    if args.format == "json":
        out.json(page.to_dict())
        return EXIT_OK
    out.out(f"{'id':<26}{'type':<13}{'status':<9}{'attempts':>9}  {'updatedAt':<26}last error")
    for job in page.rows:
        error = f"{job.last_error.get('name')}: {str(job.last_error.get('message'))[:60]}" \
            if isinstance(job.last_error, dict) else ""
        out.out(f"{job.id:<26}{job.type[:12]:<13}{job.status[:8]:<9}{f'{job.attempts}/{job.max_attempts}':>9}  "
                f"{job.timeline.get('updatedAt') or '-':<26}{error}")
    if page.next_after:
        out.out(f"older jobs: --after {page.next_after}")
    return EXIT_OK


def cmd_jobs_show(args: argparse.Namespace, out: Output) -> int:
    import json

    from muzo_ops.queue import operators

    job = operators.show(_store(args, out).jobs, operators.parse_job_id(args.id), out.redactor)
    if args.format == "json":
        out.json(job.to_dict())
        return EXIT_OK
    out.out(f"{job.type} job {job.id}: {job.status}, attempts {job.attempts}/{job.max_attempts}")
    for name, when in job.timeline.items():
        out.out(f"  {name:<12} {when or '-'}")
    if job.locked_by:
        out.out(f"  lockedBy     {job.locked_by}")
    for title, value in (("payload", job.payload), ("result", job.result), ("lastError", job.last_error)):
        out.out(f"{title}: {json.dumps(value, indent=2, ensure_ascii=False, default=str)}")
    return EXIT_OK


def cmd_jobs_act(args: argparse.Namespace, out: Output) -> int:
    import getpass

    from muzo_ops.queue import operators

    action = operators.Action(args.jobs_command)
    job = operators.act_now(_store(args, out).jobs, action, operators.parse_job_id(args.id),
                            f"{getpass.getuser()} (muzo-ops jobs {action.value})")
    out.out({"retry": f"job {job.id} back to PENDING, due now", "cancel": f"job {job.id} cancelled (FAILED)",
             "delete": f"job {job.id} deleted"}[action.value])
    return EXIT_OK


def add_job_parsers(jsub: argparse._SubParsersAction[Parser]) -> None:
    """Register ``jobs list | show | cancel | retry | delete`` under ``jobs``."""
    q = jsub.add_parser("list", help="jobs newest first, filtered, one page", **help_kwargs(
        "List jobs newest first (by _id), one page on an index; --after continues from a job id (the "
        "last line of the previous page names it). Payloads are not listed; last errors are masked.",
        "muzo-ops jobs list --status FAILED --type MOCKUP --limit 20"))
    add_env_file(q)
    add_format(q)
    q.add_argument("--status", metavar="STATUS", help="PENDING, RUNNING, DONE or FAILED")
    q.add_argument("--type", metavar="TYPE", help="GENERATION, MOCKUP or FULFILLMENT")
    q.add_argument("--limit", type=int_range(1, 500), default=50, metavar="N", help="jobs per page, 1 to 500 "
                   "(default 50)")
    q.add_argument("--after", metavar="ID", help="list jobs older than this job id")
    q.set_defaults(func=cmd_jobs_list)
    q = jsub.add_parser("show", help="one job: timeline, payload, result, last error (masked)", **help_kwargs(
        "Show one job as the dashboard does: secret-named keys' values and every known secret masked.",
        "muzo-ops jobs show 6b0cfea76fd7fe601a9bec16 --format json"))
    add_env_file(q)
    add_format(q)
    q.add_argument("id", metavar="ID", help="the job's id (24 hexadecimal characters)")
    q.set_defaults(func=cmd_jobs_show)
    for name, what in (("cancel", "a PENDING job to FAILED (\"cancelled by USER\")"),
                       ("retry", "a FAILED job back to due PENDING, attempts 0 (lastError kept in errorHistory)"),
                       ("delete", "delete a DONE or FAILED job")):
        q = jsub.add_parser(name, help=what, **help_kwargs(
            f"{what[0].upper()}{what[1:]}. Fenced: a RUNNING job is never touched and a job that changes "
            "between the read and the write is left alone (exit 1, nothing written).",
            f"muzo-ops jobs {name} 6b0cfea76fd7fe601a9bec16"))
        add_env_file(q)
        q.add_argument("id", metavar="ID", help="the job's id (24 hexadecimal characters)")
        q.set_defaults(func=cmd_jobs_act)
