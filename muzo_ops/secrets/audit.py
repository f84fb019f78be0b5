"""The audit log of secret changes: JSON lines beside the env file, never a value.

Each change appends one line to ``.muzo-secrets-audit.jsonl`` in the env
file's folder: time (UTC), user, host, command, env file, variable names and
fingerprints of the old and new values. A fingerprint is HMAC-SHA256 of the
value under a random 32-byte key kept beside the log (``.muzo-secrets-audit.key``,
mode 0600), cut to 12 hex digits: it tells two generations of a secret apart
and matches the same value across hosts sharing the key, while a plain hash
of a weak password could be guessed offline.

Records are keyed by the env file's real name (a symlink is followed), so a
change made through a link and one made through its target share one
trail. The log and the key are written through ``files.atomic`` (locked;
a new one gets the env file's owner, as its backups do).

Invariant of ``append``: the log is its old records plus this whole one, or
its old records; a record is never half-written into the middle of another.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import hmac
import json
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from muzo_ops.errors import EnvFileError, MuzoOpsError
from muzo_ops.files import atomic, temp

LOG_NAME = ".muzo-secrets-audit.jsonl"
KEY_NAME = ".muzo-secrets-audit.key"
FINGERPRINT_HEX = 12
_KEY_BYTES = 32
MAX_RECORD_BYTES = 1 << 20  # a record names a few variables: 1 MiB is far beyond any


class AuditError(MuzoOpsError):
    """The audit log or its key cannot be read or written."""


def _folder(env_path: str) -> str:
    """The env file's real folder: a symlinked env file is audited beside its target."""
    return os.path.dirname(os.path.realpath(env_path))


def log_path(env_path: str) -> str:
    return os.path.join(_folder(env_path), LOG_NAME)


def key_path(env_path: str) -> str:
    return os.path.join(_folder(env_path), KEY_NAME)


def env_file_name(env_path: str) -> str:
    """The name records are keyed by: the env file's real name (through any symlink)."""
    return os.path.basename(os.path.realpath(env_path))


def remove_stale_key_copies(env_path: str) -> None:
    """Delete the temporary copies of the fingerprint key a creator killed before its link left
    (they hold a key); a live creator whose copy goes fills another (``atomic.create_once``)."""
    temp.remove_stale(key_path(env_path))


def _load_or_create_key(path: str, env_path: str) -> bytes:
    """The fingerprint key at ``path``, created on first use (0600, the env file's owner).

    A new key is written to a temporary file and hard-linked into place
    (``files.atomic.create_once``), so a reader never sees a half-written
    key and two first users agree.
    """
    try:  # an existing key stays; create_once also removes temporary copies a killed creator left
        atomic.create_once(path, os.urandom(_KEY_BYTES).hex().encode("ascii") + b"\n",
                           owner_of=os.path.realpath(env_path))
    except EnvFileError as exc:
        raise AuditError(f"{path}: cannot create the fingerprint key: {exc}") from exc
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read(4096).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"{path}: cannot read the fingerprint key: restore it from a backup, "
                         "or delete it (old fingerprints then no longer match)") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != _KEY_BYTES:
        raise AuditError(f"{path}: not a fingerprint key (64 hex digits): restore it from a backup, "
                         "or delete it (old fingerprints then no longer match)")
    return key


class Fingerprinter:
    """HMAC-SHA256 fingerprints under the key beside an env file's audit log."""

    def __init__(self, env_path: str) -> None:
        self._key = _load_or_create_key(key_path(env_path), env_path)

    def __repr__(self) -> str:
        return "Fingerprinter(<key hidden>)"

    def __call__(self, value: str | None) -> str | None:
        """12 hex digits for ``value``; None for a missing or empty value."""
        if not value:
            return None
        digest = hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[:FINGERPRINT_HEX]


def fingerprint(env_path: str, value: str | None) -> str | None:
    """One value's fingerprint (see ``Fingerprinter``)."""
    return Fingerprinter(env_path)(value)


