"""Environment variables: the schema, env files, checks, rendering, ``init-env``.

Library entry points (what the CLI, the deploy and the secrets commands call):

- ``check_file(path, ...)``: the whole of ``check-env`` for one file, probes included.
- ``check_values(values, ...)``: the same checks on values that never touch a file.
- ``worker_values(path, explicit)``: the values a worker process sees.

Importing this package is light: pymongo and redis are imported only by
``--connect`` probes, jinja2 only by rendering.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from muzo_ops.constants import CONNECT_TIMEOUT_S, DOTENVX_ENCRYPTED_PREFIX

if TYPE_CHECKING:
    import datetime as dt

    from muzo_ops.env.problems import Report
    from muzo_ops.env.schema import App
    from muzo_ops.redact.redactor import Redactor

Progress = Callable[[str], None]
# When the current secret ``name`` was last rotated, as a time ago (None: unknown); the caller
# above env reads it from the secrets' audit log (env never imports secrets).
SecretAge = Callable[[str], "dt.timedelta | None"]


def decrypt(values: Mapping[str, str], path: str, text: str | None = None) -> tuple[dict[str, str], list[str]]:
    """``values`` with dotenvx-encrypted ones decrypted, and the names left encrypted.

    The private key comes from the environment (``DOTENV_PRIVATE_KEY[_ENV]``)
    or ``.env.keys`` beside ``path``; with none, encrypted values stay as
    they are and are named. DecryptionError (exit 2, one line naming the
    variable) for a wrong key or a tampered value. The crypto libraries are
    imported only when a value is encrypted.
    """
    if not any(v.startswith(DOTENVX_ENCRYPTED_PREFIX) for v in values.values()):
        return dict(values), []  # the common case: nothing to decrypt, the reader is not even imported
    from muzo_ops.env import dotenvx

    return dotenvx.decrypted_values(values, path, text, os.environ)


def check_values(values: Mapping[str, str], app: App | None = None, *, raw: Mapping[str, str] | None = None,
                 bare_keys: tuple[str, ...] = (), duplicates: tuple[str, ...] = (), connect: bool = False,
                 timeout_s: float = CONNECT_TIMEOUT_S, progress: Progress | None = None,
                 bare_lines: tuple[int, ...] = (), production: bool | None = None,
                 environ_empty: tuple[str, ...] = (), sources: Mapping[str, str] | None = None,
                 encrypted: tuple[str, ...] = (), waivers: Mapping[str, str] | None = None,
                 secret_age: SecretAge | None = None) -> Report:
    """Check env ``values`` against the schema and its rules; with ``connect``, reach the servers.

    ``raw`` (a file's values before expansion) enables the ``$name`` check;
    ``bare_lines`` (or the older ``bare_keys``) and ``duplicates`` come from a parsed file. ``progress``
    receives a line before each server is tried. ``production`` (None: from
    NODE_ENV) turns on the production rules; ``environ_empty`` and
    ``sources`` come from layering the process environment over a file;
    ``encrypted`` names values no key could decrypt (counted as set, not checked).
    ``waivers`` (code → reason, e.g. from ``deploy --allow``) accept problems on
    record on top of the values' own ``MUZO_CHECK_WAIVERS``: a waived problem
    stays in the report, marked, and never fails it; UsageError (exit 2) for
    an unknown code or a waiver without a reason. ``secret_age`` (the audit
    log's answer, from the caller) enables the "previous secret kept too
    long" rule.
    """
    from muzo_ops.env import checks

    report = checks.check(values, app, bare_keys=bare_keys, duplicates=duplicates, raw=raw,
                          bare_lines=bare_lines, production=production, environ_empty=environ_empty,
                          sources=sources, encrypted=encrypted, waivers=waivers, secret_age=secret_age)
    if connect:
        report.connections = _probe(report, values, app, timeout_s, progress)
    return report


def check_file(path: str, app: App | None = None, include_environ: bool = False, connect: bool = False,
               timeout_s: float = CONNECT_TIMEOUT_S, progress: Progress | None = None,
               redactor: Redactor | None = None, production: bool | None = None,
               waivers: Mapping[str, str] | None = None,
               secret_ages: Callable[[str], SecretAge] | None = None) -> Report:
    """``check-env`` for the env file at ``path``: format, rules, file mode, and probes.

    With ``include_environ`` the process environment is layered on top (a
    set variable wins), as the apps see it, and the report says where each
    value came from. Every secret read is added to ``redactor`` before
    anything is checked. ``production`` True applies the production rules
    whatever NODE_ENV says (``--environment production``). ``waivers`` as
    for ``check_values`` (the file's ``MUZO_CHECK_WAIVERS`` apply too);
    ``secret_ages(path)`` gives the ``secret_age`` of this file (the CLI
    passes the audit log's reader). EnvFileError (exit 2) for an
    unreadable, oversized or malformed file.
    """
    from muzo_ops.env import checks, envfile, schema

    env = envfile.read(path)
    raw = env.raw()
    environ = dict(os.environ) if include_environ else None
    values, encrypted = decrypt(env.values(environ), path, env.text())
    if redactor is not None:
        redactor.add_values(raw)
        redactor.add_values(values)
    sources: dict[str, str] | None = None
    environ_empty: tuple[str, ...] = ()
    if environ is not None:
        from_file = env.values()
        sources = {name: "environment" if name in environ else "file"
                   for name in schema.BY_NAME if name in environ or name in from_file}
        environ_empty = tuple(name for name in schema.BY_NAME
                              if environ.get(name) == "" and from_file.get(name, "") != "")
    report = check_values(values, app, raw=raw, bare_lines=tuple(env.bare_lines()),
                          duplicates=tuple(env.duplicates()), connect=False, production=production,
                          environ_empty=environ_empty, sources=sources, encrypted=tuple(encrypted),
                          waivers=waivers, secret_age=secret_ages(path) if secret_ages is not None else None)
    checks.check_file_mode(report, path, os.stat(path).st_mode)
    if connect:
        report.connections = _probe(report, values, app, timeout_s, progress)
    return report


def _probe(report: Report, values: Mapping[str, str], app: App | None, timeout_s: float,
           progress: Progress | None) -> list[tuple[bool, str]]:
    """Reach MongoDB and Redis; a line per server, and an error in ``report`` for each failure."""
    from muzo_ops.env import probes, schema
    from muzo_ops.env.problems import Severity

    lines: list[tuple[bool, str]] = []
    for name, label, probe in (("DATABASE_URL", "MongoDB", probes.check_mongo),
                               ("REDIS_URL", "Redis", probes.check_redis)):
        if not schema.get(name).needed_by(app):
            continue
        if any(p.variable == name and p.code in ("missing", "invalid", "placeholder") for p in report.errors):
            lines.append((False, f"{name}: not tried (fix the value first)"))
            continue
        if progress is not None:
            progress(f"… connecting to {label} (timeout {timeout_s:g}s)")
        outcome = probe(values[name], timeout_s)
        lines.append((outcome.ok, outcome.message))
        for warning in outcome.warnings:
            report.add(name, Severity.WARNING, "mongo-url-ignored", warning, special=True)
        if not outcome.ok:
            report.add(name, Severity.ERROR, outcome.code, outcome.message, special=True)
    return lines


def database_url(values: Mapping[str, str]) -> str:
    """DATABASE_URL from ``values``, checked; ConfigError (one line) when unset or invalid."""
    from muzo_ops.env import schema
    from muzo_ops.env import values as value_rules
    from muzo_ops.errors import ConfigError

    url = values.get("DATABASE_URL", "")
    if not url:
        raise ConfigError("DATABASE_URL is not set: the worker and the jobs commands need MongoDB "
                          "(see muzo-ops init-env)")
    problem = value_rules.value_error(schema.get("DATABASE_URL"), url)
    if problem:
        raise ConfigError(f"DATABASE_URL {problem}")
    return url


def worker_values(path: str, explicit: bool) -> dict[str, str]:
    """The values a worker sees: the env file with the process environment on top.

    When the file is the default one (``explicit`` False) and absent, the
    environment alone (a container or systemd unit that sets variables).
    """
    from muzo_ops.env import envfile

    if os.path.exists(path) or explicit:
        env = envfile.read(path)
        values, encrypted = decrypt(env.values(dict(os.environ)), path, env.text())
        if encrypted:
            from muzo_ops.errors import ConfigError

            raise ConfigError(f"{path}: {', '.join(encrypted)} encrypted and no private key found: set "
                              "DOTENV_PRIVATE_KEY… in the environment or put .env.keys beside the file")
        return values
    return dict(os.environ)
