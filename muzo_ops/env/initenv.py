"""``init-env``: a working ``.env`` for a new developer or server.

New file: rendered from ``templates/env.j2`` with generated secrets and the
environment's defaults. Existing file: merged, never clobbered: missing
variables are appended, existing values, comments and order are kept, and a
value changes only with ``--set`` (or ``--force`` for defaults and generated
secrets). The old file is kept as a 0600 backup whenever it changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from muzo_ops.constants import EXAMPLE_ENV_FILE, SECRET_FILE_MODE
from muzo_ops.env import checks, envfile, schema
from muzo_ops.env import generate as secretgen
from muzo_ops.env.schema import Environment, Variable
from muzo_ops.errors import EnvFileError, MuzoOpsError, SchemaError, UsageError
from muzo_ops.files import atomic, reading, temp
from muzo_ops.files.lock import DEFAULT_TIMEOUT_S, locked
from muzo_ops.redact.redactor import secret_values, shaped_secrets
from muzo_ops.redact.shapes import hides_shaped_secret

Prompt = Callable[[Variable], str]


@dataclass
class InitResult:
    """What ``init-env`` did; names only, never values."""

    path: str
    created: bool  # the file did not exist
    written: bool  # the file was (re)written
    added: list[str] = field(default_factory=list)  # variables appended or rendered
    changed: list[str] = field(default_factory=list)  # existing values replaced
    generated: list[str] = field(default_factory=list)  # secrets generated
    missing: list[str] = field(default_factory=list)  # required, still without a value
    backup: str | None = None  # path of the backup of the old file
    example: str | None = None  # the .env.example written beside it
    tightened: bool = False  # an existing file's mode was narrowed to 0600
    environment: Environment = Environment.DEVELOPMENT  # the defaults used
    development_values: list[str] = field(default_factory=list)  # production: still development values


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings into a dict, each checked against the schema.

    Sensitive variables are refused: a command line is visible in ``ps``
    and shell history (use ``--set-stdin NAME`` or the prompt instead).
    """
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:  # the text is not echoed: it may be a pasted secret
            raise UsageError(f"--set argument {pairs.index(pair) + 1} is not KEY=VALUE (its text is not "
                             "shown: it may be a secret): write --set NAME=value, and secrets with "
                             "--set-stdin NAME")
        var = known_variable(name)
        if shaped_secrets(value) or hides_shaped_secret(value):  # percent-encoded too
            raise UsageError(f"--set {name}: the value looks like a secret key, which does not belong in "
                             f"{name} nor on a command line (ps and shell history show it): check the "
                             "variable, and pass secrets with --set-stdin NAME")
        url_without_password = var.kind in (schema.Kind.MONGO_URL, schema.Kind.REDIS_URL) and not (
            secret_values({name: value}))
        if var.sensitive and not url_without_password:
            raise UsageError(
                f"--set {name}: secrets are not taken on the command line (ps and shell "
                f"history would show them): use --set-stdin {name}, or run on a terminal "
                "to be prompted"
            )
        out[name] = value
    return out


def known_variable(name: str) -> Variable:
    var = schema.BY_NAME.get(name)
    if var is None:
        import difflib

        close = difflib.get_close_matches(name, list(schema.BY_NAME), n=1, cutoff=0.6)
        hint = f": did you mean {close[0]}?" if close else ": see docs/ENVIRONMENT_VARIABLES.md"
        raise SchemaError(f"{name} is not a muzo variable{hint}")
    return var


def validate_supplied(values: Mapping[str, str]) -> None:
    """Refuse supplied values that break their rule (the message names no value)."""
    for name, value in values.items():
        var = known_variable(name)
        if value == "":
            continue
        problem = checks.value_error(var, value)
        if problem:
            raise UsageError(f"{name} {problem}")
        envfile.encode_value(name, value)


def _initial_value(var: Variable, environment: Environment, generated: list[str]) -> str | None:
    if var.generator is not None:
        generated.append(var.name)
        return secretgen.generate(var.generator)
    return var.default_for(environment)


