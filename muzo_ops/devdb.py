"""``dev-db``: a local MongoDB-compatible server for people without MongoDB.

Runs SecantusDB (the optional ``devdb`` extra; SecantusDB is GPL-2.0, so it
is never a required dependency) in the foreground and prints the
DATABASE_URL to put in ``.env`` (``--write-env`` writes it there). It
advertises a one-node replica set named ``secantus``: transactions and
change streams work. Its URL names neither ``replicaSet`` nor
``directConnection``: the driver and the server's ``hello`` decide (here:
a replica-set member, so transactions stay on).

Whatever stops ``dev-db`` stops the server: SIGTERM, SIGINT and SIGHUP
terminate it and wait for it, and on Linux the server is also told by the
kernel (PR_SET_PDEATHSIG) if ``dev-db`` dies by SIGKILL, so no orphan is
left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
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
    """The URL for ``.env``: no replicaSet, no directConnection (the driver and ``hello`` decide)."""
    return f"mongodb://127.0.0.1:{port}/muzo?serverSelectionTimeoutMS=30000"


class _Stop(Exception):
    """A stop signal arrived."""


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM when dev-db dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def write_env_file(path: str, url: str) -> str:
    """Put ``DATABASE_URL=url`` into the env file at ``path`` (created when missing); what was done."""
    from muzo_ops.env import initenv

    result = initenv.init_env(path, supplied={"DATABASE_URL": url}, write_example=False)
    if result.created:
        return f"Created {path} with DATABASE_URL (and development defaults)"
    if result.written:
        return f"Wrote DATABASE_URL into {path}" + (f" (backup: {result.backup})" if result.backup else "")
    return f"{path} already has this DATABASE_URL"


def run(port: int, data: str, say: Callable[[str], None], write_env: str | None = None) -> int:
    """Start the server, print the URL when it listens (and write it to ``write_env``), wait for it to end."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: use a TCP port from 1 to 65535")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise ConfigError(f"127.0.0.1:{port} is already in use: pick another --port")
    try:
        os.makedirs(data, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the data folder {data} ({exc.strerror}): pick another --data") from None
    command = server_command(port, data)

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    say(f"Starting SecantusDB on 127.0.0.1:{port} (data in {data}) ...")
    proc = subprocess.Popen(command, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ConfigError(f"SecantusDB exited with code {proc.returncode}: see its output above")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        url = database_url(port)
        if write_env is not None:
            say(write_env_file(write_env, url))
        else:
            say("Ready. Put this in .env (or: muzo-ops dev-db --write-env):")
        say(f"DATABASE_URL={url}")
        say("Stop with Ctrl-C.")
        return proc.wait()
    except (KeyboardInterrupt, _Stop):
        _stop(proc)
        return 0
    finally:
        _stop(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
