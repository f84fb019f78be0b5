"""Reading, quoting and atomically writing ``.env`` files.

Parsing is python-dotenv's own parser (``dotenv.parser.parse_stream``), so
muzo_ops reads a file exactly as python-dotenv does and still knows each
statement's line. Writing quotes every value so that python-dotenv AND
Next.js (``@next/env`` 14: dotenv 16 parsing plus ``$VAR`` expansion) read
back the very value that was written; a value no quoting can carry for both
is refused with a reason instead of being written wrong.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import stat
import tempfile
from collections import ChainMap
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from muzo_ops.constants import BACKUP_SUFFIX, SECRET_FILE_MODE
from muzo_ops.errors import EnvFileError, UnrepresentableValueError

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# An env file is a few kB; anything over this is the wrong file (and would
# only make every command slow).
MAX_FILE_BYTES = 1 << 20
_TEMP_MARK = ".muzo-ops-"

# `$` before a name or `{`: Next.js expands it and python-dotenv cannot read
# the backslash that would escape it for Next.js, so no quoting carries it.
_EXPANDED_DOLLAR = re.compile(r"\$[{A-Za-z0-9_]")
# Whitespace either loader strips from the ends of an unquoted value
# (Python's str.isspace plus JavaScript's String.prototype.trim set).
_JS_ONLY_SPACE = "\ufeff"
_BARE_FORBIDDEN = re.compile(r"[#\r\n]|\\\$")
_QUOTES = "'\"`"
# After a backslash inside double quotes, python-dotenv decodes these.
_PY_DOUBLE_ESCAPES = frozenset("\\'\"abfnrtv\n\r")


class Entry(NamedTuple):
    """One statement of an env file: a binding, or a comment/blank run."""

    key: str | None  # variable name; None for comments and blank lines
    value: str | None  # decoded value before ${} expansion; None for `KEY` alone
    line: int  # 1-based line where the statement starts
    text: str  # the statement exactly as written, newline included

    @property
    def own_line(self) -> int:
        """The line of the statement itself (``line`` counts blank lines before it)."""
        stripped = self.text.lstrip()
        return self.line + self.text[: len(self.text) - len(stripped)].count("\n")


class EnvFile:
    """A parsed env file that can be changed and written back losslessly."""

    __slots__ = ("entries", "path")

    def __init__(self, path: str, entries: list[Entry]) -> None:
        self.path = path
        self.entries = entries

    def __repr__(self) -> str:
        return f"EnvFile({self.path!r}, {len(self.entries)} entries)"

    def raw(self) -> dict[str, str]:
        """Each key's last value as written (no expansion); bare keys omitted."""
        return {e.key: e.value for e in self.entries if e.key is not None and e.value is not None}

    def values(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """Values as python-dotenv resolves them: ``${VAR}`` expanded.

        Only the file is consulted unless ``environ`` is given, in which
        case it is layered on top the way the apps see it (a set variable
        wins over the file).
        """
        from dotenv.variables import parse_variables

        resolved: dict[str, str] = {}
        # The environment wins over the file's earlier values (one view, not a
        # copy per line: a copy per line made big files quadratic).
        scope: ChainMap[str, str] = ChainMap(dict(environ or {}), resolved)
        for entry in self.entries:
            if entry.key is None or entry.value is None:
                continue
            if "$" not in entry.value:
                resolved[entry.key] = entry.value
                continue
            resolved[entry.key] = "".join(
                a.resolve(scope) or "" for a in parse_variables(entry.value))
        if environ is not None:
            resolved.update({k: v for k, v in environ.items() if k in resolved or k.isupper()})
        return resolved

    def line_of(self, key: str) -> int | None:
        """The line of ``key``'s last binding, or None."""
        line = None
        for entry in self.entries:
            if entry.key == key:
                line = entry.line
        return line

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for entry in self.entries:
            if entry.key is not None:
                seen[entry.key] = None
        return list(seen)

    def duplicates(self) -> list[str]:
        """Keys bound with a value more than once (a bare ``KEY`` line is not a binding)."""
        counts: dict[str, int] = {}
        for entry in self.entries:
            if entry.key is not None and entry.value is not None:
                counts[entry.key] = counts.get(entry.key, 0) + 1
        return [k for k, n in counts.items() if n > 1]

    def bare_lines(self) -> list[int]:
        """Lines holding a name without ``=`` (ignored by both loaders)."""
        return [e.own_line for e in self.entries if e.key is not None and e.value is None]

    def text(self) -> str:
        return "".join(e.text for e in self.entries)


def _malformed_reason(text: str) -> str:
    first = text.splitlines()[0] if text else ""
    match = re.match(r"\s*(?:export\s+)?([A-Za-z_][\w.]*)\s*=\s*(['\"])", first)
    if match:
        name, quote = match.group(1), match.group(2)
        rest = first[match.end():]
        if quote not in rest.replace("\\" + quote, ""):
            return f"unterminated quote in {name}: add the closing {quote} or escape it"
        return f"text after the closing quote in {name}: remove it or start it with ' #'"
    match = re.match(r"\s*(?:export\s+)?([A-Za-z_][\w.]*)\s*=", first)
    if match:
        return f"cannot parse the statement of {match.group(1)}: expected NAME=VALUE"
    # No `NAME=`: the line may be a pasted secret, so its text is not repeated.
    return ("cannot parse this line (its text is not shown: it may be a pasted secret): expected "
            "NAME=VALUE, a # comment or a blank line")


def parse_text(text: str, path: str = ".env") -> EnvFile:
    """Parse env-file text; EnvFileError names the first malformed line."""
    from dotenv.parser import parse_stream

    entries: list[Entry] = []
    for binding in parse_stream(io.StringIO(text)):
        original = binding.original
        if binding.error:
            text = original.string
            stripped = text.lstrip()
            line = original.line + text[: len(text) - len(stripped)].count("\n")
            raise EnvFileError(path, _malformed_reason(stripped), line)
        entries.append(Entry(binding.key, binding.value, original.line, original.string))
    return EnvFile(path, entries)


def read(path: str, *, max_bytes: int = MAX_FILE_BYTES) -> EnvFile:
    """Read and parse ``path``; EnvFileError says why it cannot be used.

    Files over ``max_bytes`` (1 MiB) are refused before they are parsed.
    """
    try:
        # O_NONBLOCK: a named pipe without a writer must not hang the open (it then reads empty).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            size = info.st_size
            data = handle.read(max_bytes + 1)
        if max(size, len(data)) > max_bytes:
            raise EnvFileError(path, f"is {max(size, len(data))} bytes, over the {max_bytes // 1024} KiB an "
                               "env file may have: is this the right file?")
        text = data.decode("utf-8")
    except FileNotFoundError as exc:
        raise EnvFileError(path, "no such file: create it with `muzo-ops init-env`") from exc
    except IsADirectoryError as exc:
        raise EnvFileError(path, "is a folder, not an env file") from exc
    except PermissionError as exc:
        raise EnvFileError(path, "permission denied: run as the file's owner") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1 if isinstance(exc.object, bytes) else None
        raise EnvFileError(path, "not UTF-8 text: save the file as UTF-8", line) from exc
    except OSError as exc:
        raise EnvFileError(path, f"cannot read: {exc.strerror}") from exc
    return parse_text(text, path)


def _js_or_py_space(char: str) -> bool:
    return char.isspace() or char in _JS_ONLY_SPACE


def _bare_ok(value: str) -> bool:
    if value == "":
        return True
    if _BARE_FORBIDDEN.search(value):
        return False
    if value[0] in _QUOTES or _js_or_py_space(value[0]) or _js_or_py_space(value[-1]):
        return False
    return not any(c in "\u2028\u2029\x85" for c in value)


def _single_ok(value: str) -> bool:
    return (
        "'" not in value
        and "\\\\" not in value
        and not value.endswith("\\")
        and "\\$" not in value
        and "\r" not in value
    )


def _double_encode(value: str) -> str | None:
    if '"' in value:
        return None
    out: list[str] = []
    for index, char in enumerate(value):
        if char == "\\":
            following = value[index + 1] if index + 1 < len(value) else ""
            if following == "$":
                out.append("\\\\")
                continue
            if following == "" or following in _PY_DOUBLE_ESCAPES:
                return None
            out.append(char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def encode_value(name: str, value: str) -> str:
    """The text after ``NAME=`` that python-dotenv and Next.js both read as ``value``.

    Prefers no quotes, then single quotes, then double quotes.

    >>> encode_value("A", "plain"), encode_value("B", "has space"), encode_value("C", "it's")
    ('plain', "'has space'", '"it\\'s"')
    """
    if _EXPANDED_DOLLAR.search(value):
        raise UnrepresentableValueError(
            name,
            "the value has `$` before a name or `{`, which Next.js expands as a variable "
            "and python-dotenv cannot unescape; choose a value without it "
            "(in a URL, percent-encode `$` as %24)",
        )
    if "$(" in value:  # dotenvx runs `$(…)` as a command unless the value is single-quoted
        if _single_ok(value):
            return "'" + value + "'"
        raise UnrepresentableValueError(
            name,
            "the value has `$(`, which dotenvx runs as a command unless single-quoted, and also a "
            "single quote, backslash or carriage return that single quotes cannot carry; choose a "
            "value without `$(` (in a URL, percent-encode `$` as %24)",
        )
    if _bare_ok(value):
        return value
    if _single_ok(value):
        return "'" + value + "'"
    encoded = _double_encode(value)
    if encoded is not None:
        return encoded
    raise UnrepresentableValueError(
        name,
        "the value mixes quotes, backslashes and line breaks in a way that no quoting "
        "makes python-dotenv and Next.js read alike; choose a value without both kinds "
        "of quote, or without a backslash before a quote, letter escape or line end",
    )


def format_line(name: str, value: str) -> str:
    """``NAME=<encoded value>`` with a trailing newline."""
    if not NAME_RE.match(name):
        raise UnrepresentableValueError(name, "not a valid variable name (letters, digits, _)")
    return f"{name}={encode_value(name, value)}\n"


_LEAD_RE = re.compile(r"(\s*)(export[^\S\r\n]+)?")
_KEY_EQUALS_RE = re.compile(r"(?:'[^']+'|[^=\#\s]+)[^\S\r\n]*=[^\S\r\n]*")
_SINGLE_VALUE_RE = re.compile(r"'(?:\\'|[^'])*'")
_DOUBLE_VALUE_RE = re.compile(r'"(?:\\"|[^"])*"')
_TRAILING_COMMENT_RE = re.compile(r"[^\S\r\n]*#[^\r\n]*")
_UNQUOTED_COMMENT_RE = re.compile(r"\s+#.*")


def _statement_frame(text: str) -> tuple[str, str, str]:
    """(blank lines and indent before, ``export `` prefix, trailing `` # comment``) of a statement."""
    lead = _LEAD_RE.match(text)
    assert lead is not None  # both groups are optional
    before, export = lead.group(1), lead.group(2) or ""
    key = _KEY_EQUALS_RE.match(text, lead.end())
    if key is None:
        return before, export, ""
    after = text[key.end():]
    first = after[:1]
    if first in ("'", '"'):
        value = (_SINGLE_VALUE_RE if first == "'" else _DOUBLE_VALUE_RE).match(after)
        if value is None:
            return before, export, ""
        comment = _TRAILING_COMMENT_RE.match(after, value.end())
        return before, export, comment.group(0) if comment else ""
    line = after.split("\n", 1)[0].split("\r", 1)[0]
    comment = _UNQUOTED_COMMENT_RE.search(line)
    return before, export, comment.group(0) if comment else ""


def replace_statement(entry: Entry, value: str) -> str:
    """``entry`` rewritten with ``value``, keeping its ``export `` prefix, indent and comment."""
    assert entry.key is not None
    before, export, comment = _statement_frame(entry.text)
    return before + export + format_line(entry.key, value).rstrip("\n") + comment + "\n"


def with_changes(
    envfile: EnvFile, changes: Mapping[str, str], additions: Iterable[str] = ()
) -> str:
    """The file's text with ``changes`` applied in place and ``additions`` appended.

    Comments, order and every untouched statement are kept byte for byte; a
    changed statement keeps its ``export `` prefix and trailing comment. A
    key bound several times is changed at its last binding (the one both
    loaders use).
    """
    last_index = {e.key: i for i, e in enumerate(envfile.entries) if e.key is not None}
    parts: list[str] = []
    for index, entry in enumerate(envfile.entries):
        if entry.key is not None and entry.key in changes and last_index[entry.key] == index:
            parts.append(replace_statement(entry, changes[entry.key]))
        else:
            parts.append(entry.text)
    text = "".join(parts)
    extra = "".join(additions)
    if extra:
        if text and not text.endswith("\n"):
            text += "\n"
        if text:
            text += "\n"
        text += extra
    return text


# ---------------------------------------------------------------- writing

_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def _write_error(path: str, exc: OSError) -> EnvFileError:
    cause = _CAUSES.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    folder = os.path.dirname(os.path.realpath(path))
    return EnvFileError(path, f"cannot write in {folder}: {cause}; nothing was changed")


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _fsync_folder(folder: str) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _temp_copy(path: str, target: str, data: bytes, mode: int, owner: os.stat_result | None) -> str:
    """``data`` in a fsynced temporary file beside ``target`` with ``mode`` and ``owner``'s ids."""
    folder = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + _TEMP_MARK, suffix=".tmp",
                               dir=folder)
    try:
        os.fchmod(fd, mode & 0o600)  # nobody else can open it while it fills
        if owner is not None:
            mine = os.fstat(fd)
            if (mine.st_uid, mine.st_gid) != (owner.st_uid, owner.st_gid):
                try:
                    os.fchown(fd, owner.st_uid, owner.st_gid)
                except PermissionError:
                    raise EnvFileError(
                        path, f"is owned by {_user(owner.st_uid)}:{_group(owner.st_gid)} and "
                        f"{_user(os.geteuid())} cannot give a rewritten file that owner: run as "
                        f"{_user(owner.st_uid)} (or as root); nothing was changed") from None
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.fchmod(fd, mode)  # after fchown, which clears set-id bits
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _backup_numbers(target: str) -> list[int]:
    folder, name = os.path.split(target)
    pattern = re.compile(re.escape(name) + r"\.([0-9]{1,9})" + re.escape(BACKUP_SUFFIX) + r"\Z")
    found: list[int] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = pattern.match(entry.name)
            if match:
                found.append(int(match.group(1)))
    return found


def _link_backup(tmp: str, target: str) -> str:
    """Link ``tmp`` as the next free ``target.N.bak`` (highest N + 1); never overwrites."""
    number = max(_backup_numbers(target), default=0) + 1
    while True:
        name = f"{target}.{number}{BACKUP_SUFFIX}"
        try:
            os.link(tmp, name)
            return name
        except FileExistsError:
            number += 1


def _secret_mode(requested: int, current: int | None) -> int:
    """The mode a rewritten file gets: its current one (never looser than 0600 for secrets)."""
    if current is None:
        return requested
    if requested & 0o077:
        return current
    return current & ~0o077


def replace_file(path: str, text: str, mode: int = SECRET_FILE_MODE, *, keep_backup: bool = False) -> str | None:
    """Write ``text`` to ``path`` atomically; with ``keep_backup`` first keep the old file as a backup.

    A symlink is followed: its target is rewritten, through a temporary file
    in the target's own folder. An existing file keeps its owner, group and
    mode (for secret files, ``mode`` without group/other bits, never looser
    than 0600); a writer that cannot keep the owner is refused. Either
    everything happens or nothing does: the temporary file and the backup
    are complete before the rename, and an error (disk full, read-only,
    permission) is one EnvFileError line with the file left as it was.
    Returns the backup's path.
    """
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    try:
        current: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        current = None
    except OSError as exc:
        raise _write_error(path, exc) from exc
    if current is not None and not stat.S_ISREG(current.st_mode):
        raise EnvFileError(path, "is not a regular file: point --env-file at the env file")
    data = str.encode(text, "utf-8")
    final_mode = _secret_mode(mode, stat.S_IMODE(current.st_mode) if current else None)
    made: list[str] = []  # removed again if anything fails
    temps: list[str] = []  # removed in any case
    backup_path = None
    try:
        try:
            tmp = _temp_copy(path, target, data, final_mode, current)
            made.append(tmp)
            if keep_backup and current is not None:
                with open(target, "rb") as old:
                    old_data = old.read()
                old_tmp = _temp_copy(path, target, old_data, SECRET_FILE_MODE, current)
                temps.append(old_tmp)
                backup_path = _link_backup(old_tmp, target)
                made.append(backup_path)
            os.replace(tmp, target)
            made.remove(tmp)
            _fsync_folder(folder)
        except BaseException:
            _unlink_quietly(made)
            raise
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        _unlink_quietly(temps)
    return backup_path


def _unlink_quietly(paths: Iterable[str]) -> None:
    for leftover in paths:
        with contextlib.suppress(OSError):
            os.unlink(leftover)


def backup(path: str) -> str | None:
    """Keep ``path`` as the next ``<target>.N.bak`` (mode 0600, the file's owner); its path, or None.

    The copy is complete before it gets its name (temporary file, fsync,
    link), two writers never pick the same name, and a failure (disk full)
    leaves nothing behind.
    """
    target = os.path.realpath(path)
    try:
        current = os.stat(target)
        with open(target, "rb") as old:
            data = old.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _write_error(path, exc) from exc
    tmp = None
    try:
        tmp = _temp_copy(path, target, data, SECRET_FILE_MODE, current)
        name = _link_backup(tmp, target)
        _fsync_folder(os.path.dirname(target))
        return name
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        if tmp is not None:
            _unlink_quietly([tmp])


def write_atomic(path: str, text: str, mode: int = SECRET_FILE_MODE) -> None:
    """Write ``text`` to ``path``: temporary file in the target's folder, fsync, rename.

    The file has ``mode`` (0600) from its first byte; an existing file keeps
    its owner, group and mode (see ``replace_file``); a symlink is written
    through; the folder is fsynced so the rename survives a crash.
    """
    replace_file(path, text, mode)


def remove_stale_temps(path: str) -> list[str]:
    """Delete temporary files a killed writer left beside ``path``'s target (hold the lock)."""
    target = os.path.realpath(path)
    folder, name = os.path.split(target)
    prefix = "." + name + _TEMP_MARK
    removed: list[str] = []
    try:
        with os.scandir(folder) as entries:
            stale = [e.path for e in entries if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for leftover in stale:
        with contextlib.suppress(OSError):
            os.unlink(leftover)
            removed.append(leftover)
    return removed
