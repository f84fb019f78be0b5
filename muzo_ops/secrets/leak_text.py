"""Finding leaks in one text: file bytes decoded as text, rules applied, base64 runs decoded and searched.

A file is text when it has no NUL in its first 8 KiB (decoded as UTF-8,
bad bytes replaced), or it has a byte-order mark (UTF-8, UTF-16, UTF-32), or
it is UTF-16 without one (every other byte zero, as Latin-script text has)
or strict UTF-8 despite a NUL; anything else is binary and not searched. A
base64 run of at least ``MIN_BASE64_CHARS`` whose first 12 bytes are ASCII
and that decodes to printable text (a Kubernetes Secret's
``data:`` values, a whole env file piped through ``base64``) is searched
too, its findings reported on the run's first line.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Iterable
from dataclasses import dataclass

from muzo_ops.secrets.leak_rules import (
    BASIC_AUTH,
    SHAPES,
    Needle,
    fingerprint,
    is_placeholder,
    mask,
)

BINARY_SNIFF_BYTES = 8192
MIN_BASE64_CHARS = 16  # base64 of 12 bytes: shorter runs are ordinary words
MAX_BASE64_DEPTH = 2  # base64 inside base64 inside the file, and no deeper
CHANGE_CONTEXT_LINES = 60  # around a changed line: a whole PEM private key, a wrapped base64 block's start
_ENCRYPTED = re.compile(r"encrypted:[A-Za-z0-9+/=]+")
# A run of base64 that may encode text: the first 4 groups each start with A-Z or a-f (a byte below
# 0x80); digits, hex digests and lower-case identifiers fail at once.
_BASE64_RUN = re.compile(rf"(?<![A-Za-z0-9+/_-])(?:[A-Za-f][A-Za-z0-9+/_-]{{3}}){{{MIN_BASE64_CHARS // 4}}}"
                         r"[A-Za-z0-9+/_-]*={0,2}")
# a base64 block wrapped over lines (`base64 .env` wraps at 76 columns): full lines of equal length
_BASE64_LINE = re.compile(r"^[ \t]*([A-Za-z0-9+/]{40,}={0,2})[ \t]*\r?$", re.MULTILINE)
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),  # before UTF-16: same start
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_ASCII_LEADS = str.maketrans("", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef")  # deletes them
_NOT_TEXT = re.compile(r"[\x01-\x08\x0e-\x1f\x7f\ufffd]")


@dataclass(frozen=True)
class Finding:
    """One leak; ``masked`` shows at most the last 4 characters of a long value.

    ``fingerprint`` is the finding's identity in a baseline (the rule and the
    secret, hashed); path, line and commit only say where it is.
    """

    path: str
    line: int
    what: str  # the variable (with its encoding) or the pattern name
    kind: str  # "variable" or "pattern"
    masked: str
    commit: str | None = None  # with --history: the oldest commit whose files hold it
    fingerprint: str = ""

    @property
    def where(self) -> str:
        prefix = f"{self.commit[:12]}:" if self.commit else ""
        return f"{prefix}{self.path}:{self.line}"

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "line": self.line, "commit": self.commit, "what": self.what,
                "kind": self.kind, "masked": self.masked, "fingerprint": self.fingerprint}


def _mostly_text(text: str) -> bool:
    """At most 1 in 20 characters is a control character (NUL aside) or undecodable."""
    return len(_NOT_TEXT.findall(text)) * 20 <= len(text)


def decode_file_bytes(data: bytes) -> str | None:
    """``data`` as text, or None for a binary file (see the module's docstring)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(encoding, "replace")
    head = data[:BINARY_SNIFF_BYTES]
    if b"\0" not in head:
        return data.decode("utf-8", "replace")
    even, odd = head[0::2].count(0), head[1::2].count(0)
    pairs = max(len(head) // 2, 1)
    for encoding, zeros, others in (("utf-16-le", odd, even), ("utf-16-be", even, odd)):
        if zeros * 10 >= pairs * 3 and others * 10 <= pairs:  # ASCII-range UTF-16: every other byte 0
            text = data[: len(data) // 2 * 2].decode(encoding, "replace")
            if _mostly_text(text):
                return text
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if _mostly_text(text.replace("\0", "")) else None


def _printable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.replace("\n", "").replace("\r", "").replace("\t", "").isprintable() else None


def decode_base64(run: str) -> str | None:
    """The printable text ``run`` (base64 or base64url, padded or not) encodes, else None."""
    leads = run[::4]  # each starts 3 bytes: below 0x80 (ASCII) it is one of A-Z a-f
    if len(leads.translate(_ASCII_LEADS)) * 4 > len(leads):  # mostly not ASCII: not text worth decoding
        return None
    core = run.rstrip("=")
    if len(core) % 4 == 1:
        return None
    if "-" in core or "_" in core:
        if "+" in core or "/" in core:
            return None
        core = core.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(core + "=" * (-len(core) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable(raw) if len(raw) >= 8 else None


@dataclass(frozen=True)
class _Hit:
    offset: int
    what: str
    kind: str
    shown: str  # what the masked form is made of
    identity: str  # what the fingerprint is made of


def _hits(text: str, found_needles: list[Needle], placeholders: frozenset[str], depth: int) -> list[_Hit]:
    """Every secret in ``text``: env values, shapes, inside base64, Basic authorization (the order of preference)."""
    hits: list[_Hit] = []
    for needle in found_needles:
        start = text.find(needle.text)
        while start >= 0:
            hits.append(_Hit(start, needle.what, "variable", needle.original, needle.original))
            start = text.find(needle.text, start + 1)
    for rule in SHAPES:
        for match in rule.finditer(text):
            secret = match.group(rule.group)
            if is_placeholder(secret, placeholders, names_too=rule.names_too):
                continue
            identity = secret + (match.group(rule.identity_group).strip() if rule.identity_group else "")
            hits.append(_Hit(match.start(rule.group), rule.name, "pattern", secret, identity))
    if depth < MAX_BASE64_DEPTH:
        hits += _base64_hits(text, found_needles, placeholders, depth)
    for match in BASIC_AUTH.finditer(text):  # after base64: the env file's name for the password first
        decoded = decode_base64(match.group(1))
        if decoded is None or ":" not in decoded:
            continue
        password = decoded.split(":", 1)[1]
        if password and not is_placeholder(password, placeholders, names_too=True):
            hits.append(_Hit(match.start(1), BASIC_AUTH.name, "pattern", password, password))
    return hits


def _wrapped_blocks(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, joined)`` of each base64 block wrapped over lines: full lines of one width, a last one."""
    blocks: list[tuple[int, int, str]] = []
    block: list[re.Match[str]] = []
    for match in [*_BASE64_LINE.finditer(text), None]:
        if (match is not None and block and text.count("\n", block[-1].end(), match.start()) == 1
                and len(block[-1].group(1)) == len(block[0].group(1)) and not block[-1].group(1).endswith("=")):
            block.append(match)
            continue
        if len(block) > 1:
            blocks.append((block[0].start(1), block[-1].end(1), "".join(m.group(1) for m in block)))
        block = [match] if match is not None else []
    return blocks


def _base64_hits(text: str, found_needles: list[Needle], placeholders: frozenset[str], depth: int) -> list[_Hit]:
    """Secrets inside base64: a wrapped block as a whole (not line by line), and every run on one line."""
    decoded_runs: list[tuple[int, str]] = []
    covered: list[tuple[int, int]] = []
    for start, end, joined in _wrapped_blocks(text):
        decoded = decode_base64(joined)
        if decoded is not None:
            decoded_runs.append((start, decoded))
            covered.append((start, end))
    for match in _BASE64_RUN.finditer(text):
        if covered and any(start <= match.start() < end for start, end in covered):
            continue
        decoded = decode_base64(match.group(0))
        if decoded is not None:
            decoded_runs.append((match.start(), decoded))
    hits: list[_Hit] = []
    for offset, decoded in decoded_runs:
        for hit in _hits(decoded, found_needles, placeholders, depth + 1):
            hits.append(_Hit(offset, f"{hit.what} (in base64)", hit.kind, hit.shown, hit.identity))
    return hits


def scan_text(text: str, path: str, found_needles: list[Needle], placeholders: Iterable[str] = (),
              commit: str | None = None, first_line: int = 1,
              line_numbers: list[int] | None = None) -> list[Finding]:
    """Findings in ``text`` (lines numbered from ``first_line``, or as ``line_numbers`` says).

    A secret is reported once per line, by the first rule that finds it:
    the env file's own value before a shape, plain before base64.
    """
    clean = _ENCRYPTED.sub("encrypted:", text)
    hits = _hits(clean, found_needles, frozenset(placeholders), 0)
    if not hits:
        return []
    lines_before: dict[int, int] = {}
    counted, offset_done = 0, 0
    for offset in sorted({h.offset for h in hits}):  # one pass over the text, whatever the number of hits
        counted += clean.count("\n", offset_done, offset)
        lines_before[offset], offset_done = counted, offset
    findings: list[Finding] = []
    seen: set[tuple[int, str]] = set()
    for hit in sorted(hits, key=lambda h: lines_before[h.offset]):  # stable: rule order kept within a line
        index = lines_before[hit.offset]
        if (index, hit.shown) in seen:
            continue
        seen.add((index, hit.shown))
        number = line_numbers[index] if line_numbers is not None else first_line + index
        findings.append(Finding(path, number, hit.what, hit.kind, mask(hit.shown), commit,
                                fingerprint(hit.what, hit.identity)))
    return findings


def changed_regions(lines: list[str], previous: frozenset[str],
                    context: int = CHANGE_CONTEXT_LINES) -> list[tuple[int, int]]:
    """``(start, end)`` line ranges of ``lines`` around the lines ``previous`` (an older version's) lacks.

    Rules that span lines (a private key's body, a base64 block wrapped
    over lines) see ``context`` lines on each side of a change.
    """
    regions: list[tuple[int, int]] = []
    for index, line in enumerate(lines):
        if line in previous:
            continue
        start, end = max(index - context, 0), min(index + context + 1, len(lines))
        if regions and start <= regions[-1][1]:
            regions[-1] = (regions[-1][0], end)
        else:
            regions.append((start, end))
    return regions
