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
import re
from collections import ChainMap
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from muzo_ops.errors import EnvFileError, UnrepresentableValueError
from muzo_ops.files.reading import MAX_FILE_BYTES, read_text

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
    """Read (``files.reading``: bounded, 1 MiB) and parse ``path``; EnvFileError says why it
    cannot be used."""
    text = read_text(path, max_bytes=max_bytes, what="an env file",
                     missing="no such file: create it with `muzo-ops init-env`")
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


def replace_line(entry: Entry, line: str) -> str:
    """``line`` (``NAME=…``, already encoded) in place of ``entry``, keeping its indent, ``export ``
    prefix and trailing comment, and its line end (none at the end of a file)."""
    assert entry.key is not None
    before, export, comment = _statement_frame(entry.text)
    out = before + export + line.rstrip("\n") + comment + "\n"
    return out if entry.text.endswith("\n") else out.rstrip("\n")


def with_lines(envfile: EnvFile, lines: Mapping[str, str], additions: Iterable[str] = ()) -> str:
    """The file's text with the statement of each name in ``lines`` replaced by that full line
    (``format_line``, or an encrypted line) and ``additions`` (full lines) appended after a blank line.

    The one editor of env-file text: comments, order and every untouched
    statement are kept byte for byte; a changed statement keeps its
    ``export `` prefix, indent and trailing comment (``replace_line``). A
    key bound several times is changed at its last binding (the one both
    loaders use).
    """
    last_index = {e.key: i for i, e in enumerate(envfile.entries) if e.key is not None}
    parts: list[str] = []
    for index, entry in enumerate(envfile.entries):
        if entry.key is not None and entry.key in lines and last_index[entry.key] == index:
            parts.append(replace_line(entry, lines[entry.key]))
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


def value_lines(changes: Mapping[str, str]) -> dict[str, str]:
    """``{name: format_line(name, value)}`` for ``with_lines``."""
    return {name: format_line(name, value) for name, value in changes.items()}
