"""Job handlers: one callable per job type, found by name.

A handler takes a ``muzo_ops.queue.jobs.Job`` and returns a JSON-able result or
raises (``FatalJobError`` to fail at once). It may be a plain function (run
in a thread) or a coroutine function. It never touches the job's status.

Registered, first match wins: ``--handler TYPE=module:callable``, then
``MUZO_WORKER_HANDLERS=GENERATION=pkg.mod:fn,MOCKUP=…``, then the entry-point
group ``muzo_ops.handlers`` (entry-point name = job type).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from muzo_ops.errors import ConfigError
from muzo_ops.queue.jobs import Job, JobType

Handler = Callable[[Job], Any] | Callable[[Job], Awaitable[Any]]
ENTRY_POINT_GROUP = "muzo_ops.handlers"
ENV_VARIABLE = "MUZO_WORKER_HANDLERS"


def resolve(spec: str) -> Handler:
    """Import ``module:callable``; ConfigError says what is wrong."""
    module_name, sep, attr = spec.strip().partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"handler {spec!r}: expected module:callable, e.g. muzo_ops.queue.handlers.demo:echo")
    if module_name.startswith(".") or not all(part.isidentifier() for part in module_name.split(".")):
        raise ConfigError(f"handler {spec}: {module_name!r} is not an absolute module path: write it as "
                          "package.module:callable")
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


def parse_specs(items: Iterable[str], where: str) -> dict[JobType, str]:
    """``TYPE=module:callable`` items into {type: spec}."""
    out: dict[JobType, str] = {}
    for item in items:
        if not item.strip():
            continue
        name, sep, spec = item.partition("=")
        if not sep:
            raise ConfigError(f"{where}: expected TYPE=module:callable, got {item.strip()!r}")
        out[_job_type(name, where)] = spec.strip()
    return out


def from_entry_points() -> dict[JobType, str]:
    from importlib.metadata import entry_points

    out: dict[JobType, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        out[_job_type(ep.name, f"entry point {ep.name}")] = ep.value
    return out


def load(types: Iterable[JobType], cli_specs: Iterable[str] = (),
         environ: Mapping[str, str] | None = None) -> dict[JobType, Handler]:
    """A handler for every type in ``types``; ConfigError names a type without one."""
    specs = from_entry_points()
    env_value = (environ or {}).get(ENV_VARIABLE, "")
    specs.update(parse_specs(env_value.split(","), ENV_VARIABLE))
    specs.update(parse_specs(cli_specs, "--handler"))
    handlers: dict[JobType, Handler] = {}
    for job_type in types:
        spec = specs.get(job_type)
        if spec is None:
            raise ConfigError(
                f"queue {job_type.queue} is enabled but has no handler: pass --handler "
                f"{job_type.value}=module:callable, set {ENV_VARIABLE}, or register an "
                f"entry point in group {ENTRY_POINT_GROUP}"
            )
        handlers[job_type] = resolve(spec)
    return handlers
