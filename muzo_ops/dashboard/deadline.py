"""The dashboard's answer bound: every request answers within ``timeout_s`` whatever the database does.

Invariant: a page, ``/api/*``, an action or ``/readyz`` answers within
``timeout_s`` (default 5 s, ``muzo-ops dashboard --timeout``) while MongoDB
is frozen, stopped or slow; ``/healthz`` and ``/events`` never wait for it.

Two layers hold it. The request's database work runs in a worker thread
under one pymongo client-side operation timeout (``pymongo.timeout``: it
bounds server selection, connection checkout, connecting and every reply,
and sends ``maxTimeMS`` so the server gives up too) of ``database_s``, a
share of the bound that leaves time to draw the page. And the request waits
for that thread at most ``timeout_s`` (a wait outside pymongo, such as the
counts cache's lock held by another request, cannot hold it longer): then
it answers 503 and the thread, abandoned, ends on its own database deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

DEFAULT_TIMEOUT_S = 5.0
DATABASE_SHARE = 0.8  # of the bound the database may take; the rest draws the answer

T = TypeVar("T")


class TooLate(Exception):
    """The database work of a request did not end within the bound (its outcome is unknown)."""


@dataclass(frozen=True)
class Deadline:
    """The bound of one request: ``timeout_s`` for the answer, ``database_s`` of it for MongoDB."""

    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def database_s(self) -> float:
        return self.timeout_s * DATABASE_SHARE

    def line(self) -> str:
        return f"MongoDB did not answer within {self.timeout_s:g} s"

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` here, every pymongo call in it under one deadline of ``database_s``."""
        import pymongo

        with pymongo.timeout(self.database_s):
            return fn(*args)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread under ``call``; TooLate when it has not ended within ``timeout_s``."""
        import anyio
        import anyio.to_thread

        with anyio.move_on_after(self.timeout_s):
            return await anyio.to_thread.run_sync(self.call, fn, *args, abandon_on_cancel=True)
        raise TooLate(self.line())  # only a cancelled wait gets here


__all__ = ["DATABASE_SHARE", "DEFAULT_TIMEOUT_S", "Deadline", "TooLate"]
