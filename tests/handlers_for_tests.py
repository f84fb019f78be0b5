"""Handlers used by the worker tests: they record every run in a file."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from muzo_ops.queue.jobs import FatalJobError, Job


def _record(job: Job, event: str) -> None:
    path = os.environ["MUZO_TEST_RECORD"]
    with open(path, "a", encoding="utf-8") as out:
        out.write(f"{job.id} {event} {job.attempts} {os.getpid()}\n")


def record(job: Job) -> dict[str, Any]:
    """Record start and end; sleep payload.seconds in a thread."""
    _record(job, "start")
    time.sleep(float(job.payload.get("seconds", 0)))
    _record(job, "end")
    return {"ok": True, "attempt": job.attempts}


async def record_async(job: Job) -> dict[str, Any]:
    _record(job, "start")
    await asyncio.sleep(float(job.payload.get("seconds", 0)))
    _record(job, "end")
    return {"ok": True}


def flaky(job: Job) -> dict[str, Any]:
    """Fail the first payload.failTimes attempts."""
    _record(job, "start")
    if job.attempts <= int(job.payload.get("failTimes", 0)):
        raise RuntimeError(f"transient failure on attempt {job.attempts} with {os.environ.get('LEAK', '')}")
    return {"ok": True}


def fatal(job: Job) -> None:
    _record(job, "start")
    raise FatalJobError("this job can never work")


def unstorable(job: Job) -> object:
    """An object BSON cannot encode, or (payload.size) a result over 16 MB."""
    if "size" in job.payload:
        return {"blob": "x" * int(job.payload["size"])}
    return {"value": object()}


def _raise(kind: str) -> None:
    import sys

    if kind == "exit":
        sys.exit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "genexit":
        raise GeneratorExit
    if kind == "cancel":
        raise asyncio.CancelledError
    if kind == "secret":
        raise RuntimeError(f"provider refused key {os.environ.get('LEAK', '')}")


def raiser(job: Job) -> dict[str, Any]:
    """Raise what payload.raise names (a BaseException a library might raise), else succeed."""
    _raise(str(job.payload.get("raise", "")))
    return {"ok": True}


async def raiser_async(job: Job) -> dict[str, Any]:
    await asyncio.sleep(0)
    _raise(str(job.payload.get("raise", "")))
    return {"ok": True}


def hang(job: Job) -> dict[str, Any]:
    """Sleep payload.seconds in a thread, ignoring any timeout (a handler that never returns)."""
    time.sleep(float(job.payload.get("seconds", 3600)))
    return {"ok": True}


async def hang_async(job: Job) -> dict[str, Any]:
    await asyncio.sleep(float(job.payload.get("seconds", 3600)))
    return {"ok": True}
