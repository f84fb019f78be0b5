"""What the leak scan reads from git: the tracked files, and every file version any commit holds.

Paths come NUL-separated and unquoted (``-z``, ``core.quotePath=false``),
so a non-ASCII or odd file name is read like any other. History is every
blob that any commit on any ref (merges too, against each parent) gave a
path, read once per blob id and attributed to the oldest such commit.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from muzo_ops.errors import MuzoOpsError

MAX_FILE_BYTES = 5_000_000
_FILE_MODES = (b"100644", b"100755")  # not symlinks (120000) nor submodules (160000)
_GIT = ("git", "-c", "core.quotePath=false")


class ScanError(MuzoOpsError):
    """The folder cannot be scanned (not a git work tree, git missing), or its baseline cannot be used."""


def _git(root: str, *args: str, stdin: bool = False) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen([*_GIT, "-C", root, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
    except OSError as exc:
        raise ScanError(f"cannot run git: {exc.strerror}; install git") from exc


def _failed(root: str, command: str, err: bytes, code: int | None) -> ScanError:
    message = err.decode("utf-8", "replace").strip().splitlines()
    return ScanError(f"{root}: git {command} failed ({message[-1] if message else code}): "
                     "scan a folder inside a git work tree")


def git_output(root: str, *args: str) -> bytes:
    """The standard output of ``git -C root ARGS`` (a ScanError when it fails)."""
    proc = _git(root, *args)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise _failed(root, args[0], err, proc.returncode)
    return out


def display_path(raw: bytes) -> str:
    """A path as git gives it (bytes), for output: UTF-8, anything else replaced."""
    return raw.decode("utf-8", "replace")


def tracked_files(root: str) -> list[bytes]:
    """Paths git tracks under ``root`` (relative to it, as bytes: any file name)."""
    return [p for p in git_output(root, "ls-files", "-z", "--", ".").split(b"\0") if p]


def tracked_file_bytes(root: str) -> Iterator[tuple[str, bytes]]:
    """``(path, content)`` of each tracked file as it is in the work tree (missing and large ones skipped)."""
    base = os.fsencode(root)
    for rel in tracked_files(root):
        full = os.path.join(base, rel)
        try:
            if not os.path.isfile(full) or os.path.getsize(full) > MAX_FILE_BYTES:
                continue
            with open(full, "rb") as handle:
                data = handle.read()
        except OSError:
            continue  # deleted in the work tree, a broken symlink, a submodule
        yield display_path(rel), data


@dataclass(frozen=True)
class Blob:
    """A file version: its blob id, the oldest commit that gave it a path, that path, and the
    version of the same path it replaced there (None for a new file)."""

    blob: str
    commit: str
    path: str
    previous: str | None = None


def history_blobs(root: str) -> list[Blob]:
    """Every file version any commit (merges against each parent) added or changed under ``root``, once per blob id."""
    git_output(root, "rev-parse", "--is-inside-work-tree")
    out = git_output(root, "log", "--all", "--topo-order", "--reverse", "-m", "--raw", "-z", "--no-renames",
                     "--no-abbrev", "--relative", "--no-color", "--format=%x00%H", "--", ".")
    blobs: dict[str, Blob] = {}
    commit = ""
    tokens = iter(out.split(b"\0"))
    for token in tokens:
        meta = token.lstrip(b"\n")
        if meta.startswith(b":"):  # ":old_mode new_mode old_id new_id status", then the path
            path = next(tokens, b"")
            fields = meta[1:].split(b" ")
            if len(fields) >= 5 and fields[1] in _FILE_MODES:
                blob, previous = fields[3].decode(), fields[2].decode()
                if blob not in blobs and blob.strip("0"):
                    blobs[blob] = Blob(blob, commit, display_path(path), previous if previous.strip("0") else None)
        elif meta:
            commit = meta.decode("ascii", "replace")
    return list(blobs.values())


def blob_contents(root: str, blobs: list[Blob]) -> Iterator[tuple[Blob, bytes]]:
    """``(blob, content)`` for each of ``blobs`` no larger than MAX_FILE_BYTES, from one ``git cat-file``."""
    if not blobs:
        return
    proc = _git(root, "cat-file", "--batch", stdin=True)
    assert proc.stdin is not None and proc.stdout is not None

    def feed() -> None:  # a thread: git's output may fill the pipe before all ids are written
        assert proc.stdin is not None
        try:
            proc.stdin.write(b"".join(b.blob.encode() + b"\n" for b in blobs))
            proc.stdin.close()
        except OSError:
            pass  # git stopped early: its exit status says why

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        for blob in blobs:
            header = proc.stdout.readline().split()
            if header[1:] == [b"missing"]:
                continue  # a shallow or partial clone
            if len(header) != 3:
                break  # git stopped: its exit status says why
            size = int(header[2])
            data = proc.stdout.read(size + 1)[:size]
            if size <= MAX_FILE_BYTES:
                yield blob, data
    finally:
        writer.join()
        proc.stdout.read()  # whatever was not read (a consumer that stopped early)
        err = proc.stderr.read() if proc.stderr is not None else b""
        proc.wait()
    if proc.returncode != 0:
        raise _failed(root, "cat-file", err, proc.returncode)
