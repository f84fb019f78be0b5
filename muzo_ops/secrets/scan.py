"""Leak scan: secrets in the files git tracks (and, with history, in every file version of every commit).

Two kinds of findings:

- the exact value of a sensitive variable of the env file (and a URL's
  password), also percent-encoded and base64-encoded;
- credential shapes: a MongoDB URL with a password, Stripe live and
  webhook keys, AWS access key ids, private key blocks, dotenvx private
  keys, Basic authorization and ``curl -u`` passwords;

in plain text, UTF-16 text and inside base64 runs (``leak_text``).
Encrypted values (``encrypted:…``) and placeholders (``.env.example``'s
values, ``<password>``, ``PASSWORD``, ``your-…``) are not findings. A
finding names the file, the line (and the commit), the variable or
pattern, the value masked and its fingerprint; the value itself is never
part of a finding. A baseline (``scan_baseline``) accepts findings by
fingerprint so the scan can gate CI.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from muzo_ops.secrets.git_objects import MAX_FILE_BYTES, ScanError, blob_contents, history_blobs, tracked_file_bytes
from muzo_ops.secrets.leak_rules import MIN_VALUE_CHARS, SHAPES, Needle, is_placeholder, mask, needles, placeholders_for
from muzo_ops.secrets.leak_text import Finding, changed_regions, decode_file_bytes, scan_text

WHOLE_FILE_CHARS = 64 * 1024  # history: smaller versions are searched whole
LARGE_VERSIONS_KEPT = 64  # history: large versions whose lines are remembered for their successors

__all__ = ["MAX_FILE_BYTES", "MIN_VALUE_CHARS", "SHAPES", "Finding", "Needle", "ScanError", "ScanReport",
           "gate", "is_placeholder", "mask", "needles", "scan", "scan_history", "scan_text", "scan_tracked",
           "scan_with_env_file"]


def scan_tracked(root: str, values: Mapping[str, str]) -> list[Finding]:
    """Findings in every file git tracks under ``root`` (as in the work tree)."""
    found_needles = needles(values)
    findings: list[Finding] = []
    for path, data in tracked_file_bytes(root):
        text = decode_file_bytes(data)
        if text is not None:
            findings += scan_text(text, path, found_needles, placeholders_for(path))
    return findings


def scan_history(root: str, values: Mapping[str, str]) -> list[Finding]:
    """Findings in every file version any commit (on any ref, merges included) holds under ``root``.

    Each blob is read once, its findings attributed to the oldest commit
    that gave it a path; a secret already found in an older version of the
    same file is not reported again. A version over WHOLE_FILE_CHARS whose
    predecessor was read recently is searched only around the lines it
    changed (``changed_regions``), so a large file edited in many commits
    costs what its changes do.
    """
    found_needles = needles(values)
    findings: list[Finding] = []
    known: set[tuple[str, str]] = set()
    large: OrderedDict[str, frozenset[str]] = OrderedDict()  # the lines of recent large versions, by blob id
    for blob, data in blob_contents(root, history_blobs(root)):
        text = decode_file_bytes(data)
        if text is None:
            continue
        placeholders = placeholders_for(blob.path)
        if len(text) <= WHOLE_FILE_CHARS:
            found = scan_text(text, blob.path, found_needles, placeholders, commit=blob.commit)
        else:  # a large file edited often: what changed since the version it replaced, with context
            lines = text.split("\n")
            previous = large.get(blob.previous) if blob.previous else None
            regions = changed_regions(lines, previous) if previous is not None else [(0, len(lines))]
            found = [f for start, end in regions
                     for f in scan_text("\n".join(lines[start:end]), blob.path, found_needles, placeholders,
                                        commit=blob.commit, first_line=start + 1)]
            large[blob.blob] = frozenset(lines)
            while len(large) > LARGE_VERSIONS_KEPT:
                large.popitem(last=False)
        fresh = [f for f in found if (f.path, f.fingerprint) not in known]
        known.update((f.path, f.fingerprint) for f in fresh)
        findings += fresh
    return findings


def scan(root: str, values: Mapping[str, str], history: bool = False) -> list[Finding]:
    """The work tree's tracked files, and with ``history`` every commit too.

    A secret the work tree still holds is reported there, not again for
    the commits that hold it in the same file.
    """
    findings = scan_tracked(root, values)
    if history:
        known = {(f.path, f.fingerprint) for f in findings}
        findings += [f for f in scan_history(root, values) if (f.path, f.fingerprint) not in known]
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


@dataclass
class ScanReport:
    """What ``secrets scan`` found: new findings fail the gate, accepted ones are in the baseline."""

    findings: list[Finding]
    accepted: list[Finding] = field(default_factory=list)
    note: str | None = None
    baseline: str | None = None
    stale: int = 0  # baseline fingerprints no finding has any more
    written: str | None = None  # --update-baseline: the file written
    written_count: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings or self.written is not None

    def to_json(self) -> dict[str, object]:
        return {"findings": [f.to_json() for f in self.findings], "accepted": [f.to_json() for f in self.accepted],
                "baseline": self.baseline, "stale": self.stale,
                "written": {"path": self.written, "fingerprints": self.written_count} if self.written else None,
                "note": self.note}

    def lines(self) -> list[str]:
        out = [f"{f.where}: {f.what} ({f.kind}) {f.masked}" for f in self.findings]
        count = len(self.findings)
        if self.written is not None:
            out.append(f"Wrote {self.written}: {self.written_count} fingerprint{'s' if self.written_count != 1 else ''}"
                       f" accepting these {count} finding{'s' if count != 1 else ''} (no values); commit it and "
                       f"gate with: muzo-ops secrets scan --baseline {self.written}")
            return out
        summary = f"{count}{' new' if self.baseline else ''} finding{'s' if count != 1 else ''}"
        if self.baseline:
            summary += f" ({len(self.accepted)} accepted by {self.baseline}"
            summary += f"; {self.stale} of its fingerprints no longer found)" if self.stale else ")"
        if count:
            summary += ": rotate each leaked secret, then remove it from the files (and history)"
            if self.baseline:
                summary += ", or accept a test fixture with --update-baseline"
        out.append(summary)
        return out


def gate(root: str, env_file: str, env_file_given: bool, history: bool = False, baseline: str | None = None,
         update_baseline: str | None = None,
         on_values: Callable[[Iterable[str]], None] | None = None) -> ScanReport:
    """``secrets scan``: scan, then judge the findings by ``baseline`` or write them to ``update_baseline``.

    The baseline is read before scanning, so an unusable one stops the
    command at once (a ScanError, exit 2).
    """
    from muzo_ops.secrets import scan_baseline

    accepted_by = scan_baseline.read(baseline) if baseline is not None else None
    findings, note = scan_with_env_file(root, env_file, env_file_given, history=history, on_values=on_values)
    if update_baseline is not None:
        count = scan_baseline.write(update_baseline, findings)
        return ScanReport(findings, note=note, written=update_baseline, written_count=count)
    judged = scan_baseline.judge(findings, accepted_by)
    return ScanReport(judged.new, judged.accepted, note, baseline, judged.stale)
