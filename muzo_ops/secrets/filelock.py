"""The env-file lock: one implementation, in ``muzo_ops.env.filelock`` (re-exported here)."""

from __future__ import annotations

from muzo_ops.env.filelock import DEFAULT_TIMEOUT_S, LockedError, lock_path, locked

__all__ = ["DEFAULT_TIMEOUT_S", "LockedError", "lock_path", "locked"]
