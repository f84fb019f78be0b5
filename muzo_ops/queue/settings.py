"""The worker's settings: ``WorkerSettings`` and how env values and flags build it."""

from __future__ import annotations

import math
import os
import random
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from muzo_ops.booleans import parse_bool
from muzo_ops.constants import (
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_HEARTBEAT_FRACTION,
    DEFAULT_LOCK_DURATION_S,
    DEFAULT_POLL_INTERVAL_S,
    DEFAULT_RETRY_BASE_S,
    DEFAULT_RETRY_CAP_S,
    ERROR_BACKOFF_CAP_S,
    HANDLER_KILL_GRACE_S,
    STALE_SWEEP_INTERVAL_S,
    TAKEOVER_INTERVAL_S,
)
from muzo_ops.env import checks, database_url, schema
from muzo_ops.errors import ConfigError
from muzo_ops.queue import policyspec
from muzo_ops.queue.jobs import JobType
from muzo_ops.queue.retry import RetryPolicy

# Start-up range checks: (setting, flag, variable). The variable's schema
# minimum and maximum bound the value whether it came from the flag or the
# env file (finite, a lock that still makes a BSON date, delays asyncio takes).
_RANGES = (
    ("lock_s", "--lock-seconds", "WORKER_LOCK_SECONDS"),
    ("poll_s", "--poll-seconds", "WORKER_POLL_SECONDS"),
    ("drain_timeout_s", "--drain-timeout", "WORKER_DRAIN_TIMEOUT_SECONDS"),
    ("retry_base_s", "--retry-base", "WORKER_RETRY_BASE_SECONDS"),
    ("retry_cap_s", "--retry-cap", "WORKER_RETRY_CAP_SECONDS"),
)
TIMEOUT_VARIABLES = {t: f"JOB_TIMEOUT_{t.value}_SECONDS" for t in JobType}
# Hard limits of any duration setting, whoever builds the settings: finite,
# and small enough for a BSON date (year 9999) and asyncio's timers.
MAX_DURATION_S = 30 * 86400.0


def default_timeout(job_type: JobType) -> float:
    """The schema's default timeout of ``job_type``'s handler (JOB_TIMEOUT_<TYPE>_SECONDS)."""
    return float(schema.get(TIMEOUT_VARIABLES[job_type]).default or "300")


