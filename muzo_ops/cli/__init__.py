"""The ``muzo-ops`` / ``python -m muzo_ops`` command line: thin, over importable functions.

Exit codes: 0 ok, 1 the check or job found problems, 2 unusable input or
usage. Errors are one ``error:`` line (a traceback only with ``--debug``),
and everything printed passes through ``_Output.redact`` with the secrets
known so far, so no secret value reaches the terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from muzo_ops.constants import DEFAULT_ENV_FILE, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from muzo_ops.errors import MuzoOpsError, UsageError

if TYPE_CHECKING:  # imported lazily at run time: start-up stays light
    from muzo_ops.checks import Report
    from muzo_ops.jobs import JobType
    from muzo_ops.schema import App, Variable


class _Output:
    """stdout/stderr writer that hides every known secret value."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def redact(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def out(self, text: str = "") -> None:
        sys.stdout.write(self.redact(text) + ("" if text.endswith("\n") else "\n"))

    def err(self, text: str) -> None:
        sys.stderr.write(self.redact(text) + ("" if text.endswith("\n") else "\n"))


OUT = _Output()


class _Parser(argparse.ArgumentParser):
    """argparse with the house error format: one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        OUT.err(f"error: {message} (see: {self.prog} --help)")
        raise SystemExit(EXIT_USAGE)


def _positive(text: str) -> float:
    """argparse type: a number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def _positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of at least 1")
    return int(text)


