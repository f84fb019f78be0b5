"""``--policy TYPE:KEY=VALUE,…``: one job type's retry policy as an operator writes it.

Keys: ``timeout`` (seconds a handler may run; JOB_TIMEOUT_<TYPE>_SECONDS
otherwise), ``retry-base`` and ``retry-cap`` (seconds; WORKER_RETRY_BASE_SECONDS
and WORKER_RETRY_CAP_SECONDS otherwise), ``max-attempts`` (overrides the
documents' ``maxAttempts``). ``GENERATION:timeout=1800,retry-base=10,retry-cap=600,max-attempts=5``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from muzo_ops.errors import ConfigError
from muzo_ops.queue.jobs import JobType

KEYS = ("timeout", "retry-base", "retry-cap", "max-attempts")
_NUMBER_RE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")
MAX_ATTEMPTS_LIMIT = 1000


@dataclass(frozen=True)
class PolicyOverride:
    """What one ``--policy`` changes for its type; None keeps the worker-wide setting."""

    timeout_s: float | None = None
    retry_base_s: float | None = None
    retry_cap_s: float | None = None
    max_attempts: int | None = None


def parse(text: str, limit_s: float) -> tuple[JobType, PolicyOverride]:
    """One flag's value; ConfigError (one line) says what is wrong. Durations above 0 and at most ``limit_s``."""
    where = f"--policy {text[:80]!r}"
    name, sep, rest = text.partition(":")
    if not sep or not rest.strip():
        raise ConfigError(f"{where}: expected TYPE:KEY=VALUE,... (keys: {', '.join(KEYS)})")
    job_type = JobType.parse(name)
    values: dict[str, float] = {}
    for item in rest.split(","):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or key not in KEYS:
            raise ConfigError(f"{where}: {key or item.strip()!r} is not one of {', '.join(KEYS)} (KEY=VALUE)")
        if key in values:
            raise ConfigError(f"{where}: {key} is given twice")
        if not _NUMBER_RE.fullmatch(value):
            raise ConfigError(f"{where}: {key} must be a plain number")
        number = float(value)
        if key == "max-attempts":
            if not number.is_integer() or not 1 <= number <= MAX_ATTEMPTS_LIMIT:
                raise ConfigError(f"{where}: max-attempts must be a whole number from 1 to {MAX_ATTEMPTS_LIMIT}")
        elif not (math.isfinite(number) and 0 < number <= limit_s):
            raise ConfigError(f"{where}: {key} must be above 0 and at most {limit_s:g} seconds")
        values[key] = number
    base, cap = values.get("retry-base"), values.get("retry-cap")
    if base is not None and cap is not None and base > cap:
        raise ConfigError(f"{where}: retry-base ({base:g} s) is longer than retry-cap ({cap:g} s)")
    attempts = values.get("max-attempts")
    return job_type, PolicyOverride(timeout_s=values.get("timeout"), retry_base_s=base, retry_cap_s=cap,
                                    max_attempts=int(attempts) if attempts is not None else None)


def parse_all(items: Iterable[str], limit_s: float) -> dict[JobType, PolicyOverride]:
    """Every ``--policy`` flag; a later flag for the same type replaces the earlier one."""
    return dict(parse(item, limit_s) for item in items if item.strip())