def _default_timeouts() -> dict[JobType, float]:
    return {t: default_timeout(t) for t in JobType}


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process needs; ``from_values`` builds it from env values."""

    url: str
    queues: tuple[JobType, ...] = (JobType.GENERATION,)
    concurrency: int = 1
    transactions: str | None = None  # QUEUE_TRANSACTIONS as written, None: auto-detect
    log_level: str = "info"
    lock_s: float = DEFAULT_LOCK_DURATION_S
    poll_s: float = DEFAULT_POLL_INTERVAL_S
    retry_base_s: float = DEFAULT_RETRY_BASE_S
    retry_cap_s: float = DEFAULT_RETRY_CAP_S
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    error_backoff_cap_s: float = ERROR_BACKOFF_CAP_S
    sweep_interval_s: float = STALE_SWEEP_INTERVAL_S
    takeover_interval_s: float = TAKEOVER_INTERVAL_S
    change_streams: bool = True
    burst: bool = False  # exit once no job is due (cron, tests)
    job_timeouts: dict[JobType, float] = field(default_factory=_default_timeouts)  # per type, seconds
    policies: dict[JobType, RetryPolicy] = field(default_factory=dict)  # per type, overriding the above
    handler_cwd: str | None = None  # exec handlers' working directory (None: the worker's)
    handler_grace_s: float = HANDLER_KILL_GRACE_S  # exec handlers: SIGTERM, then SIGKILL after this
    log_format: str | None = None  # json or pretty (None: pretty on a terminal)
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:"
                                                   f"{random.getrandbits(24):06x}")

    def __post_init__(self) -> None:
        durations = {"lock_s": self.lock_s, "poll_s": self.poll_s, "retry_base_s": self.retry_base_s,
                     "retry_cap_s": self.retry_cap_s, "drain_timeout_s": self.drain_timeout_s,
                     "error_backoff_cap_s": self.error_backoff_cap_s,
                     "sweep_interval_s": self.sweep_interval_s, "takeover_interval_s": self.takeover_interval_s,
                     "handler_grace_s": self.handler_grace_s,
                     **{f"job_timeouts[{t.value}]": v for t, v in self.job_timeouts.items()}}
        for name, value in durations.items():
            low_ok = value >= 0 if name == "drain_timeout_s" else value > 0
            if not (isinstance(value, int | float) and math.isfinite(value) and low_ok
                    and value <= MAX_DURATION_S):
                raise ConfigError(f"worker setting {name}={value!r} is out of range: use a finite number of "
                                  f"seconds above 0 and at most {MAX_DURATION_S:g}")
        if not 1 <= self.concurrency <= 1000:
            raise ConfigError(f"worker setting concurrency={self.concurrency} is out of range: use 1 to 1000")

    @property
    def heartbeat_s(self) -> float:
        return max(0.05, self.lock_s * DEFAULT_HEARTBEAT_FRACTION)

    def timeout_for(self, job_type: JobType) -> float:
        """How long a handler of ``job_type`` may run."""
        return self.policy_for(job_type).timeout_s

    def policy_for(self, job_type: JobType) -> RetryPolicy:
        """``job_type``'s retry policy: from ``policies`` when given, else from these settings."""
        given = self.policies.get(job_type)
        if given is not None:
            return given
        return RetryPolicy(timeout_s=self.job_timeouts.get(job_type) or default_timeout(job_type),
                           retry_base_s=self.retry_base_s, retry_cap_s=self.retry_cap_s)

    @classmethod
    def from_values(cls, values: Mapping[str, str], *, queues: str | None = None,
                    concurrency: int | None = None, lock_s: float | None = None,
                    poll_s: float | None = None, drain_timeout_s: float | None = None,
                    retry_base_s: float | None = None, retry_cap_s: float | None = None,
                    change_streams: bool | None = None, burst: bool = False, policies: Sequence[str] = (),
                    handler_cwd: str | None = None, handler_grace_s: float | None = None,
                    log_format: str | None = None) -> WorkerSettings:
        """Settings from env values, each keyword (a command-line flag) overriding its variable.

        ConfigError (one line) names an invalid value; a flag's value is held
        to its variable's range. Only the variables the worker itself reads
        are checked here; the API keys handlers need are ``check-env --app
        worker``'s business. ``policies``: ``--policy TYPE:KEY=VALUE,…`` flags
        (``policyspec``), each over the worker-wide timeout, base, cap for its type.
        """
        def checked(name: str) -> str | None:
            value = values.get(name, "")
            if value == "":
                return None
            problem = checks.value_error(schema.get(name), value)
            if problem:
                raise ConfigError(f"{name} {problem}")
            return value

        def number(name: str, given: float | None, default: float) -> float:
            if given is not None:
                return given
            text = checked(name)
            return float(text) if text is not None else default

        url = database_url(values)
        if queues is not None:
            problem = checks.value_error(schema.get("WORKER_QUEUES"), queues)
            if problem:
                raise ConfigError(f"--queues {problem}")
        queue_text = queues or checked("WORKER_QUEUES") or "generation"
        types = tuple(dict.fromkeys(JobType.from_queue(q) for q in queue_text.split(",")))
        if concurrency is None:
            concurrency = int(checked("WORKER_CONCURRENCY") or checked("GENERATION_WORKER_CONCURRENCY") or "1")
        elif concurrency > 1000:
            raise ConfigError(f"--concurrency {concurrency} is out of range: use 1 to 1000 (as WORKER_CONCURRENCY)")
        given = {"lock_s": lock_s, "poll_s": poll_s, "drain_timeout_s": drain_timeout_s,
                 "retry_base_s": retry_base_s, "retry_cap_s": retry_cap_s}
        for key, flag, name in _RANGES:
            value = given[key]
            if value is None:
                continue
            var = schema.get(name)
            low = var.minimum if var.minimum is not None else 0.0
            high = var.maximum if var.maximum is not None else MAX_DURATION_S
            if not (math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"{flag} {value:g} is out of range: use {low:g} to {high:g} seconds (as {name})")
        timeouts = {t: number(name, None, default_timeout(t)) for t, name in TIMEOUT_VARIABLES.items()}
        streams_text = checked("WORKER_CHANGE_STREAMS")
        base = number("WORKER_RETRY_BASE_SECONDS", retry_base_s, DEFAULT_RETRY_BASE_S)
        cap = number("WORKER_RETRY_CAP_SECONDS", retry_cap_s, DEFAULT_RETRY_CAP_S)
        if base > cap:
            raise ConfigError(f"the retry base ({base:g} s) is longer than the retry cap ({cap:g} s): raise "
                              "WORKER_RETRY_CAP_SECONDS / --retry-cap or lower the base")
        overrides = policyspec.parse_all(policies, MAX_DURATION_S)
        per_type = {}
        for job_type, override in overrides.items():
            policy = RetryPolicy(
                timeout_s=override.timeout_s or timeouts[job_type],
                retry_base_s=override.retry_base_s or min(base, override.retry_cap_s or cap),
                retry_cap_s=override.retry_cap_s or max(cap, override.retry_base_s or 0.0),
                max_attempts=override.max_attempts)
            per_type[job_type] = policy
        return cls(
            url=url, queues=types, concurrency=concurrency,
            transactions=checked("QUEUE_TRANSACTIONS"),
            log_level=checked("LOG_LEVEL") or "info",
            lock_s=number("WORKER_LOCK_SECONDS", lock_s, DEFAULT_LOCK_DURATION_S),
            poll_s=number("WORKER_POLL_SECONDS", poll_s, DEFAULT_POLL_INTERVAL_S),
            drain_timeout_s=number("WORKER_DRAIN_TIMEOUT_SECONDS", drain_timeout_s, DEFAULT_DRAIN_TIMEOUT_S),
            retry_base_s=base,
            retry_cap_s=cap,
            change_streams=change_streams if change_streams is not None else (
                parse_bool(streams_text) if streams_text is not None else True),
            burst=burst,
            job_timeouts=timeouts,
            policies=per_type,
            handler_cwd=handler_cwd,
            handler_grace_s=handler_grace_s if handler_grace_s is not None else HANDLER_KILL_GRACE_S,
            log_format=log_format,
        )


__all__ = ["MAX_DURATION_S", "TIMEOUT_VARIABLES", "WorkerSettings", "default_timeout"]
