"""The common end of every change a secrets command makes to an env file.

``commit`` writes the new text through the one writer (``files.atomic``:
backup first, then temporary file, fsync, rename, folder fsync), prunes the
backups to ``keep`` and appends the audit record.

Invariant: once ``commit`` returns, the env file holds the new text and the
newest backup holds the old one; a failure before that leaves the file as
it was (exit 2: nothing changed). The audit record comes last: when it
cannot be written the change stands and is reported, and the failure is
returned (``audit_error``, exit 1 in the CLI), never raised as if nothing
had changed.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from muzo_ops.files import atomic, backups
from muzo_ops.secrets import audit


@dataclass
class Committed:
    """What ``commit`` did: the backup's path, the pruned backups, an audit failure (one line)."""

    backup: str | None
    pruned: list[str] = field(default_factory=list)
    audit_error: str | None = None


def record(path: str, command: str, changes: Mapping[str, tuple[str | None, str | None]], *,
           extra: Mapping[str, Any] | None = None, fingerprinter: audit.Fingerprinter | None = None,
           now: dt.datetime | None = None) -> str | None:
    """Append the audit record of a change already made; its failure as one line (None: written)."""
    try:
        audit.append(path, command, changes, extra=extra, fingerprinter=fingerprinter, now=now)
    except audit.AuditError as exc:
        # the audit error's own "nothing was changed" is about the log; the env file did change
        cause = str(exc).replace("; nothing was changed", "")
        return f"{cause}; the change above was made, but is not in the audit log"
    return None


def commit(path: str, new_text: str, *, keep: int, command: str,
           changes: Mapping[str, tuple[str | None, str | None]], extra: Mapping[str, Any] | None = None,
           fingerprinter: audit.Fingerprinter | None = None, now: dt.datetime | None = None) -> Committed:
    """Back up and replace ``path`` with ``new_text``, keep ``keep`` backups, audit ``changes``.

    Call under the env file's lock.
    """
    backup = atomic.write(path, new_text, keep_backup=True)
    done = Committed(backup, backups.prune(path, keep))
    details = {"backup": os.path.basename(backup) if backup else None, **(extra or {})}
    done.audit_error = record(path, command, changes, extra=details, fingerprinter=fingerprinter, now=now)
    return done
