"""An exclusive advisory lock beside an env file: ``<file>.lock`` held with ``fcntl.flock``.

Every read-modify-write of an env file (``init-env``, ``secrets rotate``,
the secrets commands) runs inside ``locked(path)``: a second writer waits up
to ``timeout_s`` and then fails with one line instead of overwriting. The
lock is taken beside the file's real target (a symlink is followed), so two
writers that reach one file through different links still exclude each
other. The lock file is left in place (it holds nothing but a pid):
removing it while another process waits would let two writers hold "the"
lock on different inodes.

The lock is re-entrant within a thread: every writer in ``files`` takes
the lock of what it writes, and a command that already holds it for a
whole read-modify-write keeps holding it (a second ``flock`` on a new
descriptor would wait for itself).

While a lock is held in the main thread, SIGTERM (when nothing else
handles it) raises ``Terminated``, a KeyboardInterrupt, as SIGINT does:
the writers' cleanup runs (temporary files removed, a renamed file's
backup kept), the lock is released, and the command ends with one
``error: interrupted`` line (exit 130) instead of dying mid-step without a
word. The default action comes back when the lock is released.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from muzo_ops.errors import MuzoOpsError

DEFAULT_TIMEOUT_S = 10.0
_POLL_S = 0.05
# (thread, lock file) -> how many ``locked`` blocks of that thread hold it
_HELD: dict[tuple[int, str], int] = {}


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a lock was held (see the module doc)."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` for the block (main thread, default action only)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is _raise_terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


class LockedError(MuzoOpsError):
    """Another process holds the lock past the timeout, or the lock cannot be made (exit 2)."""


def lock_path(path: str) -> str:
    """The lock file of ``path``: beside the file a symlink points to."""
    return os.path.realpath(path) + ".lock"


def _give_to_owner(fd: int, path: str, owner_of: str | None) -> None:
    """A lock file root creates for another user's file belongs to that user (or they could never
    lock their own file again): the owner of ``path``, or of ``owner_of`` while ``path`` does not
    exist yet (``.env.keys`` or the audit log beside another user's env file)."""
    for reference in (path, owner_of):
        if reference is None:
            continue
        try:
            owner = os.stat(reference)
        except OSError:
            continue  # not there (yet)
        try:
            mine = os.fstat(fd)
            if (mine.st_uid, mine.st_gid) != (owner.st_uid, owner.st_gid):
                os.fchown(fd, owner.st_uid, owner.st_gid)
        except OSError:
            pass  # no CAP_CHOWN: the lock still works for this user
        return


@contextmanager
def locked(path: str, timeout_s: float = DEFAULT_TIMEOUT_S, owner_of: str | None = None) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` for the ``with`` block.

    Waits at most ``timeout_s`` seconds (0: try once), then raises
    LockedError naming the file. The lock is released when the block ends
    or the process dies (the kernel drops ``flock`` locks with the file).
    On a read-only file system there is no lock to take (and nothing can
    change the file): the block runs as is.
    """
    target = lock_path(path)
    mine = (threading.get_ident(), target)
    if mine in _HELD:
        _HELD[mine] += 1
        try:
            yield
        finally:
            _HELD[mine] -= 1
            if not _HELD[mine]:
                del _HELD[mine]
        return
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            # A read-only file system: no process can change the file, so there is
            # nothing to exclude; a command that needs to write says so itself.
            yield
            return
        folder = os.path.dirname(target)
        if exc.errno == errno.ENOENT:
            raise LockedError(f"{path}: the folder {folder} does not exist: create it, or fix "
                              "--env-file") from exc
        raise LockedError(f"{path}: cannot create its lock file in {folder} ({exc.strerror}): "
                          "run as the env file's owner, on a writable folder") from exc
    _give_to_owner(fd, path, owner_of)
    deadline = time.monotonic() + max(timeout_s, 0.0)
    try:
        with _sigterm_raises():
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise LockedError(f"{target}: cannot lock ({exc.strerror})") from exc
                    if time.monotonic() >= deadline:
                        raise LockedError(
                            f"{path} is locked by another muzo-ops command (waited {timeout_s:g}s on "
                            f"{target}): let it finish and run again") from None
                    time.sleep(_POLL_S)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass  # the pid is only a hint for people (a full disk must not stop a lock)
            _HELD[mine] = 1
            try:
                yield
            finally:
                del _HELD[mine]
    finally:
        os.close(fd)  # releases the lock


def held(path: str) -> bool:
    """Whether this thread holds the lock of ``path``."""
    return (threading.get_ident(), lock_path(path)) in _HELD
