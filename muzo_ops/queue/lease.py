"""A running job's lease as its worker knows it: renewed by heartbeats, and given up when lost.

The lease is the server's (``store``: ``lockedUntil`` from ``$$NOW``). The
worker keeps, per running job, the moment until which the lease surely
holds: the send time of the last renewal the server applied (or of the
claim), plus the lock period, on this process's monotonic clock. The
server applied that renewal after it was sent, so its ``lockedUntil`` is
no earlier; no other worker can take the job over before then.

The lease is lost, and the run is cancelled, when either

- ``NOT_OURS``: a renewal reached the server and matched nothing, and so
  did a second one a moment later (a takeover claim that waited for a
  stalled server is given back at once, so one miss alone is not a loss):
  another worker took the job over, or an operator changed or deleted it;
- ``EXPIRED``: no renewal was confirmed before that moment passed (the
  server out of reach or frozen, or this worker paused). From then on
  another worker may own the job, so the worker stops its run on its own
  clock without waiting for the server. A renewal that merely waits for
  the server is not a loss before then: a database frozen for less than
  the lock minus one heartbeat interval (two thirds of the lock) stops
  nothing, however many such freezes follow one another: each renewal is
  due an interval after the last one was sent, so one that waited for the
  server is followed at once by a fresh one.

Cancelling the run is the job timeout's path: an exec handler's session
gets SIGTERM, then SIGKILL after its grace period; an HTTP request is
closed; a coroutine handler is cancelled. A plain function's thread cannot
be stopped, so its lease is never given up (that would only run the job
again beside it): its heartbeat goes on and its final write is fenced, as
before. A cancelled run then
ends as a failure with ``LeaseLostError``, whose writes are fenced: nothing
is written unless the job is still this worker's (the lease had only run
out by its clock), and then it is retried or failed by its policy.

Invariant: once the worker knows its lease is lost (or can no longer
prove it holds it), at most one process runs the job's code, except for
the handler's grace period; a worker paused (SIGSTOP, a VM pause) cannot
act while paused and acts as soon as it runs again, before any server call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from muzo_ops.mongo.errors import is_outage
from muzo_ops.queue.events import LeaseLoss, Observers
from muzo_ops.queue.jobs import LeaseLostError

if TYPE_CHECKING:
    from muzo_ops.queue.connection import DatabaseLink
    from muzo_ops.queue.execution import Running
    from muzo_ops.queue.store import JobStore

HOLDER_MAX_CHARS = 120  # lockedBy is a worker id; a hostile document's value is cut


@dataclass
class Lease:
    """One running job's lease: until when it surely holds, and whether it was given up."""

    deadline: float  # time.monotonic(): the lease holds at least until then
    lost: LeaseLoss | None = None
    # False for a plain function's thread, which cannot be stopped: its lease is never given up
    # (that would only run the job again beside it); the heartbeat goes on, the final write is fenced.
    cancellable: bool = True
    _task: asyncio.Task[Any] | None = field(default=None, repr=False)  # the run to cancel on a loss
    _cancelled: bool = False

    def renewed(self, sent: float, lock_s: float) -> None:
        """A renewal (or claim) sent at ``sent`` was applied by the server."""
        self.deadline = max(self.deadline, sent + lock_s)

    def lose(self, reason: LeaseLoss) -> bool:
        """Give the lease up and cancel the run (if one is guarded now); False when already lost."""
        if self.lost is not None:
            return False
        self.lost = reason
        if self._task is not None and not self._cancelled:
            self._cancelled = True
            self._task.cancel()
        return True

    def guard(self) -> _RunGuard:
        """``async with lease.guard():`` around a handler's run: a loss cancels it, and it raises
        ``LeaseLostError`` instead of ``CancelledError`` (another cancel, e.g. shutdown, goes through)."""
        return _RunGuard(self)


