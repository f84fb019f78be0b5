"""Reading, quoting and atomically writing ``.env`` files.

Parsing is python-dotenv's own parser (``dotenv.parser.parse_stream``), so
muzo_ops reads a file exactly as python-dotenv does and still knows each
statement's line. Writing quotes every value so that python-dotenv AND
Next.js (``@next/env`` 14: dotenv 16 parsing plus ``$VAR`` expansion) read
back the very value that was written; a value no quoting can carry for both
is refused with a reason instead of being written wrong.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from muzo_ops.constants import BACKUP_SUFFIX, SECRET_FILE_MODE
from muzo_ops.errors import EnvFileError, UnrepresentableValueError

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

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


@dataclass(frozen=True)
class Entry:
    """One statement of an env file: a binding, or a comment/blank run."""

    key: str | None  # variable name; None for comments and blank lines
    value: str | None  # decoded value before ${} expansion; None for `KEY` alone
    line: int  # 1-based line where the statement starts
    text: str  # the statement exactly as written, newline included


@dataclass
class EnvFile:
    """A parsed env file that can be changed and written back losslessly."""

    path: str
    entries: list[Entry]

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
        for entry in self.entries:
            if entry.key is None or entry.value is None:
                continue
            scope = {**resolved, **(environ or {})}
            resolved[entry.key] = "".join(a.resolve(scope) or "" for a in parse_variables(entry.value))
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
        counts: dict[str, int] = {}
        for entry in self.entries:
            if entry.key is not None:
                counts[entry.key] = counts.get(entry.key, 0) + 1
        return [k for k, n in counts.items() if n > 1]

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
    match = re.match(r"\s*(?:export\s+)?([A-Za-z_][\w.]*)", first)
    if match:
        return f"cannot parse the statement of {match.group(1)}: expected NAME=VALUE"
    return "cannot parse this line: expected NAME=VALUE, a # comment or a blank line"


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


def read(path: str) -> EnvFile:
    """Read and parse ``path``; EnvFileError says why it cannot be used."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
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


def with_changes(
    envfile: EnvFile, changes: Mapping[str, str], additions: Iterable[str] = ()
) -> str:
    """The file's text with ``changes`` applied in place and ``additions`` appended.

    Comments, order and every untouched statement are kept byte for byte.
    A key bound several times is changed at its last binding (the one both
    loaders use).
    """
    last_index = {e.key: i for i, e in enumerate(envfile.entries) if e.key is not None}
    parts: list[str] = []
    for index, entry in enumerate(envfile.entries):
        if entry.key is not None and entry.key in changes and last_index[entry.key] == index:
            parts.append(format_line(entry.key, changes[entry.key]))
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


def backup(path: str) -> str | None:
    """Copy ``path`` to ``path.<n>.bak`` (mode 0600); the backup's path, or None."""
    if not os.path.exists(path):
        return None
    n = 1
    while os.path.exists(f"{path}.{n}{BACKUP_SUFFIX}"):
        n += 1
    target = f"{path}.{n}{BACKUP_SUFFIX}"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
        shutil.copyfileobj(src, out)
        out.flush()
        os.fsync(out.fileno())
    return target


def write_atomic(path: str, text: str, mode: int = SECRET_FILE_MODE) -> None:
    """Write ``text`` to ``path``: temporary file in the same folder, fsync, rename.

    The file has ``mode`` (0600) from its first byte; the folder is fsynced
    so the rename survives a crash.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".muzo-ops-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise EnvFileError(path, f"cannot write in {folder}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