def init_env(
    path: str,
    environment: Environment | None = None,
    supplied: Mapping[str, str] | None = None,
    force: bool = False,
    prompt: Prompt | None = None,
    write_example: bool = True,
    lock_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> InitResult:
    """Create or complete the env file at ``path``; see the module doc.

    The whole read-modify-write holds the env file's lock (``<file>.lock``):
    a concurrent writer waits up to ``lock_timeout_s``, then LockedError.
    Invariant (``files.atomic.write``): the env file is the complete old or
    the complete new file, and a changed file's old content is its newest
    0600 backup.
    """
    supplied = dict(supplied or {})
    validate_supplied(supplied)
    with locked(path, lock_timeout_s):
        temp.remove_stale(path)
        return _init_locked(path, environment, supplied, force, prompt, write_example)


def _init_locked(path: str, environment: Environment | None, supplied: dict[str, str], force: bool,
                 prompt: Prompt | None, write_example: bool) -> InitResult:
    existing = envfile.read(path) if os.path.exists(path) else None
    current = existing.raw() if existing else {}
    result = InitResult(path=path, created=existing is None, written=False)
    if environment is None:  # --set NODE_ENV=production means production, as the file's NODE_ENV does
        node_env = supplied.get("NODE_ENV") or current.get("NODE_ENV")
        environment = Environment.PRODUCTION if node_env == "production" else Environment.DEVELOPMENT
    result.environment = environment

    final: dict[str, str] = {}
    changes: dict[str, str] = {}
    for var in schema.VARIABLES:
        name = var.name
        if name in supplied:
            value: str | None = supplied[name]
        elif name in current and current[name] != "" and not force:
            final[name] = current[name]
            continue
        else:
            value = _initial_value(var, environment, result.generated)
            if value is None and name in current:
                final[name] = current[name]
                if current[name]:
                    continue
        if (value is None or value == "") and var.required and prompt is not None:
            value = prompt(var)
        if value is None:
            if not var.required:
                continue
            value = ""
        final[name] = value
        if name in current:
            if current[name] != value:
                changes[name] = value
                result.changed.append(name)
        else:
            result.added.append(name)
    result.generated = [n for n in result.generated if n in result.added or n in result.changed]
    result.missing = [v.name for v in schema.VARIABLES
                      if v.required and (not final.get(v.name) or checks.is_placeholder(v, final[v.name]))]
    if environment is Environment.PRODUCTION:
        result.development_values = [v.name for v in schema.VARIABLES
                                     if final.get(v.name) and _is_development_value(v, final[v.name])]

    if existing is None:
        text = _render_new(final, environment)
    else:
        additions = [_addition(schema.BY_NAME[n], final[n]) for n in result.added]
        if additions:
            additions.insert(0, "# ===== Added by muzo-ops init-env =====\n")
        text = keep_encrypted(envfile.with_lines(existing, envfile.value_lines(changes), additions), path)
        if text == existing.text():
            text = ""
    if text:
        _refuse_unreadable_size(path, text)
        result.backup = atomic.write(path, text, keep_backup=existing is not None)
        result.written = True
    elif existing is not None and os.stat(path).st_mode & 0o077:
        _tighten(path)
        result.tightened = True
    if write_example:
        result.example = _write_example(path)
    return result


def keep_encrypted(text: str, path: str) -> str:
    """``text`` with its sensitive values encrypted when the file is a dotenvx-encrypted one.

    A file with a ``DOTENV_PUBLIC_KEY…`` header stays encrypted through every
    write: a value a writer changed or added is encrypted for that public key
    (no private key is needed). Other files are returned as they are.
    """
    from muzo_ops.env import dotenvx

    if dotenvx.PUBLIC_KEY_NAME not in text or dotenvx.file_public_key(text) is None:
        return text
    return dotenvx.encrypt_text(text, path, schema.is_sensitive).text


def _is_development_value(var: Variable, value: str) -> bool:
    """Whether ``value`` is ``var``'s development default (where production's differs) or names
    this machine (localhost, a loopback address)."""
    if var.dev_default is not None and value == var.dev_default and var.prod_default != value:
        return True
    if var.kind in (schema.Kind.URL, schema.Kind.HTTPS_URL, schema.Kind.MONGO_URL, schema.Kind.REDIS_URL,
                    schema.Kind.EMAIL) or var.name == "EMAIL_SERVER_HOST":
        return any(checks.is_local_host(h) for h in checks.hosts_of(var, value))
    return False


def _tighten(path: str) -> None:
    """Drop group and other bits of ``path``'s target (owner and group unchanged)."""
    from muzo_ops.errors import EnvFileError

    try:
        os.chmod(path, (os.stat(path).st_mode & 0o700) or SECRET_FILE_MODE)
    except OSError as exc:
        raise EnvFileError(path, f"is readable by others and cannot be narrowed to 0600 "
                           f"({exc.strerror}): run chmod 600 as its owner") from exc


def _render_new(values: Mapping[str, str], environment: Environment) -> str:
    from muzo_ops.env import render

    return render.render_env(values, environment)


def _addition(var: Variable, value: str) -> str:
    from muzo_ops.env import dotenvx

    return dotenvx.LineWriter("").addition(var.name, value)  # plain: keep_encrypted encrypts it after


def _refuse_unreadable_size(path: str, text: str) -> None:
    """Invariant: init-env never writes a file that muzo-ops would refuse to read (over
    reading.MAX_FILE_BYTES); nothing is written and the message names no value."""
    size = len(text.encode("utf-8"))
    if size > reading.MAX_FILE_BYTES:
        raise EnvFileError(path, f"would be {size} bytes, over the {reading.MAX_FILE_BYTES // 1024} KiB an env file "
                           "may have (check-env and init-env refuse larger files): nothing written; "
                           "shorten the value you set")


def _write_example(env_path: str) -> str | None:
    from muzo_ops.env import render

    folder = os.path.dirname(os.path.abspath(env_path))
    target = os.path.join(folder, EXAMPLE_ENV_FILE)
    if os.path.abspath(target) == os.path.abspath(env_path):
        return None
    text = render.render_committed(EXAMPLE_ENV_FILE)
    temp.remove_stale(target)  # a killed init-env's (this runs under the env file's lock)
    try:
        if reading.read_text_or_none(target) == text:
            return target
    except MuzoOpsError:
        pass  # unreadable: rewritten
    atomic.write(target, text, mode=0o644, owner_of=env_path, lock_of=env_path)
    return target
