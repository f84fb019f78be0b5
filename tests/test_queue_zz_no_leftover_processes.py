"""Issue 7: the suite leaves no process behind.

Runs after the test files before it in name order (env, deploy, jobs, metrics, queue…): every
process they started (workers, dev-db and its SecantusDB, CLI runs) must be gone by now; only
the session's own servers (the ``secantus`` and ``redis_server`` fixtures, stopped by PID at
the end of the session) may still run. A conftest hook at session end would cover the files
after this one too.
"""

from __future__ import annotations

import os

from tests.servers import Redis, Secantus
from tests.test_queue_devdb import children


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def _ancestors(pid: int) -> set[int]:
    found = set()
    while pid > 1:
        found.add(pid)
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
                pid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
    return found


def _same_group(pgid: int) -> set[int]:
    """Live processes of process group ``pgid``: a child orphaned by its parent's death (reparented
    to init, so no longer our descendant) stays in the group it was started in."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.add(int(entry))
    return found


def test_no_process_started_by_the_tests_is_left_running(secantus: Secantus, redis_server: Redis) -> None:
    session_servers = {p.pid for p in (secantus.proc, redis_server.proc) if p is not None}
    mine = set(children(os.getpid())) | _same_group(os.getpgid(0))
    left = sorted(mine - session_servers - _ancestors(os.getpid()))
    assert left == [], "processes left behind: " + "; ".join(f"{pid} {_describe(pid)}" for pid in left)
