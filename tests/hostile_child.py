"""An exec handler that attacks the worker on purpose (payload.mode, or argv[1] when it must not read stdin).

Modes: noread, closeio, bigout, bigerr, badutf8, nan, retry (payload.raw printed, exit 75), grandchild_stdout,
doublefork, split_secret, tail_secret, encoded_secret, result_secret, ignore_term (grandchild ignores SIGTERM,
both hang), sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse


def write_pids(path: str, *pids: int) -> None:
    with open(path + ".tmp", "w") as out:
        out.write(" ".join(str(p) for p in pids) + "\n")
    os.replace(path + ".tmp", path)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "noread":
        time.sleep(0.3)  # the job (a few MB) is never read: the worker's write must not wedge it
        sys.stdout.write("null")
        return 0
    job = json.loads(sys.stdin.buffer.read())
    p = job["payload"]
    mode = p["mode"]
    secret = os.environ.get("SMTP_PASSWORD", "")
    out, err = sys.stdout.buffer, sys.stderr.buffer
    if mode == "closeio":
        os.close(0)
        os.close(1)
        time.sleep(0.3)
        return 0
    if mode in ("bigout", "bigerr"):
        block = b"A" * (1 << 20)
        stream = out if mode == "bigout" else err
        for _ in range(int(p["mib"])):
            stream.write(block)
        stream.flush()
        return 0 if mode == "bigout" else 1
    if mode == "badutf8":
        out.write(b'"\xff\xfe\x00"')
        return 0
    if mode == "deep":  # a result nested as deep as a JSON parser takes
        depth = int(p["depth"])
        out.write(b"[" * depth + b'"x"' + b"]" * depth)
        return 0
    if mode == "nan":
        out.write(b'{"x": NaN, "y": Infinity}')
        return 0
    if mode == "retry":
        out.write(p["raw"].encode())
        return 75
    if mode == "grandchild_stdout":
        # A grandchild that keeps the command's stdout and stderr open long after it exits 0.
        child = subprocess.Popen(["sleep", "300"])
        write_pids(p["pidFile"], os.getpid(), child.pid)
        out.write(b'{"ok": true}')
        out.flush()
        return 0
    if mode == "doublefork":
        # Double fork inside the same session and group: the grandchild is re-parented to init.
        if os.fork() == 0:
            if os.fork() == 0:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                for fd in (0, 1, 2):
                    os.close(fd)
                time.sleep(300)
                os._exit(0)
            os._exit(0)
        os.wait()
        # the grandchild's pid: the only other process of this group
        time.sleep(0.2)
        pgid = os.getpgid(0)
        others = [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()
                  and _pgid(int(e)) == pgid]
        write_pids(p["pidFile"], os.getpid(), *others)
        out.write(b"null")
        return 0
    if mode == "newgroup":
        # A grandchild moved to a process group of its own (setpgid, as a job-control shell does), same session.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], process_group=0,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        write_pids(p["pidFile"], os.getpid(), child.pid)
        out.write(b"null")
        return 0
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
                                  "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
        write_pids(p["pidFile"], os.getpid(), child.pid)
        time.sleep(300)
        return 0
    if mode == "record":  # one line per start and per end, in payload.record
        with open(p["record"], "a") as out_file:
            out_file.write(f"start {os.getpid()} {job['attempt']}\n")
        time.sleep(float(p["seconds"]))
        with open(p["record"], "a") as out_file:
            out_file.write(f"end {os.getpid()} {job['attempt']}\n")
        out.write(json.dumps({"pid": os.getpid()}).encode())
        return 0
    if mode == "sleep":
        time.sleep(float(p["seconds"]))
        out.write(b'{"slept": true}')
        return 0
    if mode == "split_secret":
        # the secret in pieces, each its own write (separate pipe reads), then a failure
        for i in range(0, len(secret), 3):
            err.write(secret[i:i + 3].encode())
            err.flush()
            time.sleep(0.05)
        err.write(b"\n")
        return 1
    if mode == "tail_secret":
        # the 4 KiB tail starts inside the secret: only a suffix of it would be kept
        cut = int(p["cut"])
        err.write(b"x" * 10000 + secret.encode() + b"y" * (4096 - (len(secret) - cut)))
        return 1
    if mode == "encoded_secret":
        quoted = urllib.parse.quote(secret, safe="")
        err.write(f"GET https://api:{quoted}@provider.example.com/v1?key={quoted} failed\n".encode())
        return 1
    if mode == "result_secret":
        out.write(json.dumps({"echo": f"token={secret}"}).encode())
        return 0
    err.write(f"unknown mode {mode}\n".encode())
    return 2


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1


if __name__ == "__main__":
    sys.exit(main())
