"""Leak scan: secrets in the files git tracks (and, with history, in every commit).

Two kinds of findings:

- the exact value of a sensitive variable of the env file (and a URL's
  password), also percent-encoded and base64-encoded;
- credential shapes: a MongoDB URL with a password, Stripe live and
  webhook keys, AWS access key ids, private key blocks, dotenvx private keys.

Encrypted values (``encrypted:…``) and placeholders (``.env.example``'s
values, ``<password>``, ``PASSWORD``, ``your-…``) are not findings. A finding
names the file, the line (and the commit), the variable or pattern, and the
value masked; the value itself is never part of a finding.
"""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from muzo_ops.constants import MASK
from muzo_ops.errors import MuzoOpsError

MIN_VALUE_CHARS = 8  # shorter values would match ordinary text
MAX_FILE_BYTES = 5_000_000

_ENCRYPTED = re.compile(r"encrypted:[A-Za-z0-9+/=]+")
_PLACEHOLDER = re.compile(
    r"""^(?:<[^>]*>|\[[^\]]*\]|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|\{\{[^}]*\}\}|%[A-Za-z_]+%|[*x.•]+
         |pass|passwd|password|pwd|secret|token|key
         |(?:your|my|the|some|example|sample|dummy|fake|placeholder|changeme|change-me|replace|redacted)(?:[-_][-_a-z0-9]*)?
         |.*(?:example|placeholder|changeme|replace-me|your[-_]).*)$""",
    re.IGNORECASE | re.VERBOSE,
)
_CAPS_WORD = re.compile(r"[A-Z][A-Z0-9_]*\Z")  # PASSWORD, DB_PASS: a name, not a value
# In code and docs a URL's password is often a template: f"{password}", %(pw)s, ${PW}, …
_TEMPLATE = re.compile(r"\{[^{}]*\}|%\(?\w*\)?[sd]|\$\{?\w+\}?|…|\.\.\.")

# (pattern name, regex, group holding the secret part)
SHAPES: tuple[tuple[str, re.Pattern[str], int], ...] = (
    # user:password before the host; a password's / ? # [ ] are percent-encoded (connection-string spec)
    ("mongodb-url-password", re.compile(r"mongodb(?:\+srv)?://[^:/?#@\s'\"\[\]]+:([^@/?#\s'\"\[\]]+)@"), 1),
    ("stripe-live-secret-key", re.compile(r"\b(sk_live_[0-9A-Za-z]{10,})"), 1),
    ("stripe-live-restricted-key", re.compile(r"\b(rk_live_[0-9A-Za-z]{10,})"), 1),
    ("stripe-webhook-secret", re.compile(r"\b(whsec_[0-9A-Za-z+/=]{10,})"), 1),
    ("aws-access-key-id", re.compile(r"\b((?:AKIA|ASIA)[0-9A-Z]{16})\b"), 1),
    ("private-key-block", re.compile(r"(-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"), 1),
    ("dotenvx-private-key", re.compile(r"DOTENV_PRIVATE_KEY\w*\s*=\s*['\"]?([0-9a-fA-F]{64})\b"), 1),
)


class ScanError(MuzoOpsError):
    """The folder cannot be scanned (not a git work tree, git missing)."""


@dataclass(frozen=True)
class Finding:
    """One leak; ``masked`` shows at most the last 4 characters of a long value."""

    path: str
    line: int
    what: str  # the variable (with its encoding) or the pattern name
    kind: str  # "variable" or "pattern"
    masked: str
    commit: str | None = None  # with --history: the commit that added the line

    @property
    def where(self) -> str:
        prefix = f"{self.commit[:12]}:" if self.commit else ""
        return f"{prefix}{self.path}:{self.line}"

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "line": self.line, "commit": self.commit, "what": self.what,
                "kind": self.kind, "masked": self.masked}


def mask(value: str) -> str:
    """``***`` plus the last 4 characters when the value has at least 16, else ``***``."""
    return MASK + value[-4:] if len(value) >= 16 else MASK


