"""The grammar of a handler spec (``--handler`` and ``MUZO_WORKER_HANDLERS``): pure string parsing.

Three kinds of spec, after ``TYPE=``:

- ``package.module:callable``: a Python function (the worker imports it);
- ``exec:COMMAND ARG…``: a command run per job, split like a POSIX shell
  would (``shlex``), never run by a shell;
- ``https://host/path`` (or ``http://``): an endpoint POSTed per job.

``MUZO_WORKER_HANDLERS`` holds several entries separated by commas. The
quoting rule: quote like a POSIX shell. A comma inside single quotes,
double quotes or after a backslash does not end an entry, and the same
quotes keep spaces and commas inside one argument of an exec command::

    GENERATION=exec:node run-job.js generation,MOCKUP=exec:node run-job.js "mockup,fast" 'two words'

A ``--handler`` flag holds one entry: its commas are never separators.
Here in ``env`` (below ``queue``) so that ``check-env`` can check the
variable without importing the queue.
"""

from __future__ import annotations

import enum
import re
import shlex
from dataclasses import dataclass
from urllib.parse import urlsplit

from muzo_ops import loopback

JOB_TYPES = ("GENERATION", "MOCKUP", "FULFILLMENT")
EXEC_PREFIX = "exec:"
_PYTHON_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*")
EXAMPLE = "GENERATION=myapp.jobs:generate, GENERATION=exec:node run-job.js generation or GENERATION=https://web/api/jobs"


class SpecKind(enum.StrEnum):
    """How a job type's handler runs."""

    PYTHON = "python"  # package.module:callable
    EXEC = "exec"  # a command per job
    HTTP = "http"  # a POST per job


@dataclass(frozen=True)
class HandlerSpec:
    """One parsed spec: ``target`` is module:callable, the command as written, or the URL."""

    kind: SpecKind
    target: str
    argv: tuple[str, ...] = ()  # exec: the command split like a shell

    @property
    def plain_http(self) -> bool:
        return self.kind is SpecKind.HTTP and self.target.lower().startswith("http://")


class SpecError(ValueError):
    """A spec that cannot be used; the message says why (never quoting a URL's credentials)."""


def parse(text: str) -> HandlerSpec:
    """One spec (what follows ``TYPE=``); SpecError says what is wrong."""
    spec = text.strip()
    if spec.startswith(EXEC_PREFIX):
        command = spec[len(EXEC_PREFIX):].strip()
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:  # "No closing quotation", "No escaped character"
            raise SpecError(f"exec command: {str(exc).lower()}: close the quote or escape it") from exc
        if not argv:
            raise SpecError("exec: names no command: write exec:PROGRAM ARG…")
        return HandlerSpec(SpecKind.EXEC, command, argv)
    lowered = spec.lower()
    if lowered.startswith(("http://", "https://")):
        try:
            parts = urlsplit(spec)
            parts.port  # noqa: B018 (raises ValueError when out of range)
        except ValueError as exc:
            raise SpecError("handler URL has a port that is not a number from 1 to 65535") from exc
        if not parts.hostname:
            raise SpecError("handler URL has no host: write https://host/path")
        if any(c.isspace() for c in spec):
            raise SpecError("handler URL contains a space: percent-encode it (%20)")
        return HandlerSpec(SpecKind.HTTP, spec)
    if "://" in spec:
        raise SpecError("handler URL must start with https:// (or http:// for a local endpoint)")
    module = spec.partition(":")[0]
    if module.startswith(".") and _PYTHON_RE.fullmatch(spec.lstrip(".")):
        raise SpecError(f"{module!r} is not an absolute module path: write it as package.module:callable")
    if not _PYTHON_RE.fullmatch(spec):
        raise SpecError("expected package.module:callable, exec:COMMAND or https://URL")
    return HandlerSpec(SpecKind.PYTHON, spec)


def split_entries(value: str) -> list[str]:
    """``MUZO_WORKER_HANDLERS`` into its entries: commas outside shell quotes separate them.

    Quotes and backslashes stay in each entry (the exec command is split
    later); SpecError for an unclosed quote.
    """
    entries: list[str] = []
    current: list[str] = []
    quote = ""
    i = 0
    while i < len(value):
        char = value[i]
        if quote == "'":
            quote = "" if char == "'" else quote
        elif char == "\\" and i + 1 < len(value) and quote != "'":
            current.append(char)
            i += 1
            char = value[i]
        elif quote == '"':
            quote = "" if char == '"' else quote
        elif char in "'\"":
            quote = char
        elif char == ",":
            entries.append("".join(current))
            current = []
            i += 1
            continue
        current.append(char)
        i += 1
    if quote:
        raise SpecError(f"unclosed {quote} quote: close it (a comma inside quotes does not end an entry)")
    entries.append("".join(current))
    return [entry for entry in entries if entry.strip()]


def parse_entry(entry: str) -> tuple[str, HandlerSpec]:
    """``TYPE=spec`` into (TYPE in upper case, the spec); SpecError says what is wrong."""
    name, sep, spec = entry.partition("=")
    if not sep or not name.strip():
        raise SpecError(f"expected TYPE=SPEC (e.g. {EXAMPLE})")
    job_type = name.strip().upper()
    if job_type not in JOB_TYPES:
        raise SpecError(f"unknown job type {name.strip()[:40]!r}: use one of {', '.join(JOB_TYPES)}")
    return job_type, parse(spec)


def parse_list(value: str) -> list[tuple[str, HandlerSpec]]:
    """Every entry of a ``MUZO_WORKER_HANDLERS`` value, in order; SpecError for the first bad one."""
    return [parse_entry(entry) for entry in split_entries(value)]


def list_error(value: str) -> str | None:
    """Why a ``MUZO_WORKER_HANDLERS`` value is unusable, or None (for check-env)."""
    try:
        parse_list(value)
    except SpecError as exc:
        return f"must be a comma list of TYPE=SPEC: {exc}"
    return None


def insecure_http_error(job_type: str, spec: HandlerSpec) -> str | None:
    """Why ``spec`` would send jobs over plain http to another machine, or None.

    Plain ``http://`` is allowed to a loopback host only (a sidecar on the
    same machine); anything else must be ``https://`` (the payload and the
    job's result would cross the network unencrypted).
    """
    host = urlsplit(spec.target).hostname or ""
    if spec.plain_http and not loopback.is_this_machine(host):
        return (f"{job_type} posts jobs over plain http:// to {host} in production: use https:// "
                "(http:// only to localhost)")
    return None


def production_error(value: str) -> str | None:
    """The production rule for a ``MUZO_WORKER_HANDLERS`` value: the first ``insecure_http_error``, or None."""
    try:
        entries = parse_list(value)
    except SpecError:
        return None  # the value check reports it
    for job_type, spec in entries:
        problem = insecure_http_error(job_type, spec)
        if problem:
            return problem
    return None
