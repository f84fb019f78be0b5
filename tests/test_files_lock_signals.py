"""SIGTERM while a file lock is held raises ``Terminated`` (the writers clean up, the CLI says one line);
outside a lock, or when the program handles SIGTERM itself (the worker, the dashboard), nothing changes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from muzo_ops.files.lock import Terminated, locked
    path = sys.argv[1]
    try:
        with locked(path):
            os.kill(os.getpid(), signal.SIGTERM)
            print("not raised")
    except Terminated:
        print("raised")
    print("after:", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    seen = []
    signal.signal(signal.SIGTERM, lambda *_: seen.append(1))
    with locked(path):
        os.kill(os.getpid(), signal.SIGTERM)
    print("own handler kept:", seen == [1])
""")


def test_sigterm_raises_only_while_a_lock_is_held_over_the_default_action(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / ".env")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert proc.stdout.split("\n")[:3] == ["raised", "after: True", "own handler kept: True"]