def is_placeholder(text: str, placeholders: Iterable[str] = (), names_too: bool = False) -> bool:
    """Whether ``text`` stands for a value instead of being one.

    ``names_too`` (URL passwords): a variable name (``PASSWORD``) or a
    template (``{password}``, ``%(pw)s``, ``${PW}``, ``…``) as well.
    """
    if text in set(placeholders) or _PLACEHOLDER.match(text):
        return True
    return names_too and bool(_CAPS_WORD.match(text) or _TEMPLATE.search(text))


@dataclass(frozen=True)
class Needle:
    """One string to look for: a variable's value in one encoding."""

    text: str
    what: str
    original: str


def needles(values: Mapping[str, str]) -> list[Needle]:
    """Every form of every sensitive value to look for (as is, percent-encoded, base64)."""
    from muzo_ops.env import schema
    from muzo_ops.redact.redactor import secret_values, url_passwords

    out: dict[str, Needle] = {}
    sensitive = set(secret_values(values))
    for name, value in values.items():
        if not value or value.startswith("encrypted:"):
            continue
        forms: list[tuple[str, str]] = []
        var = schema.BY_NAME.get(name)
        if value in sensitive and not (var is not None and var.kind in (schema.Kind.MONGO_URL, schema.Kind.REDIS_URL)):
            forms.append((name, value))
        for password in url_passwords(value):
            if password in sensitive:
                forms.append((f"{name} password", password))
        for label, secret in forms:
            if len(secret) < MIN_VALUE_CHARS:
                continue
            raw = secret.encode("utf-8")
            for suffix, text in (("", secret), (" percent-encoded", quote(secret, safe="")),
                                 (" percent-encoded", quote_plus(secret, safe="")),
                                 (" base64", base64.b64encode(raw).decode().rstrip("=")),
                                 (" base64url", base64.urlsafe_b64encode(raw).decode().rstrip("="))):
                out.setdefault(text, Needle(text, label + suffix, secret))
    return sorted(out.values(), key=lambda n: len(n.text), reverse=True)


def scan_text(text: str, path: str, found_needles: list[Needle], placeholders: Iterable[str] = (),
              commit: str | None = None, first_line: int = 1,
              line_numbers: list[int] | None = None) -> list[Finding]:
    """Findings in ``text`` (lines numbered from ``first_line``, or as ``line_numbers`` says)."""
    placeholder_set = set(placeholders)
    findings: list[Finding] = []
    for index, line in enumerate(text.splitlines()):
        number = line_numbers[index] if line_numbers is not None else first_line + index
        clean = _ENCRYPTED.sub("encrypted:", line)
        seen: set[str] = set()
        for needle in found_needles:
            if needle.text in clean and needle.original not in seen:
                seen.add(needle.original)
                findings.append(Finding(path, number, needle.what, "variable", mask(needle.original), commit))
        for name, regex, group in SHAPES:
            for match in regex.finditer(clean):
                secret = match.group(group)
                if secret in seen or is_placeholder(secret, placeholder_set, names_too=name.startswith("mongodb")):
                    continue
                seen.add(secret)
                findings.append(Finding(path, number, name, "pattern", mask(secret), commit))
    return findings


