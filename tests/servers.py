"""Real servers for the tests: SecantusDB (MongoDB wire protocol) and redis-server.

Each is started on a free 127.0.0.1 port and stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_pid(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass
class Secantus:
    """A SecantusDB server; ``restart`` keeps port and storage."""

    data: Path
    port: int = field(default_factory=free_port)
    standalone: bool = False
    auth: bool = False
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/muzo?directConnection=true&serverSelectionTimeoutMS=5000"

    def url(self, db: str, **options: str) -> str:
        opts = {"serverSelectionTimeoutMS": "5000", **options}
        query = "&".join(f"{k}={v}" for k, v in opts.items())
        return f"mongodb://127.0.0.1:{self.port}/{db}?{query}"

    def start(self) -> None:
        exe = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
        cmd = [exe, "--host", "127.0.0.1", "--port", str(self.port), "--storage-path",
               str(self.data), "--enable-test-commands", "--sync-on-commit",
               "--log-level", "WARNING"]
        if self.standalone:
            cmd.append("--standalone")
        if self.auth:
            cmd.append("--auth")
        self.log = self.data.parent / f"secantus-{self.port}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_port(self.port, 30, self.proc)

    def stop(self) -> None:
        stop_pid(self.proc)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Redis:
    folder: Path
    port: int = field(default_factory=free_port)
    password: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        cmd = [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
               "--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no"]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_port(self.port, 10, self.proc)

    def stop(self) -> None:
        stop_pid(self.proc)
