"""muzo_ops: the operations toolkit of the muzo web product.

One schema of every environment variable (``muzo_ops.env``), env files
rendered and validated from it, secrets (``muzo_ops.secrets``), and the
MongoDB ``Job`` queue worker (``muzo_ops.queue``). Works against MongoDB
6.0, 7.0 and 8.x (and MongoDB-compatible servers).

The handler API is exported here: a handler takes a ``Job`` and returns a
JSON-able result or raises (``FatalJobError`` fails the job at once,
``RetryJob(after_seconds=…)`` asks for a later attempt).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from muzo_ops.constants import VERSION as __version__

if TYPE_CHECKING:
    from muzo_ops.queue.jobs import FatalJobError, Job, RetryJob

__all__ = ["FatalJobError", "Job", "RetryJob", "__version__"]


def __getattr__(name: str) -> Any:
    """``Job``, ``FatalJobError``, ``RetryJob``: the queue's contract loads only when asked for (light start-up)."""
    if name in ("Job", "FatalJobError", "RetryJob"):
        from muzo_ops.queue import jobs

        return getattr(jobs, name)
    raise AttributeError(f"module 'muzo_ops' has no attribute {name!r}")