def _git(root: str, *args: str) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(["git", "-C", root, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise ScanError(f"cannot run git: {exc.strerror}; install git") from exc


def _git_output(root: str, *args: str) -> bytes:
    proc = _git(root, *args)
    out, err = proc.communicate()
    if proc.returncode != 0:
        message = err.decode("utf-8", "replace").strip().splitlines()
        raise ScanError(f"{root}: git {args[0]} failed ({message[-1] if message else proc.returncode}): "
                        "scan a folder inside a git work tree")
    return out


def tracked_files(root: str) -> list[str]:
    """Paths git tracks under ``root`` (relative to it)."""
    out = _git_output(root, "ls-files", "-z", "--", ".")
    return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]


def _placeholders_for(path: str) -> set[str]:
    name = path.rsplit("/", 1)[-1]
    if not (name.startswith(".env.example") or name.startswith(".env.template") or name.endswith(".example")):
        return set()
    from muzo_ops.env import schema

    return {v.example for v in schema.VARIABLES}


def scan_tracked(root: str, values: Mapping[str, str]) -> list[Finding]:
    """Findings in every file git tracks under ``root`` (as in the work tree)."""
    import os

    found_needles = needles(values)
    findings: list[Finding] = []
    for rel in tracked_files(root):
        full = os.path.join(root, rel)
        try:
            if os.path.getsize(full) > MAX_FILE_BYTES:
                continue
            with open(full, "rb") as handle:
                data = handle.read()
        except OSError:
            continue  # deleted in the work tree, a broken symlink, a submodule
        if b"\0" in data[:8192]:
            continue  # binary
        findings += scan_text(data.decode("utf-8", "replace"), rel, found_needles, _placeholders_for(rel))
    return findings


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def _history_chunks(root: str) -> Iterator[tuple[str, str, list[int], list[str]]]:
    """``(commit, path, line numbers, added lines)`` for every file every commit changed."""
    proc = _git(root, "log", "--all", "-p", "-U0", "--no-color", "--no-ext-diff", "--no-renames",
                "--format=commit %H", "--", ".")
    assert proc.stdout is not None
    commit = ""
    path = ""
    numbers: list[int] = []
    lines: list[str] = []
    next_number = 0
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if line.startswith("commit ") and len(line) == 47:
            if lines:
                yield commit, path, numbers, lines
            commit, path, numbers, lines = line[7:], "", [], []
        elif line.startswith("+++ "):
            if lines:
                yield commit, path, numbers, lines
            numbers, lines = [], []
            path = line[6:] if line.startswith("+++ b/") else ""
        elif line.startswith("@@"):
            match = _HUNK.match(line)
            next_number = int(match.group(1)) if match else 0
        elif line.startswith("+") and path:
            numbers.append(next_number)
            lines.append(line[1:])
            next_number += 1
    if lines:
        yield commit, path, numbers, lines
    _out, err = proc.communicate()
    if proc.returncode not in (0, None):
        message = err.decode("utf-8", "replace").strip().splitlines()
        raise ScanError(f"{root}: git log failed ({message[-1] if message else proc.returncode}): "
                        "scan a folder inside a git work tree")


def scan_history(root: str, values: Mapping[str, str]) -> list[Finding]:
    """Findings in every line any commit (on any ref) added under ``root``."""
    _git_output(root, "rev-parse", "--is-inside-work-tree")
    found_needles = needles(values)
    findings: list[Finding] = []
    for commit, path, numbers, lines in _history_chunks(root):
        findings += scan_text("\n".join(lines), path, found_needles, _placeholders_for(path),
                              commit=commit, line_numbers=numbers)
    return findings


def scan(root: str, values: Mapping[str, str], history: bool = False) -> list[Finding]:
    """The work tree's tracked files, and with ``history`` every commit too."""
    findings = scan_tracked(root, values)
    if history:
        findings += scan_history(root, values)
    return findings


def scan_with_env_file(root: str, env_file: str, env_file_given: bool, history: bool = False,
                       on_values: Callable[[Iterable[str]], None] | None = None) -> tuple[list[Finding], str | None]:
    """``secrets scan``: the env file's values (decrypted when a key is at hand) and the shapes.

    A missing default env file means shapes only (said in the note); a
    missing file named on the command line is an error.
    """
    import os

    from muzo_ops.env import dotenvx, envfile
    from muzo_ops.redact.redactor import secret_values

    note = None
    values: dict[str, str] = {}
    if env_file_given or os.path.exists(env_file):
        parsed = envfile.read(env_file)
        values, undecrypted = dotenvx.decrypted_values(parsed.raw(), env_file, parsed.text())
        if undecrypted:
            note = (f"{len(undecrypted)} encrypted values of {env_file} could not be decrypted (no private key): "
                    "they were not looked for")
    else:
        note = f"no {env_file}: looked for credential shapes only (give --env-file to look for its values)"
    if on_values is not None:
        on_values(secret_values(values))
    return scan(root, values, history=history), note
