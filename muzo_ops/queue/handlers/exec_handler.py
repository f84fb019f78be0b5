"""Exec handlers: a command per job, in any language (``--handler 'GENERATION=exec:node run-job.js generation'``).

Per job the command starts (no shell) in its own process group, in the
handler's working directory, with the worker's environment (its env file's
values plus what the process had; nothing on the command line). It reads
the job as one JSON object on stdin (``protocol.request_body``) and answers
by its exit status:

- 0: done; stdout is the result (one JSON value, empty for null);
- 75 (EX_TEMPFAIL): retry, not before ``{"retryAfterSeconds": S}`` on stdout if given;
- 65 (EX_DATAERR): fatal, FAILED at once;
- anything else, a signal included: a failure, retried by the type's policy.

The last ``HANDLER_STDERR_TAIL_BYTES`` of stderr go into the error (the
worker redacts it before ``lastError`` and its log line).

Invariant: when ``run`` returns or raises (done, failed, cancelled by the
type's timeout or the worker's shutdown), no process of the job's group is
left: the group gets SIGTERM, then SIGKILL after ``grace_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

from muzo_ops.constants import (
    EXIT_DATAERR,
    EXIT_TEMPFAIL,
    HANDLER_KILL_GRACE_S,
    HANDLER_MAX_OUTPUT_BYTES,
    HANDLER_STDERR_TAIL_BYTES,
)
from muzo_ops.errors import ConfigError
from muzo_ops.queue.handlers import protocol
from muzo_ops.queue.jobs import FatalJobError, Job, RetryJob

# How often the group is looked at while it is given its grace.
_GROUP_POLL_S = 0.02


class HandlerCommandError(Exception):
    """An exec handler exited with a status other than 0, 65 and 75, or by a signal (retried)."""


def _describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is in group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _end_group(pgid: int, grace_s: float) -> None:
    """SIGTERM to the group, SIGKILL after ``grace_s`` if any of it is left; returns once none is.

    Not interruptible: a cancel while it waits sends SIGKILL at once, then re-raises.
    """
    if not _group_alive(pgid):
        return
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        while _group_alive(pgid) and time.monotonic() < deadline:
            await asyncio.sleep(_GROUP_POLL_S)
    finally:
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)


class _Tail:
    """The last ``size`` bytes of a stream."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.size:
            del self.data[: len(self.data) - self.size]

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace").strip()
        return ("…" + text) if self.total > self.size else text


class _JobProtocol(asyncio.SubprocessProtocol):
    """Collects a command's stdout (bounded) and stderr's tail; tells when it exited and when its pipes closed.

    ``exited`` is set when the process ends, even while a child it left
    still holds its pipes (``Process.wait`` would wait for the pipes too).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tail_size: int) -> None:
        self.stdout = bytearray()
        self.tail = _Tail(tail_size)
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        chunk = data.encode() if isinstance(data, str) else data
        if fd == 1:
            if len(self.stdout) <= HANDLER_MAX_OUTPUT_BYTES:  # more is reported as too long, not kept
                self.stdout += chunk[: HANDLER_MAX_OUTPUT_BYTES + 1 - len(self.stdout)]
        elif fd == 2:
            self.tail.add(chunk)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class ExecHandler:
    """Runs ``argv`` once per job; ``run(job)`` is the worker's coroutine handler."""

    def __init__(self, argv: Sequence[str], *, environ: Mapping[str, str], cwd: str | None = None,
                 grace_s: float = HANDLER_KILL_GRACE_S, stderr_tail: int = HANDLER_STDERR_TAIL_BYTES) -> None:
        if not argv:
            raise ConfigError("exec handler: no command")
        if cwd is not None and not os.path.isdir(cwd):
            raise ConfigError(f"exec handler working directory {cwd} is not a folder: create it or pass "
                              "another --handler-cwd")
        self.argv = tuple(argv)
        self.environ = dict(environ)
        self.cwd = cwd
        self.grace_s = grace_s
        self.stderr_tail = stderr_tail
        self.groups: set[int] = set()  # process groups of the jobs running now

    def terminate_all(self) -> None:
        """SIGTERM to every running job's group (the worker drains); each job's own wait sends SIGKILL."""
        for pgid in list(self.groups):
            _signal_group(pgid, signal.SIGTERM)

    async def run(self, job: Job) -> Any:
        """One job: the result, or RetryJob / FatalJobError / HandlerCommandError."""
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await loop.subprocess_exec(
                lambda: _JobProtocol(loop, self.stderr_tail), *self.argv, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.cwd, env=self.environ,
                start_new_session=True)
        except FileNotFoundError as exc:
            raise HandlerCommandError(f"exec handler {self.argv[0]}: command not found (PATH, or the "
                                      "working directory)") from exc
        except PermissionError as exc:
            raise HandlerCommandError(f"exec handler {self.argv[0]}: permission denied") from exc
        pgid = transport.get_pid()  # start_new_session: the child leads its own session and group
        self.groups.add(pgid)
        try:
            stdin = transport.get_pipe_transport(0)
            if stdin is not None:  # a command that exits without reading it is not an error
                stdin.write(protocol.request_body(job))  # type: ignore[attr-defined]
                stdin.close()
            await proto.exited
            # Whatever the command left in its group goes too: nothing outlives the job.
            await _end_group(pgid, self.grace_s)
            await asyncio.wait([proto.closed], timeout=self.grace_s)
        except BaseException:
            # Cancelled (the type's timeout, the worker's shutdown): the group gets its grace.
            await asyncio.shield(_end_group(pgid, self.grace_s))
            raise
        finally:
            self.groups.discard(pgid)
            transport.close()  # closes the pipes (and kills the leader if it somehow still runs)
        returncode = transport.get_returncode()
        return self._outcome(returncode if returncode is not None else -signal.SIGKILL,
                             bytes(proto.stdout), proto.tail)

    def _outcome(self, returncode: int, stdout: bytes, tail: _Tail) -> Any:
        command = self.argv[0]
        stderr = tail.text()
        said = f"; stderr: {stderr}" if stderr else ""
        if returncode == 0:
            try:
                return protocol.parse_result(stdout, f"the output of {command}")
            except protocol.NotJsonError as exc:
                raise HandlerCommandError(f"{exc}{said}") from None
        if returncode == EXIT_TEMPFAIL:
            after = protocol.retry_after_from(stdout)
            when = f" after {after:g} s" if after is not None else ""
            raise RetryJob(f"{command} asked for a retry{when} (exit {EXIT_TEMPFAIL}){said}", after_seconds=after)
        if returncode == EXIT_DATAERR:
            raise FatalJobError(f"{command} refused the job (exit {EXIT_DATAERR}, fatal){said}")
        raise HandlerCommandError(f"{command} {_describe_status(returncode)}{said}")
