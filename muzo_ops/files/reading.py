"""Reading a file muzo_ops manages: bounded in size, never hanging on a pipe, one line per failure."""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from muzo_ops.errors import EnvFileError

# An env file is a few kB; anything over this is the wrong file (and would only make every command slow).
MAX_FILE_BYTES = 1 << 20


def read_bytes(path: str, *, max_bytes: int = MAX_FILE_BYTES, missing: str = "no such file",
               what: str = "a file") -> bytes:
    """The bytes of ``path`` (a symlink is followed); EnvFileError says why it cannot be read.

    Files over ``max_bytes`` (1 MiB) are refused before they are read whole;
    a named pipe without a writer reads empty instead of hanging.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            size = info.st_size
            data = handle.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise EnvFileError(path, missing) from exc
    except IsADirectoryError as exc:
        raise EnvFileError(path, f"is a folder, not {what}") from exc
    except PermissionError as exc:
        raise EnvFileError(path, "permission denied: run as the file's owner") from exc
    except OSError as exc:
        raise EnvFileError(path, f"cannot read: {exc.strerror}") from exc
    if max(size, len(data)) > max_bytes:
        raise EnvFileError(path, f"is {max(size, len(data))} bytes, over the {max_bytes // 1024} KiB "
                           f"{what} may have: is this the right file?")
    return data


def read_text(path: str, *, max_bytes: int = MAX_FILE_BYTES, missing: str = "no such file",
              what: str = "a file") -> str:
    """``read_bytes`` decoded as UTF-8; EnvFileError names the line of a bad byte."""
    data = read_bytes(path, max_bytes=max_bytes, missing=missing, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise EnvFileError(path, "not UTF-8 text: save the file as UTF-8", line) from exc


def read_text_or_none(path: str, *, max_bytes: int = MAX_FILE_BYTES) -> str | None:
    """``read_text``, or None when the file does not exist."""
    if not os.path.lexists(path):
        return None
    try:
        return read_text(path, max_bytes=max_bytes)
    except EnvFileError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise


def loose_mode(path: str) -> int | None:
    """The permission bits of ``path`` (a symlink is followed) when its group or others have any;
    None when only its owner has access, or it cannot be looked at."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & 0o077 else None
