"""An exclusive advisory lock beside an env file: ``<file>.lock`` held with ``fcntl.flock``.

Every read-modify-write of an env file (``init-env``, ``secrets rotate``,
the secrets commands) runs inside ``locked(path)``: a second writer waits up
to ``timeout_s`` and then fails with one line instead of overwriting. The
lock is taken beside the file's real target (a symlink is followed), so two
writers that reach one file through different links still exclude each
other. The lock file is left in place (it holds nothing but a pid):
removing it while another process waits would let two writers hold "the"
lock on different inodes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from muzo_ops.errors import MuzoOpsError

DEFAULT_TIMEOUT_S = 10.0
_POLL_S = 0.05


class LockedError(MuzoOpsError):
    """Another process holds the lock past the timeout, or the lock cannot be made (exit 2)."""


def lock_path(path: str) -> str:
    """The lock file of ``path``: beside the file a symlink points to."""
    return os.path.realpath(path) + ".lock"


@contextmanager
def locked(path: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` for the ``with`` block.

    Waits at most ``timeout_s`` seconds (0: try once), then raises
    LockedError naming the file. The lock is released when the block ends
    or the process dies (the kernel drops ``flock`` locks with the file).
    """
    target = lock_path(path)
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        folder = os.path.dirname(target)
        raise LockedError(f"{path}: cannot create its lock file in {folder} ({exc.strerror}): "
                          "run as the env file's owner, on a writable folder") from exc
    deadline = time.monotonic() + max(timeout_s, 0.0)
    try:
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
        yield
    finally:
        os.close(fd)  # releases the lock
