"""Retry policy: how long a job of a type may run, and when a failed run is tried again.

A ``RetryPolicy`` per job type (``WorkerSettings.policy_for``): the
handler's timeout, the back-off base and cap, and an optional override of
the documents' ``maxAttempts``. ``decide`` is the one rule: a fatal error, a
malformed ``attempts`` or attempts used up fail the job; anything else
retries it after ``backoff_delay``, or after the delay a ``RetryJob`` asked
for (an exec handler's exit 75, an HTTP handler's Retry-After), held to the cap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from muzo_ops.queue.jobs import FatalJobError, RetryJob, max_attempts_of


def backoff_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Between half and all of base × 2^(attempt−1) (capped): the jitter spreads retries."""
    delay = min(cap_s, base_s * float(2 ** min(62, max(0, attempt - 1))))
    return delay / 2 + random.random() * delay / 2


@dataclass(frozen=True)
class RetryPolicy:
    """One job type's timeout and retry rule."""

    timeout_s: float  # how long a handler may run
    retry_base_s: float  # the first retry's delay (before jitter)
    retry_cap_s: float  # the longest delay
    max_attempts: int | None = None  # overrides the documents' maxAttempts when set

    def maximum(self, doc: dict[str, Any]) -> int:
        """How many attempts a job gets: the override, else its ``maxAttempts`` (else the default)."""
        return self.max_attempts if self.max_attempts is not None else max_attempts_of(doc)

    def delay(self, attempt: int) -> float:
        """Seconds before retrying after failed attempt number ``attempt`` (jittered)."""
        return backoff_delay(attempt, self.retry_base_s, self.retry_cap_s)

    def decide(self, error: BaseException, attempts: int | None, maximum: int) -> float | None:
        """The retry delay after ``error`` on attempt ``attempts`` (None: malformed); None: fail now."""
        if isinstance(error, FatalJobError) or attempts is None or attempts >= maximum:
            return None
        if isinstance(error, RetryJob) and error.after_seconds is not None:
            return min(self.retry_cap_s, error.after_seconds)
        return self.delay(attempts)


__all__ = ["RetryPolicy", "backoff_delay"]