@dataclass
class Record:
    """One audit line. ``fingerprints`` maps a variable to ``{"old": fp, "new": fp}``."""

    command: str
    env_file: str
    variables: list[str]
    fingerprints: dict[str, dict[str, str | None]] = field(default_factory=dict)
    time: str = ""
    user: str = ""
    host: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"time": self.time, "user": self.user, "host": self.host,
                               "command": self.command, "env_file": self.env_file,
                               "variables": self.variables, "fingerprints": self.fingerprints}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        known = {"time", "user", "host", "command", "env_file", "variables", "fingerprints"}
        return cls(command=str(data.get("command", "")), env_file=str(data.get("env_file", "")),
                   variables=[str(v) for v in data.get("variables", [])],
                   fingerprints=dict(data.get("fingerprints", {})), time=str(data.get("time", "")),
                   user=str(data.get("user", "")), host=str(data.get("host", "")),
                   extra={k: v for k, v in data.items() if k not in known})

    @property
    def when(self) -> dt.datetime | None:
        try:
            return dt.datetime.fromisoformat(self.time)
        except ValueError:
            return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def build(env_path: str, command: str, changes: Mapping[str, tuple[str | None, str | None]],
          extra: Mapping[str, Any] | None = None, fingerprinter: Fingerprinter | None = None,
          now: dt.datetime | None = None) -> Record:
    """The record of a change: ``changes`` maps each variable to ``(old value, new value)``; only
    their fingerprints are kept."""
    fingerprinter = fingerprinter or Fingerprinter(env_path)
    return Record(
        command=command, env_file=env_file_name(env_path), variables=list(changes),
        fingerprints={name: {"old": fingerprinter(old), "new": fingerprinter(new)}
                      for name, (old, new) in changes.items()},
        time=(now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
        user=_user(), host=socket.gethostname(), extra=dict(extra or {}),
    )


def append_record(env_path: str, record: Record) -> None:
    """Append ``record`` through ``files.atomic.append_line``: one fsynced ``write`` on a file
    opened with O_APPEND (0600), under the log's lock."""
    line = json.dumps(record.to_json(), sort_keys=False, ensure_ascii=False) + "\n"
    path = log_path(env_path)
    try:
        atomic.append_line(path, line, owner_of=os.path.realpath(env_path))
    except EnvFileError as exc:
        raise AuditError(f"cannot append to the audit log: {exc}") from exc


def append(env_path: str, command: str, changes: Mapping[str, tuple[str | None, str | None]],
           extra: Mapping[str, Any] | None = None, fingerprinter: Fingerprinter | None = None,
           now: dt.datetime | None = None) -> Record:
    """Append one record (``build``, then ``append_record``)."""
    record = build(env_path, command, changes, extra=extra, fingerprinter=fingerprinter, now=now)
    append_record(env_path, record)
    return record


def read_for(env_path: str) -> list[Record]:
    """``secrets log``: the records of an env file that exists; UsageError (exit 2) names a missing one."""
    if not os.path.exists(env_path):
        from muzo_ops.errors import UsageError

        raise UsageError(f"{env_path}: no such env file; give the file whose changes to show (--env-file PATH)")
    return read(env_path)


def _bounded_lines(handle: BinaryIO) -> Iterator[bytes]:
    """The lines of ``handle``, each at most ``MAX_RECORD_BYTES``; a longer line is read past, not kept."""
    while True:
        line = handle.readline(MAX_RECORD_BYTES)
        if not line:
            return
        if len(line) == MAX_RECORD_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # drop the rest of the oversized line
                line = handle.readline(MAX_RECORD_BYTES)
            continue
        yield line


def read(env_path: str, only_this_file: bool = True) -> list[Record]:
    """Every record of the log beside ``env_path`` (of that env file only, by default).

    A line that is not JSON (a crash mid-write on a full disk), not UTF-8,
    or longer than any record (``MAX_RECORD_BYTES``) is skipped: memory stays
    bounded by one record, however large or damaged the log.
    """
    path = log_path(env_path)
    records: list[Record] = []
    try:
        with open(path, "rb") as handle:
            for line in _bounded_lines(handle):
                with contextlib.suppress(ValueError):  # UnicodeDecodeError is a ValueError
                    data = json.loads(line.decode("utf-8"))
                    if isinstance(data, dict):
                        records.append(Record.from_json(data))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the audit log: {exc.strerror}") from exc
    if only_this_file:
        name = env_file_name(env_path)
        records = [r for r in records if r.env_file == name]
    return records


def last_change(env_path: str, variable: str, commands: tuple[str, ...] = ("rotate",)) -> Record | None:
    """The newest record of ``commands`` that changed ``variable`` in this env file."""
    for record in reversed(read(env_path)):
        if record.command in commands and variable in record.variables:
            return record
    return None


def previous_secret_age(env_path: str, current: str, now: dt.datetime | None = None) -> dt.timedelta | None:
    """How long ago ``current`` (e.g. NEXTAUTH_SECRET) was rotated, moving the old one to ``…_PREVIOUS``.

    None when the log has no such rotation. check-env compares this with
    the session lifetime (``rotation.SESSION_LIFETIME``).
    """
    record = last_change(env_path, current)
    when = record.when if record else None
    if when is None:
        return None
    return (now or dt.datetime.now(dt.UTC)) - when


def format_text(records: list[Record]) -> str:
    """``secrets log`` as text, one line a record."""
    lines = []
    for r in records:
        changes = ", ".join(f"{name} {fp.get('old') or '-'}→{fp.get('new') or '-'}"
                            for name, fp in r.fingerprints.items()) or ", ".join(r.variables)
        extra = "".join(f" {k}={v}" for k, v in r.extra.items() if isinstance(v, str | int | float | bool))
        lines.append(f"{r.time} {r.user}@{r.host} {r.command} {r.env_file}: {changes}{extra}")
    return "\n".join(lines) + ("\n" if lines else "")
