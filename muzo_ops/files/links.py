"""Which links the writer goes through: symlinks of its own, root's, or whose owner owns what they
lead to; never a file with other hard links.

Invariant: muzo_ops never writes a file through a symlink that another
user planted to lead to a file that user does not own (root running
``encrypt`` in a folder user 1234 controls never rewrites, nor chmods,
a root file that 1234's ``.env.keys`` or ``.env`` symlink points at).
Invariant: muzo_ops never replaces a file that has other hard links: the
atomic rename gives the name a new inode, and every other name would keep
the old content (the old secrets) without a word.
"""

from __future__ import annotations

import os

from muzo_ops.errors import EnvFileError
from muzo_ops.files import temp

MAX_HOPS = 40


def _owner(path: str) -> int | None:
    """The owner of ``path``, or of its folder when it does not exist yet (None: neither)."""
    for candidate in (path, os.path.dirname(path)):
        try:
            return os.stat(candidate).st_uid
        except OSError:
            continue
    return None


def refuse_hard_links(path: str, info: os.stat_result | None = None) -> None:
    """EnvFileError (nothing changed) when the file ``path`` leads to has more than one hard link.

    ``info``: its ``os.stat`` when the caller has it already. A missing file passes.
    """
    if info is None:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise temp.write_error(path, exc) from exc
    if info.st_nlink <= 1:
        return
    target = os.path.realpath(path)
    others = info.st_nlink - 1
    raise EnvFileError(
        path, f"has {others} other hard link{'s' if others > 1 else ''} (the same file under another name): "
        "replacing it would leave the other name with the old content; refused, nothing was changed. "
        f"List them with `find / -xdev -samefile {target}`, then remove them or make them symlinks "
        f"(`ln -sf {target} OTHER`)")


def trusted_target(path: str) -> str:
    """``os.path.realpath(path)``, refusing (EnvFileError, nothing changed) a symlink in the chain
    of ``path``'s last component owned by neither the runner, root, nor the owner of the end file."""
    target = os.path.realpath(path)
    if not os.path.islink(path):
        return target
    end_owner = _owner(target)
    me = os.geteuid()
    current = os.path.abspath(path)
    for _hop in range(MAX_HOPS):
        try:
            if not os.path.islink(current):
                break
            link_owner = os.lstat(current).st_uid
            if link_owner not in (me, 0, end_owner):
                end = temp.user_name(end_owner) if end_owner is not None else "nobody"
                raise EnvFileError(
                    path, f"is a symlink ({current}) owned by {temp.user_name(link_owner)} leading to "
                    f"{target}, owned by {end}: refused, a symlink is followed only when its owner owns "
                    "what it leads to; point at the real file; nothing was changed")
            current = os.path.join(os.path.dirname(current), os.readlink(current))
        except OSError:
            break  # a loop or a vanished link: the write itself reports it
    return target