class _RunGuard:
    """The cancel scope of ``Lease.guard`` (as ``asyncio.timeout`` is for a deadline)."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    async def __aenter__(self) -> Lease:
        if self.lease.lost is not None:
            raise LeaseLostError(self.lease.lost.value)
        self.lease._task = asyncio.current_task()
        return self.lease

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        lease, task = self.lease, self.lease._task
        lease._task = None
        if lease.lost is None:
            return
        if lease._cancelled and task is not None and task.uncancel() > 0:
            return  # cancelled for another reason too (shutdown): that cancel goes on
        if exc_type is None or issubclass(exc_type, (asyncio.CancelledError, Exception)):
            raise LeaseLostError(lease.lost.value) from exc


def _short(value: Any) -> str | None:
    return None if value is None else str(value)[:HOLDER_MAX_CHARS]


class LeaseKeeper:
    """Renews running jobs' leases (one heartbeat task per job) and gives them up when lost."""

    def __init__(self, store: Callable[[], JobStore], db: DatabaseLink, events: Observers,
                 lock_s: float, heartbeat_s: float) -> None:
        self._store = store
        self.db = db
        self.events = events
        self.lock_s = lock_s
        self.heartbeat_s = heartbeat_s

    def new_lease(self, claim_sent: float) -> Lease:
        """The lease of a job whose claim was sent at ``claim_sent`` (monotonic)."""
        return Lease(deadline=claim_sent + self.lock_s)

    async def keep(self, entry: Running) -> None:
        """Renew ``entry``'s lease now, then every heartbeat interval, until cancelled or lost.

        A renewal that matches nothing sets ``entry.lost`` (``job_lock_lost``)
        and is tried again a moment later; a second miss gives the lease up
        (``NOT_OURS``). No renewal confirmed until the lease's deadline gives
        it up too (``EXPIRED``), even while a renewal still waits for the server.
        """
        lease = entry.lease
        while lease.lost is None:
            sent = time.monotonic()
            if sent >= lease.deadline and lease.cancellable:
                self._lose(entry, LeaseLoss.EXPIRED, None)
                return
            renewed: bool | None = None
            try:
                async with asyncio.timeout(lease.deadline - sent if lease.cancellable else None):
                    renewed = await self._store().heartbeat(entry.doc, self.lock_s) is not None
                self.db.ok()
                self.db.round_trip(sent)
            except TimeoutError:
                if time.monotonic() >= lease.deadline:
                    continue  # the deadline passed while the renewal waited for the server: EXPIRED
            except Exception as exc:
                if is_outage(exc):
                    self.db.problem(exc, "heartbeat")
                else:
                    self.events.heartbeat_error(entry.info, exc)
            if renewed:
                entry.lost = False
                lease.renewed(sent, self.lock_s)
            elif renewed is False:
                if entry.lost and lease.cancellable:  # the second miss in a row: not a takeover given back
                    await self._lose_not_ours(entry)
                    return
                if not entry.lost:
                    entry.lost = True
                    self.events.job_lock_lost(entry.info)
                # A takeover that waited for the server is given back at once: look again soon.
                await asyncio.sleep(self._pause(lease, min(self.heartbeat_s, 1.0)))
                continue
            # The next renewal is due a heartbeat interval after this one was *sent*: one that waited
            # for a frozen server is followed at once, not an interval after its late answer (else
            # freezes shorter than two thirds of the lock, a moment apart, run the lease out).
            await asyncio.sleep(self._pause(lease, sent + self.heartbeat_s - time.monotonic()))

    @staticmethod
    def _pause(lease: Lease, seconds: float) -> float:
        """``seconds``, cut short at the lease's deadline when it can be given up."""
        seconds = max(0.0, seconds)
        return max(0.0, min(seconds, lease.deadline - time.monotonic())) if lease.cancellable else seconds

    async def _lose_not_ours(self, entry: Running) -> None:
        """Give the lease up, saying who holds the job now when the server tells quickly."""
        holder: tuple[Any, Any] = (None, None)  # not known
        with contextlib.suppress(Exception):
            async with asyncio.timeout(min(self.heartbeat_s, 1.0)):
                found = await self._store().holder(entry.doc)
            holder = ("deleted", None) if found is None else (found.get("status"), found.get("lockedBy"))
        self._lose(entry, LeaseLoss.NOT_OURS, holder)

    def _lose(self, entry: Running, reason: LeaseLoss, holder: tuple[Any, Any] | None) -> None:
        if entry.lease.lose(reason):
            status, locked_by = holder if holder is not None else (None, None)
            self.events.job_lease_lost(entry.info, reason, _short(status), _short(locked_by))


__all__ = ["Lease", "LeaseKeeper"]
