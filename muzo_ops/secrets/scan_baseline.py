"""The scan's baseline: findings accepted by fingerprint, so the scan can gate CI.

A baseline is a JSON file listing fingerprints (PBKDF2-SHA256 of a rule and
a secret: no value is stored, and none can be read back), each with where
it was first seen as context. A finding whose fingerprint is listed is
accepted wherever it is (a moved fixture stays accepted); any other fails
the gate. Invariant: the file on disk is always a complete baseline, the
old one or the new one (written atomically).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from muzo_ops.secrets.git_objects import ScanError
from muzo_ops.secrets.leak_text import Finding

BASELINE_VERSION = 1
_ABOUT = ("muzo-ops secrets scan baseline: accepted findings by fingerprint (PBKDF2-SHA256 of the rule and "
          "the value; no value is stored); path, line and commit are context only. "
          "Rewrite with: muzo-ops secrets scan --update-baseline FILE")


@dataclass(frozen=True)
class Baseline:
    """The fingerprints a baseline file accepts."""

    path: str
    fingerprints: frozenset[str]


def _unusable(path: str, why: str) -> ScanError:
    return ScanError(f"baseline {path}: {why}; write one with: muzo-ops secrets scan --update-baseline {path}")


def read(path: str) -> Baseline:
    """The baseline at ``path`` (a ScanError, one line, when it is missing or not a baseline)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise _unusable(path, exc.strerror or type(exc).__name__) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise _unusable(path, f"not JSON ({exc.__class__.__name__})") from exc
    entries = data.get("findings") if isinstance(data, dict) else None
    if not isinstance(entries, list) or data.get("version") != BASELINE_VERSION:
        raise _unusable(path, f"not a version {BASELINE_VERSION} scan baseline (no \"findings\" list)")
    prints = [e.get("fingerprint") for e in entries if isinstance(e, dict)]
    if len(prints) != len(entries) or not all(isinstance(p, str) and p for p in prints):
        raise _unusable(path, "an entry without a \"fingerprint\"")
    return Baseline(path, frozenset(p for p in prints if isinstance(p, str)))


def render(findings: Iterable[Finding]) -> str:
    """The baseline accepting ``findings``: one entry per fingerprint, where it was first seen, sorted."""
    first: dict[str, Finding] = {}
    for finding in findings:
        first.setdefault(finding.fingerprint, finding)
    entries = [{"fingerprint": f.fingerprint, "what": f.what, "kind": f.kind, "path": f.path, "line": f.line,
                "commit": f.commit}
               for f in sorted(first.values(), key=lambda f: (f.path, f.line, f.what, f.fingerprint))]
    return json.dumps({"about": _ABOUT, "version": BASELINE_VERSION, "findings": entries}, indent=2) + "\n"


def write(path: str, findings: Iterable[Finding]) -> int:
    """Write the baseline accepting ``findings`` to ``path`` atomically (mode 0644: it holds no secret).

    Returns the number of fingerprints written.
    """
    from muzo_ops.files import atomic

    text = render(findings)
    atomic.write(path, text, mode=0o644)
    return len(json.loads(text)["findings"])


@dataclass(frozen=True)
class Judged:
    """Findings split by a baseline: ``new`` fail the gate, ``accepted`` do not."""

    new: list[Finding]
    accepted: list[Finding]
    stale: int  # fingerprints of the baseline that no finding has any more


def judge(findings: list[Finding], baseline: Baseline | None) -> Judged:
    """Split ``findings`` into new and accepted ones (all new without a baseline)."""
    if baseline is None:
        return Judged(list(findings), [], 0)
    new = [f for f in findings if f.fingerprint not in baseline.fingerprints]
    accepted = [f for f in findings if f.fingerprint in baseline.fingerprints]
    return Judged(new, accepted, len(baseline.fingerprints - {f.fingerprint for f in accepted}))