def _help(description: str, example: str) -> dict[str, Any]:
    return {
        "description": description,
        "epilog": f"example:\n  {example}",
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


# ------------------------------------------------------------------ commands


def cmd_check_env(args: argparse.Namespace) -> int:
    from muzo_ops import checks, envfile, report
    from muzo_ops.schema import App

    env = envfile.read(args.env_file)
    raw = env.raw()
    OUT.secrets.update(checks.secret_values(raw))
    values = env.values(dict(os.environ) if args.include_environ else None)
    OUT.secrets.update(checks.secret_values(values))
    bare = tuple(e.key for e in env.entries if e.key is not None and e.value is None)
    app = App(args.app) if args.app else None
    result = checks.check(values, app, bare_keys=bare, duplicates=tuple(env.duplicates()), raw=raw)
    checks.check_file_mode(result, args.env_file, os.stat(args.env_file).st_mode)
    connections = None
    if args.connect:
        connections = _connect(result, values, app, args.timeout)
    if args.format == "json":
        extra = {"connections": [{"ok": ok, "message": m} for ok, m in connections]} if connections else None
        OUT.out(report.to_json(result, extra))
    else:
        OUT.out(report.to_text(result, args.env_file, connections))
    if not result.ok or (args.strict and result.warnings):
        return EXIT_PROBLEMS
    return EXIT_OK


def _connect(result: Report, values: dict[str, str], app: App | None, timeout: float) -> list[tuple[bool, str]]:
    from muzo_ops import connect, schema
    from muzo_ops.checks import Severity

    lines: list[tuple[bool, str]] = []
    probes: list[tuple[str, Callable[[str, float], connect.ConnectionResult]]] = [
        ("DATABASE_URL", connect.check_mongo), ("REDIS_URL", connect.check_redis)]
    for name, probe in probes:
        var = schema.BY_NAME[name]
        if app is not None and app not in var.apps:
            continue
        if any(p.variable == name and p.code in ("missing", "invalid", "placeholder")
               for p in result.errors):
            lines.append((False, f"{name}: not tried (fix the value first)"))
            continue
        if sys.stderr.isatty():
            OUT.err(f"… connecting to {'MongoDB' if name == 'DATABASE_URL' else 'Redis'} "
                    f"(timeout {timeout:g}s)")
        outcome = probe(values[name], timeout)
        lines.append((outcome.ok, outcome.message))
        if not outcome.ok:
            result.add(name, Severity.ERROR, outcome.code, outcome.message, special=True)
    return lines


def cmd_init_env(args: argparse.Namespace) -> int:
    from muzo_ops import initenv
    from muzo_ops.schema import Environment

    supplied = initenv.parse_sets(args.set or [])
    for name in args.set_stdin or []:
        var = initenv.known_variable(name)
        line = sys.stdin.readline()
        supplied[var.name] = line.rstrip("\r\n")
    OUT.secrets.update(v for v in supplied.values() if len(v) >= 4)
    interactive = not args.non_interactive and sys.stdin.isatty()
    prompt = _prompt if interactive else None
    result = initenv.init_env(
        args.env_file,
        Environment(args.environment) if args.environment else None,
        supplied, force=args.force, prompt=prompt,
    )
    if result.tightened:
        OUT.out(f"  {result.path} was readable by others: mode set to 0600")
    if result.created:
        OUT.out(f"Created {result.path} (mode 0600): {len(result.added)} variables")
    elif result.written:
        OUT.out(f"Updated {result.path} (mode 0600): {len(result.added)} added, "
                f"{len(result.changed)} changed; existing values, comments and order kept")
    else:
        OUT.out(f"{result.path} already has every variable: nothing changed")
    if result.added and not result.created:
        OUT.out("  added: " + ", ".join(result.added))
    if result.changed:
        OUT.out("  changed: " + ", ".join(result.changed))
    if result.generated:
        OUT.out("  generated: " + ", ".join(result.generated) + " (32 random bytes each)")
    if result.backup:
        OUT.out(f"  backup of the previous file: {result.backup} (mode 0600)")
    if result.example:
        OUT.out(f"  wrote {result.example}")
    if result.missing:
        OUT.out(f"Still to fill in ({len(result.missing)}): " + ", ".join(result.missing))
        OUT.out(f"Then run: muzo-ops check-env --env-file {result.path}")
    else:
        OUT.out(f"Next: muzo-ops check-env --env-file {result.path}")
    return EXIT_OK


def _prompt(var: Variable) -> str:
    import getpass

    from muzo_ops import checks

    label = f"{var.name} ({var.description}) [{var.apps_label}]: "
    for _ in range(3):
        if var.sensitive:
            value = getpass.getpass(label, stream=sys.stderr)
        else:
            sys.stderr.write(label)
            sys.stderr.flush()
            value = sys.stdin.readline().rstrip("\r\n")
        if value == "":
            OUT.err("  (left empty: fill it in later)")
            return ""
        problem = checks.value_error(var, value)
        if problem is None:
            if var.sensitive:
                OUT.secrets.add(value)
            return value
        OUT.err(f"  {var.name} {problem}; try again")
    return ""


def cmd_render(args: argparse.Namespace) -> int:
    from muzo_ops import render

    root = args.root
    if args.check:
        drift = render.drifted(root)
        if args.format == "json":
            import json

            OUT.out(json.dumps({"ok": not drift, "drifted": drift}))
        for name in drift if args.format == "text" else []:
            OUT.out(f"❌ {name} differs from the schema: run `muzo-ops render` and commit it")
        if not drift and args.format == "text":
            OUT.out(f"✅ {len(render.RENDERED_FILES)} rendered files match the schema")
        return EXIT_PROBLEMS if drift else EXIT_OK
    for name in render.write_all(root):
        OUT.out(f"wrote {os.path.join(root, name)}")
    return EXIT_OK


def cmd_secrets_generate(args: argparse.Namespace) -> int:
    from muzo_ops import secretgen

    OUT.out(secretgen.generate(secretgen.generator_for(args.name)))
    return EXIT_OK


def cmd_secrets_rotate(args: argparse.Namespace) -> int:
    from muzo_ops import checks, envfile, initenv

    OUT.secrets.update(checks.secret_values(envfile.read(args.env_file).raw()))
    backup = initenv.rotate(args.env_file, args.name)
    OUT.out(f"Rotated {args.name} in {args.env_file} (mode 0600); previous file kept as {backup} "
            "(mode 0600). Restart the apps that read it; for NEXTAUTH_SECRET every session "
            "signs in again.")
    return EXIT_OK


# ------------------------------------------------------------------ parser


def build_parser() -> _Parser:
    parser = _Parser(
        prog="muzo-ops",
        **_help("Operations toolkit for muzo: env files, checks, secrets, the queue worker.",
                "muzo-ops init-env && muzo-ops check-env"),
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def env_file(p: argparse.ArgumentParser) -> None:
        p.add_argument("--env-file", default=DEFAULT_ENV_FILE, metavar="PATH",
                       help="env file to use (default: ./.env)")

    p = sub.add_parser("init-env", help="create or complete .env (secrets generated)",
                       **_help(
        "Create .env (mode 0600) and .env.example beside it. Secrets are generated, "
        "development defaults filled in; on a terminal you are asked for required values "
        "(hidden input for secrets). An existing file is merged: missing variables are "
        "added, existing values, comments and order kept; a value changes only with --set "
        "or --force (the old file is backed up, mode 0600).",
        "muzo-ops init-env --environment production --non-interactive --set S3_REGION=eu-west-3"))
    env_file(p)
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
    p.set_defaults(func=cmd_init_env)

    p = sub.add_parser("check-env", help="validate an env file",
                       **_help(
        "Check every variable the muzo apps read: presence, format, and the rules between "
        "them. Values come from the file alone so a check is repeatable; "
        "--include-environ layers the process environment on top the way the apps see it "
        "(a set variable wins). Exit 0 ok, 1 errors (or warnings with --strict), 2 "
        "unreadable or malformed file.",
        "muzo-ops check-env --app worker --connect --format json"))
    env_file(p)
    p.add_argument("--app", choices=["web", "worker"], help="check only what this app needs")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.add_argument("--connect", action="store_true",
                   help="also connect to MongoDB and Redis (short timeout)")
    p.add_argument("--timeout", type=_positive, default=5.0, metavar="SECONDS",
                   help="per-connection timeout for --connect (default 5)")
    p.add_argument("--include-environ", action="store_true",
                   help="layer the process environment over the file (it wins)")
    p.set_defaults(func=cmd_check_env)

    p = sub.add_parser("render", help="render .env.example, .env.template and the docs page",
                       **_help(
        "Render the committed files from the schema; --check only compares and exits 1 "
        "when one drifted.", "muzo-ops render --check"))
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    p.add_argument("--root", default=".", metavar="DIR", help="repository root (default: .)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("secrets", help="generate or rotate secrets",
                       **_help("Generate or rotate generated secrets.",
                               "muzo-ops secrets rotate NEXTAUTH_SECRET"))
    ssub = p.add_subparsers(dest="secrets_command", metavar="ACTION", parser_class=_Parser)
    ssub.required = True
    g = ssub.add_parser("generate", help="print a fresh value",
                        **_help("Print a fresh value for a generated secret.",
                                "muzo-ops secrets generate NEXTAUTH_SECRET"))
    g.add_argument("name", nargs="?", default="NEXTAUTH_SECRET", metavar="NAME")
    g.set_defaults(func=cmd_secrets_generate)
    r = ssub.add_parser("rotate", help="replace a secret in the env file",
                        **_help(
        "Replace a generated secret in the env file with a fresh one: backup (0600), "
        "atomic write (0600); the value is never printed.",
        "muzo-ops secrets rotate NEXTAUTH_SECRET --env-file /etc/muzo/.env"))
    r.add_argument("name", metavar="NAME")
    env_file(r)
    r.set_defaults(func=cmd_secrets_rotate)

    _add_worker_commands(sub, env_file)
    return parser

# ------------------------------------------------------------------ worker, jobs, dev-db


def _worker_values(path: str, explicit: bool) -> dict[str, str]:
    """Env values the way the apps see them: the file, with the process environment on top."""
    from muzo_ops import envfile

    if os.path.exists(path) or explicit:
        values = envfile.read(path).values(dict(os.environ))
    else:
        values = dict(os.environ)
    from muzo_ops import checks

    OUT.secrets.update(checks.secret_values(values))
    return values


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio

    from muzo_ops import handlers, worker

    values = _worker_values(args.env_file, args.env_file != DEFAULT_ENV_FILE)
    overrides = {k: v for k, v in {
        "lock_s": args.lock_seconds, "poll_s": args.poll_seconds,
        "drain_timeout_s": args.drain_timeout, "retry_base_s": args.retry_base,
        "retry_cap_s": args.retry_cap}.items() if v is not None}
    if args.no_change_streams:
        overrides["change_streams"] = False
    settings = worker.settings_from_env(values, args.queues, args.concurrency, **overrides)
    loaded = handlers.load(settings.queues, args.handler or [], values)
    runner = worker.Worker(settings, loaded)

    async def main() -> int:
        runner.install_signal_handlers()
        return await runner.run()

    code = asyncio.run(main())
    if runner.handler_threads_alive():
        sys.stdout.flush()
        os._exit(code)  # a plain-function handler still runs; its job was released
    return code


def _jobs_collection(args: argparse.Namespace) -> object:
    from muzo_ops import checks, jobsadmin, schema
    from muzo_ops.errors import ConfigError

    values = _worker_values(args.env_file, args.env_file != DEFAULT_ENV_FILE)
    url = values.get("DATABASE_URL", "")
    problem = checks.value_error(schema.get("DATABASE_URL"), url) if url else "is not set"
    if problem:
        raise ConfigError(f"DATABASE_URL {problem}")
    return jobsadmin.connect(url)


def _print_json(data: object) -> None:
    import json

    OUT.out(json.dumps(data, indent=2, default=str))


def cmd_jobs_status(args: argparse.Namespace) -> int:
    from muzo_ops import jobsadmin

    st = jobsadmin.status(_jobs_collection(args))
    if args.format == "json":
        _print_json(st.to_dict())
        return EXIT_OK
    statuses = ["PENDING", "RUNNING", "DONE", "FAILED"]
    OUT.out(f"{'type':<13}" + "".join(f"{s:>9}" for s in statuses))
    for job_type, counts in st.counts.items():
        OUT.out(f"{job_type:<13}" + "".join(f"{counts.get(s, 0):>9}" for s in statuses))
    age = "none due" if st.oldest_due_pending_s is None else f"{st.oldest_due_pending_s:.1f}s"
    OUT.out(f"oldest due PENDING job: {age}")
    OUT.out(f"PENDING not yet due (retries waiting): {st.future_pending}")
    OUT.out(f"RUNNING past their lock (worker died or stalled): {st.stuck_running}")
    return EXIT_OK


def cmd_jobs_enqueue(args: argparse.Namespace) -> int:
    import json

    from muzo_ops import jobsadmin
    from muzo_ops.jobs import PayloadError

    job_type = _job_type(args.type)
    assert job_type is not None
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--payload is not JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(payload, dict):
        raise UsageError("--payload must be a JSON object")
    from muzo_ops.jobstore import utcnow

    run_at = jobsadmin.parse_run_at(args.run_at, utcnow()) if args.run_at else None
    try:
        job_id = jobsadmin.enqueue(_jobs_collection(args), job_type, payload, run_at, args.max_attempts)
    except PayloadError as exc:
        raise UsageError(str(exc)) from exc
    return _result(args, {"id": job_id, "type": job_type.value, "availableAt": run_at},
                   f"enqueued {job_type.value} job {job_id}")


def _job_type(text: str | None) -> JobType | None:
    """A --type / TYPE argument; UsageError names the choices."""
    from muzo_ops.jobs import JobType

    if text is None:
        return None
    try:
        return JobType(text.strip().upper())
    except ValueError as exc:
        choices = ", ".join(t.value for t in JobType)
        raise UsageError(f"unknown job type {text!r}: use one of {choices}") from exc


def _result(args: argparse.Namespace, data: dict[str, Any], text: str) -> int:
    if args.format == "json":
        _print_json(data)
    else:
        OUT.out(text)
    return EXIT_OK


def cmd_jobs_retry_failed(args: argparse.Namespace) -> int:
    from muzo_ops import jobsadmin

    count = jobsadmin.retry_failed(_jobs_collection(args), _job_type(args.type))
    return _result(args, {"retried": count}, f"{count} FAILED job(s) back to PENDING")


def cmd_jobs_clear_failed(args: argparse.Namespace) -> int:
    from muzo_ops import jobsadmin

    age = jobsadmin.parse_duration(args.older_than)
    count = jobsadmin.clear_failed(_jobs_collection(args), age, _job_type(args.type))
    return _result(args, {"deleted": count}, f"{count} FAILED job(s) older than {args.older_than} deleted")


def cmd_dev_db(args: argparse.Namespace) -> int:
    from muzo_ops import devdb

    return devdb.run(args.port, args.data, OUT.out)


def _add_worker_commands(sub: argparse._SubParsersAction[_Parser],
                         env_file: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("worker", help="run the queue worker", **_help(
        "Process the MongoDB Job collection: one atomic claim per job, a heartbeat while it "
        "runs, fenced writes, retries with back-off, change-stream wake-up (polling "
        "otherwise). Reads DATABASE_URL, WORKER_QUEUES, GENERATION_WORKER_CONCURRENCY, "
        "QUEUE_TRANSACTIONS and LOG_LEVEL from the env file with the process environment on "
        "top. SIGTERM/SIGINT drain running jobs, release the rest and exit 0. Logs are "
        "pino JSON lines on stdout. Works with MongoDB 6.0-8.x.",
        "muzo-ops worker --queues generation,mockup --concurrency 4 "
        "--handler GENERATION=muzo_ops.handlers.demo:echo --handler MOCKUP=muzo_ops.handlers.demo:sleep"))
    env_file(p)
    p.add_argument("--queues", metavar="LIST", help="comma list of generation, mockup, fulfillment "
                   "(default: WORKER_QUEUES, else generation)")
    p.add_argument("--concurrency", type=_positive_int, metavar="N",
                   help="jobs run at once (default: GENERATION_WORKER_CONCURRENCY, else 1)")
    p.add_argument("--handler", action="append", metavar="TYPE=module:callable",
                   help="handler for a job type (repeatable); also MUZO_WORKER_HANDLERS and "
                   "entry points in group muzo_ops.handlers")
    p.add_argument("--lock-seconds", type=_positive, help="lock duration, renewed by heartbeats (default 300)")
    p.add_argument("--poll-seconds", type=_positive, help="poll interval without change streams (default 1)")
    p.add_argument("--drain-timeout", type=_positive, help="seconds to let running jobs finish on stop (default 30)")
    p.add_argument("--retry-base", type=_positive, help="first retry delay in seconds (default 2)")
    p.add_argument("--retry-cap", type=_positive, help="longest retry delay in seconds (default 300)")
    p.add_argument("--no-change-streams", action="store_true",
                   help="poll only, even where the server offers change streams")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("jobs", help="inspect and operate the queue", **_help(
        "Queue operations on DATABASE_URL's Job collection.", "muzo-ops jobs status --format json"))
    jsub = p.add_subparsers(dest="jobs_command", metavar="ACTION", parser_class=_Parser)
    jsub.required = True

    def common(q: argparse.ArgumentParser) -> None:
        env_file(q)
        q.add_argument("--format", choices=["text", "json"], default="text")

    q = jsub.add_parser("status", help="counts by type and status, oldest due job, stuck jobs", **_help(
        "Counts by type and status, the age of the oldest due PENDING job, and RUNNING jobs "
        "past their lock.", "muzo-ops jobs status"))
    common(q)
    q.set_defaults(func=cmd_jobs_status)
    q = jsub.add_parser("enqueue", help="insert a job the way the web app does", **_help(
        "Validate the payload for its type and insert a PENDING job.",
        "muzo-ops jobs enqueue MOCKUP --payload '{\"orderId\": \"o1\", \"outputAssetId\": \"a1\", "
        "\"productVariantId\": \"v1\"}' --run-at +30s"))
    common(q)
    q.add_argument("type", metavar="TYPE", help="GENERATION, MOCKUP or FULFILLMENT")
    q.add_argument("--payload", required=True, metavar="JSON")
    q.add_argument("--run-at", metavar="WHEN", help="ISO 8601 time or +30s / +5m / +2h / +1d")
    q.add_argument("--max-attempts", type=_positive_int, default=3, metavar="N")
    q.set_defaults(func=cmd_jobs_enqueue)
    q = jsub.add_parser("retry-failed", help="put FAILED jobs back to PENDING", **_help(
        "Put FAILED jobs back to PENDING with attempts reset.",
        "muzo-ops jobs retry-failed --type GENERATION"))
    common(q)
    q.add_argument("--type", metavar="TYPE")
    q.set_defaults(func=cmd_jobs_retry_failed)
    q = jsub.add_parser("clear-failed", help="delete old FAILED jobs", **_help(
        "Delete FAILED jobs last updated longer ago than --older-than.",
        "muzo-ops jobs clear-failed --older-than 7d"))
    common(q)
    q.add_argument("--older-than", default="7d", metavar="AGE", help="e.g. 12h, 7d (default 7d)")
    q.add_argument("--type", metavar="TYPE")
    q.set_defaults(func=cmd_jobs_clear_failed)

    p = sub.add_parser("dev-db", help="run a local MongoDB-compatible server (SecantusDB)", **_help(
        "Start SecantusDB (optional extra, GPL-2.0: pip install 'muzo-ops[devdb]') in the "
        "foreground and print the DATABASE_URL for .env.",
        "muzo-ops dev-db --port 27017 --data .muzo-dev-db"))
    p.add_argument("--port", type=_positive_int, default=27017)
    p.add_argument("--data", default=".muzo-dev-db", metavar="DIR")
    p.set_defaults(func=cmd_dev_db)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        code: int = args.func(args)
        return code
    except MuzoOpsError as exc:
        if debug:
            import traceback

            OUT.err(traceback.format_exc())
        OUT.err(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        OUT.err("error: interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # the last line of defence: one line unless --debug
        if type(exc).__module__.startswith(("pymongo", "bson")):
            from muzo_ops.connect import mongo_error_line

            if debug:
                import traceback

                OUT.err(traceback.format_exc())
            OUT.err(f"error: {mongo_error_line(exc)}")
            return EXIT_PROBLEMS
        if debug:
            import traceback

            OUT.err(traceback.format_exc())
        OUT.err(f"error: unexpected {type(exc).__name__}: {exc} (run again with --debug and "
                "report it)")
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_PROBLEMS
