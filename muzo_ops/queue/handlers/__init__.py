"""Job handlers: one per job type, found by name; Python functions, commands (exec) or HTTP endpoints.

A Python handler takes a ``muzo_ops.queue.jobs.Job`` and returns a JSON-able
result or raises (``FatalJobError`` to fail at once, ``RetryJob`` to ask
for a later attempt). It may be a plain function (run in a thread) or a
coroutine function. It never touches the job's status. ``exec:COMMAND``
runs a command per job (``exec_handler``), ``https://…`` POSTs the job
(``http_handler``); both speak ``protocol`` and are coroutine handlers to
the worker. The spec grammar and the env variable's quoting rule live in
``muzo_ops.env.handlerspec`` (check-env reads it too).

Registered, first match wins: ``--handler TYPE=SPEC``, then
``MUZO_WORKER_HANDLERS=GENERATION=pkg.mod:fn,MOCKUP=exec:node run-job.js mockup``,
then the entry-point group ``muzo_ops.handlers`` (entry-point name = job type).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from muzo_ops.constants import HANDLER_KILL_GRACE_S
from muzo_ops.env import handlerspec
from muzo_ops.env.handlerspec import HandlerSpec, SpecError, SpecKind
from muzo_ops.errors import ConfigError
from muzo_ops.queue.jobs import Job, JobType

Handler = Callable[[Job], Any] | Callable[[Job], Awaitable[Any]]
ENTRY_POINT_GROUP = "muzo_ops.handlers"
ENV_VARIABLE = "MUZO_WORKER_HANDLERS"
OWNER_ATTRIBUTE = "muzo_handler"  # on an exec or HTTP handler: its ExecHandler / HttpHandler


@dataclass(frozen=True)
class HandlerOptions:
    """How exec handlers run: their working directory (None: the worker's) and kill grace."""

    cwd: str | None = None
    grace_s: float = HANDLER_KILL_GRACE_S


def _current_folder_importable() -> None:
    """Handler modules in the current folder import without PYTHONPATH=. (as arq does)."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


def resolve(spec: str) -> Handler:
    """Import ``module:callable``; ConfigError says what is wrong."""
    module_name, sep, attr = spec.strip().partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"handler {spec!r}: expected module:callable, e.g. muzo_ops.queue.handlers.demo:echo")
    if module_name.startswith(".") or not all(part.isidentifier() for part in module_name.split(".")):
        raise ConfigError(f"handler {spec}: {module_name!r} is not an absolute module path: write it as "
                          "package.module:callable")
    _current_folder_importable()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"handler {spec}: cannot import {module_name} ({exc.msg})") from exc
    except SyntaxError as exc:
        where = f"{exc.filename} line {exc.lineno}" if exc.filename else module_name
        raise ConfigError(f"handler {spec}: {module_name} has a syntax error ({where}): fix the module") from exc
    except Exception as exc:  # the module's own code failed while importing
        raise ConfigError(f"handler {spec}: importing {module_name} raised {type(exc).__name__}: "
                          "run python -c 'import {module_name}' to see why".replace("{module_name}",
                                                                                   module_name)) from exc
    target: Any = module
    if not all(part.isidentifier() for part in attr.split(".")):
        raise ConfigError(f"handler {spec}: {attr!r} is not a callable's name")
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"handler {spec}: {module_name} has no {attr}")
    if not callable(target):
        raise ConfigError(f"handler {spec}: {attr} is not callable")
    return target  # type: ignore[no-any-return]


def _job_type(name: str, where: str) -> JobType:
    try:
        return JobType(name.strip().upper())
    except ValueError as exc:
        choices = ", ".join(t.value for t in JobType)
        raise ConfigError(f"{where}: unknown job type {name.strip()!r}: use one of {choices}") from exc


def _entry(item: str, where: str) -> tuple[JobType, HandlerSpec]:
    """One ``TYPE=SPEC``: a bad type names ``where``, a bad spec names the spec (as ``resolve`` does)."""
    name, sep, text = item.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"{where}: expected TYPE=SPEC, got {item.strip()[:60]!r} (e.g. {handlerspec.EXAMPLE})")
    job_type = _job_type(name, where)
    try:
        spec = handlerspec.parse(text)
    except SpecError as exc:
        raise ConfigError(f"handler {text.strip()[:100]}: {exc}") from exc
    return job_type, spec


def parse_specs(items: Iterable[str], where: str) -> dict[JobType, HandlerSpec]:
    """``TYPE=SPEC`` items (one entry each, commas included) into {type: spec}."""
    return dict(_entry(item, where) for item in items if item.strip())


def parse_env_value(value: str) -> dict[JobType, HandlerSpec]:
    """``MUZO_WORKER_HANDLERS``: entries separated by commas outside shell quotes."""
    try:
        entries = handlerspec.split_entries(value)
    except SpecError as exc:
        raise ConfigError(f"{ENV_VARIABLE}: {exc}") from exc
    return parse_specs(entries, ENV_VARIABLE)


def from_entry_points() -> dict[JobType, HandlerSpec]:
    from importlib.metadata import entry_points

    out: dict[JobType, HandlerSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        out[_job_type(ep.name, f"entry point {ep.name}")] = HandlerSpec(SpecKind.PYTHON, ep.value)
    return out


def _coroutine_handler(owner: Any, name: str) -> Handler:
    """``owner.run`` as a named coroutine function (the worker awaits it on its loop)."""
    async def handler(job: Job) -> Any:
        return await owner.run(job)

    handler.__qualname__ = handler.__name__ = name
    setattr(handler, OWNER_ATTRIBUTE, owner)
    return handler


def build(job_type: JobType, spec: HandlerSpec, values: Mapping[str, str], options: HandlerOptions) -> Handler:
    """The handler a spec names; ConfigError says what is wrong."""
    if spec.kind is SpecKind.EXEC:
        from muzo_ops.queue.handlers.exec_handler import ExecHandler

        # The command's environment: the worker's env file values plus the process's own.
        environ = {**os.environ, **values}
        return _coroutine_handler(ExecHandler(spec.argv, environ=environ, cwd=options.cwd,
                                              grace_s=options.grace_s), f"exec:{spec.target}")
    if spec.kind is SpecKind.HTTP:
        from muzo_ops.queue.handlers import signing
        from muzo_ops.queue.handlers.http_handler import HttpHandler

        if values.get("NODE_ENV") == "production":
            problem = handlerspec.insecure_http_error(job_type.value, spec)
            if problem:
                raise ConfigError(f"handler of {problem} (NODE_ENV=production)")
        owner = HttpHandler(spec.target, secret=values.get(signing.SECRET_VARIABLE, ""))
        return _coroutine_handler(owner, owner.where)
    return resolve(spec.target)


def owners(handlers: Mapping[JobType, Handler]) -> list[Any]:
    """The exec and HTTP handler objects behind ``handlers`` (each once)."""
    found: dict[int, Any] = {}
    for handler in handlers.values():
        owner = getattr(handler, OWNER_ATTRIBUTE, None)
        if owner is not None:
            found[id(owner)] = owner
    return list(found.values())


def load(types: Iterable[JobType], cli_specs: Iterable[str] = (),
         environ: Mapping[str, str] | None = None, options: HandlerOptions | None = None) -> dict[JobType, Handler]:
    """A handler for every type in ``types``; ConfigError names a type without one.

    ``environ``: the worker's values (its env file with the process environment on
    top): MUZO_WORKER_HANDLERS, the signing secret, and the exec commands' environment.
    """
    values = environ or {}
    specs = from_entry_points()
    specs.update(parse_env_value(values.get(ENV_VARIABLE, "")))
    specs.update(parse_specs(cli_specs, "--handler"))
    handlers: dict[JobType, Handler] = {}
    for job_type in types:
        spec = specs.get(job_type)
        if spec is None:
            raise ConfigError(
                f"queue {job_type.queue} is enabled but has no handler: pass --handler "
                f"{job_type.value}=module:callable (or exec:COMMAND, or https://URL), set {ENV_VARIABLE}, "
                f"or register an entry point in group {ENTRY_POINT_GROUP}"
            )
        handlers[job_type] = build(job_type, spec, values, options or HandlerOptions())
    return handlers
