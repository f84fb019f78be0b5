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

The last ``HANDLER_STDERR_TAIL_BYTES`` of stderr go into the error, the
secrets of its environment masked first (``masking``: encoded forms too,
and a secret the cut goes through dropped whole); the worker redacts it
again before ``lastError`` and its log line.

Invariant: when ``run`` returns or raises (done, failed, cancelled by the
type's timeout, a lost lease or the worker's shutdown), no process of the
job's run is left (its group, a group a process of it moved to with setpgid,
and a process it started into a session of its own with setsid, found by
the ``MUZO_JOB_RUN`` token every command's environment carries, unless a
process cleared it): they get SIGTERM, then SIGKILL after ``grace_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from muzo_ops.queue.handlers.masking import OutputMask
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


# Each command's environment names its run (a random token): a process it started into a session of its
# own (setsid, a double fork) keeps the name, so it is found and ended with the run all the same.
RUN_MARKER_VAR = "MUZO_JOB_RUN"


@dataclass(frozen=True)
class _RunProcesses:
    """The processes of one job's run: its session ``sid`` (its group, and any group a process of it
    moved to with setpgid), and any process started since the run began whose environment carries
    ``marker`` (``RUN_MARKER_VAR=<token>``: one that left the session with setsid)."""

    sid: int
    marker: bytes
    since: int  # the leader's start time (clock ticks after boot): no older process is looked at

    @classmethod
    def started(cls, sid: int, marker: bytes) -> _RunProcesses:
        stat = _stat(str(sid))
        return cls(sid, marker, int(stat[19]) if stat is not None and len(stat) > 19 else 0)

    def members(self) -> list[int]:
        """Live (not zombie) processes of the run."""
        try:
            entries = os.listdir("/proc")
        except OSError:
            return [self.sid]
        members = []
        for entry in entries:
            if not entry.isdigit():
                continue
            fields = _stat(entry)
            if fields is None or len(fields) < 20 or fields[0] == "Z":
                continue
            if fields[3] == str(self.sid) or (int(fields[19]) >= self.since and self._marked(entry)):
                members.append(int(entry))
        return members

    def _marked(self, pid: str) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                return self.marker in environ.read().split(b"\0")
        except OSError:  # gone, or another user's
            return False

    def alive(self) -> bool:
        return bool(self.members())

    def signal(self, sig: signal.Signals) -> None:
        """``sig`` to the job's process group and to every other process of the run."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.sid, sig)
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _stat(pid: str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


async def _end_group(run: _RunProcesses, grace_s: float) -> None:
    """SIGTERM to the run's processes, SIGKILL after ``grace_s`` if any is left; returns once none is.

    Not interruptible: a cancel while it waits sends SIGKILL at once, then re-raises.
    """
    if not run.alive():
        return
    run.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        while run.alive() and time.monotonic() < deadline:
            await asyncio.sleep(_GROUP_POLL_S)
    finally:
        if run.alive():
            run.signal(signal.SIGKILL)


class _Tail:
    """The last ``size`` bytes of a stream (and ``mask.reach`` more: a secret cut at the start is dropped whole)."""

    def __init__(self, size: int, mask: OutputMask) -> None:
        self.size = size
        self.mask = mask
        self.keep = size + mask.reach
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.keep:
            del self.data[: len(self.data) - self.keep]

    def text(self) -> str:
        return self.mask.tail(bytes(self.data), self.total > len(self.data), self.size)


class _JobProtocol(asyncio.SubprocessProtocol):
    """Collects a command's stdout (bounded) and stderr's tail; tells when it exited and when its pipes closed.

    ``exited`` is set when the process ends, even while a child it left
    still holds its pipes (``Process.wait`` would wait for the pipes too).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tail_size: int, mask: OutputMask) -> None:
        self.stdout = bytearray()
        self.tail = _Tail(tail_size, mask)
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
                 grace_s: float = HANDLER_KILL_GRACE_S, stderr_tail: int = HANDLER_STDERR_TAIL_BYTES,
                 mask: OutputMask | None = None) -> None:
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
        self.mask = mask if mask is not None else OutputMask(self.environ)
        self.groups: dict[int, _RunProcesses] = {}  # the jobs running now, by process group

    def terminate_all(self) -> None:
        """SIGTERM to every running job's processes (the worker drains); each job's own wait sends SIGKILL."""
        for run in list(self.groups.values()):
            run.signal(signal.SIGTERM)

    async def run(self, job: Job) -> Any:
        """One job: the result, or RetryJob / FatalJobError / HandlerCommandError."""
        loop = asyncio.get_running_loop()
        marker = f"{RUN_MARKER_VAR}={uuid.uuid4().hex}"
        try:
            transport, proto = await loop.subprocess_exec(
                lambda: _JobProtocol(loop, self.stderr_tail, self.mask), *self.argv, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.cwd,
                env={**self.environ, RUN_MARKER_VAR: marker.split("=", 1)[1]},
                start_new_session=True)
        except FileNotFoundError as exc:
            raise HandlerCommandError(f"exec handler {self.argv[0]}: command not found (PATH, or the "
                                      "working directory)") from exc
        except PermissionError as exc:
            raise HandlerCommandError(f"exec handler {self.argv[0]}: permission denied") from exc
        pgid = transport.get_pid()  # start_new_session: the child leads its own session and group
        run = _RunProcesses.started(pgid, marker.encode())
        self.groups[pgid] = run
        try:
            stdin = transport.get_pipe_transport(0)
            if stdin is not None:  # a command that exits without reading it is not an error
                stdin.write(protocol.request_body(job))  # type: ignore[attr-defined]
                stdin.close()
            await proto.exited
            # Whatever the command left in its group goes too: nothing outlives the job.
            await _end_group(run, self.grace_s)
            await asyncio.wait([proto.closed], timeout=self.grace_s)
        except BaseException:
            # Cancelled (the type's timeout, the worker's shutdown): the group gets its grace.
            await asyncio.shield(_end_group(run, self.grace_s))
            raise
        finally:
            self.groups.pop(pgid, None)
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
                return self.mask.value(protocol.parse_result(stdout, f"the output of {command}"))
            except protocol.NotJsonError as exc:
                raise HandlerCommandError(f"{exc}{said}") from None
        if returncode == EXIT_TEMPFAIL:
            after = protocol.retry_after_from(stdout)
            when = f" after {after:g} s" if after is not None else ""
            raise RetryJob(f"{command} asked for a retry{when} (exit {EXIT_TEMPFAIL}){said}", after_seconds=after)
        if returncode == EXIT_DATAERR:
            raise FatalJobError(f"{command} refused the job (exit {EXIT_DATAERR}, fatal){said}")
        raise HandlerCommandError(f"{command} {_describe_status(returncode)}{said}")
