"""Temporary files beside a target: filled, fsynced and given their mode and owner before they get a name.

A temporary file is named ``.<target name>.muzo-ops-<random>.tmp`` in the
target's own folder (a rename never crosses a file system), is 0600 from
its first byte, and is removed again on any failure. Those a killed writer
left behind are removed by the next writer, under the target's lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable

from muzo_ops.constants import SECRET_FILE_MODE
from muzo_ops.errors import EnvFileError

TEMP_MARK = ".muzo-ops-"
TEMP_SUFFIX = ".tmp"

_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def write_error(path: str, exc: OSError) -> EnvFileError:
    """One line for a failed write: the folder, the cause, and that nothing changed."""
    cause = _CAUSES.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    folder = os.path.dirname(os.path.realpath(path))
    return EnvFileError(path, f"cannot write in {folder}: {cause}; nothing was changed")


def user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def fsync_folder(folder: str) -> None:
    """Make the names in ``folder`` (a rename, a link) survive a crash."""
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def give_owner(fd: int, path: str, owner: os.stat_result, *, new: bool) -> None:
    """``fd`` gets ``owner``'s user and group; EnvFileError (nothing changed) when it cannot."""
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) == (owner.st_uid, owner.st_gid):
        return
    try:
        os.fchown(fd, owner.st_uid, owner.st_gid)
    except PermissionError:
        who = f"{user_name(owner.st_uid)}:{group_name(owner.st_gid)}"
        what = (f"belongs beside files owned by {who}" if new
                else f"is owned by {who}")
        raise EnvFileError(
            path, f"{what} and {user_name(os.geteuid())} cannot give a rewritten file that owner: run as "
            f"{user_name(owner.st_uid)} (or as root); nothing was changed") from None


def temp_copy(path: str, target: str, data: bytes, mode: int, owner: os.stat_result | None,
              *, new: bool = False) -> str:
    """``data`` in a fsynced temporary file beside ``target`` with ``mode`` and ``owner``'s ids."""
    folder = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + TEMP_MARK, suffix=TEMP_SUFFIX,
                               dir=folder)
    try:
        os.fchmod(fd, mode & SECRET_FILE_MODE)  # nobody else can open it while it fills
        if owner is not None:
            give_owner(fd, path, owner, new=new)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.fchmod(fd, mode)  # after fchown, which clears set-id bits
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def unlink_quietly(paths: Iterable[str]) -> None:
    for leftover in paths:
        with contextlib.suppress(OSError):
            os.unlink(leftover)


def remove_stale(path: str) -> list[str]:
    """Delete temporary files a killed writer left beside ``path``'s target (hold its lock)."""
    target = os.path.realpath(path)
    folder, name = os.path.split(target)
    prefix = "." + name + TEMP_MARK
    try:
        with os.scandir(folder) as entries:
            stale = [e.path for e in entries if e.name.startswith(prefix) and e.name.endswith(TEMP_SUFFIX)]
    except OSError:
        return []
    removed: list[str] = []
    for leftover in stale:
        with contextlib.suppress(OSError):
            os.unlink(leftover)
            removed.append(leftover)
    return removed
