"""TEST-ONLY fault injection: a process sends itself a signal right after a named step.

Inert unless the environment holds ``MUZO_OPS_TEST_STOP_AT`` or
``MUZO_OPS_TEST_STEPS`` when this module is first imported (the tests set
them for a child ``python -m muzo_ops`` only; nothing in production sets
them). Unset, ``step`` is one test of a module global: it costs nothing.

State-changing code calls ``step(NAME)`` right after each step of its
operation (names below, in the order an operation reaches them). With
``MUZO_OPS_TEST_STOP_AT=NAME[#N]:SIGNAL`` (e.g. ``renamed#2:SIGKILL``) the
process raises SIGNAL on itself right after the N-th time (default the
first) it reaches NAME, so a test can stop an operation at every step
boundary in turn, deterministically, and check the operation's invariant
after a rerun. With ``MUZO_OPS_TEST_STEPS=FILE`` each step reached is
appended to FILE as ``NAME#N`` (how a test learns an operation's
boundaries).
"""

from __future__ import annotations

import os

STOP_AT_VARIABLE = "MUZO_OPS_TEST_STOP_AT"
STEPS_VARIABLE = "MUZO_OPS_TEST_STEPS"

# files.atomic.write (every env file, .env.keys, pending file, state file)
TEMP_WRITTEN = "temp-written"  # the new content is fsynced under a temporary name (0600)
BACKUP_LINKED = "backup-linked"  # the old content is linked as <file>.N.bak (keep_backup only)
RENAMED = "renamed"  # the new file is renamed over the old one
FOLDER_SYNCED = "folder-synced"  # the rename is made durable (the write returns)
# files.backups.make (rekey and rollback keep .env.keys first)
BACKUP_MADE = "backup-made"
# secrets.commit and rekey
BACKUPS_PRUNED = "backups-pruned"  # backups beyond --keep are deleted
AUDIT_APPENDED = "audit-appended"  # the audit record is written (fingerprints only)
# secrets.mongo_password (rotate DATABASE_URL)
PASSWORD_CHANGED = "password-changed"  # updateUser answered: the server holds the new password
PASSWORD_CHECKED = "password-checked"  # the new password logged in
PENDING_REMOVED = "pending-removed"  # the pending file is gone: the rotation is over

STEPS = (TEMP_WRITTEN, BACKUP_LINKED, RENAMED, FOLDER_SYNCED, BACKUP_MADE, BACKUPS_PRUNED, AUDIT_APPENDED,
         PASSWORD_CHANGED, PASSWORD_CHECKED, PENDING_REMOVED)

_STOP_AT = os.environ.get(STOP_AT_VARIABLE, "")
_STEPS_FILE = os.environ.get(STEPS_VARIABLE, "")
_ACTIVE = bool(_STOP_AT or _STEPS_FILE)
_reached: dict[str, int] = {}


def step(name: str) -> None:
    """``name`` is done (test-only: see the module doc; nothing happens unless a test asked)."""
    if _ACTIVE:
        _act(name)


def _act(name: str) -> None:
    import signal

    count = _reached[name] = _reached.get(name, 0) + 1
    if _STEPS_FILE:
        with open(_STEPS_FILE, "a", encoding="utf-8") as handle:
            handle.write(f"{name}#{count}\n")
    if not _STOP_AT:
        return
    where, _colon, signal_name = _STOP_AT.partition(":")
    wanted, _hash, nth = where.partition("#")
    if wanted == name and int(nth or 1) == count:
        signal.raise_signal(signal.Signals[signal_name or "SIGKILL"])
