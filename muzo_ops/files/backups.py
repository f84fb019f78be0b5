"""Numbered backups ``<target>.N.bak`` (mode 0600, the file's owner), listed, made and pruned.

Invariant: a backup is the complete file as it was, or absent; two writers
never give two backups one name. A backup is filled under a temporary name
(fsync) and then hard-linked to the next free number, which never
overwrites. Backups of a symlinked file live beside its target.
"""

from __future__ import annotations

import os
import re

from muzo_ops import faults
from muzo_ops.constants import BACKUP_SUFFIX, SECRET_FILE_MODE
from muzo_ops.files import links, reading, temp
from muzo_ops.files.lock import DEFAULT_TIMEOUT_S, locked


def numbered(path: str) -> list[tuple[int, str]]:
    """``(N, path)`` of every ``<target>.N.bak`` (a symlink's target), oldest (lowest N) first."""
    target = os.path.realpath(path)
    folder, name = os.path.split(target)
    pattern = re.compile(re.escape(name) + r"\.([0-9]{1,9})" + re.escape(BACKUP_SUFFIX) + r"\Z")
    found: list[tuple[int, str]] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                match = pattern.match(entry.name)
                # a backup is a regular file this writer made: a symlink (or anything else) under a
                # backup's name is never listed, so rollback never installs what it leads to
                if match and entry.is_file(follow_symlinks=False):
                    found.append((int(match.group(1)), entry.path))
    except FileNotFoundError:
        return []
    return sorted(found)


def link_next(tmp: str, target: str) -> str:
    """Link ``tmp`` as the next free ``target.N.bak`` (highest N + 1); never overwrites."""
    number = max((n for n, _p in numbered(target)), default=0) + 1
    while True:
        name = f"{target}.{number}{BACKUP_SUFFIX}"
        try:
            os.link(tmp, name)
            return name
        except FileExistsError:
            number += 1


def make(path: str, *, lock_timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
    """Keep ``path`` as the next ``<target>.N.bak`` (0600, the file's owner); its path, or None
    when there is no file.

    Holds the file's lock (re-entrant: a caller that holds it already
    keeps it). A failure (disk full) leaves nothing behind.
    """
    target = links.trusted_target(path)
    with locked(path, lock_timeout_s):
        try:
            current = os.stat(target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise temp.write_error(path, exc) from exc
        data = reading.read_bytes(path)
        tmp = None
        try:
            tmp = temp.temp_copy(path, target, data, SECRET_FILE_MODE, current)
            name = link_next(tmp, target)
            temp.fsync_folder(os.path.dirname(target))
            faults.step(faults.BACKUP_MADE)
            return name
        except OSError as exc:
            raise temp.write_error(path, exc) from exc
        finally:
            if tmp is not None:
                temp.unlink_quietly([tmp])


def prune(path: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` backups (they hold old secrets); the deleted paths.

    Call under the file's lock.
    """
    found = numbered(path)
    old = found[:-keep] if keep > 0 else found
    removed = []
    for _n, name in old:
        try:
            os.unlink(name)
        except FileNotFoundError:
            continue
        removed.append(name)
    return removed
