"""Demo handlers for demos, tests and benchmarks; never enabled unless named.

    muzo-ops worker --queues generation --handler GENERATION=muzo_ops.queue.handlers.demo:echo
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from muzo_ops.queue.jobs import FatalJobError, Job


def echo(job: Job) -> dict[str, Any]:
    """Return a SHA-256 digest of the payload (canonical JSON) and the attempt number."""
    canonical = json.dumps(job.payload, sort_keys=True, separators=(",", ":"), default=str)
    return {"digest": hashlib.sha256(canonical.encode()).hexdigest(), "attempt": job.attempts}


async def sleep(job: Job) -> dict[str, Any]:
    """Sleep ``payload.seconds`` (a number, default 1), then return it."""
    seconds = job.payload.get("seconds", 1)
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        raise FatalJobError("payload.seconds must be a number >= 0")
    await asyncio.sleep(float(seconds))
    return {"slept": seconds}
