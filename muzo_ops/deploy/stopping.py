"""What stops a deploy run besides its own errors: SIGTERM and SIGINT, turned into an ending it reports.

Invariant: while a run holds ``stop_signals()``, SIGTERM or SIGINT ends the run's
current step (as KeyboardInterrupt, which gevent hands to the main greenlet)
and the run still reports every host; outside it the process's own handlers
apply. Nothing here needs pyinfra.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence


@contextlib.contextmanager
def stop_signals() -> Iterator[list[str]]:
    """SIGTERM and SIGINT end the run as KeyboardInterrupt (which gevent hands to the main greenlet),
    their names kept, so the run still reports every host; the old handlers are put back after."""
    caught: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def stop(signum: int, _frame: object) -> None:
        caught.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(caught[-1])

    old = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield caught
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


def stopped_by(exc: BaseException, caught: Sequence[str]) -> str:
    """What stopped the run, in words (an exception by its type: its text may hold a secret)."""
    if isinstance(exc, KeyboardInterrupt):
        return caught[0] if caught else "SIGINT"
    return f"an unexpected {type(exc).__name__}"
