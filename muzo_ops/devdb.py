"""``dev-db``: a local MongoDB-compatible server for people without MongoDB.

Runs SecantusDB (the optional ``devdb`` extra; SecantusDB is GPL-2.0, so it
is never a required dependency) in the foreground and prints the
DATABASE_URL to put in ``.env``. It advertises a one-node replica set
named ``secantus``: transactions and change streams work.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from muzo_ops.errors import ConfigError


def server_command(port: int, data: str) -> list[str]:
    exe = shutil.which("secantusd-py") or os.path.join(os.path.dirname(sys.executable), "secantusd-py")
    if not os.path.exists(exe):
        raise ConfigError("SecantusDB is not installed: pip install 'muzo-ops[devdb]' (GPL-2.0, optional)")
    return [exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", data, "--sync-on-commit"]


def database_url(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/muzo?replicaSet=secantus&serverSelectionTimeoutMS=30000"


def run(port: int, data: str, say: Callable[[str], None]) -> int:
    """Start the server, print the URL when it listens, wait for it to end."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise ConfigError(f"127.0.0.1:{port} is already in use: pick another --port")
    os.makedirs(data, exist_ok=True)
    say(f"Starting SecantusDB on 127.0.0.1:{port} (data in {data}) ...")
    proc = subprocess.Popen(server_command(port, data))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ConfigError(f"SecantusDB exited with code {proc.returncode}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        say("Ready. Put this in .env (or: muzo-ops init-env --set DATABASE_URL=...):")
        say(f"DATABASE_URL={database_url(port)}")
        say("Stop with Ctrl-C.")
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(15)
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
