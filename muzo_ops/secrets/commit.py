"""The common end of every change a secrets command makes to an env file.

``commit`` writes the audit record it will append to an intent file
(``<envfile>.audit-pending``, 0600, fingerprints only), writes the new text
through the one writer (``files.atomic``: backup first, then temporary
file, fsync, rename, folder fsync), prunes the backups to ``keep``, appends
the audit record and removes the intent file.

Invariant: once ``commit`` returns, the env file holds the new text and the
newest backup holds the old one; a failure before that leaves the file as
it was (exit 2: nothing changed). Every change that reached the env file is
audited exactly once: when the process dies between the rename and the
audit record, the next command holding the file's lock (``recover``)
appends the record the intent file holds, with its original time; when
the rename never happened, it drops the intent. When the record cannot be
written the change stands and is reported, and the failure is returned
(``audit_error``, exit 1 in the CLI), never raised as if nothing had
changed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from muzo_ops import faults
from muzo_ops.errors import EnvFileError
from muzo_ops.files import atomic, backups, links, reading, temp
from muzo_ops.secrets import audit

INTENT_SUFFIX = ".audit-pending"


@dataclass
class Committed:
    """What ``commit`` did: the backup's path, the pruned backups, an audit failure (one line)."""

    backup: str | None
    pruned: list[str] = field(default_factory=list)
    audit_error: str | None = None


def intent_path(path: str) -> str:
    """Where ``commit`` keeps the audit record of a change until it is in the log (no value in it)."""
    return os.path.realpath(path) + INTENT_SUFFIX


def _failure(exc: audit.AuditError) -> str:
    # the audit error's own "nothing was changed" is about the log; the env file did change
    cause = str(exc).replace("; nothing was changed", "")
    return f"{cause}; the change above was made, but is not in the audit log"


def record(path: str, command: str, changes: Mapping[str, tuple[str | None, str | None]], *,
           extra: Mapping[str, Any] | None = None, fingerprinter: audit.Fingerprinter | None = None,
           now: dt.datetime | None = None) -> str | None:
    """Append the audit record of a change already made; its failure as one line (None: written)."""
    try:
        audit.append(path, command, changes, extra=extra, fingerprinter=fingerprinter, now=now)
    except audit.AuditError as exc:
        return _failure(exc)
    return None


def commit(path: str, new_text: str, *, keep: int, command: str,
           changes: Mapping[str, tuple[str | None, str | None]], extra: Mapping[str, Any] | None = None,
           fingerprinter: audit.Fingerprinter | None = None, now: dt.datetime | None = None) -> Committed:
    """Back up and replace ``path`` with ``new_text``, keep ``keep`` backups, audit ``changes``.

    Call under the env file's lock.
    """
    links.refuse_hard_links(path)  # before the intent: nothing is written for a change that cannot be made
    fingerprinter = fingerprinter or audit.Fingerprinter(path)
    entry = audit.build(path, command, changes, extra={"backup": None, **(extra or {})},
                        fingerprinter=fingerprinter, now=now)
    intent = intent_path(path)
    atomic.write(intent, json.dumps({"record": entry.to_json(), "file": fingerprinter(new_text)}) + "\n",
                 owner_of=path, lock_of=path)
    try:
        backup = atomic.write(path, new_text, keep_backup=True)
    except BaseException:
        with contextlib.suppress(Exception):
            recover(path)  # the rename happened (a signal right after it): audit it; else drop the intent
        raise
    done = Committed(backup, backups.prune(path, keep))
    faults.step(faults.BACKUPS_PRUNED)
    entry.extra["backup"] = os.path.basename(backup) if backup else None
    try:
        audit.append_record(path, entry)
    except audit.AuditError as exc:
        done.audit_error = _failure(exc)  # the intent stays: the next command's ``recover`` retries
        return done
    faults.step(faults.AUDIT_APPENDED)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(intent)
    return done


def _same(a: audit.Record, b: audit.Record) -> bool:
    return (a.time, a.command, a.variables, a.fingerprints, a.user, a.host) == (
        b.time, b.command, b.variables, b.fingerprints, b.user, b.host)


def recover(path: str) -> bool:
    """Finish what a killed ``commit`` left (call under the env file's lock): the intent's record is
    appended when the env file is the text it was made for and the log lacks it; the intent file
    goes. Whether a record was appended. Best effort: a log that cannot be written keeps the intent."""
    intent = intent_path(path)
    temp.remove_stale(intent)  # a copy a writer killed before its rename left
    if not os.path.exists(intent):
        return False
    try:
        data = json.loads(reading.read_text(intent, what="an audit intent"))
        entry = audit.Record.from_json(data["record"])
        current = reading.read_text(path, what="an env file")
    except (EnvFileError, ValueError, KeyError, TypeError):
        with contextlib.suppress(OSError):
            os.unlink(intent)
        return False
    try:
        made = audit.Fingerprinter(path)(current) == data.get("file")  # the rename happened
        appended = made and not any(_same(entry, r) for r in audit.read(path))
        if appended:
            found = backups.numbered(path)  # under the lock, the newest backup is the one the change made
            entry.extra["backup"] = os.path.basename(found[-1][1]) if found else None
            audit.append_record(path, entry)
    except audit.AuditError:
        return False  # the log cannot be read or written: the intent stays for a later command
    with contextlib.suppress(FileNotFoundError):
        os.unlink(intent)
    return appended
