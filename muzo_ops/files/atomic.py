"""The one writer of every file muzo_ops writes: locked, atomic, owner and mode kept.

Env files, ``.env.keys``, backups, the audit log's key, pending rotation
files, swap state and rendered files all go through ``write``; the audit
log through ``append_line``; backups through ``files.backups``.

Invariant of ``write``: at every instant (a kill -9 at any step, a full or
read-only disk) the file is the complete old content or the complete new
one, never a mix; a backup made with it is complete or absent; a file
with other hard links is refused, unchanged (the rename would leave the
other names the old content, see ``links.refuse_hard_links``); the new
content has the old file's owner, group and mode (secrets never looser
than 0600), or, for a new file, the owner of the file it belongs beside.
The steps: lock, temporary file in the target's folder (0600 from its
first byte, filled, fsynced, given owner and mode), backup link, rename
over the target, fsync of the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable

from muzo_ops import faults
from muzo_ops.constants import SECRET_FILE_MODE
from muzo_ops.errors import EnvFileError
from muzo_ops.files import backups, links, reading, temp
from muzo_ops.files.lock import DEFAULT_TIMEOUT_S, locked

_CREATE_ATTEMPTS = 5


def _final_mode(requested: int, current: int | None) -> int:
    """The mode a rewritten file gets: its current one (never looser than 0600 for secrets)."""
    if current is None:
        return requested
    if requested & 0o077:
        return current
    return current & ~0o077


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def write(path: str, content: str | bytes, mode: int = SECRET_FILE_MODE, *, keep_backup: bool = False,
          owner_of: str | None = None, lock_of: str | None = None,
          lock_timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
    """Write ``content`` to ``path`` atomically; with ``keep_backup`` keep the old file as the next
    ``<target>.N.bak`` first. Returns the backup's path (None without one).

    Holds the lock of ``lock_of`` (default ``path``; re-entrant, so a caller
    holding it for a whole read-modify-write keeps it). A symlink is written
    through: its target is replaced, through a temporary file in the
    target's own folder. An existing file keeps its owner, group and mode
    (for secret files never looser than 0600); a new file gets ``mode`` and
    the owner and group of ``owner_of`` when given (root writing beside
    another user's env file). A writer that cannot keep the owner is
    refused. Any failure is one EnvFileError line, with the file as it was.
    """
    if not isinstance(content, str | bytes):
        raise TypeError(f"content must be str or bytes, not {type(content).__name__}")
    data = content.encode("utf-8") if isinstance(content, str) else content
    target = links.trusted_target(path)
    folder = os.path.dirname(target)
    with locked(lock_of or path, lock_timeout_s, owner_of=owner_of):
        try:
            current = _stat_or_none(target)
            owner = current if current is not None else (_stat_or_none(owner_of) if owner_of else None)
        except OSError as exc:
            raise temp.write_error(path, exc) from exc
        if current is not None and not stat.S_ISREG(current.st_mode):
            raise EnvFileError(path, "is not a regular file: point --env-file at the env file")
        if current is not None:
            links.refuse_hard_links(path, current)
        final_mode = _final_mode(mode, stat.S_IMODE(current.st_mode) if current else None)
        made: list[str] = []  # removed again if anything fails
        temps: list[str] = []  # removed in any case
        backup_path = None
        new_inode = -1
        try:
            try:
                tmp = temp.temp_copy(path, target, data, final_mode, owner, new=current is None)
                made.append(tmp)
                new_inode = os.stat(tmp).st_ino
                faults.step(faults.TEMP_WRITTEN)
                if keep_backup and current is not None:
                    old_tmp = temp.temp_copy(path, target, reading.read_bytes(target), SECRET_FILE_MODE,
                                             current)
                    temps.append(old_tmp)
                    backup_path = backups.link_next(old_tmp, target)
                    made.append(backup_path)
                    faults.step(faults.BACKUP_LINKED)
                os.replace(tmp, target)
                made.clear()  # the new file is in place: its backup stays whatever happens next
                faults.step(faults.RENAMED)
                temp.fsync_folder(folder)
                faults.step(faults.FOLDER_SYNCED)
            except BaseException:
                # a signal (SIGINT) between the rename and made.clear(): the new file is in place,
                # and its backup (the old file) must stay
                placed = _stat_or_none(target)
                if not (placed is not None and made and placed.st_ino == new_inode):
                    temp.unlink_quietly(made)
                raise
        except OSError as exc:
            raise temp.write_error(path, exc) from exc
        finally:
            temp.unlink_quietly(temps)
        return backup_path


def update(path: str, change: Callable[[str], str], mode: int = SECRET_FILE_MODE, *,
           owner_of: str | None = None, lock_timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Read-modify-write ``path`` under its lock: ``change`` gets the text ("" for no file) and
    returns the new text. Whether the file changed.

    Two writers of one file (two ``secrets encrypt`` sharing ``.env.keys``)
    each see the other's change.
    """
    with locked(path, lock_timeout_s, owner_of=owner_of):
        temp.remove_stale(path)
        old = reading.read_text_or_none(path)
        new = change(old or "")
        if old is not None and new == old:
            return False
        write(path, new, mode, owner_of=owner_of)
        return True


def create_once(path: str, content: bytes, mode: int = SECRET_FILE_MODE, *, owner_of: str | None = None) -> bool:
    """Create ``path`` with ``content`` unless it exists (then leave it): whether this call made it.

    Filled and fsynced under a temporary name, then hard-linked into
    place: a reader never sees it half-written, and when two first users
    race the link decides (the loser's copy is dropped), so no lock is
    needed and both use one content. Temporary copies that creators killed
    before their link left (they hold the content) are removed by every
    call (``temp.remove_stale``); a live racer whose copy went that way
    fills another.
    """
    target = links.trusted_target(path)
    made = False
    try:
        temp.remove_stale(target)
        owner = _stat_or_none(owner_of) if owner_of else None
        for _attempt in range(_CREATE_ATTEMPTS):
            if os.path.lexists(target):
                break
            tmp = temp.temp_copy(path, target, content, mode, owner, new=True)
            try:
                os.link(tmp, target)
                made = True
            except FileExistsError:
                break
            except FileNotFoundError:
                continue  # our copy was removed as stale by a concurrent call: fill another
            finally:
                temp.unlink_quietly([tmp])
            temp.fsync_folder(os.path.dirname(target))
            break
        else:
            raise FileNotFoundError(errno.ENOENT, "its temporary file kept vanishing", target)
    except OSError as exc:
        raise temp.write_error(path, exc) from exc
    return made


def append_line(path: str, line: str, *, owner_of: str | None = None,
                lock_timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Append ``line`` (ending in a newline) to ``path`` (created 0600), in one fsynced ``write``.

    Invariant: the file is its old lines plus this whole line, or its old
    lines (plus, after a crash on a full disk, a torn last line that the
    next append sets apart on its own line). Holds the file's lock. A file
    this call creates gets the owner of ``owner_of``.
    """
    with locked(path, lock_timeout_s, owner_of=owner_of):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
                         SECRET_FILE_MODE)
        except OSError as exc:
            raise temp.write_error(path, exc) from exc
        try:
            owner = _stat_or_none(owner_of) if owner_of else None
            info = os.fstat(fd)
            if owner is not None and (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid()):
                with contextlib.suppress(EnvFileError):  # ours: it belongs to the env file's owner
                    temp.give_owner(fd, path, owner, new=True)
            size = info.st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # a line torn by a crash stays apart from this one
            data = memoryview(line.encode("utf-8"))
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, "short write (the disk is full)")
            os.fsync(fd)
        except EnvFileError:
            raise
        except OSError as exc:
            raise temp.write_error(path, exc) from exc
        finally:
            os.close(fd)
