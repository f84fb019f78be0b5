"""Helpers for worker tests: Prisma-shaped documents, worker processes, their logs."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bson import ObjectId

TESTS = Path(__file__).resolve().parent


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def mockup_payload(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"orderId": f"order-{i}", "outputAssetId": f"asset-{i}", "productVariantId": "var-1", **extra}


def generation_payload(**extra: Any) -> dict[str, Any]:
    return {"projectId": "6b0cfea76fd7fe601a9bec16", "prompt": "a cat in a hat",
            "style": {"id": "watercolor"}, "inputImageUrl": "https://cdn.example.com/in.png", **extra}


def prisma_job(job_type: str = "MOCKUP", payload: dict[str, Any] | None = None, *,
               max_attempts: int = 3, minimal: bool = False, **fields: Any) -> dict[str, Any]:
    """A Job as Prisma writes it (``minimal``: optional fields missing, not null)."""
    t = now()
    doc: dict[str, Any] = {
        "_id": ObjectId(), "type": job_type, "status": "PENDING", "attempts": 0,
        "maxAttempts": max_attempts, "availableAt": t, "payload": payload or mockup_payload(),
        "createdAt": t, "updatedAt": t,
    }
    if not minimal:
        doc.update(lockedAt=None, lockedUntil=None, lockedBy=None, lastError=None, result=None,
                   projectId=ObjectId())
    doc.update(fields)
    return doc


@dataclass
class WorkerProcess:
    """``python -m muzo_ops worker`` with its log captured in a file."""

    log_path: Path
    proc: subprocess.Popen[bytes]
    cursor: int = field(default=0)

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                out.append({"msg": raw, "level": 0, "unparsed": True})
        return out

    def text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def messages(self) -> list[str]:
        return [line.get("msg", "") for line in self.lines()]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None and not predicate():
                raise AssertionError(f"worker exited {self.proc.returncode} before {what}:\n{self.text()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.text()[-3000:]}")

    def wait_log(self, msg: str, timeout: float = 30) -> None:
        self.wait_for(lambda: msg in self.messages(), timeout, repr(msg))

    def terminate(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def start_worker(folder: Path, url: str, *args: str, env: dict[str, str] | None = None,
                 name: str = "worker", record: Path | None = None,
                 handler: str = "MOCKUP=tests.handlers_for_tests:record") -> WorkerProcess:
    env_file = folder / f"{name}.env"
    env_file.write_text(f"DATABASE_URL={url}\nWORKER_QUEUES=mockup\nLOG_LEVEL=debug\n")
    log_path = folder / f"{name}.log"
    full = {**os.environ, "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "MUZO_TEST_RECORD": str(record or folder / "record.txt"), **(env or {})}
    full.pop("NOTIFY_SOCKET", None) if "NOTIFY_SOCKET" not in (env or {}) else None
    cmd = [sys.executable, "-m", "muzo_ops", "worker", "--env-file", str(env_file)]
    if handler:
        cmd += ["--handler", handler]
    cmd += list(args)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full)
    return WorkerProcess(log_path, proc)


def records(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        job_id, event, attempt, _pid = line.split()
        out.append((job_id, event, int(attempt)))
    return out
